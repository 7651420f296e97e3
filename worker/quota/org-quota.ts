import { DurableObject } from "cloudflare:workers";

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

interface QuotaState {
  minute: number;
  minuteRequests: number;
  minuteTokens: number;
  month: string;
  monthTokens: number;
  reservations: Record<string, Reservation>;
}

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
  private state: QuotaState = {
    minute: 0,
    minuteRequests: 0,
    minuteTokens: 0,
    month: "",
    monthTokens: 0,
    reservations: {},
  };

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.blockConcurrencyWhile(async () => {
      const stored = await ctx.storage.get<QuotaState>("state");
      if (stored) this.state = stored;
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
    for (const [id, r] of Object.entries(this.state.reservations)) {
      if (now - r.at > RESERVATION_TTL_MS) {
        this.release(r);
        delete this.state.reservations[id];
      }
    }
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

  private persist(): void {
    // Not awaited on purpose: the output gate delays the reply until the write is durable, and
    // awaiting would let another request interleave between check and update.
    void this.ctx.storage.put("state", this.state);
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
    this.state.reservations[id] = { tokens, minute: this.state.minute, month: this.state.month, at: now };
    this.persist();
    return { ok: true, snapshot: this.snapshot(limits, now) };
  }

  /**
   * Replaces a reservation with the tokens actually used. A request that used more than it
   * reserved (a backend that ignored `max_tokens`) is charged in full: usage is never forgotten.
   */
  async settle(id: string, actualTokens: number, limits: QuotaLimits, now: number): Promise<QuotaSnapshot> {
    this.roll(now);
    const r = this.state.reservations[id];
    if (r) {
      delete this.state.reservations[id];
      const delta = actualTokens - r.tokens;
      if (r.minute === this.state.minute) this.state.minuteTokens = Math.max(0, this.state.minuteTokens + delta);
      if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens + delta);
    } else {
      // Settled after the reservation expired: the usage still happened now.
      this.state.minuteTokens += actualTokens;
      this.state.monthTokens += actualTokens;
    }
    this.persist();
    return this.snapshot(limits, now);
  }

  /** Current standing without changing anything. */
  async peek(limits: QuotaLimits, now: number): Promise<QuotaSnapshot & { month: string; monthTokens: number }> {
    this.roll(now);
    return { ...this.snapshot(limits, now), month: this.state.month, monthTokens: this.state.monthTokens };
  }
}
