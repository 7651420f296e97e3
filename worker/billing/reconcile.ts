import { and, asc, eq, isNull, lt } from "drizzle-orm";
import { billingAccounts, billingIntervals, grants, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { ensureBillingAccount } from "./accounts";
import { StripeUnavailableError } from "./breaker";
import { MAX_EVENT_AGE_MS } from "./meter";
import { queueIntervals, queueLedgerRows, type UsageMessage } from "./queue";
import { isStripeUnavailable, stripeBreaker, stripeClient } from "./stripe";

/** Intervals and rows unsent this long after they were written are sent again. */
export const STUCK_AFTER_MS = 5 * 60_000;

/** What one reconciler run did. */
export interface ReconcileReport {
  requeued: number;
  expired: number;
  accountsCreated: number;
}

/**
 * The outbox sweep, run by cron: re-queues billing intervals and ledger rows still pending a few
 * minutes after they were written (a lost queue send, an outage longer than the queue's retries),
 * flags those that became too old for Stripe, and gives organizations with a grant but no billing
 * account one.
 */
export async function reconcileBilling(
  services: Services,
  queue: Queue<UsageMessage>,
  limit = 500,
): Promise<ReconcileReport> {
  const report: ReconcileReport = { requeued: 0, expired: 0, accountsCreated: 0 };
  const stripe = stripeClient(services.config.billing);
  if (!stripe) return report;
  const now = services.clock.now().getTime();

  const oldHour = new Date(now - MAX_EVENT_AGE_MS).toISOString().slice(0, 13);
  const expiredIntervals = await services.db
    .update(billingIntervals)
    .set({ state: "expired", error: "older than Stripe accepts (35 days)" })
    .where(and(eq(billingIntervals.state, "pending"), lt(billingIntervals.hour, oldHour)))
    .returning({ id: billingIntervals.id });
  const stuckIntervals = await services.db
    .select({ id: billingIntervals.id })
    .from(billingIntervals)
    .where(
      and(
        eq(billingIntervals.state, "pending"),
        lt(billingIntervals.createdAt, new Date(now - STUCK_AFTER_MS).toISOString()),
      ),
    )
    .orderBy(asc(billingIntervals.createdAt))
    .limit(limit);
  await queueIntervals(
    queue,
    stuckIntervals.map((i) => i.id),
  );

  const expired = await services.db
    .update(usageLedger)
    .set({ billingState: "expired", billingError: "older than Stripe accepts (35 days)" })
    .where(
      and(
        eq(usageLedger.billingState, "pending"),
        lt(usageLedger.startedAt, new Date(now - MAX_EVENT_AGE_MS).toISOString()),
      ),
    )
    .returning({ id: usageLedger.id });
  report.expired = expired.length + expiredIntervals.length;
  if (report.expired > 0)
    services.log.error("usage too old to bill", { rows: expired.length, intervals: expiredIntervals.length });

  const stuck = await services.db
    .select({ id: usageLedger.id })
    .from(usageLedger)
    .where(
      and(
        eq(usageLedger.billingState, "pending"),
        lt(usageLedger.createdAt, new Date(now - STUCK_AFTER_MS).toISOString()),
      ),
    )
    .orderBy(asc(usageLedger.createdAt))
    .limit(limit);
  await queueLedgerRows(
    queue,
    stuck.map((row) => row.id),
  );
  report.requeued = stuck.length + stuckIntervals.length;

  const unprovisioned = await services.db
    .selectDistinct({ organizationId: grants.organizationId })
    .from(grants)
    .leftJoin(billingAccounts, eq(billingAccounts.organizationId, grants.organizationId))
    .where(and(eq(grants.status, "active"), isNull(billingAccounts.organizationId)))
    .limit(20);
  const breaker = stripeBreaker(services.config.billing);
  const clock = () => services.clock.now().getTime();
  for (const { organizationId } of unprovisioned) {
    try {
      const opened = await ensureBillingAccount(services, stripe, organizationId, (call) =>
        breaker.call(clock, call, isStripeUnavailable),
      );
      if (opened) report.accountsCreated++;
    } catch (error) {
      // Stripe is failing: the rest wait for the next run rather than each wait out a timeout.
      if (error instanceof StripeUnavailableError) break;
      services.log.warn("billing account not created", { organizationId, error: String(error) });
    }
  }
  return report;
}
