/**
 * The review queue and the case file: what a reviewer reads before deciding.
 */
import { z } from "@hono/zod-openapi";
import { and, asc, eq, gt, inArray, lt, ne, or, type SQL, sql } from "drizzle-orm";
import { AuditEventSchema, auditEventView } from "../audit/routes";
import { type AdminIdentity, currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import type { Database } from "../db/client";
import {
  APPLICATION_STATUSES,
  type Application,
  acceptances,
  applications,
  auditEvents,
  caseLinks,
  DECISIONS,
  decisions,
  GRANT_STATUSES,
  grants,
  users,
} from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses } from "../http/router";
import type { Services } from "../services";
import { reviewerConflict } from "./conflict";
import { decodeCursor, encodeCursor, PageQuery } from "./cursor";

const PolicyReasonSchema = z.object({
  code: z.string(),
  outcome: z.enum(["review", "reject"]),
  detail: z.string(),
});

const ApprovalSchema = z.object({ reviewer: z.string(), at: z.string() });

const QueueItemSchema = z
  .object({
    id: z.string(),
    family: z.string(),
    organizationId: z.string(),
    organization: z.string(),
    country: z.string(),
    contactEmail: z.string(),
    declaredMau: z.number().int(),
    status: z.enum(APPLICATION_STATUSES),
    policyReasons: z.array(PolicyReasonSchema),
    requiredApprovals: z.number().int(),
    reviewRound: z.number().int(),
    /** Approvals in the current round, oldest first. */
    approvals: z.array(ApprovalSchema),
    createdAt: z.string(),
    ageSeconds: z.number().int(),
  })
  .openapi("ReviewQueueItem");

const CaseSchema = z
  .object({
    application: z.object({
      id: z.string(),
      family: z.string(),
      organizationId: z.string(),
      organizationName: z.string(),
      website: z.string().nullable(),
      country: z.string(),
      contactName: z.string(),
      contactEmail: z.string(),
      intendedUse: z.string(),
      declaredMau: z.number().int(),
      models: z.array(z.string()),
      status: z.enum(APPLICATION_STATUSES),
      policyReasons: z.array(PolicyReasonSchema),
      requiredApprovals: z.number().int(),
      reviewRound: z.number().int(),
      applicantMessage: z.string().nullable(),
      applicantResponse: z.string().nullable(),
      licenseVersionId: z.string(),
      reapplyAfter: z.string().nullable(),
      createdAt: z.string(),
      updatedAt: z.string(),
      decidedAt: z.string().nullable(),
    }),
    approvals: z.array(ApprovalSchema),
    acceptances: z.array(
      z
        .object({
          id: z.string(),
          licenseVersionId: z.string(),
          licenseSha256: z.string(),
          aupSha256: z.string(),
          acceptedAt: z.string().openapi({ description: "When the application (or request) was submitted." }),
          ip: z
            .string()
            .nullable()
            .openapi({ description: "The submitting request's address: whoever posted the form." }),
          country: z.string().nullable(),
          userAgent: z.string().nullable(),
          confirmedAt: z.string().nullable().openapi({
            description:
              "When the contact confirmed with the mailed link, accepting these texts: the acceptance. Null for acceptances from before confirmations were acceptances, and for requests for more models.",
          }),
          confirmedByUserId: z.string().nullable(),
          confirmedByEmail: z.string().nullable().openapi({ description: "The address the link proved." }),
          confirmedIp: z.string().nullable(),
          confirmedCountry: z.string().nullable(),
          confirmedUserAgent: z.string().nullable(),
        })
        .openapi({
          description:
            "The license acceptance, in its two steps: the submission (`acceptedAt`, `ip`, `country`, `userAgent`), by anyone, and the confirmation (`confirmed…`), by the proven contact.",
        }),
    ),
    decisions: z.array(
      z.object({
        id: z.string(),
        reviewRound: z.number().int(),
        reviewerEmail: z.string(),
        decision: z.enum(DECISIONS),
        reason: z.string(),
        visibleToApplicant: z.boolean(),
        createdAt: z.string(),
      }),
    ),
    grant: z
      .object({
        id: z.string(),
        status: z.enum(GRANT_STATUSES),
        statusReason: z.string().nullable(),
        createdAt: z.string(),
        updatedAt: z.string(),
      })
      .nullable(),
    earlierCases: z.array(
      z.object({
        id: z.string(),
        family: z.string(),
        contactEmail: z.string(),
        status: z.enum(APPLICATION_STATUSES),
        createdAt: z.string(),
        decidedAt: z.string().nullable(),
      }),
    ),
    relatedCases: z
      .array(
        z.object({
          id: z.string(),
          organizationId: z.string(),
          organizationName: z.string(),
          website: z.string().nullable(),
          country: z.string(),
          contactEmail: z.string(),
          declaredMau: z.number().int(),
          status: z.enum(APPLICATION_STATUSES),
          requiredApprovals: z.number().int(),
          createdAt: z.string(),
          reasons: z.array(z.string()),
        }),
      )
      .openapi({
        description:
          "Other organizations' cases this one resembles (name, website, e-mail domain), in either direction: a resemblance is not proof of identity, so a reviewer compares them.",
      }),
    auditEvents: z.array(AuditEventSchema),
    conflictOfInterest: z.boolean().openapi({
      description:
        "Whether the signed-in reviewer is party to this case (their e-mail, or its domain, is the applicant's) and so may not decide it.",
    }),
  })
  .openapi("ReviewCase");

const listApplications = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/applications",
  summary: "The review queue, oldest first",
  request: {
    query: z.object({
      status: z.enum(APPLICATION_STATUSES).optional(),
      q: z.string().trim().min(1).max(200).optional().openapi({ description: "Organization name or contact e-mail" }),
      ...PageQuery,
    }),
  },
  responses: {
    200: {
      description: "A page of cases",
      content: {
        "application/json": {
          schema: z.object({ items: z.array(QueueItemSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

const IdParam = z.object({ id: z.string().min(1).max(100).openapi({ example: "app_01J0000000000000000000000" }) });

const getApplication = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/applications/{id}",
  summary: "A case file: submission, evidence, decisions, grant, history and audit trail",
  request: { params: IdParam },
  responses: {
    200: { description: "The case", content: { "application/json": { schema: CaseSchema } } },
    ...problemResponses(401, 403, 404),
  },
});

/** `%` and `_` in a search term are literal characters, not wildcards. */
function containsPattern(term: string): string {
  return `%${term.replace(/[\\%_]/g, (ch) => `\\${ch}`)}%`;
}

/** Approvals of the current round for each of the given cases, keyed by application id. */
async function currentApprovals(
  db: Database,
  cases: Pick<Application, "id" | "reviewRound">[],
): Promise<Map<string, { reviewer: string; at: string }[]>> {
  const byId = new Map(cases.map((item) => [item.id, [] as { reviewer: string; at: string }[]]));
  if (cases.length === 0) return byId;
  const rows = await db
    .select({
      applicationId: decisions.applicationId,
      reviewRound: decisions.reviewRound,
      reviewer: decisions.reviewerEmail,
      at: decisions.createdAt,
    })
    .from(decisions)
    .where(
      and(
        inArray(
          decisions.applicationId,
          cases.map((item) => item.id),
        ),
        eq(decisions.decision, "approve"),
      ),
    )
    .orderBy(asc(decisions.createdAt), asc(decisions.id));
  const rounds = new Map(cases.map((item) => [item.id, item.reviewRound]));
  for (const row of rows) {
    if (rounds.get(row.applicationId) === row.reviewRound) {
      byId.get(row.applicationId)?.push({ reviewer: row.reviewer, at: row.at });
    }
  }
  return byId;
}

/** The query the review queue takes: status, search term and page. */
export type ReviewQueueQuery = z.infer<(typeof listApplications)["request"]["query"]>;

/** A page of the review queue, oldest first, with each case's approvals of its current round. */
export async function listReviewQueue(
  services: Pick<Services, "db" | "clock">,
  query: ReviewQueueQuery,
): Promise<{ items: z.infer<typeof QueueItemSchema>[]; nextCursor: string | null }> {
  const { db, clock } = services;
  const conditions: SQL[] = [];
  if (query.status) conditions.push(eq(applications.status, query.status));
  if (query.q) {
    const pattern = containsPattern(query.q);
    // SQLite's LIKE ignores ASCII case, which is what a search box should do.
    conditions.push(
      sql`(${applications.organizationName} like ${pattern} escape '\\' or ${applications.contactEmail} like ${pattern} escape '\\')`,
    );
  }
  if (query.cursor) {
    const after = decodeCursor(query.cursor);
    conditions.push(
      or(
        gt(applications.createdAt, after.createdAt),
        and(eq(applications.createdAt, after.createdAt), gt(applications.id, after.id)),
      ) as SQL,
    );
  }
  const rows = await db
    .select()
    .from(applications)
    .where(and(...conditions))
    .orderBy(asc(applications.createdAt), asc(applications.id))
    .limit(query.limit + 1);
  const page = rows.slice(0, query.limit);
  const approvals = await currentApprovals(db, page);
  const now = clock.now().getTime();
  const last = page.at(-1);
  return {
    items: page.map((row) => ({
      id: row.id,
      family: row.family,
      organizationId: row.organizationId,
      organization: row.organizationName,
      country: row.country,
      contactEmail: row.contactEmail,
      declaredMau: row.declaredMau,
      status: row.status,
      policyReasons: row.policyReasons,
      requiredApprovals: row.requiredApprovals,
      reviewRound: row.reviewRound,
      approvals: approvals.get(row.id) ?? [],
      createdAt: row.createdAt,
      ageSeconds: Math.max(0, Math.floor((now - Date.parse(row.createdAt)) / 1000)),
    })),
    nextCursor: rows.length > query.limit && last ? encodeCursor(last) : null,
  };
}

/** The cases linked to `id` as resembling it, whichever of the two was linked to the other. */
async function relatedCaseFiles(db: Database, id: string) {
  const links = await db
    .select()
    .from(caseLinks)
    .where(or(eq(caseLinks.applicationId, id), eq(caseLinks.relatedApplicationId, id)));
  if (links.length === 0) return [];
  const reasons = new Map<string, string[]>();
  for (const link of links) {
    const other = link.applicationId === id ? link.relatedApplicationId : link.applicationId;
    reasons.set(other, [...new Set([...(reasons.get(other) ?? []), ...link.reasons])].sort());
  }
  const rows = await db
    .select()
    .from(applications)
    .where(inArray(applications.id, [...reasons.keys()]))
    .orderBy(asc(applications.createdAt));
  return rows.map((row) => ({
    id: row.id,
    organizationId: row.organizationId,
    organizationName: row.organizationName,
    website: row.website,
    country: row.country,
    contactEmail: row.contactEmail,
    declaredMau: row.declaredMau,
    status: row.status,
    requiredApprovals: row.requiredApprovals,
    createdAt: row.createdAt,
    reasons: reasons.get(row.id) ?? [],
  }));
}

/** A case file as `viewer` may see it, or `not_found`. */
export async function readCaseFile(
  db: Database,
  id: string,
  viewer: Pick<AdminIdentity, "email">,
): Promise<z.infer<typeof CaseSchema>> {
  const [row] = await db.select().from(applications).where(eq(applications.id, id));
  if (!row) throw new AppError("not_found", `No application ${id}.`);
  const [evidence, history, [grant], earlier, approvals, conflict] = await Promise.all([
    db
      .select({ acceptance: acceptances, confirmedByEmail: users.email })
      .from(acceptances)
      .leftJoin(users, eq(users.id, acceptances.confirmedByUserId))
      .where(eq(acceptances.applicationId, id))
      .orderBy(asc(acceptances.acceptedAt)),
    db
      .select()
      .from(decisions)
      .where(eq(decisions.applicationId, id))
      .orderBy(asc(decisions.createdAt), asc(decisions.id)),
    db.select().from(grants).where(eq(grants.applicationId, id)),
    db
      .select()
      .from(applications)
      .where(
        and(
          eq(applications.organizationId, row.organizationId),
          ne(applications.id, id),
          or(
            lt(applications.createdAt, row.createdAt),
            and(eq(applications.createdAt, row.createdAt), lt(applications.id, id)),
          ),
        ),
      )
      .orderBy(asc(applications.createdAt), asc(applications.id)),
    currentApprovals(db, [row]),
    reviewerConflict(db, viewer.email, row),
  ]);
  const related = await relatedCaseFiles(db, id);
  const subjects = [and(eq(auditEvents.subjectType, "application"), eq(auditEvents.subjectId, id))];
  if (grant) subjects.push(and(eq(auditEvents.subjectType, "grant"), eq(auditEvents.subjectId, grant.id)));
  const trail = await db
    .select()
    .from(auditEvents)
    .where(or(...subjects))
    .orderBy(asc(auditEvents.seq));
  return {
    // Field by field, so a column added to the table later is not published by accident.
    application: {
      id: row.id,
      family: row.family,
      organizationId: row.organizationId,
      organizationName: row.organizationName,
      website: row.website,
      country: row.country,
      contactName: row.contactName,
      contactEmail: row.contactEmail,
      intendedUse: row.intendedUse,
      declaredMau: row.declaredMau,
      models: row.models,
      status: row.status,
      policyReasons: row.policyReasons,
      requiredApprovals: row.requiredApprovals,
      reviewRound: row.reviewRound,
      applicantMessage: row.applicantMessage,
      applicantResponse: row.applicantResponse,
      licenseVersionId: row.licenseVersionId,
      reapplyAfter: row.reapplyAfter,
      createdAt: row.createdAt,
      updatedAt: row.updatedAt,
      decidedAt: row.decidedAt,
    },
    approvals: approvals.get(id) ?? [],
    acceptances: evidence.map(({ acceptance: { applicationId: _app, ...rest }, confirmedByEmail }) => ({
      ...rest,
      confirmedByEmail,
    })),
    decisions: history.map(({ applicationId: _app, ...rest }) => rest),
    grant: grant
      ? {
          id: grant.id,
          status: grant.status,
          statusReason: grant.statusReason,
          createdAt: grant.createdAt,
          updatedAt: grant.updatedAt,
        }
      : null,
    earlierCases: earlier.map((item) => ({
      id: item.id,
      family: item.family,
      contactEmail: item.contactEmail,
      status: item.status,
      createdAt: item.createdAt,
      decidedAt: item.decidedAt,
    })),
    relatedCases: related,
    auditEvents: trail.map(auditEventView),
    conflictOfInterest: conflict !== null,
  };
}

/** The queue and case-file routes. */
export const caseRoutes = newRouter()
  .openapi(listApplications, async (c) => c.json(await listReviewQueue(c.get("services"), c.req.valid("query")), 200))
  .openapi(getApplication, async (c) =>
    c.json(await readCaseFile(c.get("services").db, c.req.valid("param").id, currentAdmin(c)), 200),
  );
