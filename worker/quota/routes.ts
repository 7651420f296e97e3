import { z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { reviewerActor, writeOrganizationChange } from "../admin/conflict";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { organizationLimits, organizations } from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses, readBody } from "../http/router";
import { effectiveLimits } from "./limits";
import { quotaStub } from "./org-quota";

const LimitsSchema = z
  .strictObject({
    plan: z.string().trim().min(1).max(64),
    requestsPerMinute: z.number().int().positive().max(1_000_000),
    tokensPerMinute: z.number().int().positive().max(1_000_000_000),
    monthlyTokenBudget: z.number().int().positive().max(1_000_000_000_000),
  })
  .openapi("OrganizationLimits");

const Params = z.object({ id: z.string().min(1).max(64) });
const LimitsAnswer = LimitsSchema.extend({ organizationId: z.string(), custom: z.boolean() });

const getLimits = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/organizations/{id}/limits",
  summary: "An organization's inference limits (its own, or the deployment's defaults)",
  request: { params: Params },
  responses: {
    200: { description: "Limits", content: { "application/json": { schema: LimitsAnswer } } },
    ...problemResponses(401, 403, 404),
  },
});

const putLimits = adminRoute("admin", {
  method: "put",
  path: "/admin/api/organizations/{id}/limits",
  summary: "Set an organization's inference limits; in force at once",
  description:
    "Needs the admin role. Audited as `organization.limits_set`. An admin party to the organization (a member or " +
    "invitee, its applicant contact, at its domain) is refused with `conflict_of_interest`, audited as " +
    "`organization.change_refused`: no one sets their own organization's limits.",
  request: {
    params: Params,
    body: {
      content: { "application/json": { schema: { $ref: "#/components/schemas/OrganizationLimits" } } },
      required: true,
    },
  },
  responses: {
    200: { description: "The new limits", content: { "application/json": { schema: LimitsAnswer } } },
    ...problemResponses(400, 401, 403, 404, 415),
  },
});

/** Organizations' inference limits, mounted behind the admin door. */
export const quotaAdminRoutes = newRouter();
quotaAdminRoutes.openAPIRegistry.register("OrganizationLimits", LimitsSchema);

quotaAdminRoutes
  .openapi(getLimits, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const [org] = await services.db
      .select({ id: organizations.id })
      .from(organizations)
      .where(eq(organizations.id, id));
    if (!org) throw new AppError("not_found", "No such organization.");
    return c.json(await effectiveLimits(services, id), 200);
  })
  .openapi(putLimits, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const input = await readBody(c, LimitsSchema);
    const admin = currentAdmin(c);
    await writeOrganizationChange(services, admin, id, "organization.limits_set", async () => {
      const [org] = await services.db
        .select({ id: organizations.id })
        .from(organizations)
        .where(eq(organizations.id, id));
      if (!org) throw new AppError("not_found", "No such organization.");
      const row = { ...input, updatedAt: services.clock.now().toISOString() };
      return {
        statements: [
          services.db
            .insert(organizationLimits)
            .values({ organizationId: id, ...row })
            .onConflictDoUpdate({ target: organizationLimits.organizationId, set: row }),
        ],
        events: [
          {
            actor: reviewerActor(admin),
            action: "organization.limits_set",
            subjectType: "organization",
            subjectId: id,
            data: { ...input },
          },
        ],
        result: undefined,
      };
    });
    // Isolates keep the limits they read for a few seconds; the quota object outranks them at once.
    const { plan: _plan, ...limits } = input;
    try {
      await quotaStub(c.env, id).announceLimits(limits, services.clock.now().getTime());
    } catch (error) {
      services.log.warn("new limits not announced to the quota object; in force within the token cache", {
        organizationId: id,
        error: String(error),
      });
    }
    return c.json({ organizationId: id, custom: true, ...input }, 200);
  });
