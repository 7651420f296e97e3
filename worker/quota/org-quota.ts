import { DurableObject } from "cloudflare:workers";
import type { UsageRow } from "../db/schema";
import { writeUsageRows } from "../inference/ledger";
import { createServices } from "../services";

/** An organization's limits, passed with every reservation so that a plan change applies at once. */
export interface QuotaLimits {
  requestsPerMinute: number;
  tokensPerMinute: number;
  monthlyTokenBudget: number;
}

/** Where an organization stands, for the rate-limit headers. */
export interface QuotaSnapshot {
  limitRequests: number;
  remainingRequests: number;
  limitTokens: number;
  remainingTokens: number;
  /** Seconds until the minute window resets. */
  resetSeconds: number;
  monthlyBudget: number;
  monthlyRemaining: number;
}

export type QuotaRefusal = "requests_per_minute" | "tokens_per_minute" | "monthly_budget" | "request_too_large";

export type ReserveResult =
  | { ok: true; snapshot: QuotaSnapshot }
  | { ok: false; refusal: QuotaRefusal; retryAfterSeconds: number; snapshot: QuotaSnapshot };

interface Reservation {
  tokens: number;
  minute: number;
  month: string;
  at: number;
}

/** The counters, stored under one small key; reservations each have their own key. */
interface QuotaCounters {
  minute: number;
  minuteRequests: number;
  minuteTokens: number;
  month: string;
  monthTokens: number;
}

const COUNTERS_KEY = "state";
const RESERVATION_PREFIX = "r:";
/** Usage-ledger rows settled here and not yet written to D1. */
const USAGE_PREFIX = "u:";

/** How long settled usage rows gather before they go to D1 in one batch. */
export const LEDGER_FLUSH_MS = 250;
/** Rows per flush; more wait for the next one, which follows at once. */
const LEDGER_FLUSH_ROWS = 200;
/** When D1 refuses a flush, the rows stay here and the flush is tried again after this long. */
const LEDGER_RETRY_MS = 5_000;

/** A settled request's ledger row, as the proxy fills it in (billing fields take their defaults). */
export type SettledUsage = Omit<UsageRow, "billedAt" | "billingState" | "billingAttempts" | "billingError">;

/** How many settled ids the object remembers to recognise a repeated settlement. */
const SETTLED_REMEMBERED = 10_000;

/** A reservation nobody settled (the request's isolate died) is released after this long. */
const RESERVATION_TTL_MS = 15 * 60_000;

function monthOf(now: number): string {
  return new Date(now).toISOString().slice(0, 7);
}

function secondsToMonthEnd(now: number): number {
  const d = new Date(now);
  const next = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  return Math.ceil((next - now) / 1000);
}

/**
 * The exact counters of one organization: requests and tokens per minute, and tokens per calendar
 * month (UTC). A request reserves its worst case before it is sent and settles to its actual
 * usage afterwards. Each method runs to completion without awaiting I/O between its check and its
 * update, and a Durable Object runs one such method at a time, so concurrent requests can never
 * push usage past a limit. State is written through to storage (the output gate holds the reply
 * until it is durable), so it survives eviction.
 */
export class OrgQuota extends DurableObject<Env> {
  private state: QuotaCounters = { minute: 0, minuteRequests: 0, minuteTokens: 0, month: "", monthTokens: 0 };
  private reservations = new Map<string, Reservation>();
  /** When open reservations were last checked for expiry. */
  private sweptAt = 0;
  /** Whether an alarm is set to flush settled usage rows to D1. */
  private flushArmed = false;
  /** Ids settled lately, oldest first, so that a repeated settlement is not counted twice. */
  private settled = new Set<string>();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      const stored = await ctx.storage.get<QuotaCounters & { reservations?: Record<string, Reservation> }>(
        COUNTERS_KEY,
      );
      if (stored) {
        const { reservations, ...counters } = stored;
        this.state = counters;
        // Objects written before reservations had keys of their own kept them inside the counters.
        for (const [id, r] of Object.entries(reservations ?? {})) this.reservations.set(id, r);
      }
      const open = await ctx.storage.list<Reservation>({ prefix: RESERVATION_PREFIX });
      for (const [key, r] of open) this.reservations.set(key.slice(RESERVATION_PREFIX.length), r);
      // Usage rows left from before a restart go to D1 even if no request comes to flush them.
      const unwritten = await ctx.storage.list({ prefix: USAGE_PREFIX, limit: 1 });
      if (unwritten.size > 0 && (await ctx.storage.getAlarm()) === null) await ctx.storage.setAlarm(Date.now());
    });
  }

  private roll(now: number): void {
    const minute = Math.floor(now / 60_000);
    if (minute !== this.state.minute) {
      this.state.minute = minute;
      this.state.minuteRequests = 0;
      // Reservations still open keep their tokens in the window that admitted them; the new window
      // starts with nothing.
      this.state.minuteTokens = 0;
    }
    const month = monthOf(now);
    if (month !== this.state.month) {
      this.state.month = month;
      this.state.monthTokens = 0;
    }
    // Abandoned reservations are rare; looking for them once a minute is soon enough.
    if (now - this.sweptAt < 60_000) return;
    this.sweptAt = now;
    const expired: string[] = [];
    for (const [id, r] of this.reservations) {
      if (now - r.at > RESERVATION_TTL_MS) {
        this.release(r);
        this.reservations.delete(id);
        expired.push(RESERVATION_PREFIX + id);
      }
    }
    // Not awaited, as in `persist`: the output gate holds replies until the delete is durable.
    if (expired.length) void this.ctx.storage.delete(expired);
  }

  private release(r: Reservation): void {
    if (r.minute === this.state.minute) this.state.minuteTokens = Math.max(0, this.state.minuteTokens - r.tokens);
    if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens - r.tokens);
  }

  private snapshot(limits: QuotaLimits, now: number): QuotaSnapshot {
    return {
      limitRequests: limits.requestsPerMinute,
      remainingRequests: Math.max(0, limits.requestsPerMinute - this.state.minuteRequests),
      limitTokens: limits.tokensPerMinute,
      remainingTokens: Math.max(0, limits.tokensPerMinute - this.state.minuteTokens),
      resetSeconds: Math.max(1, Math.ceil(((this.state.minute + 1) * 60_000 - now) / 1000)),
      monthlyBudget: limits.monthlyTokenBudget,
      monthlyRemaining: Math.max(0, limits.monthlyTokenBudget - this.state.monthTokens),
    };
  }

  /**
   * Writes the counters, the reservation that changed and a settled usage row through to
   * storage, in one write. Not awaited on purpose: the output gate delays the reply until the
   * write is durable, and awaiting would let another request interleave between check and update.
   */
  private persist(reservation?: { id: string; opened?: Reservation }, usage?: SettledUsage): void {
    const entries: Record<string, unknown> = { [COUNTERS_KEY]: this.state };
    if (reservation?.opened) entries[RESERVATION_PREFIX + reservation.id] = reservation.opened;
    if (usage) entries[USAGE_PREFIX + usage.id] = usage;
    void this.ctx.storage.put(entries);
    if (reservation && !reservation.opened) void this.ctx.storage.delete(RESERVATION_PREFIX + reservation.id);
  }

  /** Admits a request of at most `tokens` tokens, or says which limit refuses it and for how long. */
  async reserve(id: string, tokens: number, limits: QuotaLimits, now: number): Promise<ReserveResult> {
    this.roll(now);
    const refuse = (refusal: QuotaRefusal, retryAfterSeconds: number): ReserveResult => ({
      ok: false,
      refusal,
      retryAfterSeconds,
      snapshot: this.snapshot(limits, now),
    });
    const resetSeconds = this.snapshot(limits, now).resetSeconds;
    if (tokens > limits.tokensPerMinute || tokens > limits.monthlyTokenBudget) {
      return refuse("request_too_large", resetSeconds);
    }
    if (this.state.monthTokens + tokens > limits.monthlyTokenBudget) {
      return refuse("monthly_budget", secondsToMonthEnd(now));
    }
    if (this.state.minuteRequests + 1 > limits.requestsPerMinute) return refuse("requests_per_minute", resetSeconds);
    if (this.state.minuteTokens + tokens > limits.tokensPerMinute) return refuse("tokens_per_minute", resetSeconds);
    this.state.minuteRequests += 1;
    this.state.minuteTokens += tokens;
    this.state.monthTokens += tokens;
    const opened = { tokens, minute: this.state.minute, month: this.state.month, at: now };
    this.reservations.set(id, opened);
    this.persist({ id, opened });
    return { ok: true, snapshot: this.snapshot(limits, now) };
  }

  /**
   * Replaces a reservation with the tokens actually used. A request that used more than it
   * reserved (a backend that ignored `max_tokens`) is charged in full: usage is never forgotten.
   * The request's ledger row, when given, is stored in the same write as the new counters and
   * goes to D1 with the others settled in the next `LEDGER_FLUSH_MS`: one D1 batch instead of a
   * write per request, and a row that cannot get lost between settlement and the ledger.
   */
  async settle(
    id: string,
    actualTokens: number,
    limits: QuotaLimits,
    now: number,
    usage?: SettledUsage,
  ): Promise<QuotaSnapshot> {
    this.roll(now);
    // A settlement delivered twice (a retried call) changes nothing the second time.
    if (this.settled.has(id)) return this.snapshot(limits, now);
    this.settled.add(id);
    if (this.settled.size > SETTLED_REMEMBERED) this.settled.delete(this.settled.values().next().value as string);
    const r = this.reservations.get(id);
    if (r) {
      this.reservations.delete(id);
      const delta = actualTokens - r.tokens;
      if (r.minute === this.state.minute) this.state.minuteTokens = Math.max(0, this.state.minuteTokens + delta);
      if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens + delta);
    } else {
      // Settled after the reservation expired: the usage still happened now.
      this.state.minuteTokens += actualTokens;
      this.state.monthTokens += actualTokens;
    }
    this.persist(r ? { id } : undefined, usage);
    if (usage) this.armFlush(LEDGER_FLUSH_MS);
    return this.snapshot(limits, now);
  }

  private armFlush(delayMs: number): void {
    if (this.flushArmed) return;
    this.flushArmed = true;
    void this.ctx.storage.setAlarm(Date.now() + delayMs);
  }

  /**
   * Writes settled usage rows to the D1 ledger in one batch (a row already there is kept as it
   * is) and, when billing is on, queues them for Stripe. Rows leave this object's storage only
   * after D1 took them; if D1 fails they stay and the flush is tried again.
   */
  override async alarm(): Promise<void> {
    this.flushArmed = false;
    const pending = await this.ctx.storage.list<SettledUsage>({ prefix: USAGE_PREFIX, limit: LEDGER_FLUSH_ROWS });
    if (pending.size === 0) return;
    const services = createServices(this.env, {}, { quota: this.ctx.id.toString() });
    const rows = [...pending.values()];
    try {
      await writeUsageRows(services, rows, services.config.billing.secretKey ? this.env.USAGE_QUEUE : undefined);
    } catch (error) {
      services.log.warn("usage rows not written to D1; kept and retried", { rows: rows.length, error: String(error) });
      this.armFlush(LEDGER_RETRY_MS);
      return;
    }
    await this.ctx.storage.delete([...pending.keys()]);
    if (pending.size === LEDGER_FLUSH_ROWS) this.armFlush(0);
  }

  /** Current standing without changing anything. */
  async peek(limits: QuotaLimits, now: number): Promise<QuotaSnapshot & { month: string; monthTokens: number }> {
    this.roll(now);
    return { ...this.snapshot(limits, now), month: this.state.month, monthTokens: this.state.monthTokens };
  }
}
