import { DurableObject } from "cloudflare:workers";
import { billingEnabled } from "../config";
import {
  firstLedgerId,
  joinLedgerBatches,
  type LedgerRow,
  ledgerBatch,
  ledgerEntry,
  writeUsageRows,
} from "../inference/ledger";
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

/**
 * Capacity held out of the counters: one request's worst case, or a lease of several requests'
 * worth that an isolate admits from on its own. What is still held counts against the limits
 * until it is settled or returned.
 */
interface Reservation {
  tokens: number;
  /** Request slots still held (absent in objects written before leases: one). */
  requests?: number;
  minute: number;
  month: string;
  at: number;
}

/** What an isolate asks a lease for: up to `requests` requests and `tokens` tokens, at least `need` tokens. */
export interface LeaseAsk {
  requests: number;
  tokens: number;
  /** The first request's worst case: a lease smaller than this is refused. */
  need: number;
}

/** Limits an admin set, with when: they override limits an isolate read before then. */
export interface AnnouncedLimits {
  limits: QuotaLimits;
  /** When they were set (ms since the epoch). */
  at: number;
}

export type LeaseResult = (
  | { ok: true; requests: number; tokens: number; snapshot: QuotaSnapshot }
  | { ok: false; refusal: QuotaRefusal; retryAfterSeconds: number; snapshot: QuotaSnapshot }
) & {
  /** Present when the object judged by limits newer than the caller's: the caller should use them. */
  announced?: AnnouncedLimits;
};

/** What `commit` answers: the standing, and newer limits than the caller's if the object has them. */
export interface CommitResult {
  snapshot: QuotaSnapshot;
  announced?: AnnouncedLimits;
}

/** One finished request: its worst case, held in `lease`, is replaced by the tokens it used. */
export interface Settlement {
  /** The request's id (its ledger row's id): a settlement is counted once. */
  id: string;
  lease: string;
  reserved: number;
  actual: number;
}

/** Capacity of a lease its isolate did not use and gives back. */
export interface LeaseReturn {
  lease: string;
  requests: number;
  tokens: number;
}

/** What an isolate sends after requests finished: settlements, returned capacity and ledger rows. */
export interface QuotaCommit {
  settlements?: Settlement[];
  returns?: LeaseReturn[];
  /** The requests' ledger rows, as one `ledgerBatch`. */
  rows?: string;
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
/** Limits an admin set, kept so that they outrank older cached ones after a restart too. */
const ANNOUNCED_KEY = "limits";
const RESERVATION_PREFIX = "r:";
/**
 * Usage-ledger rows settled here and not yet written to D1: the rows of one commit under one key
 * (named after its first row) as `ledgerBatch` text; objects written before rows travelled as
 * text hold row objects, one or an array of them per key.
 */
const USAGE_PREFIX = "u:";

/** How long settled usage rows gather before they go to D1 in one batch. */
export const LEDGER_FLUSH_MS = 250;
/** Stored commits a flush reads; what it leaves goes in the next flush, which follows at once. */
const LEDGER_FLUSH_KEYS = 200;
/** A flush takes no more commits once their rows reach this much text. */
const LEDGER_FLUSH_CHARS = 256 * 1024;
/** When D1 refuses a flush, the rows stay here and the flush is tried again after this long. */
const LEDGER_RETRY_MS = 5_000;

/** How many settled ids the object remembers to recognise a repeated settlement. */
const SETTLED_REMEMBERED = 10_000;

/** No lease holds more than this share of a per-minute limit, so that isolates can share an organization. */
export const LEASE_SHARE = 8;

/** A reservation nobody settled (the request's isolate died) is released after this long. */
const RESERVATION_TTL_MS = 15 * 60_000;

/** Durable Object ids of organizations' quota objects, kept per namespace: deriving one hashes the name. */
const quotaIds = new WeakMap<object, Map<string, DurableObjectId>>();
const MAX_QUOTA_IDS = 10_000;

/** The organization's `OrgQuota` object. */
export function quotaStub(env: Env, organizationId: string) {
  let ids = quotaIds.get(env.QUOTA);
  if (!ids) {
    ids = new Map();
    quotaIds.set(env.QUOTA, ids);
  }
  let id = ids.get(organizationId);
  if (!id) {
    if (ids.size >= MAX_QUOTA_IDS) ids.clear();
    id = env.QUOTA.idFromName(organizationId);
    ids.set(organizationId, id);
  }
  return env.QUOTA.get(id);
}

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
 * month (UTC). Isolates lease capacity from it (`lease`: a block of requests' worst cases) and
 * report back (`commit`: each finished request's actual usage, capacity they did not use, and the
 * requests' ledger rows); see `leases.ts`. Each method runs to completion without awaiting I/O between its check and its
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
  /**
   * Ids settled lately, so that a repeated settlement is not counted twice: the newest ids and,
   * when those reach half of `SETTLED_REMEMBERED`, the generation before them. (Dropping the
   * oldest id one at a time walks the holes deletes leave at the front of a `Set`.)
   */
  private settled = new Set<string>();
  private settledBefore = new Set<string>();
  /** The limits an admin set last, which outrank limits isolates read (and cached) before then. */
  private announced: AnnouncedLimits | undefined;

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
      this.announced = await ctx.storage.get<AnnouncedLimits>(ANNOUNCED_KEY);
      const open = await ctx.storage.list<Reservation>({ prefix: RESERVATION_PREFIX });
      for (const [key, r] of open) this.reservations.set(key.slice(RESERVATION_PREFIX.length), r);
      // Usage rows left from before a restart go to D1 even if no request comes to flush them.
      const unwritten = await ctx.storage.list({ prefix: USAGE_PREFIX, limit: 1 });
      if (unwritten.size > 0 && (await ctx.storage.getAlarm()) === null) await ctx.storage.setAlarm(Date.now());
    });
  }

  private roll(now: number): void {
    // Clocks of different isolates disagree a little: a late call never takes a window back.
    const minute = Math.floor(now / 60_000);
    if (minute > this.state.minute) {
      this.state.minute = minute;
      this.state.minuteRequests = 0;
      // Reservations still open keep their tokens in the window that admitted them; the new window
      // starts with nothing.
      this.state.minuteTokens = 0;
    }
    const month = monthOf(now);
    if (month > this.state.month) {
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

  /** Takes capacity a reservation holds out of the counters it was counted in. */
  private release(r: Reservation, tokens = r.tokens, requests = 0): void {
    if (r.minute === this.state.minute) {
      this.state.minuteTokens = Math.max(0, this.state.minuteTokens - tokens);
      this.state.minuteRequests = Math.max(0, this.state.minuteRequests - requests);
    }
    if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens - tokens);
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
   * Writes the counters, the reservations that changed (deleting those that hold nothing) and
   * settled usage rows through to storage, in one write. Not awaited on purpose: the output gate
   * delays the reply until the write is durable, and awaiting would let another request
   * interleave between check and update.
   */
  private persist(changed: Iterable<string> = [], rows?: string): void {
    const entries: Record<string, unknown> = { [COUNTERS_KEY]: this.state };
    const gone: string[] = [];
    for (const id of changed) {
      const r = this.reservations.get(id);
      if (r) entries[RESERVATION_PREFIX + id] = r;
      else gone.push(RESERVATION_PREFIX + id);
    }
    const hasRows = rows !== undefined && rows !== "[]";
    if (hasRows) entries[USAGE_PREFIX + (firstLedgerId(rows) ?? crypto.randomUUID())] = rows;
    void this.ctx.storage.put(entries);
    if (gone.length) void this.ctx.storage.delete(gone);
    if (hasRows) this.armFlush(LEDGER_FLUSH_MS);
  }

  /**
   * Holds capacity for requests an isolate will admit on its own: at least one request of
   * `ask.need` tokens, at most what was asked, an eighth of the per-minute limits (so that one
   * isolate cannot hold what others need) and what the limits have left, after taking back what
   * the isolate's older leases `returns`. Refuses, saying which limit and for how long, when not
   * even the one request fits.
   */
  async lease(
    id: string,
    ask: LeaseAsk,
    callerLimits: QuotaLimits,
    now: number,
    returns: readonly LeaseReturn[] = [],
    limitsAt?: number,
  ): Promise<LeaseResult> {
    const { limits, announced } = this.limitsFor(callerLimits, limitsAt ?? now);
    this.roll(now);
    const changed = new Set<string>();
    this.takeBack(returns, changed);
    const need = ask.need;
    const resetSeconds = this.snapshot(limits, now).resetSeconds;
    const refuse = (refusal: QuotaRefusal, retryAfterSeconds: number): LeaseResult => {
      if (changed.size) this.persist(changed);
      return { ok: false, refusal, retryAfterSeconds, snapshot: this.snapshot(limits, now), announced };
    };
    if (need > limits.tokensPerMinute || need > limits.monthlyTokenBudget)
      return refuse("request_too_large", resetSeconds);
    const monthLeft = limits.monthlyTokenBudget - this.state.monthTokens;
    if (need > monthLeft) return refuse("monthly_budget", secondsToMonthEnd(now));
    const requestsLeft = limits.requestsPerMinute - this.state.minuteRequests;
    if (requestsLeft < 1) return refuse("requests_per_minute", resetSeconds);
    const tokensLeft = limits.tokensPerMinute - this.state.minuteTokens;
    if (need > tokensLeft) return refuse("tokens_per_minute", resetSeconds);
    const requests = Math.max(
      1,
      Math.min(ask.requests, requestsLeft, Math.floor(limits.requestsPerMinute / LEASE_SHARE)),
    );
    const tokens = Math.max(
      need,
      Math.min(ask.tokens, tokensLeft, monthLeft, Math.floor(limits.tokensPerMinute / LEASE_SHARE)),
    );
    this.state.minuteRequests += requests;
    this.state.minuteTokens += tokens;
    this.state.monthTokens += tokens;
    this.reservations.set(id, { tokens, requests, minute: this.state.minute, month: this.state.month, at: now });
    changed.add(id);
    this.persist(changed);
    return { ok: true, requests, tokens, snapshot: this.snapshot(limits, now), announced };
  }

  /**
   * Releases the capacity leases give back, noting each changed lease in `changed`; a lease that
   * holds nothing any more is forgotten.
   */
  private takeBack(returns: readonly LeaseReturn[], changed: Set<string>): void {
    for (const back of returns) {
      const r = this.reservations.get(back.lease);
      if (!r) continue;
      const tokens = Math.min(back.tokens, Math.max(0, r.tokens));
      const requests = Math.min(back.requests, r.requests ?? 1);
      this.release(r, tokens, requests);
      r.tokens -= tokens;
      r.requests = (r.requests ?? 1) - requests;
      changed.add(back.lease);
    }
    for (const id of changed) {
      const r = this.reservations.get(id);
      if (r && r.tokens <= 0 && (r.requests ?? 1) <= 0) this.reservations.delete(id);
    }
  }

  /**
   * Applies what an isolate reports in one write: each finished request's worst case replaced by
   * its actual usage, unused lease capacity given back, and the requests' ledger rows stored to
   * go to D1 with the others in the next `LEDGER_FLUSH_MS` — one D1 batch instead of a write per
   * request, and a row that cannot get lost between settlement and the ledger. A request that
   * used more than it reserved (a backend that ignored `max_tokens`) is charged in full; a
   * settlement delivered twice counts once.
   */
  async commit(report: QuotaCommit, callerLimits: QuotaLimits, now: number, limitsAt?: number): Promise<CommitResult> {
    const { limits, announced } = this.limitsFor(callerLimits, limitsAt ?? now);
    this.roll(now);
    const changed = new Set<string>();
    for (const s of report.settlements ?? []) {
      if (this.settled.has(s.id) || this.settledBefore.has(s.id)) continue;
      this.settled.add(s.id);
      if (this.settled.size >= SETTLED_REMEMBERED / 2) {
        this.settledBefore = this.settled;
        this.settled = new Set();
      }
      const r = this.reservations.get(s.lease);
      if (r) {
        const delta = s.actual - s.reserved;
        if (r.minute === this.state.minute) this.state.minuteTokens = Math.max(0, this.state.minuteTokens + delta);
        if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens + delta);
        r.tokens -= s.reserved;
        r.requests = (r.requests ?? 1) - 1;
        changed.add(s.lease);
      } else {
        // Settled after its lease expired: the usage still happened now.
        this.state.minuteTokens += s.actual;
        this.state.monthTokens += s.actual;
      }
    }
    this.takeBack(report.returns ?? [], changed);
    this.persist(changed, report.rows);
    return { snapshot: this.snapshot(limits, now), announced };
  }

  /**
   * Takes limits an admin just set (the admin API calls this after writing them to D1), so that
   * they hold at once: isolates keep what they read from D1 for a few seconds, and the object
   * judges by these until the limits an isolate passes were read after them. Older news than
   * what the object has is ignored.
   */
  async announceLimits(limits: QuotaLimits, at: number): Promise<void> {
    if (this.announced && this.announced.at > at) return;
    this.announced = { limits, at };
    void this.ctx.storage.put(ANNOUNCED_KEY, this.announced);
  }

  /** The limits to judge by: the caller's, unless an admin set others after the caller read them. */
  private limitsFor(callerLimits: QuotaLimits, readAt: number): { limits: QuotaLimits; announced?: AnnouncedLimits } {
    const announced = this.announced;
    if (announced && announced.at >= readAt) return { limits: announced.limits, announced };
    return { limits: callerLimits };
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
    const pending = await this.ctx.storage.list<string | LedgerRow | LedgerRow[]>({
      prefix: USAGE_PREFIX,
      limit: LEDGER_FLUSH_KEYS,
    });
    if (pending.size === 0) return;
    const services = createServices(this.env, {}, { quota: this.ctx.id.toString() });
    const keys: string[] = [];
    const batches: string[] = [];
    let chars = 0;
    for (const [key, value] of pending) {
      if (chars >= LEDGER_FLUSH_CHARS) break;
      const batch =
        typeof value === "string" ? value : ledgerBatch((Array.isArray(value) ? value : [value]).map(ledgerEntry));
      keys.push(key);
      batches.push(batch);
      chars += batch.length;
    }
    const rows = joinLedgerBatches(batches);
    try {
      await writeUsageRows(services, rows, billingEnabled(services.config) ? this.env.USAGE_QUEUE : undefined);
    } catch (error) {
      services.log.warn("usage rows not written to D1; kept and retried", {
        batches: batches.length,
        error: String(error),
      });
      this.armFlush(LEDGER_RETRY_MS);
      return;
    }
    await this.ctx.storage.delete(keys);
    if (keys.length < pending.size || pending.size === LEDGER_FLUSH_KEYS) this.armFlush(0);
  }

  /** Current standing without changing anything. */
  async peek(limits: QuotaLimits, now: number): Promise<QuotaSnapshot & { month: string; monthTokens: number }> {
    this.roll(now);
    return { ...this.snapshot(limits, now), month: this.state.month, monthTokens: this.state.monthTokens };
  }
}
