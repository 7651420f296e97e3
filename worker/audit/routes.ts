import { createRoute, z } from "@hono/zod-openapi";
import { and, desc, eq, lt, type SQL } from "drizzle-orm";
import { requireRole } from "../admin/access";
import { decodeSeqCursor, encodeSeqCursor, PageQuery } from "../admin/cursor";
import type { Database } from "../db/client";
import { type AuditEvent, auditEvents } from "../db/schema";
import { newRouter, problemResponses } from "../http/router";
import { verifyAuditChain } from "./log";

/** One recorded event as the admin API shows it, hashes included so a copy can be re-verified. */
export const AuditEventSchema = z
  .object({
    seq: z.number().int(),
    id: z.string(),
    at: z.string(),
    actor: z.string(),
    action: z.string(),
    subjectType: z.string(),
    subjectId: z.string(),
    data: z.record(z.string(), z.unknown()),
    prevHash: z.string(),
    hash: z.string(),
  })
  .openapi("AuditEvent");

/** The stored row as the API shows it. */
export function auditEventView(event: AuditEvent): z.infer<typeof AuditEventSchema> {
  return {
    seq: event.seq,
    id: event.id,
    at: event.at,
    actor: event.actor,
    action: event.action,
    subjectType: event.subjectType,
    subjectId: event.subjectId,
    data: event.data,
    prevHash: event.prevHash,
    hash: event.hash,
  };
}

const listAudit = createRoute({
  method: "get",
  path: "/admin/api/audit",
  tags: ["Admin"],
  summary: "Audit events, newest first",
  middleware: [requireRole("reviewer")] as const,
  request: {
    query: z.object({
      action: z.string().max(100).optional().openapi({ example: "application.decided" }),
      subjectType: z.string().max(50).optional().openapi({ example: "application" }),
      subjectId: z.string().max(100).optional(),
      actor: z.string().max(320).optional().openapi({ example: "reviewer:ada@example.com" }),
      ...PageQuery,
    }),
  },
  responses: {
    200: {
      description: "A page of events",
      content: {
        "application/json": {
          schema: z.object({ items: z.array(AuditEventSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

const verifyAudit = createRoute({
  method: "get",
  path: "/admin/api/audit/verify",
  tags: ["Admin"],
  summary: "Walk the hash chain and report the first broken link",
  middleware: [requireRole("reviewer")] as const,
  responses: {
    200: {
      description: "The verification result; `ok: false` names the first event that does not hold",
      content: {
        "application/json": {
          schema: z
            .object({
              ok: z.boolean(),
              checked: z.number().int(),
              headSeq: z.number().int(),
              headHash: z.string(),
              firstBroken: z
                .object({
                  seq: z.number().int(),
                  id: z.string(),
                  problem: z.enum(["hash_mismatch", "prev_hash_mismatch", "sequence_gap"]),
                })
                .optional(),
            })
            .openapi("AuditVerification"),
        },
      },
    },
    ...problemResponses(401, 403),
  },
});

/** Filters and page of an audit listing. */
export type AuditQuery = z.infer<(typeof listAudit)["request"]["query"]>;

/** A page of audit events, newest first, matching every given filter exactly. */
export async function listAuditEvents(
  db: Database,
  query: AuditQuery,
): Promise<{ items: z.infer<typeof AuditEventSchema>[]; nextCursor: string | null }> {
  const conditions: SQL[] = [];
  if (query.action) conditions.push(eq(auditEvents.action, query.action));
  if (query.subjectType) conditions.push(eq(auditEvents.subjectType, query.subjectType));
  if (query.subjectId) conditions.push(eq(auditEvents.subjectId, query.subjectId));
  if (query.actor) conditions.push(eq(auditEvents.actor, query.actor));
  if (query.cursor) conditions.push(lt(auditEvents.seq, decodeSeqCursor(query.cursor)));
  const rows = await db
    .select()
    .from(auditEvents)
    .where(and(...conditions))
    .orderBy(desc(auditEvents.seq))
    .limit(query.limit + 1);
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  const nextCursor = rows.length > query.limit && last ? encodeSeqCursor(last.seq) : null;
  return { items: page.map(auditEventView), nextCursor };
}

/** The audit log's read side for reviewers. Mounted by the admin router, behind Access. */
export const auditRoutes = newRouter()
  .openapi(listAudit, async (c) => c.json(await listAuditEvents(c.get("services").db, c.req.valid("query")), 200))
  .openapi(verifyAudit, async (c) => {
    return c.json(await verifyAuditChain(c.get("services").db), 200);
  });
