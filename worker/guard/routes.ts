/**
 * The guard's admin operations, mounted behind the admin door: an organization's guard policy
 * (reviewers read it, admins set it) and the reviewers' queue of flags with its suspension proposals.
 */
import { z } from "@hono/zod-openapi";
import { documentedJsonBody, registerBodySchema } from "../admin/body";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { newRouter, problemResponses, readBody } from "../http/router";
import { readGuardPolicy, requireOrganization, setGuardPolicy } from "./policy";
import { guardQueue } from "./queue";
import { GUARD_MODES, guardSettings } from "./settings";

const PolicyInput = z.strictObject({
  mode: z.enum(GUARD_MODES),
  storeSamples: z.boolean().default(false),
  screenResponses: z.boolean().default(false),
});

const PolicyAnswer = z
  .object({
    organizationId: z.string(),
    mode: z.enum(GUARD_MODES),
    storeSamples: z.boolean(),
    screenResponses: z.boolean(),
    custom: z.boolean(),
    /** Whether this deployment has a guard model at all. */
    guardConfigured: z.boolean(),
  })
  .openapi("OrganizationGuard");

const Params = z.object({ id: z.string().min(1).max(64) });

const getPolicyRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/organizations/{id}/guard",
  summary: "An organization's acceptable-use screening (its own, or the deployment's default)",
  request: { params: Params },
  responses: {
    200: { description: "The policy", content: { "application/json": { schema: PolicyAnswer } } },
    ...problemResponses(401, 403, 404),
  },
});

const putPolicyRoute = adminRoute("admin", {
  method: "put",
  path: "/admin/api/organizations/{id}/guard",
  summary: "Set an organization's acceptable-use screening",
  description:
    "Needs the admin role. `mode`: `off` (the guard is not asked), `log` (flagged requests are served and " +
    "recorded) or `block` (flagged requests answer 400 `content_policy_violation`). `storeSamples`: whether flags " +
    "keep the flagged text (the organization allowed it). `screenResponses`: whether answers are screened " +
    "too. Audited as `organization.guard_set`; in force within 5 seconds. An admin party to the organization (a " +
    "member or invitee, its applicant contact, at its domain) is refused with `conflict_of_interest`, audited as " +
    "`organization.change_refused`.",
  request: {
    params: Params,
    body: documentedJsonBody(PolicyInput, "OrganizationGuardInput"),
  },
  responses: {
    200: { description: "The new policy", content: { "application/json": { schema: PolicyAnswer } } },
    ...problemResponses(400, 401, 403, 404, 415),
  },
});

const FlagSchema = z.object({
  id: z.string(),
  organizationId: z.string(),
  grantId: z.string(),
  tokenId: z.string().nullable(),
  usageId: z.string(),
  model: z.string(),
  stage: z.enum(["prompt", "response"]),
  action: z.enum(["logged", "blocked"]),
  categories: z.array(z.string()),
  sample: z.string().nullable(),
  createdAt: z.string(),
});

const SummarySchema = z.object({
  organizationId: z.string(),
  organizationName: z.string(),
  flags: z.number().int(),
  flagsLast24h: z.number().int(),
  blocked: z.number().int(),
  lastAt: z.string(),
  categories: z.array(z.object({ code: z.string(), count: z.number().int() })),
  suspensionProposed: z.boolean(),
  activeGrants: z.array(z.string()),
});

const flagsRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/guard/flags",
  summary: "The guard model's flags: per organization, with counts, categories and suspension proposals",
  description:
    "Without `organization`: every organization flagged in the window, most flags in 24 hours first; " +
    "`suspensionProposed` when they reach `GUARD_SUSPEND_THRESHOLD` (a reviewer confirms with " +
    "`POST /admin/api/grants/{id}/suspend`). With `organization`: that organization's summary and its latest " +
    "100 flags (samples only where it allows them, and for `GUARD_SAMPLE_RETENTION_DAYS`).",
  request: {
    query: z.object({
      organization: z.string().min(1).max(64).optional(),
      days: z.coerce.number().int().min(1).max(366).default(30),
    }),
  },
  responses: {
    200: {
      description: "Flags",
      content: {
        "application/json": {
          schema: z
            .object({
              since: z.string(),
              threshold: z.number().int(),
              organizations: z.array(SummarySchema),
              flags: z.array(FlagSchema),
            })
            .openapi("GuardFlags"),
        },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

/** The guard's admin routes. */
export const guardAdminRoutes = registerBodySchema(newRouter(), "OrganizationGuardInput", PolicyInput)
  .openapi(getPolicyRoute, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const settings = guardSettings(c.env, services.config.inference.allowedHosts);
    await requireOrganization(services, id);
    const policy = await readGuardPolicy(services, id, settings.defaultMode);
    return c.json({ organizationId: id, ...policy, guardConfigured: settings.backend !== undefined }, 200);
  })
  .openapi(putPolicyRoute, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const input = await readBody(c, PolicyInput);
    const settings = guardSettings(c.env, services.config.inference.allowedHosts);
    const policy = await setGuardPolicy(services, id, input, currentAdmin(c));
    return c.json({ organizationId: id, ...policy, guardConfigured: settings.backend !== undefined }, 200);
  })
  .openapi(flagsRoute, async (c) => {
    const { organization, days } = c.req.valid("query");
    const queue = await guardQueue(c.get("services"), c.env, { days, organizationId: organization });
    const { since, threshold, organizations } = queue;
    return c.json({ since, threshold, organizations, flags: queue.selected?.flags ?? [] }, 200);
  });
