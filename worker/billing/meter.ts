import { and, eq, inArray, sql } from "drizzle-orm";
import type Stripe from "stripe";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { ensureBillingAccount } from "./accounts";
import { type CircuitBreaker, StripeUnavailableError } from "./breaker";
import { isAlreadyRecorded, isStripeUnavailable, isTooOld, stripeBreaker } from "./stripe";

/** Stripe refuses meter events older than 35 days; rows this close to it are flagged, not sent. */
export const MAX_EVENT_AGE_MS = 35 * 86_400_000 - 3_600_000;

/** What became of one ledger row in a billing attempt. */
export type BillingOutcome = "sent" | "skipped" | "expired" | "retry" | "not_pending";

/** A ledger row's meter events: one per meter, each with an identifier derived from the row id. */
export function meterEventsOf(
  row: Pick<UsageRow, "id" | "promptTokens" | "completionTokens">,
  meters: { prompt: string; completion: string },
) {
  return [
    { eventName: meters.prompt, identifier: `${row.id}.prompt`, value: row.promptTokens },
    { eventName: meters.completion, identifier: `${row.id}.completion`, value: row.completionTokens },
  ].filter((e) => e.value > 0);
}

/** Stripe calls one batch keeps in flight: a batch of 50 rows takes a few round trips, not 100. */
export const METER_CONCURRENCY = 8;

/**
 * Sends ledger rows to Stripe as Billing Meter events, `METER_CONCURRENCY` calls at a time, each
 * through the isolate's circuit breaker (`breaker.ts`): once Stripe fails a run of calls the rest
 * of the batch is not sent but left pending (`retry`), so a hanging Stripe costs a batch one short
 * timeout rather than one per row. Each event's `identifier` and idempotency key derive from the
 * row id, so a row sent twice (a duplicate queue delivery, a retry after a timeout whose request
 * did land) is billed once; a row is marked sent only after Stripe accepted all its events. Rows
 * Stripe would refuse as too old are flagged `expired`, never dropped.
 */
export async function billLedgerRows(
  services: Pick<Services, "db" | "clock" | "ids" | "config" | "log"> & Partial<Pick<Services, "auditAnchor">>,
  stripe: Stripe,
  rowIds: readonly string[],
  breaker: CircuitBreaker = stripeBreaker(services.config.billing),
): Promise<Map<string, BillingOutcome>> {
  const outcomes = new Map<string, BillingOutcome>();
  const rows: UsageRow[] = [];
  for (const ids of chunked(rowIds, D1_IDS_PER_STATEMENT)) {
    rows.push(...(await services.db.select().from(usageLedger).where(inArray(usageLedger.id, ids))));
  }
  for (const id of rowIds) outcomes.set(id, "not_pending");
  const now = () => services.clock.now().getTime();
  const guarded = <T>(call: () => Promise<T>) => breaker.call(now, call, isStripeUnavailable);
  // One lookup (and, the first time, one account opening) per organization, shared by its rows.
  const customers = new Map<string, Promise<string | undefined>>();
  const customerOf = (organizationId: string) => {
    let customer = customers.get(organizationId);
    if (!customer) {
      customer = ensureBillingAccount(services, stripe, organizationId, guarded).then(
        (account) => account?.stripeCustomerId,
      );
      customers.set(organizationId, customer);
    }
    return customer;
  };
  const pending = rows.filter((row) => row.billingState === "pending");
  await inParallel(pending, METER_CONCURRENCY, async (row) => {
    outcomes.set(row.id, await billRow(services, stripe, row, customerOf, guarded));
  });
  return outcomes;
}

/** Bills one pending row: its events sent, it marked; or left pending for a retry, and why. */
async function billRow(
  services: Pick<Services, "db" | "clock" | "config" | "log">,
  stripe: Stripe,
  row: UsageRow,
  customerOf: (organizationId: string) => Promise<string | undefined>,
  guarded: <T>(call: () => Promise<T>) => Promise<T>,
): Promise<BillingOutcome> {
  const mark = async (state: "sent" | "skipped" | "expired", error: string | null = null) => {
    await services.db
      .update(usageLedger)
      .set({
        billingState: state,
        billedAt: state === "sent" ? services.clock.now().toISOString() : null,
        billingError: error,
      })
      .where(and(eq(usageLedger.id, row.id), eq(usageLedger.billingState, "pending")));
    return state;
  };
  const events = meterEventsOf(row, services.config.billing.meters);
  if (events.length === 0) return mark("skipped");
  const startedAt = Date.parse(row.startedAt);
  if (services.clock.now().getTime() - startedAt > MAX_EVENT_AGE_MS)
    return mark("expired", "older than Stripe accepts (35 days)");
  try {
    const customer = await customerOf(row.organizationId);
    if (!customer) return mark("skipped", "organization not found");
    let expired = false;
    for (const event of events) {
      try {
        await guarded(() =>
          stripe.billing.meterEvents.create(
            {
              event_name: event.eventName,
              identifier: event.identifier,
              timestamp: Math.floor(startedAt / 1000),
              payload: { stripe_customer_id: customer, value: String(event.value) },
            },
            { idempotencyKey: `modelgate-meter-${event.identifier}` },
          ),
        );
      } catch (error) {
        if (isAlreadyRecorded(error)) continue;
        if (isTooOld(error)) {
          expired = true;
          break;
        }
        throw error;
      }
    }
    return expired ? mark("expired", "Stripe refused the timestamp as too old") : mark("sent");
  } catch (error) {
    // Not attempted: the breaker held it back. The row stays pending, its attempts untouched.
    if (error instanceof StripeUnavailableError) return "retry";
    const message = String((error as Error)?.message ?? error).slice(0, 300);
    await services.db
      .update(usageLedger)
      .set({ billingAttempts: sql`${usageLedger.billingAttempts} + 1`, billingError: message })
      .where(eq(usageLedger.id, row.id));
    services.log.warn("meter event not accepted", { ledgerId: row.id, error: message });
    return "retry";
  }
}

/** Runs `work` over `items`, at most `limit` at a time. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
