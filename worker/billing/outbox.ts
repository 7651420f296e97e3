/**
 * The billing outbox as operators see it: the usage ledger by billing state, and the rows that
 * failed to reach Stripe (retrying, dead-lettered, or too old to send), so what keeps failing is
 * visible rather than silently unbilled.
 */
import { and, asc, count, desc, eq, gt, inArray, min, or } from "drizzle-orm";
import { writeAudited } from "../audit/log";
import type { Database } from "../db/client";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { organizations, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { queueLedgerRows, type UsageMessage } from "./queue";

/** Ledger rows per billing state, with when the oldest of them was written. */
export async function outboxStates(db: Database) {
  return db
    .select({ state: usageLedger.billingState, rows: count(), oldest: min(usageLedger.createdAt) })
    .from(usageLedger)
    .groupBy(usageLedger.billingState)
    .orderBy(asc(usageLedger.billingState));
}

/** Pending rows that Stripe has already refused at least once, and the oldest of them. */
export async function retryingRows(db: Database): Promise<{ rows: number; oldest: string | null }> {
  const [retrying] = await db
    .select({ rows: count(), oldest: min(usageLedger.createdAt) })
    .from(usageLedger)
    .where(and(eq(usageLedger.billingState, "pending"), gt(usageLedger.billingAttempts, 0)));
  return retrying ?? { rows: 0, oldest: null };
}

/**
 * The most recent rows that did not reach Stripe in their first attempt and are not sent yet:
 * retrying, dead-lettered or expired, with the organization's name and the last error.
 */
export async function failedLedgerRows(db: Database, limit = 50) {
  return db
    .select({
      id: usageLedger.id,
      organizationId: usageLedger.organizationId,
      organization: organizations.name,
      grantId: usageLedger.grantId,
      model: usageLedger.model,
      promptTokens: usageLedger.promptTokens,
      completionTokens: usageLedger.completionTokens,
      totalTokens: usageLedger.totalTokens,
      state: usageLedger.billingState,
      attempts: usageLedger.billingAttempts,
      error: usageLedger.billingError,
      startedAt: usageLedger.startedAt,
      createdAt: usageLedger.createdAt,
    })
    .from(usageLedger)
    .leftJoin(organizations, eq(organizations.id, usageLedger.organizationId))
    .where(
      or(
        inArray(usageLedger.billingState, ["dead", "expired"]),
        and(eq(usageLedger.billingState, "pending"), gt(usageLedger.billingAttempts, 0)),
      ),
    )
    .orderBy(desc(usageLedger.createdAt))
    .limit(limit);
}

/** The most dead-lettered rows one resend takes. */
export const MAX_RESEND = 500;
/** The most row ids one resend may name: one statement's worth. */
export const MAX_RESEND_IDS = D1_IDS_PER_STATEMENT;

/**
 * Puts dead-lettered ledger rows back on their way to Stripe: state `pending`, attempts and error
 * cleared, with an audit event naming who did it, then a queue message per row. Only `dead` rows
 * move (an `expired` row is past what Stripe accepts; a `sent` one is done). If the queue send
 * fails the rows are pending all the same, and the reconciler queues them within minutes.
 */
export async function resendDeadLetters(
  services: Pick<Services, "db" | "clock" | "ids" | "log">,
  queue: Queue<UsageMessage>,
  actor: string,
  ids: readonly string[] | undefined,
): Promise<string[]> {
  const moved = await writeAudited(services, async () => {
    const dead = await services.db
      .select({ id: usageLedger.id })
      .from(usageLedger)
      .where(
        ids
          ? and(eq(usageLedger.billingState, "dead"), inArray(usageLedger.id, [...ids]))
          : eq(usageLedger.billingState, "dead"),
      )
      .orderBy(usageLedger.createdAt)
      .limit(MAX_RESEND);
    const rowIds = dead.map((r) => r.id);
    if (rowIds.length === 0) return { statements: [], events: [], result: rowIds };
    return {
      statements: chunked(rowIds, D1_IDS_PER_STATEMENT).map((ids) =>
        services.db
          .update(usageLedger)
          .set({ billingState: "pending", billingAttempts: 0, billingError: null })
          .where(and(eq(usageLedger.billingState, "dead"), inArray(usageLedger.id, ids))),
      ),
      events: [
        {
          actor,
          action: "billing.dead_letters_resent",
          subjectType: "usage_ledger",
          subjectId: rowIds.length === 1 ? (rowIds[0] as string) : `${rowIds.length} rows`,
          data: { rows: rowIds.length, ids: rowIds },
        },
      ],
      result: rowIds,
    };
  });
  await queueLedgerRows(queue, moved, (_ids, error) =>
    services.log.warn("resent rows not queued; the reconciler will send them", { error: String(error) }),
  );
  return moved;
}
