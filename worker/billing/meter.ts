import { and, eq, inArray, sql } from "drizzle-orm";
import type { SQLiteColumn } from "drizzle-orm/sqlite-core";
import type Stripe from "stripe";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { type BillingInterval, billingIntervals, type MeterPart, type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { hourStart } from "../usage/hours";
import { ensureBillingAccount } from "./accounts";
import { type CircuitBreaker, StripeUnavailableError } from "./breaker";
import { isAlreadyRecorded, isStripeUnavailable, isTooOld, stripeBreaker } from "./stripe";

/** Stripe refuses meter events older than 35 days; rows this close to it are flagged, not sent. */
export const MAX_EVENT_AGE_MS = 35 * 86_400_000 - 3_600_000;

/** What became of one ledger row or billing interval in a billing attempt. */
export type BillingOutcome = "sent" | "skipped" | "expired" | "retry" | "not_pending";

/** One meter event of a billable: its part (the kind of token it counts), meter, identifier and count. */
export interface MeterEvent {
  part: MeterPart;
  eventName: string;
  identifier: string;
  value: number;
}

/** A ledger row's meter events: one per meter, each with an identifier derived from the row id. */
export function meterEventsOf(
  row: Pick<UsageRow, "id" | "promptTokens" | "completionTokens">,
  meters: { prompt: string; completion: string },
): MeterEvent[] {
  return [
    { part: "prompt" as const, eventName: meters.prompt, identifier: `${row.id}.prompt`, value: row.promptTokens },
    {
      part: "completion" as const,
      eventName: meters.completion,
      identifier: `${row.id}.completion`,
      value: row.completionTokens,
    },
  ].filter((e) => e.value > 0);
}

/** Stripe calls one batch keeps in flight: a batch of 50 rows takes a few round trips, not 100. */
export const METER_CONCURRENCY = 8;

/** Something to bill: a ledger row or a billing interval, as meter events of one organization. */
interface Billable {
  id: string;
  organizationId: string;
  /** The events' timestamp (epoch ms): the request's start, or the interval's hour. */
  at: number;
  events: MeterEvent[];
  /** The parts Stripe accepted already, in an earlier attempt: never sent again. */
  accepted: readonly MeterPart[];
}

/** How a kind of billable records what became of it: only a pending one changes state. */
interface BillableStore {
  mark(id: string, state: "sent" | "skipped" | "expired", error: string | null): Promise<unknown>;
  failed(id: string, message: string): Promise<unknown>;
  /** Records that Stripe accepted one part's event (once, however often it is recorded). */
  accepted(id: string, part: MeterPart): Promise<unknown>;
}

type MeterServices = Pick<Services, "db" | "clock" | "ids" | "config" | "log"> & Partial<Pick<Services, "auditAnchor">>;

/**
 * Sends billables to Stripe as Billing Meter events, `METER_CONCURRENCY` calls at a time, each
 * through the isolate's circuit breaker (`breaker.ts`): once Stripe fails a run of calls the rest
 * of the batch is not sent but left pending (`retry`), so a hanging Stripe costs a batch one short
 * timeout rather than one per item. Each event's `identifier` and idempotency key derive from the
 * item's id, so an item sent twice (a duplicate queue delivery, a retry after a timeout whose
 * request did land) is billed once; an item is marked sent only after Stripe accepted all its
 * events. Stripe keeps identifiers for about 24 hours only, so each event's acceptance is also
 * recorded on the item as it comes, and a part recorded is never sent again: a retry, or a resend
 * of a dead letter days later, sends only what Stripe has not accepted. Items Stripe would refuse
 * as too old are flagged `expired`, never dropped.
 */
async function billAll(
  services: MeterServices,
  stripe: Stripe,
  items: readonly Billable[],
  store: BillableStore,
  breaker: CircuitBreaker,
  outcomes: Map<string, BillingOutcome>,
): Promise<void> {
  const now = () => services.clock.now().getTime();
  const guarded = <T>(call: () => Promise<T>) => breaker.call(now, call, isStripeUnavailable);
  // One lookup (and, the first time, one account opening) per organization, shared by its items.
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
  await inParallel(items, METER_CONCURRENCY, async (item) => {
    outcomes.set(item.id, await billOne(services, stripe, item, store, customerOf, guarded));
  });
}

/** Bills one pending item: its events sent, it marked; or left pending for a retry, and why. */
async function billOne(
  services: MeterServices,
  stripe: Stripe,
  item: Billable,
  store: BillableStore,
  customerOf: (organizationId: string) => Promise<string | undefined>,
  guarded: <T>(call: () => Promise<T>) => Promise<T>,
): Promise<BillingOutcome> {
  const mark = async (state: "sent" | "skipped" | "expired", error: string | null = null) => {
    await store.mark(item.id, state, error);
    return state;
  };
  const events = item.events.filter((e) => e.value > 0);
  if (events.length === 0) return mark("skipped");
  const unsent = events.filter((e) => !item.accepted.includes(e.part));
  // Stripe accepted every part in an earlier attempt, which ended before it marked the item.
  if (unsent.length === 0) return mark("sent");
  if (services.clock.now().getTime() - item.at > MAX_EVENT_AGE_MS)
    return mark("expired", "older than Stripe accepts (35 days)");
  try {
    const customer = await customerOf(item.organizationId);
    if (!customer) return mark("skipped", "organization not found");
    let expired = false;
    for (const event of unsent) {
      try {
        await guarded(() =>
          stripe.billing.meterEvents.create(
            {
              event_name: event.eventName,
              identifier: event.identifier,
              timestamp: Math.floor(item.at / 1000),
              payload: { stripe_customer_id: customer, value: String(event.value) },
            },
            { idempotencyKey: `modelgate-meter-${event.identifier}` },
          ),
        );
      } catch (error) {
        if (isTooOld(error)) {
          expired = true;
          break;
        }
        // Already recorded: accepted by an earlier attempt whose answer was lost.
        if (!isAlreadyRecorded(error)) throw error;
      }
      await store.accepted(item.id, event.part);
    }
    return expired ? mark("expired", "Stripe refused the timestamp as too old") : mark("sent");
  } catch (error) {
    // Not attempted: the breaker held it back. The item stays pending, its attempts untouched.
    if (error instanceof StripeUnavailableError) return "retry";
    const message = String((error as Error)?.message ?? error).slice(0, 300);
    await store.failed(item.id, message);
    services.log.warn("meter event not accepted", { id: item.id, error: message });
    return "retry";
  }
}

/**
 * Sends ledger rows (requests recorded one row each: by gateways from before the hourly
 * aggregates, or when a quota object could not take them) to Stripe, two events per row.
 */
export async function billLedgerRows(
  services: MeterServices,
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
  const meters = services.config.billing.meters;
  const items = rows
    .filter((row) => row.billingState === "pending")
    .map((row) => ({
      id: row.id,
      organizationId: row.organizationId,
      at: Date.parse(row.startedAt),
      events: meterEventsOf(row, meters),
      accepted: row.billingAcceptedParts,
    }));
  const store: BillableStore = {
    mark: (id, state, error) =>
      services.db
        .update(usageLedger)
        .set({
          billingState: state,
          billedAt: state === "sent" ? services.clock.now().toISOString() : null,
          billingError: error,
        })
        .where(and(eq(usageLedger.id, id), eq(usageLedger.billingState, "pending"))),
    failed: (id, message) =>
      services.db
        .update(usageLedger)
        .set({ billingAttempts: sql`${usageLedger.billingAttempts} + 1`, billingError: message })
        .where(eq(usageLedger.id, id)),
    accepted: (id, part) =>
      services.db
        .update(usageLedger)
        .set({ billingAcceptedParts: withPart(usageLedger.billingAcceptedParts, part) })
        .where(and(eq(usageLedger.id, id), lacksPart(usageLedger.billingAcceptedParts, part))),
  };
  await billAll(services, stripe, items, store, breaker, outcomes);
  return outcomes;
}

/** A billing interval's meter events: one per dimension, identified `<interval id>:<dimension>`. */
export function intervalEventsOf(
  interval: Pick<BillingInterval, "id" | "promptTokens" | "completionTokens">,
  meters: { prompt: string; completion: string },
): MeterEvent[] {
  return [
    {
      part: "prompt" as const,
      eventName: meters.prompt,
      identifier: `${interval.id}:prompt`,
      value: interval.promptTokens,
    },
    {
      part: "completion" as const,
      eventName: meters.completion,
      identifier: `${interval.id}:completion`,
      value: interval.completionTokens,
    },
  ].filter((e) => e.value > 0);
}

/**
 * Sends billing intervals (one organization's tokens of one closed part of an hour) to Stripe:
 * two events per interval, stamped with the start of its hour, however many requests it sums.
 */
export async function billIntervals(
  services: MeterServices,
  stripe: Stripe,
  intervalIds: readonly string[],
  breaker: CircuitBreaker = stripeBreaker(services.config.billing),
): Promise<Map<string, BillingOutcome>> {
  const outcomes = new Map<string, BillingOutcome>();
  const intervals: BillingInterval[] = [];
  for (const ids of chunked(intervalIds, D1_IDS_PER_STATEMENT)) {
    intervals.push(...(await services.db.select().from(billingIntervals).where(inArray(billingIntervals.id, ids))));
  }
  for (const id of intervalIds) outcomes.set(id, "not_pending");
  const meters = services.config.billing.meters;
  const items = intervals
    .filter((i) => i.state === "pending")
    .map((i) => ({
      id: i.id,
      organizationId: i.organizationId,
      at: hourStart(i.hour),
      events: intervalEventsOf(i, meters),
      accepted: i.acceptedParts,
    }));
  const store: BillableStore = {
    mark: (id, state, error) =>
      services.db
        .update(billingIntervals)
        .set({ state, billedAt: state === "sent" ? services.clock.now().toISOString() : null, error })
        .where(and(eq(billingIntervals.id, id), eq(billingIntervals.state, "pending"))),
    failed: (id, message) =>
      services.db
        .update(billingIntervals)
        .set({ attempts: sql`${billingIntervals.attempts} + 1`, error: message })
        .where(eq(billingIntervals.id, id)),
    accepted: (id, part) =>
      services.db
        .update(billingIntervals)
        .set({ acceptedParts: withPart(billingIntervals.acceptedParts, part) })
        .where(and(eq(billingIntervals.id, id), lacksPart(billingIntervals.acceptedParts, part))),
  };
  await billAll(services, stripe, items, store, breaker, outcomes);
  return outcomes;
}

/**
 * A JSON list of parts with `part` appended, in SQL: written as one statement, so two consumers
 * recording parts of one item at the same moment each add theirs rather than overwrite the list.
 */
const withPart = (column: SQLiteColumn, part: MeterPart) => sql`json_insert(${column}, '$[#]', ${part})`;

/** Whether a JSON list of parts lacks `part`: an acceptance is recorded once. */
const lacksPart = (column: SQLiteColumn, part: MeterPart) =>
  sql`not exists (select 1 from json_each(${column}) where value = ${part})`;

/** Runs `work` over `items`, at most `limit` at a time. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}
