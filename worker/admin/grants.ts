/**
 * Grants as reviewers see and steer them: the list, and suspension, reinstatement and revocation.
 */
import { z } from "@hono/zod-openapi";
import { and, desc, eq, lt, or, type SQL, sql } from "drizzle-orm";
import { type AdminIdentity, currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import type { AdminRole } from "../config";
import type { Database } from "../db/client";
import { applications, GRANT_STATUSES, grants, organizations } from "../db/schema";
import { AppError } from "../errors";
import { grantEvent } from "../events/record";
import { closeOpenCasesOfRevokedGrant } from "../grants/revocation";
import { type GrantAction, nextGrantStatus } from "../grants/state";
import { newRouter, problemResponses, readBody } from "../http/router";
import { enqueueMailWithinLimits } from "../mail/outbox";
import { caseNotice, grantMail } from "../mail/templates";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import { documentedJsonBody, registerBodySchema } from "./body";
import { refusalIfParty, reviewerActor, writeAuditedUnlessParty } from "./conflict";
import { decodeCursor, encodeCursor, PageQuery } from "./cursor";
import { deliverMailSoon } from "./decisions";

const GrantSchema = z
  .object({
    id: z.string(),
    applicationId: z.string(),
    organizationId: z.string(),
    organizationName: z.string(),
    contactEmail: z.string(),
    family: z.string(),
    licenseVersionId: z.string(),
    status: z.enum(GRANT_STATUSES),
    statusReason: z.string().nullable(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi("Grant");

/** Why a grant's status is changed; recorded in the audit log and sent to the licensee. */
export const GrantChangeRequestSchema = z
  .object({ reason: z.string().trim().min(1).max(4000) })
  .openapi("GrantChangeRequest");

const GrantChangeSchema = z
  .object({
    id: z.string(),
    status: z.enum(GRANT_STATUSES),
    previousStatus: z.enum(GRANT_STATUSES),
  })
  .openapi("GrantChange");

const EVENT_OF: Record<GrantAction, string> = {
  suspend: "grant.suspended",
  reinstate: "grant.reinstated",
  revoke: "grant.revoked",
};

/**
 * Moves a grant to the status `action` leads to, in one batch with its audit event and the notice
 * to the licensee's contact. Revocation also closes the organization's open cases of the family,
 * each audited, so that no approval still pending can bring the access back. Answers
 * `invalid_state` when the action is not possible from the current status — in particular after
 * revocation, which is final.
 */
export async function changeGrantStatus(
  services: Pick<Services, "db" | "clock" | "ids" | "config">,
  reviewer: Pick<AdminIdentity, "email">,
  grantId: string,
  action: GrantAction,
  reason: string,
): Promise<z.infer<typeof GrantChangeSchema>> {
  const { db, clock } = services;
  return writeAuditedUnlessParty<z.infer<typeof GrantChangeSchema>>(services, async () => {
    const [row] = await db
      .select({ grant: grants, application: applications })
      .from(grants)
      .innerJoin(applications, eq(applications.id, grants.applicationId))
      .where(eq(grants.id, grantId));
    if (!row) throw new AppError("not_found", `No grant ${grantId}.`);
    const { grant, application } = row;
    // Whoever may not decide the case may not suspend, reinstate or revoke what it granted either.
    const refused = await refusalIfParty(db, reviewer, application, {
      action: "grant.change_refused",
      subjectType: "grant",
      subjectId: grantId,
      data: { action, status: grant.status },
      remedy: "another approver must change this grant",
    });
    if (refused) return refused;
    const next = nextGrantStatus(grant.status, action);
    if (!next) {
      const detail =
        grant.status === "revoked"
          ? "The grant is revoked; revocation is final."
          : `A grant that is ${grant.status} cannot be ${EVENT_OF[action].slice("grant.".length)}.`;
      throw new AppError("invalid_state", detail);
    }
    const at = clock.now().toISOString();
    const actor = reviewerActor(reviewer);
    const closed =
      next === "revoked"
        ? await closeOpenCasesOfRevokedGrant(services, grant, at, actor)
        : { statements: [], events: [] };
    const mail = grantMail(
      caseNotice(services.config.publicBaseUrl, application, findFamily(grant.family)?.displayName ?? grant.family),
      next,
      reason,
    );
    return {
      statements: [
        db.update(grants).set({ status: next, statusReason: reason, updatedAt: at }).where(eq(grants.id, grantId)),
        ...(await enqueueMailWithinLimits(services, mail)),
        grantEvent(services, grant, next, reason),
        ...closed.statements,
      ],
      events: [
        {
          actor,
          action: EVENT_OF[action],
          subjectType: "grant",
          subjectId: grantId,
          data: {
            reason,
            from: grant.status,
            to: next,
            applicationId: grant.applicationId,
            organizationId: grant.organizationId,
            family: grant.family,
          },
        },
        ...closed.events,
      ],
      result: { id: grantId, status: next, previousStatus: grant.status },
    };
  });
}

const listGrants = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/grants",
  summary: "Grants, newest first",
  request: {
    query: z.object({
      status: z.enum(GRANT_STATUSES).optional(),
      organization: z
        .string()
        .trim()
        .min(1)
        .max(200)
        .optional()
        .openapi({ description: "An organization id, or part of its name" }),
      ...PageQuery,
    }),
  },
  responses: {
    200: {
      description: "A page of grants",
      content: {
        "application/json": { schema: z.object({ items: z.array(GrantSchema), nextCursor: z.string().nullable() }) },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

function grantActionRoute(action: GrantAction, role: AdminRole, summary: string) {
  return adminRoute(role, {
    method: "post",
    path: `/admin/api/grants/{id}/${action}`,
    summary,
    description: `Needs the ${role} role. The reason is recorded in the audit log and sent to the licensee's contact.`,
    request: {
      params: z.object({ id: z.string().min(1).max(100) }),
      body: documentedJsonBody(GrantChangeRequestSchema, "GrantChangeRequest"),
    },
    responses: {
      200: { description: "The grant's new status", content: { "application/json": { schema: GrantChangeSchema } } },
      ...problemResponses(400, 401, 403, 404, 409, 415),
    },
  });
}

const suspendGrant = grantActionRoute("suspend", "approver", "Suspend a grant");
const reinstateGrant = grantActionRoute("reinstate", "approver", "Reinstate a suspended grant");
const revokeGrant = grantActionRoute("revoke", "admin", "Revoke a grant for good");

/** The query the grant listing takes: status, organization and page. */
export type GrantQuery = z.infer<(typeof listGrants)["request"]["query"]>;

/** A page of grants, newest first, with each organization's name and contact. */
export async function listGrantsPage(
  db: Database,
  query: GrantQuery,
): Promise<{ items: z.infer<typeof GrantSchema>[]; nextCursor: string | null }> {
  const conditions: SQL[] = [];
  if (query.status) conditions.push(eq(grants.status, query.status));
  if (query.organization) {
    const pattern = `%${query.organization.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`;
    conditions.push(
      or(eq(grants.organizationId, query.organization), sql`${organizations.name} like ${pattern} escape '\\'`) as SQL,
    );
  }
  if (query.cursor) {
    const before = decodeCursor(query.cursor);
    conditions.push(
      or(
        lt(grants.createdAt, before.createdAt),
        and(eq(grants.createdAt, before.createdAt), lt(grants.id, before.id)),
      ) as SQL,
    );
  }
  const rows = await db
    .select({ grant: grants, organizationName: organizations.name, contactEmail: applications.contactEmail })
    .from(grants)
    .innerJoin(organizations, eq(organizations.id, grants.organizationId))
    .innerJoin(applications, eq(applications.id, grants.applicationId))
    .where(and(...conditions))
    .orderBy(desc(grants.createdAt), desc(grants.id))
    .limit(query.limit + 1);
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    items: page.map(({ grant, organizationName, contactEmail }) => ({
      id: grant.id,
      applicationId: grant.applicationId,
      organizationId: grant.organizationId,
      organizationName,
      contactEmail,
      family: grant.family,
      licenseVersionId: grant.licenseVersionId,
      status: grant.status,
      statusReason: grant.statusReason,
      createdAt: grant.createdAt,
      updatedAt: grant.updatedAt,
    })),
    nextCursor: rows.length > query.limit && last ? encodeCursor(last.grant) : null,
  };
}

/** The grant routes. */
export const grantRoutes = registerBodySchema(newRouter(), "GrantChangeRequest", GrantChangeRequestSchema)
  .openapi(listGrants, async (c) => c.json(await listGrantsPage(c.get("services").db, c.req.valid("query")), 200))
  .openapi(suspendGrant, async (c) => {
    const { reason } = await readBody(c, GrantChangeRequestSchema);
    const change = await changeGrantStatus(
      c.get("services"),
      currentAdmin(c),
      c.req.valid("param").id,
      "suspend",
      reason,
    );
    deliverMailSoon(c);
    return c.json(change, 200);
  })
  .openapi(reinstateGrant, async (c) => {
    const { reason } = await readBody(c, GrantChangeRequestSchema);
    const change = await changeGrantStatus(
      c.get("services"),
      currentAdmin(c),
      c.req.valid("param").id,
      "reinstate",
      reason,
    );
    deliverMailSoon(c);
    return c.json(change, 200);
  })
  .openapi(revokeGrant, async (c) => {
    const { reason } = await readBody(c, GrantChangeRequestSchema);
    const change = await changeGrantStatus(
      c.get("services"),
      currentAdmin(c),
      c.req.valid("param").id,
      "revoke",
      reason,
    );
    deliverMailSoon(c);
    return c.json(change, 200);
  });
