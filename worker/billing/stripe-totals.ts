/**
 * Reconciliation with Stripe: an organization's metered tokens per hour, side by side with what
 * the gateway sent Stripe (billing intervals and ledger rows marked sent) and what Stripe itself
 * totals for the customer (Billing Meter event summaries, per hour). The three agree to the token
 * when nothing is lost or doubled; an hour still open or unsent shows as such, not as a
 * difference.
 */
import { z } from "@hono/zod-openapi";
import { and, eq, gte, lt, sql } from "drizzle-orm";
import type Stripe from "stripe";
import { billingAccounts, billingIntervals, usageHours, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { closesAt, hourStart } from "../usage/hours";
import type { CircuitBreaker } from "./breaker";
import { isStripeUnavailable, stripeBreaker } from "./stripe";

/** Days one reconciliation may span. */
export const MAX_RECONCILE_DAYS = 31;

interface Tokens {
  prompt: number;
  completion: number;
}

/** One hour of one organization, in the three ledgers. */
export interface ReconciledHour {
  hour: string;
  /** Tokens metered (`usage_hours`, every part). */
  metered: Tokens;
  /** Tokens sent and accepted (intervals and ledger rows marked `sent`). */
  sent: Tokens;
  /** Tokens metered and not sent: intervals and ledger rows pending, dead or expired, and parts still open. */
  unsent: Tokens;
  /** Stripe's own totals for the customer; null when the organization has no Stripe customer. */
  stripe: Tokens | null;
  /**
   * `agrees`: Stripe holds what was sent, and billing was handed no more than was metered (all of
   * it, once the hour is closed). `metered_differs` means lost or doubled usage between the
   * aggregates and the intervals; `stripe_differs`, between what was sent and Stripe.
   */
  status: "agrees" | "stripe_differs" | "metered_differs";
}

const zero = (): Tokens => ({ prompt: 0, completion: 0 });

/** How long the Stripe side of one organization's reconciliation for one period is answered again from memory. */
export const STRIPE_TOTALS_TTL_MS = 60_000;

/** Periods whose Stripe totals one isolate keeps at most; the oldest goes first. */
const STRIPE_TOTALS_KEPT = 100;

/** Stripe's totals per hour (`YYYY-MM-DDTHH`), fetched at `at` (clock time, ms). */
interface HeldTotals {
  at: number;
  totals: Promise<Map<string, Tokens>>;
}

const heldTotals = new WeakMap<Stripe, Map<string, HeldTotals>>();
const meterIds = new WeakMap<Stripe, Promise<Map<string, string>>>();

/**
 * The account's Billing Meters, event name → meter id, looked up once per isolate: meters are made
 * once when billing is set up. A lookup that fails, or misses one of the deployment's meters, is
 * not kept, so a meter made afterwards is found by the next reconciliation.
 */
function metersByEventName(
  stripe: Stripe,
  guarded: <T>(call: () => Promise<T>) => Promise<T>,
  wanted: readonly string[],
): Promise<Map<string, string>> {
  let meters = meterIds.get(stripe);
  if (!meters) {
    const lookup = guarded(() => stripe.billing.meters.list({ limit: 100 })).then(
      (list) => new Map(list.data.map((m) => [m.event_name, m.id])),
    );
    meters = lookup;
    meterIds.set(stripe, lookup);
    lookup.then(
      (found) => {
        if (!wanted.every((name) => found.has(name)) && meterIds.get(stripe) === lookup) meterIds.delete(stripe);
      },
      () => {
        if (meterIds.get(stripe) === lookup) meterIds.delete(stripe);
      },
    );
  }
  return meters;
}

/**
 * Stripe's own totals for a customer per hour (Billing Meter event summaries, prompt and
 * completion), through the isolate's circuit breaker in front of Stripe: an open breaker throws
 * `StripeUnavailableError` without calling Stripe. The answer for one organization and period is
 * kept for `STRIPE_TOTALS_TTL_MS` and shared by requests that ask meanwhile, so that refreshing a
 * reconciliation (one meter lookup and a page of summaries per meter and 100 hours) cannot spend
 * the Stripe rate limit that billing's meter events need.
 */
function stripeTotals(
  services: Pick<Services, "config" | "clock">,
  stripe: Stripe,
  breaker: CircuitBreaker,
  query: { organizationId: string; customer: string; from: number; to: number },
): Promise<Map<string, Tokens>> {
  const now = services.clock.now().getTime();
  let kept = heldTotals.get(stripe);
  if (!kept) {
    kept = new Map();
    heldTotals.set(stripe, kept);
  }
  const key = JSON.stringify([query.organizationId, query.customer, query.from, query.to]);
  const held = kept.get(key);
  if (held && now - held.at < STRIPE_TOTALS_TTL_MS) return held.totals;
  for (const [k, entry] of kept) if (now - entry.at >= STRIPE_TOTALS_TTL_MS) kept.delete(k);
  while (kept.size >= STRIPE_TOTALS_KEPT) {
    const oldest = kept.keys().next().value;
    if (oldest === undefined) break;
    kept.delete(oldest);
  }
  const clock = () => services.clock.now().getTime();
  const guarded = <T>(call: () => Promise<T>) => breaker.call(clock, call, isStripeUnavailable);
  const totals = fetchStripeTotals(stripe, guarded, services.config.billing.meters, query);
  const entry: HeldTotals = { at: now, totals };
  kept.set(key, entry);
  const cache = kept;
  // A failed fetch is not an answer to keep: the next request asks again (if the breaker lets it).
  totals.catch(() => {
    if (cache.get(key) === entry) cache.delete(key);
  });
  return totals;
}

async function fetchStripeTotals(
  stripe: Stripe,
  guarded: <T>(call: () => Promise<T>) => Promise<T>,
  meters: { prompt: string; completion: string },
  query: { customer: string; from: number; to: number },
): Promise<Map<string, Tokens>> {
  const ids = await metersByEventName(stripe, guarded, [meters.prompt, meters.completion]);
  const perHour = new Map<string, Tokens>();
  for (const [dimension, eventName] of [
    ["prompt", meters.prompt],
    ["completion", meters.completion],
  ] as const) {
    const meterId = ids.get(eventName);
    if (!meterId) continue;
    const summaries = await guarded(() =>
      stripe.billing.meters
        .listEventSummaries(meterId, {
          customer: query.customer,
          start_time: Math.floor(query.from / 1000),
          end_time: Math.floor(query.to / 1000),
          value_grouping_window: "hour",
          limit: 100,
        })
        .autoPagingToArray({ limit: MAX_RECONCILE_DAYS * 24 + 1 }),
    );
    for (const s of summaries) {
      const hour = new Date(s.start_time * 1000).toISOString().slice(0, 13);
      const t = perHour.get(hour) ?? zero();
      t[dimension] += s.aggregated_value;
      perHour.set(hour, t);
    }
  }
  return perHour;
}

/** The hours of a period of UTC days (`YYYY-MM-DD`, both included) with what each ledger holds. */
export async function reconcileWithStripe(
  services: Pick<Services, "db" | "config" | "clock">,
  stripe: Stripe,
  organizationId: string,
  period: { from: string; to: string },
  breaker: CircuitBreaker = stripeBreaker(services.config.billing),
): Promise<{ customer: string | null; hours: ReconciledHour[]; totals: Omit<ReconciledHour, "hour" | "status"> }> {
  const now = services.clock.now().getTime();
  const fromHour = `${period.from}T00`;
  const end = Date.parse(`${period.to}T00:00:00.000Z`) + 86_400_000;
  const toHour = new Date(end).toISOString().slice(0, 13);
  const hours = new Map<string, Omit<ReconciledHour, "status">>();
  const at = (hour: string) => {
    let h = hours.get(hour);
    if (!h) {
      h = { hour, metered: zero(), sent: zero(), unsent: zero(), stripe: null };
      hours.set(hour, h);
    }
    return h;
  };

  const metered = await services.db
    .select({
      hour: usageHours.hour,
      prompt: sql<number>`sum(${usageHours.promptTokens})`,
      completion: sql<number>`sum(${usageHours.completionTokens})`,
    })
    .from(usageHours)
    .where(
      and(eq(usageHours.organizationId, organizationId), gte(usageHours.hour, fromHour), lt(usageHours.hour, toHour)),
    )
    .groupBy(usageHours.hour);
  for (const m of metered) {
    const h = at(m.hour);
    h.metered.prompt += Number(m.prompt);
    h.metered.completion += Number(m.completion);
  }

  const intervals = await services.db
    .select({
      hour: billingIntervals.hour,
      state: billingIntervals.state,
      prompt: sql<number>`sum(${billingIntervals.promptTokens})`,
      completion: sql<number>`sum(${billingIntervals.completionTokens})`,
    })
    .from(billingIntervals)
    .where(
      and(
        eq(billingIntervals.organizationId, organizationId),
        gte(billingIntervals.hour, fromHour),
        lt(billingIntervals.hour, toHour),
      ),
    )
    .groupBy(billingIntervals.hour, billingIntervals.state);
  // Ledger rows are stamped with their start at Stripe and counted in the hour they were recorded;
  // both hours are read so that each side is compared with what it holds.
  const rows = await services.db
    .select({
      recorded: sql<string>`substr(${usageLedger.createdAt}, 1, 13)`,
      started: sql<string>`substr(${usageLedger.startedAt}, 1, 13)`,
      state: usageLedger.billingState,
      prompt: sql<number>`sum(${usageLedger.promptTokens})`,
      completion: sql<number>`sum(${usageLedger.completionTokens})`,
    })
    .from(usageLedger)
    .where(
      and(
        eq(usageLedger.organizationId, organizationId),
        gte(usageLedger.createdAt, `${fromHour}:00:00.000Z`),
        lt(usageLedger.createdAt, `${toHour}:00:00.000Z`),
      ),
    )
    .groupBy(sql`1`, sql`2`, usageLedger.billingState);
  /** Sent, by the hour Stripe counts it in (the events' timestamp). */
  const sentPerHour = new Map<string, Tokens>();
  /** Handed to billing in any state, and sent, by the hour it was metered in. */
  const handed = new Map<string, Tokens>();
  const sentMetered = new Map<string, Tokens>();
  const add = (map: Map<string, Tokens>, hour: string, prompt: number, completion: number) => {
    const t = map.get(hour) ?? zero();
    t.prompt += prompt;
    t.completion += completion;
    map.set(hour, t);
  };
  for (const i of intervals) {
    const prompt = Number(i.prompt);
    const completion = Number(i.completion);
    add(handed, i.hour, prompt, completion);
    if (i.state === "sent") {
      add(sentMetered, i.hour, prompt, completion);
      add(sentPerHour, i.hour, prompt, completion);
    }
  }
  for (const r of rows) {
    const prompt = Number(r.prompt);
    const completion = Number(r.completion);
    add(handed, r.recorded, prompt, completion);
    if (r.state === "sent") {
      add(sentMetered, r.recorded, prompt, completion);
      add(sentPerHour, r.started, prompt, completion);
    }
  }
  for (const [hour, t] of sentPerHour) {
    const h = at(hour);
    h.sent.prompt += t.prompt;
    h.sent.completion += t.completion;
  }
  for (const hour of handed.keys()) at(hour);
  // Not sent yet: intervals and rows pending, dead or expired, and what open parts hold.
  for (const h of hours.values()) {
    const sent = sentMetered.get(h.hour) ?? zero();
    h.unsent.prompt = h.metered.prompt - sent.prompt;
    h.unsent.completion = h.metered.completion - sent.completion;
  }

  const [account] = await services.db
    .select({ customer: billingAccounts.stripeCustomerId })
    .from(billingAccounts)
    .where(eq(billingAccounts.organizationId, organizationId));
  const customer = account?.customer ?? null;
  if (customer) {
    for (const h of hours.values()) h.stripe = zero();
    const held = await stripeTotals(services, stripe, breaker, {
      organizationId,
      customer,
      from: hourStart(fromHour),
      to: end,
    });
    for (const [hour, t] of held) {
      const h = at(hour);
      h.stripe ??= zero();
      h.stripe.prompt += t.prompt;
      h.stripe.completion += t.completion;
    }
  }

  const sorted = [...hours.values()].sort((a, b) => a.hour.localeCompare(b.hour));
  const totals = { metered: zero(), sent: zero(), unsent: zero(), stripe: customer ? zero() : null };
  const result: ReconciledHour[] = sorted.map((h) => {
    for (const key of ["metered", "sent", "unsent"] as const) {
      totals[key].prompt += h[key].prompt;
      totals[key].completion += h[key].completion;
    }
    if (totals.stripe && h.stripe) {
      totals.stripe.prompt += h.stripe.prompt;
      totals.stripe.completion += h.stripe.completion;
    }
    const same = (a: Tokens, b: Tokens) => a.prompt === b.prompt && a.completion === b.completion;
    const given = handed.get(h.hour) ?? zero();
    // Handed over more than was metered is a double; less, once the hour is closed, a loss.
    const closed = now >= closesAt(h.hour);
    const status: ReconciledHour["status"] =
      h.stripe && !same(h.stripe, h.sent)
        ? "stripe_differs"
        : given.prompt > h.metered.prompt ||
            given.completion > h.metered.completion ||
            (closed && !same(given, h.metered))
          ? "metered_differs"
          : "agrees";
    return { ...h, status };
  });
  return { customer, hours: result, totals };
}

const TokensSchema = z.object({ prompt: z.number().int(), completion: z.number().int() });

export const ReconciliationSchema = z
  .object({
    organizationId: z.string(),
    from: z.string(),
    to: z.string(),
    customer: z.string().nullable(),
    agrees: z.boolean(),
    totals: z.object({
      metered: TokensSchema,
      sent: TokensSchema,
      unsent: TokensSchema,
      stripe: TokensSchema.nullable(),
    }),
    hours: z.array(
      z.object({
        hour: z.string(),
        metered: TokensSchema,
        sent: TokensSchema,
        unsent: TokensSchema,
        stripe: TokensSchema.nullable(),
        status: z.enum(["agrees", "stripe_differs", "metered_differs"]),
      }),
    ),
  })
  .openapi("BillingReconciliation");
