/**
 * The billing outbox as operators see it: the usage ledger by billing state, and the rows that
 * failed to reach Stripe (retrying, dead-lettered, or too old to send), so what keeps failing is
 * visible rather than silently unbilled.
 */
import { and, asc, count, desc, eq, gt, inArray, min, or } from "drizzle-orm";
import type { Database } from "../db/client";
import { organizations, usageLedger } from "../db/schema";

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
