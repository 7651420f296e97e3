import { and, eq, inArray, sql } from "drizzle-orm";
import type Stripe from "stripe";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { ensureBillingAccount } from "./accounts";
import { isAlreadyRecorded, isTooOld } from "./stripe";

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

/**
 * Sends ledger rows to Stripe as Billing Meter events. Each event's `identifier` and idempotency
 * key derive from the row id, so a row sent twice (a duplicate queue delivery, a retry after a
 * timeout whose request did land) is billed once; a row is marked sent only after Stripe accepted
 * all its events. Rows Stripe would refuse as too old are flagged `expired`, never dropped.
 */
export async function billLedgerRows(
  services: Pick<Services, "db" | "clock" | "ids" | "config" | "log"> & Partial<Pick<Services, "auditAnchor">>,
  stripe: Stripe,
  rowIds: readonly string[],
): Promise<Map<string, BillingOutcome>> {
  const outcomes = new Map<string, BillingOutcome>();
  const rows: UsageRow[] = [];
  for (const ids of chunked(rowIds, D1_IDS_PER_STATEMENT)) {
    rows.push(...(await services.db.select().from(usageLedger).where(inArray(usageLedger.id, ids))));
  }
  for (const id of rowIds) outcomes.set(id, "not_pending");
  const customers = new Map<string, string | undefined>();
  const now = services.clock.now();
  for (const row of rows) {
    if (row.billingState !== "pending") continue;
    const mark = async (state: "sent" | "skipped" | "expired", error: string | null = null) => {
      await services.db
        .update(usageLedger)
        .set({
          billingState: state,
          billedAt: state === "sent" ? services.clock.now().toISOString() : null,
          billingError: error,
        })
        .where(and(eq(usageLedger.id, row.id), eq(usageLedger.billingState, "pending")));
      outcomes.set(row.id, state);
    };
    const events = meterEventsOf(row, services.config.billing.meters);
    if (events.length === 0) {
      await mark("skipped");
      continue;
    }
    const startedAt = Date.parse(row.startedAt);
    if (now.getTime() - startedAt > MAX_EVENT_AGE_MS) {
      await mark("expired", "older than Stripe accepts (35 days)");
      continue;
    }
    try {
      if (!customers.has(row.organizationId)) {
        customers.set(
          row.organizationId,
          (await ensureBillingAccount(services, stripe, row.organizationId))?.stripeCustomerId,
        );
      }
      const customer = customers.get(row.organizationId);
      if (!customer) {
        await mark("skipped", "organization not found");
        continue;
      }
      let expired = false;
      for (const event of events) {
        try {
          await stripe.billing.meterEvents.create(
            {
              event_name: event.eventName,
              identifier: event.identifier,
              timestamp: Math.floor(startedAt / 1000),
              payload: { stripe_customer_id: customer, value: String(event.value) },
            },
            { idempotencyKey: `modelgate-meter-${event.identifier}` },
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
      if (expired) await mark("expired", "Stripe refused the timestamp as too old");
      else await mark("sent");
    } catch (error) {
      const message = String((error as Error)?.message ?? error).slice(0, 300);
      await services.db
        .update(usageLedger)
        .set({ billingAttempts: sql`${usageLedger.billingAttempts} + 1`, billingError: message })
        .where(eq(usageLedger.id, row.id));
      services.log.warn("meter event not accepted", { ledgerId: row.id, error: message });
      outcomes.set(row.id, "retry");
    }
  }
  return outcomes;
}
