import { z } from "@hono/zod-openapi";
import { and, desc, eq, lt, type SQL } from "drizzle-orm";
import { decodeSeqCursor, encodeSeqCursor, PageQuery } from "../admin/cursor";
import { adminRoute } from "../auth/admin-door";
import type { Database } from "../db/client";
import { type AuditEvent, auditEvents } from "../db/schema";
import { newRouter, problemResponses } from "../http/router";
import { deferredTo } from "./anchor";
import { verifyAuditLog } from "./log";

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

const listAudit = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/audit",
  summary: "Audit events, newest first",
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

const verifyAudit = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/audit/verify",
  summary: "Walk the hash chain, compare it with every signed checkpoint, and report what does not hold",
  responses: {
    200: {
      description:
        "The verification result. `ok` is false when a link of the chain does not hold (`firstBroken`), or when the " +
        "chain disagrees with a signed checkpoint kept outside the database: events at or below one are missing " +
        "(`truncated`), an event at one has another hash (`rewritten`), or a checkpoint is not validly signed (`forged`).",
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
                  problem: z.enum(["hash_mismatch", "prev_hash_mismatch", "sequence_gap", "outside_chain"]),
                })
                .optional(),
              anchored: z.boolean().openapi({ description: "Whether checkpoints are signed and checked here" }),
              checkpoints: z.number().int().openapi({ description: "Checkpoint objects examined" }),
              newestCheckpoint: z
                .object({ seq: z.number().int(), hash: z.string(), signedAt: z.string() })
                .nullable()
                .openapi({ description: "The newest checkpoint whose signature holds" }),
              truncated: z.boolean(),
              rewritten: z.boolean(),
              forged: z.boolean(),
              checkpointProblems: z
                .array(
                  z.object({
                    key: z.string(),
                    seq: z.number().int().nullable(),
                    problem: z.enum(["invalid_signature", "event_missing", "hash_mismatch"]),
                  }),
                )
                .openapi({ description: "The first checkpoints that do not hold, in sequence order" }),
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
    const services = c.get("services");
    const anchor = services.auditAnchor && deferredTo(services.auditAnchor, c.executionCtx);
    return c.json(await verifyAuditLog({ ...services, auditAnchor: anchor }), 200);
  });
