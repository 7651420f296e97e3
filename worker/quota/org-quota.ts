import { DurableObject } from "cloudflare:workers";
import type { TokenLimits } from "../db/schema";
import { noteMonthlyStanding } from "../events/quota-thresholds";
import { firstLedgerId, ledgerBatch } from "../inference/ledger";
import { IsolateMemory } from "../platform/isolate-memory";
import type { DownloadRow } from "../usage/hours";
import { DOWNLOAD_PREFIX, type LiveParts, rowsWithout, SENT_AGAIN, USAGE_PREFIX, UsageBook } from "./usage-book";

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
 * A token's own limits, counted in its organization's object beside the organization's counters:
 * a request takes capacity from both or from neither. Passed with every lease, as the
 * organization's limits are; a token's limits never change once it is minted.
 */
export interface TokenQuota {
  id: string;
  limits: TokenLimits;
}

/**
 * Capacity held out of the counters: one request's worst case, or a lease of several requests'
 * worth that an isolate admits from on its own. What is still held counts against the limits
 * until it is settled or returned.
 */
interface Reservation {
  tokens: number;
  /** The token whose own counters this also holds capacity of, if it has limits. */
  token?: string;
  /** Request slots still held (absent in objects written before leases: one). */
  requests?: number;
  minute: number;
  month: string;
  at: number;
  /**
   * Its isolate gave back what it did not use. An isolate gives a lease back once; a return that
   * comes again (its call's answer was lost, and it went with the next one) would free capacity
   * the lease's running requests still hold, and is ignored.
   */
  returned?: true;
}

/** What an isolate asks a lease for: up to `requests` requests and `tokens` tokens, at least `need` tokens. */
export interface LeaseAsk {
  requests: number;
  tokens: number;
  /** The first request's worst case: a lease smaller than this is refused. */
  need: number;
  /** The token's own limits, when it has any: the lease is taken from its counters too. */
  token?: TokenQuota;
}

/** Limits an admin set, with when: they override limits an isolate read before then. */
export interface AnnouncedLimits {
  limits: QuotaLimits;
  /** When they were set (ms since the epoch). */
  at: number;
}

export type LeaseResult = (
  | { ok: true; requests: number; tokens: number; snapshot: QuotaSnapshot }
  | {
      ok: false;
      refusal: QuotaRefusal;
      retryAfterSeconds: number;
      snapshot: QuotaSnapshot;
      /** `token`: the token's own limit refused, not the organization's. */
      limitedBy?: "token";
    }
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
  /** The token with limits of its own it was admitted for, so that a late settlement still counts for it. */
  token?: string;
}

/** Capacity of a lease its isolate did not use and gives back. */
export interface LeaseReturn {
  lease: string;
  requests: number;
  tokens: number;
}

/**
 * The usage of a request still running (a long stream) so far: its settlement and ledger row
 * (`ledgerEntry` text) as they would be if it ended now. The object keeps the latest one per
 * request until the request's own settlement replaces it.
 */
export interface Checkpoint {
  settlement: Settlement;
  row: string;
}

/** What an isolate sends after requests finished: settlements, returned capacity and ledger rows. */
export interface QuotaCommit {
  settlements?: Settlement[];
  returns?: LeaseReturn[];
  /** The requests' ledger rows, as one `ledgerBatch`. */
  rows?: string;
  /** Usage of streams still running, so far. */
  checkpoints?: Checkpoint[];
  /**
   * Sent before, and its answer lost: the object may have taken it. Settlements and rows it
   * recognises are dropped as any repeat is; rows it does not (it may have restarted since) are
   * marked, and kept once by id when their part closes (`usage-book.ts`).
   */
  again?: true;
}

/** A checkpoint as the object keeps it, with when (by the object's clock) it last came. */
interface StoredCheckpoint extends Checkpoint {
  at: number;
  /**
   * The month (`YYYY-MM`) it was sent in, by its isolate's clock, as its row's time is: its usage
   * counts in that month should it be settled as abandoned (absent in checkpoints kept before: the
   * month the object counts in then).
   */
  month?: string;
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
/** A token's own counters (tokens with limits only), one key each. */
const TOKEN_PREFIX = "t:";
/** The latest checkpoint of each request still running, by request id. */
const CHECKPOINT_PREFIX = "c:";

/**
 * A running stream sends a checkpoint every few seconds (`CHECKPOINT_EVERY_MS` in the proxy), also
 * while it waits on its server or its client; one not renewed for this long lost its isolate, and
 * its last checkpoint is settled and billed as the request's row.
 */
export const CHECKPOINT_ABANDONED_MS = 60_000;

/** How long committed usage rows gather before they are folded into their hour in one batch. */
export const LEDGER_FLUSH_MS = 250;

/** How many settled ids the object remembers to recognise a repeated settlement. */
const SETTLED_REMEMBERED = 10_000;

/** No lease holds more than this share of a per-minute limit, so that isolates can share an organization. */
export const LEASE_SHARE = 8;

/**
 * A reservation nobody settled (the request's isolate died) is released after this long, unless a
 * request on it still checkpoints (a long stream).
 */
const RESERVATION_TTL_MS = 15 * 60_000;

/** Durable Object ids of organizations' quota objects, kept per namespace: deriving one hashes the name. */
const quotaIds = new IsolateMemory<DurableObjectId>(10_000);

/** The organization's `OrgQuota` object. */
export function quotaStub(env: Env, organizationId: string) {
  let id = quotaIds.get(env.QUOTA, organizationId);
  if (!id) {
    id = env.QUOTA.idFromName(organizationId);
    quotaIds.set(env.QUOTA, organizationId, id);
  }
  return env.QUOTA.get(id);
}

function monthOf(now: number): string {
  return new Date(now).toISOString().slice(0, 7);
}

/**
 * Replaces in `counters` the `reserved` tokens a reservation held (counted in the minute and month
 * `held` names; undefined: its lease expired and released them) by the `actual` tokens the request
 * used, which count in the month its row was recorded in, `month`: the month its usage is billed
 * in. A reservation taken last month and settled this month counts in this one, so that a stream
 * kept alive across midnight cannot spend a budget in neither.
 */
function settleInto(
  counters: QuotaCounters,
  held: Pick<Reservation, "minute" | "month"> | undefined,
  reserved: number,
  actual: number,
  month: string,
): void {
  if (!held) counters.minuteTokens += actual;
  else if (held.minute === counters.minute)
    counters.minuteTokens = Math.max(0, counters.minuteTokens + actual - reserved);
  let monthly = 0;
  if (held && held.month === counters.month) monthly -= reserved;
  if (month === counters.month) monthly += actual;
  counters.monthTokens = Math.max(0, counters.monthTokens + monthly);
}

function secondsToMonthEnd(now: number): number {
  const d = new Date(now);
  const next = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  return Math.ceil((next - now) / 1000);
}

/**
 * What `limits` leave for a lease whose first request needs `need` tokens, given `counters`: at
 * most what is left and a `LEASE_SHARE` of each per-minute limit; or the limit that refuses even
 * the one request. An absent limit (a token's own limits may lack any) holds nothing back.
 */
function roomIn(
  limits: Partial<QuotaLimits>,
  counters: QuotaCounters,
  need: number,
): { refusal: QuotaRefusal } | { requests: number; tokens: number } {
  const rpm = limits.requestsPerMinute ?? Number.POSITIVE_INFINITY;
  const tpm = limits.tokensPerMinute ?? Number.POSITIVE_INFINITY;
  const budget = limits.monthlyTokenBudget ?? Number.POSITIVE_INFINITY;
  if (need > tpm || need > budget) return { refusal: "request_too_large" };
  const monthLeft = budget - counters.monthTokens;
  if (need > monthLeft) return { refusal: "monthly_budget" };
  const requestsLeft = rpm - counters.minuteRequests;
  if (requestsLeft < 1) return { refusal: "requests_per_minute" };
  const tokensLeft = tpm - counters.minuteTokens;
  if (need > tokensLeft) return { refusal: "tokens_per_minute" };
  return {
    requests: Math.min(requestsLeft, Math.floor(rpm / LEASE_SHARE)),
    tokens: Math.min(tokensLeft, monthLeft, Math.floor(tpm / LEASE_SHARE)),
  };
}

/**
 * The exact counters of one organization: requests and tokens per minute, and tokens per calendar
 * month (UTC), and the same for each of its tokens that has limits of its own (a lease for such a
 * token is taken from both, so a request fits both or is refused). Isolates lease capacity from it (`lease`: a block of requests' worst cases) and
 * report back (`commit`: each finished request's actual usage, capacity they did not use, and the
 * requests' ledger rows); see `leases.ts`. Each method runs to completion without awaiting I/O between its check and its
 * update, and a Durable Object runs one such method at a time, so concurrent requests can never
 * push usage past a limit. State is written through to storage (the output gate holds the reply
 * until it is durable), so it survives eviction.
 */
export class OrgQuota extends DurableObject<Env> {
  private state: QuotaCounters = { minute: 0, minuteRequests: 0, minuteTokens: 0, month: "", monthTokens: 0 };
  private reservations = new Map<string, Reservation>();
  /** The counters of the organization's tokens that have limits of their own, by token id. */
  private tokens = new Map<string, QuotaCounters>();
  /** Tokens whose counters changed since the last write; a token gone from `tokens` is deleted. */
  private tokensChanged = new Set<string>();
  /** When open reservations were last checked for expiry. */
  private sweptAt = 0;
  /** When the alarm is set for (wall clock); undefined: not set. */
  private alarmAt: number | undefined;
  /** The newest time a caller passed: the object's clock never runs behind it (`clock`). */
  private latest = 0;
  /** Settled usage: folded into hours, written to D1, billed and archived (`usage-book.ts`). */
  private readonly book: UsageBook;
  /** Since when alarms have left committed batches unfolded, deferring the rest of their work. */
  private foldingSince: number | undefined;
  /** The usage book's latest work: alarms and syncs take turns (`inTurn`). */
  private usageTurn: Promise<unknown> = Promise.resolve();
  /**
   * Ids settled lately, so that a repeated settlement is not counted twice: the newest ids and,
   * when those reach half of `SETTLED_REMEMBERED`, the generation before them. (Dropping the
   * oldest id one at a time walks the holes deletes leave at the front of a `Set`.)
   */
  private settled = new Set<string>();
  private settledBefore = new Set<string>();
  /** The limits an admin set last, which outrank limits isolates read (and cached) before then. */
  private announced: AnnouncedLimits | undefined;
  /** The latest checkpoint of each request still running, by request id. */
  private checkpoints = new Map<string, StoredCheckpoint>();

  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    this.book = new UsageBook(ctx, env);
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
      const counted = await ctx.storage.list<QuotaCounters>({ prefix: TOKEN_PREFIX });
      for (const [key, t] of counted) this.tokens.set(key.slice(TOKEN_PREFIX.length), t);
      const running = await ctx.storage.list<StoredCheckpoint>({ prefix: CHECKPOINT_PREFIX });
      for (const [key, c] of running) this.checkpoints.set(key.slice(CHECKPOINT_PREFIX.length), c);
      await this.book.load();
      // Usage left from before a restart is finished even if no request comes, and checkpoints
      // are settled if their requests never come back.
      this.alarmAt = (await ctx.storage.getAlarm()) ?? undefined;
      if (running.size > 0 || (await this.book.hasWork())) this.wake(Date.now());
    });
  }

  /**
   * The object's clock: the wall clock, or the newest time a caller passed when that is ahead (the
   * callers' clocks decide the windows they are counted in, and an hour closes by the same clock).
   */
  private clock(): number {
    return Math.max(Date.now(), this.latest);
  }

  private saw(now: number): void {
    if (now > this.latest) this.latest = now;
  }

  /** Sets the alarm for `at` (wall clock) unless it is set for sooner. */
  private wake(at: number): void {
    if (this.alarmAt !== undefined && this.alarmAt <= at) return;
    this.alarmAt = at;
    void this.ctx.storage.setAlarm(at);
  }

  private roll(now: number): void {
    this.saw(now);
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
    // A lease with a request still running (its checkpoints keep coming) is not abandoned, however
    // old: its room would admit more while that request still uses what it reserved.
    const running = new Set<string>();
    for (const c of this.checkpoints.values()) running.add(c.settlement.lease);
    for (const [id, r] of this.reservations) {
      if (now - r.at > RESERVATION_TTL_MS && !running.has(id)) {
        this.release(r);
        this.reservations.delete(id);
        expired.push(RESERVATION_PREFIX + id);
      }
    }
    // Not awaited, as in `persist`: the output gate holds replies until the delete is durable.
    if (expired.length) void this.ctx.storage.delete(expired);
    // A token's counters from a past month hold nothing that still counts.
    for (const [id, t] of this.tokens) {
      if (t.month !== this.state.month) {
        this.tokens.delete(id);
        this.tokensChanged.add(id);
      }
    }
  }

  /** A token's counters, rolled to the organization's current minute and month. */
  private tokenState(id: string): QuotaCounters {
    let t = this.tokens.get(id);
    if (!t) {
      t = { minute: this.state.minute, minuteRequests: 0, minuteTokens: 0, month: this.state.month, monthTokens: 0 };
      this.tokens.set(id, t);
    }
    if (this.state.minute > t.minute) {
      t.minute = this.state.minute;
      t.minuteRequests = 0;
      t.minuteTokens = 0;
    }
    if (this.state.month > t.month) {
      t.month = this.state.month;
      t.monthTokens = 0;
    }
    return t;
  }

  /** Adds `tokens` (and `requests`) to the counters of `token`, for the window a reservation was counted in. */
  private countForToken(token: string, r: Pick<Reservation, "minute" | "month">, tokens: number, requests = 0): void {
    const t = this.tokenState(token);
    if (r.minute === t.minute) {
      t.minuteTokens = Math.max(0, t.minuteTokens + tokens);
      t.minuteRequests = Math.max(0, t.minuteRequests + requests);
    }
    if (r.month === t.month) t.monthTokens = Math.max(0, t.monthTokens + tokens);
    this.tokensChanged.add(token);
  }

  /** Takes capacity a reservation holds out of the counters it was counted in. */
  private release(r: Reservation, tokens = r.tokens, requests = 0): void {
    if (r.minute === this.state.minute) {
      this.state.minuteTokens = Math.max(0, this.state.minuteTokens - tokens);
      this.state.minuteRequests = Math.max(0, this.state.minuteRequests - requests);
    }
    if (r.month === this.state.month) this.state.monthTokens = Math.max(0, this.state.monthTokens - tokens);
    if (r.token) this.countForToken(r.token, r, -tokens, -requests);
  }

  /** The standing for the rate-limit headers: for each limit, the token's where it is the tighter. */
  private snapshot(limits: QuotaLimits, now: number, token?: TokenQuota): QuotaSnapshot {
    const s: QuotaSnapshot = {
      limitRequests: limits.requestsPerMinute,
      remainingRequests: Math.max(0, limits.requestsPerMinute - this.state.minuteRequests),
      limitTokens: limits.tokensPerMinute,
      remainingTokens: Math.max(0, limits.tokensPerMinute - this.state.minuteTokens),
      resetSeconds: Math.max(1, Math.ceil(((this.state.minute + 1) * 60_000 - now) / 1000)),
      monthlyBudget: limits.monthlyTokenBudget,
      monthlyRemaining: Math.max(0, limits.monthlyTokenBudget - this.state.monthTokens),
    };
    if (!token) return s;
    const t = this.tokenState(token.id);
    const { requestsPerMinute, tokensPerMinute, monthlyTokenBudget } = token.limits;
    if (requestsPerMinute !== undefined && requestsPerMinute - t.minuteRequests < s.remainingRequests) {
      s.limitRequests = requestsPerMinute;
      s.remainingRequests = Math.max(0, requestsPerMinute - t.minuteRequests);
    }
    if (tokensPerMinute !== undefined && tokensPerMinute - t.minuteTokens < s.remainingTokens) {
      s.limitTokens = tokensPerMinute;
      s.remainingTokens = Math.max(0, tokensPerMinute - t.minuteTokens);
    }
    if (monthlyTokenBudget !== undefined && monthlyTokenBudget - t.monthTokens < s.monthlyRemaining) {
      s.monthlyBudget = monthlyTokenBudget;
      s.monthlyRemaining = Math.max(0, monthlyTokenBudget - t.monthTokens);
    }
    return s;
  }

  /**
   * Writes the counters, the reservations that changed (deleting those that hold nothing) and
   * settled usage rows (`again`: of a commit sent again) through to storage, in one write. Not
   * awaited on purpose: the output gate delays the reply until the write is durable, and awaiting
   * would let another request interleave between check and update.
   */
  private persist(changed: Iterable<string> = [], rows?: string, again = false): void {
    const entries: Record<string, unknown> = { [COUNTERS_KEY]: this.state };
    const gone: string[] = [];
    for (const id of changed) {
      const r = this.reservations.get(id);
      if (r) entries[RESERVATION_PREFIX + id] = r;
      else gone.push(RESERVATION_PREFIX + id);
    }
    const hasRows = rows !== undefined && rows !== "[]";
    // A key of its own per write: two batches starting with the same row (a stream's abandoned
    // checkpoint, then its late settlement) must not overwrite each other before they are folded.
    if (hasRows) {
      entries[`${USAGE_PREFIX}${firstLedgerId(rows) ?? ""}:${crypto.randomUUID()}${again ? SENT_AGAIN : ""}`] = rows;
    }
    for (const id of this.tokensChanged) {
      const t = this.tokens.get(id);
      if (t) entries[TOKEN_PREFIX + id] = t;
      else gone.push(TOKEN_PREFIX + id);
    }
    this.tokensChanged.clear();
    void this.ctx.storage.put(entries);
    if (gone.length) void this.ctx.storage.delete(gone);
    if (hasRows) this.wake(Date.now() + LEDGER_FLUSH_MS);
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
    const token = ask.token;
    const refuse = (refusal: QuotaRefusal, limitedBy?: "token"): LeaseResult => {
      if (changed.size) this.persist(changed);
      const snapshot = this.snapshot(limits, now, token);
      const retryAfterSeconds = refusal === "monthly_budget" ? secondsToMonthEnd(now) : snapshot.resetSeconds;
      return { ok: false, refusal, retryAfterSeconds, snapshot, announced, ...(limitedBy ? { limitedBy } : {}) };
    };
    const org = roomIn(limits, this.state, need);
    if ("refusal" in org) return refuse(org.refusal);
    const own = token ? roomIn(token.limits, this.tokenState(token.id), need) : undefined;
    if (own && "refusal" in own) return refuse(own.refusal, "token");
    const requests = Math.max(1, Math.min(ask.requests, org.requests, own?.requests ?? Number.POSITIVE_INFINITY));
    const tokens = Math.max(need, Math.min(ask.tokens, org.tokens, own?.tokens ?? Number.POSITIVE_INFINITY));
    this.state.minuteRequests += requests;
    this.state.minuteTokens += tokens;
    this.state.monthTokens += tokens;
    const reservation: Reservation = {
      tokens,
      requests,
      minute: this.state.minute,
      month: this.state.month,
      at: now,
    };
    if (token) {
      reservation.token = token.id;
      this.countForToken(token.id, reservation, tokens, requests);
    }
    this.reservations.set(id, reservation);
    changed.add(id);
    this.persist(changed);
    return { ok: true, requests, tokens, snapshot: this.snapshot(limits, now, token), announced };
  }

  /**
   * Releases the capacity leases give back, noting each changed lease in `changed`; a lease that
   * holds nothing any more is forgotten.
   */
  private takeBack(returns: readonly LeaseReturn[], changed: Set<string>): void {
    for (const back of returns) {
      const r = this.reservations.get(back.lease);
      if (!r || r.returned) continue;
      r.returned = true;
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
    // The requests' rows were recorded by the caller's clock a moment before it sent them.
    const month = monthOf(now);
    if (report.checkpoints) this.keepCheckpoints(report.checkpoints, month);
    const repeated = new Set<string>();
    for (const s of report.settlements ?? []) if (!this.settle(s, changed, month)) repeated.add(s.id);
    this.takeBack(report.returns ?? [], changed);
    // A repeated settlement's row is not taken again either (a stream billed from its abandoned
    // checkpoint whose isolate came back after all): each request is one row.
    this.persist(
      changed,
      report.rows && repeated.size ? rowsWithout(report.rows, repeated) : report.rows,
      report.again === true,
    );
    noteMonthlyStanding(this.ctx, this.env, this.state.month, this.state.monthTokens, limits.monthlyTokenBudget, now);
    return { snapshot: this.snapshot(limits, now), announced };
  }

  /**
   * Replaces one request's worst case by the tokens it used, counted in `month`, the month its row
   * was recorded in (`settleInto`); once; its checkpoint, if any, goes. Returns false for a
   * settlement already counted.
   */
  private settle(s: Settlement, changed: Set<string>, month: string): boolean {
    if (this.settled.has(s.id) || this.settledBefore.has(s.id)) return false;
    this.settled.add(s.id);
    if (this.settled.size >= SETTLED_REMEMBERED / 2) {
      this.settledBefore = this.settled;
      this.settled = new Set();
    }
    if (this.checkpoints.delete(s.id)) void this.ctx.storage.delete(CHECKPOINT_PREFIX + s.id);
    const r = this.reservations.get(s.lease);
    // Settled after its lease expired (`r` undefined): the usage still happened now.
    settleInto(this.state, r, s.reserved, s.actual, month);
    const token = r ? r.token : s.token;
    if (token) {
      settleInto(this.tokenState(token), r, s.reserved, s.actual, month);
      this.tokensChanged.add(token);
    }
    if (r) {
      r.tokens -= s.reserved;
      r.requests = (r.requests ?? 1) - 1;
      changed.add(s.lease);
    }
    return true;
  }

  /**
   * Keeps the latest checkpoint of each running request (not of one already settled: a checkpoint
   * never outlives its settlement), and makes sure an alarm will settle those never renewed.
   */
  private keepCheckpoints(checkpoints: readonly Checkpoint[], month: string): void {
    const at = Date.now();
    const entries: Record<string, StoredCheckpoint> = {};
    for (const { settlement, row } of checkpoints) {
      const id = settlement.id;
      if (this.settled.has(id) || this.settledBefore.has(id)) continue;
      const kept = { settlement, row, at, month };
      this.checkpoints.set(id, kept);
      entries[CHECKPOINT_PREFIX + id] = kept;
    }
    // Not awaited, as in `persist`.
    void this.ctx.storage.put(entries);
    if (this.checkpoints.size > 0) this.wake(at + CHECKPOINT_ABANDONED_MS);
  }

  /**
   * Settles the checkpoints not renewed for `CHECKPOINT_ABANDONED_MS` as their requests' rows: the
   * isolate that ran them is gone, and the usage they saw is billed. Returns when the next one
   * would be, if any are left.
   */
  private settleAbandoned(now: number): number | undefined {
    const changed = new Set<string>();
    const rows: string[] = [];
    let next: number | undefined;
    for (const [id, c] of this.checkpoints) {
      const due = c.at + CHECKPOINT_ABANDONED_MS;
      if (due > now) {
        next = Math.min(next ?? due, due);
        continue;
      }
      this.settle(c.settlement, changed, c.month ?? this.state.month);
      this.checkpoints.delete(id);
      rows.push(c.row);
    }
    // By the object's clock, not a caller's: the counters' windows roll with the next call.
    if (rows.length) this.persist(changed, ledgerBatch(rows));
    return next;
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

  /**
   * Records downloads: stored at once (the reply waits until they are durable), then folded into
   * their hours with the inference rows.
   */
  async recordDownloads(rows: DownloadRow[]): Promise<void> {
    if (rows.length === 0) return;
    void this.ctx.storage.put(DOWNLOAD_PREFIX + (rows[0] as DownloadRow).id, JSON.stringify(rows));
    this.wake(Date.now() + LEDGER_FLUSH_MS);
  }

  /**
   * Settles abandoned checkpoints, then moves settled usage on (`usage-book.ts`): committed rows
   * folded into their hours, totals written to D1, closed hours billed and archived, old rows
   * pruned. Whatever fails stays and is tried again.
   */
  override async alarm(): Promise<void> {
    this.alarmAt = undefined;
    const nextAbandoned = this.checkpoints.size ? this.settleAbandoned(Date.now()) : undefined;
    await this.inTurn(async () => {
      const now = this.clock();
      const more = await this.book.fold(now);
      // Batches left to fold come first: an interval closed before they are folded would see them
      // open a second part of it (nothing lost, but an interval and two Stripe calls more). For a
      // second at most, so that a flood of commits cannot hold back D1's totals and the closes.
      if (more) {
        this.foldingSince ??= Date.now();
        if (Date.now() - this.foldingSince < 1_000) {
          this.wake(Date.now());
          return;
        }
      }
      this.foldingSince = undefined;
      const synced = await this.book.sync(now);
      const archived = synced && (await this.book.archive());
      await this.book.prune(now);
      let next = this.book.nextWake(now, !synced || !archived);
      if (more) next = now;
      const wallNext = next === undefined ? undefined : Date.now() + Math.max(0, next - this.clock());
      const at = Math.min(wallNext ?? Number.POSITIVE_INFINITY, nextAbandoned ?? Number.POSITIVE_INFINITY);
      if (at !== Number.POSITIVE_INFINITY) this.wake(at);
    });
  }

  /**
   * Runs `work` on the usage book once the work before it is done. The book's steps await D1 and
   * R2, and an object takes other calls meanwhile: an alarm and a `syncUsage` that interleaved
   * would fold rows into a part whose close is already on its way to D1, and that part's billing
   * interval would be written without them.
   */
  private inTurn<T>(work: () => Promise<T>): Promise<T> {
    const turn = this.usageTurn.then(work);
    this.usageTurn = turn.catch(() => undefined);
    return turn;
  }

  /**
   * Folds everything committed and writes every changed total to D1 now, closing the hours that
   * are over by `now` (or the object's clock); then archives. For operators and tests that need
   * D1's figures current rather than within `USAGE_SYNC_SECONDS`. Returns whether D1 and R2 took it all.
   */
  async syncUsage(now?: number): Promise<boolean> {
    if (now !== undefined) this.saw(now);
    return this.inTurn(async () => {
      const at = this.clock();
      while (await this.book.fold(at)) {}
      const synced = await this.book.sync(at, true);
      const archived = synced && (await this.book.archive());
      const next = this.book.nextWake(at, !archived);
      if (next !== undefined) this.wake(Date.now() + Math.max(0, next - this.clock()));
      return synced && archived;
    });
  }

  /** The organization's open hours whose totals D1 does not have yet, for its own usage views. */
  async liveUsage(): Promise<LiveParts> {
    // Rows committed since the last alarm are folded first: a call counts as soon as it settled.
    return this.inTurn(async () => {
      const at = this.clock();
      while (await this.book.fold(at)) {}
      return this.book.live();
    });
  }

  /** The raw rows the object still holds of `hour` (`YYYY-MM-DDTHH`; all hours without), as archive lines. */
  async rawUsage(hour?: string, kind: "inference" | "downloads" = "inference"): Promise<string[]> {
    return this.book.rawLines(hour, kind);
  }

  /** Answers at once: the readiness check's proof that quota objects can be reached. */
  async ping(): Promise<true> {
    return true;
  }

  /** Current standing without changing anything. */
  async peek(limits: QuotaLimits, now: number): Promise<QuotaSnapshot & { month: string; monthTokens: number }> {
    this.roll(now);
    return { ...this.snapshot(limits, now), month: this.state.month, monthTokens: this.state.monthTokens };
  }
}
