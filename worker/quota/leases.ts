import { ledgerBatch } from "../inference/ledger";
import type {
  AnnouncedLimits,
  Checkpoint,
  CommitResult,
  LeaseAsk,
  LeaseResult,
  LeaseReturn,
  QuotaCommit,
  QuotaLimits,
  QuotaRefusal,
  QuotaSnapshot,
  Settlement,
  TokenQuota,
} from "./org-quota";

/**
 * Admission without a round trip per request. An isolate leases a block of an organization's
 * capacity (requests and tokens) from its `OrgQuota` object and admits requests from it on its
 * own; finished requests are settled, and unused capacity given back, in batches. The object
 * counts what a lease holds as used until it comes back, so however many isolates hold leases,
 * admitted requests never exceed a limit: leasing trades a little capacity held idle in one
 * isolate for far fewer calls to the one object every request of the organization goes through.
 * One lease call per organization is on its way from an isolate at a time, and a busy
 * organization's next lease is asked for before the open ones run out: requests that found no room
 * all asking at once would each be granted a lease, most of which would idle until they expired
 * (and halve the next ask), so that a busy isolate would call more and hold more than it admits.
 *
 * Settlements go to the object by group commit. An answer waits for its row to be stored, so a
 * settlement goes at once when no other request of the organization is running in the isolate;
 * when others are, it waits for theirs while they keep coming (a millisecond with none ends the
 * wait; `GATHER_MS` at most), to go in one commit: a request that runs on (a long stream) holds no
 * batch back. While a commit is on its way, the next batch gathers and goes when it returns. The
 * request that opens a batch sends it, and only it, so that no request's `waitUntil` runs on with
 * the load: the runtime ends it 30 s after the request's answer, and a batch it still had to send
 * would be left unsent.
 *
 * A token with limits of its own has leases of its own: each is taken from the organization's
 * counters and the token's at once, so what the token's leases hold counts against both, and the
 * same argument bounds the token's requests by its limits and the organization's together.
 */

/** How long an isolate admits on a lease; after that its unused capacity goes back. */
export const LEASE_TTL_MS = 1_000;
/** The most requests one lease asks for; the object also caps it at a share of the limit. */
export const MAX_LEASE_REQUESTS = 256;
/**
 * The longest a batch waits for the settlements of the organization's requests still running in
 * the isolate (none running: it goes at once; none joining it for a millisecond: it goes then), and
 * the batch that goes without waiting longer.
 */
export const GATHER_MS = 5;
export const GATHER_MAX = 256;
/** An organization idle this long in an isolate gives back what its leases still hold. */
export const IDLE_RETURN_MS = 25;
/**
 * The longest an answer waits for its ledger row to be stored (by the quota object, or straight in
 * the ledger when the object cannot take it) before it goes out all the same.
 */
export const STORE_WAIT_MS = 2_000;
/**
 * The longest a batch waits for the commit before it to return: a commit whose request was ended
 * never does, and the batch's own rows are to be stored within `STORE_WAIT_MS`.
 */
const PREVIOUS_COMMIT_WAIT_MS = STORE_WAIT_MS / 4;
/**
 * How often, at most, a request whose row another request sends looks at its batch before the
 * batch has gone (after, as `lookAfter` says): it cannot be stored before its commit returns, and
 * every look is an event of the runtime's.
 */
const UNSENT_LOOK_MS = 2;
/**
 * How the usual time of a call to the quota object, and its spread, follow the calls that return
 * (`noteCall`), as TCP's round-trip estimate does: each call moves the usual time this share of the
 * way to it, and the spread this share of the way to how far it was from the usual time.
 */
const CALL_GAIN = 1 / 8;
const SPREAD_GAIN = 1 / 4;
/**
 * The longest a request with no room in the leases here waits for the lease another request of
 * the organization is asking for, before it asks itself: a call whose request was ended never
 * returns.
 */
export const LEASE_CALL_WAIT_MS = 250;
/**
 * A busy organization's next lease is asked for before the open ones run out: once their requests
 * left come to a quarter of a lease, if leases have grown to `REFILL_AHEAD_ASK` requests (which
 * only requests coming faster than leases expire make them do).
 */
export const REFILL_AHEAD_ASK = 8;
/**
 * The pauses before a failed commit is sent again, one per attempt, before its rows go straight to
 * the ledger. An error does not say whether the object applied the call (a connection can drop
 * after it did); the object takes each settlement and its row once however often they come.
 */
const COMMIT_AGAIN_MS = [10, 50];
/** Organizations an isolate keeps state for; past this, the idle ones are forgotten. */
const MAX_ORGANIZATIONS = 10_000;

/** What leasing needs of the organization's `OrgQuota` object (its stub, in production). */
export interface QuotaObject {
  lease(
    id: string,
    ask: LeaseAsk,
    limits: QuotaLimits,
    now: number,
    returns?: LeaseReturn[],
    limitsAt?: number,
  ): Promise<LeaseResult>;
  commit(report: QuotaCommit, limits: QuotaLimits, now: number, limitsAt?: number): Promise<CommitResult>;
}

interface Lease {
  id: string;
  minute: number;
  expiresAt: number;
  granted: number;
  requestsLeft: number;
  tokensLeft: number;
  snapshot: QuotaSnapshot;
  /** The limits it was judged under (`keyOf`): a lease taken under limits since replaced goes back. */
  limitsKey: string;
}

interface Batch {
  settlements: Settlement[];
  returns: LeaseReturn[];
  /** Ledger entries (`ledgerEntry` text). */
  rows: string[];
  /** Usage of streams still running, so far. */
  checkpoints: Checkpoint[];
  /** The request that opened the batch, which sends it from its `waitUntil`. */
  sender: LeaseContext;
  /** True once the batch's rows are stored: what the other requests look at (`storedSeenHere`). */
  isStored: boolean;
  /** When its commit went (the request's clock); undefined until it has. */
  sentAt: number | undefined;
  /** Wakes the request that sends the batch, whose own row is in it (see `storedHere`). */
  wakeSender: (() => void)[];
}

interface OrgLeases {
  /** The limits the leases were taken under; new limits make the old leases go back. */
  limitsKey: string;
  limits: QuotaLimits;
  /** When those limits were read (or set by an admin): newer limits replace them, older do not. */
  limitsAt: number;
  /** Whether they came from the quota object as set by an admin, which outranks a read of the same moment. */
  announced: boolean;
  open: Lease[];
  /** Requests the next lease asks for: doubles when leases run out, halves when they idle. */
  ask: number;
  /** The lease call on its way, if any: requests with no room wait for it rather than ask too. */
  leasing: LeaseCall | undefined;
  /** Requests waiting for that call, which the next lease asks room for. */
  waiting: number;
  inflight: number;
  admissions: number;
  batch: Batch | undefined;
  /** The commit on its way, if any: the open batch goes when it returns. */
  committing: { since: number } | undefined;
  /**
   * How long this isolate's calls to the organization's object take, lately (ms; undefined until
   * one returned), and how far apart (`noteCall`): a request that waits for a call another request
   * made looks at it about then, not every millisecond. An object in another location answers in
   * tens of milliseconds, and each look is an event of the runtime's.
   */
  callMs: number | undefined;
  callSpreadMs: number;
  /** The request whose `waitUntil` waits to give back what the leases hold once the organization is quiet. */
  lingering: object | undefined;
}

/** A lease call on its way, and once it has returned, the refusal it was given, if any. */
interface LeaseCall {
  /** When it was made (the request's clock). */
  since: number;
  /** The limits it was made under: its refusal stands for requests under the same limits only. */
  limitsKey: string;
  refused?: { need: number; result: Extract<LeaseResult, { ok: false }> };
}

/** A request admitted on a lease: what it holds until it settles. */
export interface Admission {
  lease: string;
  reserved: number;
  /** The organization's standing for the rate-limit headers. */
  snapshot: QuotaSnapshot;
}

export type AdmitResult =
  | ({ ok: true } & Admission)
  | {
      ok: false;
      refusal: QuotaRefusal;
      retryAfterSeconds: number;
      snapshot: QuotaSnapshot;
      /** `token`: the token's own limit refused, not the organization's. */
      limitedBy?: "token";
    };

/** A finished request: its ledger row's id, the tokens it used and the row as `ledgerEntry` text. */
export interface SettledRequest {
  id: string;
  actual: number;
  entry: string;
}

/** What a lease call needs from the request making it. */
export interface LeaseContext {
  stub: QuotaObject;
  limits: QuotaLimits;
  /** The token's own limits, when it has any: its requests are admitted on leases of its own. */
  token?: TokenQuota | undefined;
  /** When `limits` were read from the database; absent: now. */
  limitsAt?: number;
  /** The request's clock, in ms. */
  now: () => number;
  newId: () => string;
  waitUntil: (work: Promise<unknown>) => void;
  /** Writes rows (a `ledgerBatch`) straight to the ledger when the quota object cannot take them. */
  fallback: (rows: string, error: unknown) => Promise<void>;
}

const minuteOf = (now: number) => Math.floor(now / 60_000);
const keyOf = (l: QuotaLimits) => `${l.requestsPerMinute}/${l.tokensPerMinute}/${l.monthlyTokenBudget}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits while `busy()`, for at most `maxMs`, looking every `stepMs()` (a millisecond unless told)
 * on timers of the request that waits: what it waits for is another request's doing, and a request
 * may not resume another's work (see `QuotaLeases`).
 */
async function whileBusy(busy: () => boolean, maxMs: number, stepMs: () => number = () => 1): Promise<void> {
  for (let waited = 0; waited < maxMs && busy(); ) {
    const step = Math.min(stepMs(), maxMs - waited);
    await sleep(step);
    waited += step;
  }
}

/**
 * How long a request waiting for a call to the object (made `since`, on `org`'s behalf, or `calls`
 * of them back to back) waits before its next look at `now`: until the call may be back (its usual
 * time less its spread), then a millisecond between looks, or a sixteenth of the time waited if that
 * is longer. A wait costs a few looks whatever the object's distance (one per millisecond of the
 * calls' spread), and sees the call back within a millisecond or a sixteenth of the wait. `everyMs`
 * keeps to a millisecond: for the one request that sends the next batch, whose lateness would hold
 * back every request in it and every batch after it.
 */
function lookAfter(org: OrgLeases, since: number, now: number, calls = 1, everyMs = false): number {
  const first = since + calls * (org.callMs ?? 0) - org.callSpreadMs;
  if (now < first) return Math.ceil(first - now);
  return everyMs ? 1 : Math.max(1, Math.floor((now - since) / 16));
}

/**
 * Notes a call to the object made `since` that returned at `now` (`OrgLeases.callMs`). A call
 * counts as at most twice the usual time and 2 ms, so that one stall barely moves the estimate; a
 * call well under half the usual time (the first calls, as the object started, were slow) replaces
 * it.
 */
function noteCall(org: OrgLeases, since: number, now: number): void {
  const took = Math.max(0, now - since);
  const usual = org.callMs;
  if (usual === undefined || took + 2 < usual / 2) {
    org.callMs = took;
    org.callSpreadMs = took * CALL_GAIN;
    return;
  }
  const counted = Math.min(took, 2 * usual + 2);
  org.callMs = usual + (counted - usual) * CALL_GAIN;
  org.callSpreadMs += (Math.abs(counted - usual) - org.callSpreadMs) * SPREAD_GAIN;
}

/**
 * The leases of one isolate. Nothing here awaits a promise another request created: a request
 * that needs a lease while another asks for one looks for room on timers of its own (and asks
 * itself if none came within `LEASE_CALL_WAIT_MS`), a lease asked for ahead is asked from the
 * `waitUntil` of the request that saw the need, and the request that opens a batch sends it from
 * its own `waitUntil`, so no request's work depends on another request staying alive. A request waits
 * for its row to be stored on a promise and timers of its own: the sender on a promise its own
 * `send` resolves (`storedHere`), any other on timers it looks at the batch on (`storedSeenHere`).
 * A promise another request created cannot be relied on: it never settles once that request has
 * ended (`scripts/e2e/lease-contexts.e2e.ts`), and one settled from another request's context
 * resumed its waiter in the wrong context under load (docs/benchmarks.md).
 */
export class QuotaLeases {
  private orgs = new Map<string, OrgLeases>();

  /**
   * Admits one request of at most `need` tokens, from a lease held here or a new one. One lease
   * call per organization is on its way at a time: a request with no room waits for it (looking
   * as `lookAfter` says) and asks itself only if it brought no room. A busy organization's next
   * lease is asked for ahead, while the open ones still have room, so that its requests do not
   * wait for one.
   */
  async admit(organizationId: string, need: number, c: LeaseContext): Promise<AdmitResult> {
    const org = this.org(organizationId, c);
    let admitted = this.take(org, need, c);
    if (admitted) {
      this.refillAhead(org, need, c);
      return admitted;
    }
    let call = org.leasing;
    if (call) {
      org.waiting += 1;
      try {
        await whileBusy(
          () => {
            if (!org.leasing) return false;
            call = org.leasing;
            admitted = this.take(org, need, c);
            return admitted === undefined;
          },
          LEASE_CALL_WAIT_MS,
          () => (org.leasing ? lookAfter(org, org.leasing.since, c.now()) : 1),
        );
      } finally {
        org.waiting -= 1;
      }
      admitted ??= this.take(org, need, c);
      if (admitted) return admitted;
      // The object refused the call last waited for: this request is refused with it, without a
      // call of its own, when the object would refuse it the same (a flood of requests over a limit
      // costs the object one call per round trip per isolate, not one per request).
      // Not under limits newer than the call's: those may admit it.
      const refused = call.refused;
      if (refused && call.limitsKey === org.limitsKey && refusedAlike(refused.result.refusal, refused.need, need)) {
        return refused.result;
      }
    }
    const granted = await this.lease(org, need, c);
    if (!granted.ok) {
      // Another request's lease may have come in while this one waited.
      return this.take(org, need, c) ?? granted;
    }
    // The request that asked is admitted from its lease even if the call took so long that the
    // lease has expired since: the capacity is held for it either way.
    admitted = this.admitFrom(org, granted.lease, need, c);
    this.keep(org, granted.lease, c);
    return admitted;
  }

  /**
   * Asks the quota object for a lease with room for `need` tokens a request, for as many requests
   * as leases have grown to and the requests waiting for it. Capacity this isolate gives back
   * (leases that expired, ran short or were taken under other limits) goes with the call, so that
   * it counts before the new lease is granted.
   */
  private async lease(
    org: OrgLeases,
    need: number,
    c: LeaseContext,
  ): Promise<{ ok: true; lease: Lease } | Extract<LeaseResult, { ok: false }>> {
    const returns = org.batch?.returns.splice(0) ?? [];
    const id = c.newId();
    const now = c.now();
    const limitsKey = org.limitsKey;
    const mine: LeaseCall = { since: now, limitsKey };
    org.leasing = mine;
    let granted: LeaseResult;
    try {
      const requests = Math.min(MAX_LEASE_REQUESTS, Math.max(org.ask, org.waiting + 1));
      const ask: LeaseAsk = { requests, tokens: requests * need, need };
      if (c.token) ask.token = c.token;
      granted = await c.stub.lease(id, ask, org.limits, now, returns, org.limitsAt);
      noteCall(org, now, c.now());
    } catch (error) {
      if (returns.length) this.batchOf(org, c).returns.push(...returns);
      throw error;
    } finally {
      if (org.leasing === mine) org.leasing = undefined;
    }
    // Limits an admin set since this isolate read its own: the leases taken under the old go back.
    if (granted.announced) this.adopt(org, granted.announced, true, c);
    if (!granted.ok) {
      mine.refused = { need, result: granted };
      return granted;
    }
    return {
      ok: true,
      lease: {
        id,
        minute: minuteOf(now),
        expiresAt: Math.min(now + LEASE_TTL_MS, (minuteOf(now) + 1) * 60_000),
        granted: granted.requests,
        requestsLeft: granted.requests,
        tokensLeft: granted.tokens,
        snapshot: granted.snapshot,
        // The object judged it by limits newer than the ones it was asked under, when it says so.
        limitsKey: granted.announced ? keyOf(granted.announced.limits) : limitsKey,
      },
    };
  }

  /**
   * Asks for the organization's next lease from `c`'s `waitUntil` once the open leases are down to
   * a quarter of one, when leases have grown (`REFILL_AHEAD_ASK`) and no call is on its way. What
   * it brings is there for the requests after; should it fail or be refused, the request that
   * next finds no room asks itself and is told why.
   */
  private refillAhead(org: OrgLeases, need: number, c: LeaseContext): void {
    if (org.leasing || org.ask < REFILL_AHEAD_ASK) return;
    let left = 0;
    for (const lease of org.open) left += lease.requestsLeft;
    if (left * 4 > org.ask) return;
    c.waitUntil(
      this.lease(org, need, c).then(
        // The organization may have gone quiet meanwhile: then this lease goes back soon too.
        (granted) => (granted.ok && this.keep(org, granted.lease, c) ? this.giveBackWhenIdle(org, c) : undefined),
        () => undefined,
      ),
    );
  }

  /**
   * Settles an admitted request to its actual usage and hands its ledger row to the next batch,
   * which the request that opened it sends (from its own `waitUntil`). Resolves true once the
   * batch is stored — by the quota object, or straight in the ledger when the object cannot take
   * it — so that an answer's last byte can wait for its row; false if that took longer than
   * `STORE_WAIT_MS` (the row is still on its way).
   */
  settle(organizationId: string, admission: Admission, request: SettledRequest, c: LeaseContext): Promise<boolean> {
    const org = this.org(organizationId, c);
    org.inflight = Math.max(0, org.inflight - 1);
    const batch = this.batchOf(org, c);
    const settlement: Settlement = {
      id: request.id,
      lease: admission.lease,
      reserved: admission.reserved,
      actual: request.actual,
    };
    if (c.token) settlement.token = c.token.id;
    batch.settlements.push(settlement);
    batch.rows.push(request.entry);
    return batch.sender === c ? storedHere(batch) : storedSeenHere(org, batch, c);
  }

  /**
   * Hands the usage of a request still running (a long stream) to the next batch: the quota object
   * keeps the latest one per request, replaced by its settlement, and bills it as the request's
   * row should the settlement never come (its isolate died).
   */
  checkpoint(organizationId: string, admission: Admission, request: SettledRequest, c: LeaseContext): void {
    const settlement: Settlement = {
      id: request.id,
      lease: admission.lease,
      reserved: admission.reserved,
      actual: request.actual,
    };
    if (c.token) settlement.token = c.token.id;
    this.batchOf(this.org(organizationId, c), c).checkpoints.push({ settlement, row: request.entry });
  }

  /** Forgets organizations that hold nothing here: no lease, no request in flight, nothing to send. */
  private forgetIdle(): void {
    for (const [id, org] of this.orgs) {
      if (org.open.length === 0 && org.inflight === 0 && !org.batch && !org.lingering && !org.leasing) {
        this.orgs.delete(id);
      }
    }
  }

  /** Forgets every lease without giving anything back (tests). */
  clear(): void {
    this.orgs.clear();
  }

  /** The leases of the organization, or of one of its tokens with limits of its own. */
  private org(organizationId: string, c: LeaseContext): OrgLeases {
    const limitsKey = keyOf(c.limits);
    const limitsAt = c.limitsAt ?? c.now();
    // A token's limits never change once minted, so its id names its leases' terms.
    const key = c.token ? `${organizationId} ${c.token.id}` : organizationId;
    let org = this.orgs.get(key);
    if (!org) {
      if (this.orgs.size >= MAX_ORGANIZATIONS) this.forgetIdle();
      org = {
        limitsKey,
        limits: c.limits,
        limitsAt,
        announced: false,
        open: [],
        ask: 1,
        leasing: undefined,
        waiting: 0,
        inflight: 0,
        admissions: 0,
        batch: undefined,
        committing: undefined,
        callMs: undefined,
        callSpreadMs: 0,
        lingering: undefined,
      };
      this.orgs.set(key, org);
    } else if (limitsAt > org.limitsAt || (limitsAt === org.limitsAt && !org.announced)) {
      this.adopt(org, { limits: c.limits, at: limitsAt }, false, c);
    }
    return org;
  }

  /**
   * Judges the organization by newer limits from now on (read by this request, or `announced` by
   * the quota object as an admin set them); different limits make the open leases go back.
   */
  private adopt(org: OrgLeases, news: AnnouncedLimits, announced: boolean, c: LeaseContext): void {
    if (news.at < org.limitsAt) return;
    org.limitsAt = news.at;
    org.announced = announced;
    const limitsKey = keyOf(news.limits);
    if (limitsKey === org.limitsKey) return;
    for (const lease of org.open) this.giveBack(org, lease, c);
    org.open = [];
    org.ask = 1;
    org.limitsKey = limitsKey;
    org.limits = news.limits;
  }

  /**
   * Admits from the first lease with room, closing on the way the leases that expired (halving
   * the next ask if they were mostly unused) or ran out (doubling it).
   */
  private take(org: OrgLeases, need: number, c: LeaseContext): AdmitResult | undefined {
    let found: Lease | undefined;
    const now = c.now();
    const minute = minuteOf(now);
    for (const lease of org.open) {
      if (now >= lease.expiresAt || lease.minute !== minute) {
        if (lease.requestsLeft * 2 > lease.granted) org.ask = Math.max(1, org.ask >> 1);
        this.giveBack(org, lease, c);
      } else if (lease.requestsLeft >= 1 && lease.tokensLeft >= need) {
        found = lease;
        break;
      } else {
        org.ask = Math.min(MAX_LEASE_REQUESTS, org.ask * 2);
        this.giveBack(org, lease, c);
      }
    }
    org.open = org.open.filter((l) => l.requestsLeft > 0);
    if (!found) return undefined;
    const admitted = this.admitFrom(org, found, need, c);
    org.open = org.open.filter((l) => l.requestsLeft > 0);
    return admitted;
  }

  /** Takes one request of `need` tokens out of `lease`, which has room for it. */
  private admitFrom(org: OrgLeases, lease: Lease, need: number, c: LeaseContext): AdmitResult {
    lease.requestsLeft -= 1;
    lease.tokensLeft -= need;
    org.inflight += 1;
    org.admissions += 1;
    const s = lease.snapshot;
    const snapshot = {
      ...s,
      remainingRequests: s.remainingRequests + lease.requestsLeft,
      remainingTokens: s.remainingTokens + lease.tokensLeft,
      monthlyRemaining: s.monthlyRemaining + lease.tokensLeft,
    };
    if (lease.requestsLeft === 0) {
      // Used up before it expired: the next lease may be larger. Tokens it still has go back.
      org.ask = Math.min(MAX_LEASE_REQUESTS, org.ask * 2);
      this.giveBack(org, lease, c);
    }
    return { ok: true, lease: lease.id, reserved: need, snapshot };
  }

  /**
   * Keeps a lease that came back from a call open for the requests after, or gives it back: when it
   * has no room left, has expired while it was asked for (the call took that long), or was taken
   * under limits that changed meanwhile, as the leases open then went back. Says whether it kept it.
   */
  private keep(org: OrgLeases, lease: Lease, c: LeaseContext): boolean {
    if (lease.requestsLeft > 0 && c.now() < lease.expiresAt && lease.limitsKey === org.limitsKey) {
      org.open.push(lease);
      return true;
    }
    this.giveBack(org, lease, c);
    return false;
  }

  private giveBack(org: OrgLeases, lease: Lease, c: LeaseContext): void {
    if (lease.requestsLeft > 0 || lease.tokensLeft > 0) {
      this.batchOf(org, c).returns.push({
        lease: lease.id,
        requests: lease.requestsLeft,
        tokens: lease.tokensLeft,
      });
    }
    lease.requestsLeft = 0;
    lease.tokensLeft = 0;
  }

  /** The organization's open batch. The request that opens one sends it, from its own `waitUntil`. */
  private batchOf(org: OrgLeases, c: LeaseContext): Batch {
    if (org.batch) return org.batch;
    const batch = newBatch(c);
    org.batch = batch;
    c.waitUntil(this.send(org, batch, c));
    return batch;
  }

  /**
   * Sends `batch`, which `c` opened: once the commit on its way has returned (looked at as
   * `lookAfter` says, for at most `PREVIOUS_COMMIT_WAIT_MS`) and, while other requests of the
   * organization run here, for as long as their settlements keep joining it (up to `GATHER_MS`).
   */
  private async send(org: OrgLeases, batch: Batch, c: LeaseContext): Promise<void> {
    // The caller fills the batch it was just handed before it yields: this waits for that.
    await null;
    // (Looked at before awaiting: a lone request's commit goes without a tick's delay.)
    if (org.committing) {
      await whileBusy(
        () => org.committing !== undefined,
        PREVIOUS_COMMIT_WAIT_MS,
        () => (org.committing ? lookAfter(org, org.committing.since, c.now(), 1, true) : 1),
      );
    }
    // Other requests of the organization are running here: their settlements may come soon, and
    // one commit for all of them costs far less than one each. The batch waits while they come: it
    // goes once a look finds nothing new in it (the others run on, as streams and slow answers do),
    // once none runs, when full, or after `GATHER_MS`.
    if (org.inflight > 0) {
      let seen = -1;
      await whileBusy(() => {
        const size = sizeOf(batch);
        const grew = size > seen;
        seen = size;
        return grew && org.inflight > 0 && batch.settlements.length < GATHER_MAX;
      }, GATHER_MS);
    }
    if (org.batch === batch) org.batch = undefined;
    const since = c.now();
    const mine = { since };
    org.committing = mine;
    batch.sentAt = since;
    try {
      await this.commit(org, batch, c);
      markStored(batch);
    } finally {
      if (org.committing === mine) org.committing = undefined;
    }
    await this.giveBackWhenIdle(org, c);
  }

  /** Capacity left in leases of an organization that went quiet goes back soon, not at expiry. */
  private async giveBackWhenIdle(org: OrgLeases, c: LeaseContext): Promise<void> {
    if (org.open.length === 0) return;
    // The latest call waits: one that began earlier may have seen requests its later ones did not.
    const mine = {};
    org.lingering = mine;
    try {
      const seen = org.admissions;
      await sleep(IDLE_RETURN_MS);
      if (org.lingering !== mine || org.inflight > 0 || org.admissions !== seen || org.open.length === 0) return;
      const returns = newBatch(c);
      for (const lease of org.open) {
        if (lease.requestsLeft > 0 || lease.tokensLeft > 0) {
          returns.returns.push({ lease: lease.id, requests: lease.requestsLeft, tokens: lease.tokensLeft });
        }
      }
      org.open = [];
      if (returns.returns.length) await this.commit(org, returns, c);
      markStored(returns);
    } finally {
      if (org.lingering === mine) org.lingering = undefined;
    }
  }

  private async commit(org: OrgLeases, batch: Batch, c: LeaseContext): Promise<void> {
    const report: QuotaCommit = {};
    if (batch.settlements.length) report.settlements = batch.settlements;
    if (batch.returns.length) report.returns = batch.returns;
    if (batch.rows.length) report.rows = ledgerBatch(batch.rows);
    if (batch.checkpoints.length) report.checkpoints = batch.checkpoints;
    const since = c.now();
    try {
      const answer = await c.stub.commit(report, org.limits, since, org.limitsAt);
      noteCall(org, since, c.now());
      if (answer?.announced) this.adopt(org, answer.announced, true, c);
    } catch (error) {
      await this.commitAgain(org, report, since, error, c);
    }
  }

  /**
   * Sends a commit that failed (`COMMIT_AGAIN_MS`) marked as sent before, at the time it was first
   * sent; when the object cannot be reached, the rows go straight to the ledger, and the object
   * leaves them to it should it have taken them after all (`usage-book.ts`). Capacity given back is
   * not sent again (a return counted twice would free capacity still in use); the object releases
   * it when the lease expires there. A checkpoint is only a stand-in for a settlement still to come,
   * which goes straight to the ledger if it must.
   */
  private async commitAgain(
    org: OrgLeases,
    { returns: _, ...report }: QuotaCommit,
    since: number,
    error: unknown,
    c: LeaseContext,
  ): Promise<void> {
    if (!report.settlements && !report.checkpoints && !report.rows) return;
    let last = error;
    for (const pause of COMMIT_AGAIN_MS) {
      await sleep(pause);
      try {
        const answer = await c.stub.commit({ ...report, again: true }, org.limits, since, org.limitsAt);
        if (answer?.announced) this.adopt(org, answer.announced, true, c);
        return;
      } catch (failed) {
        last = failed;
      }
    }
    if (report.rows) await c.fallback(report.rows, last);
  }
}

/**
 * Whether a request of `need` tokens is refused as one of `refusedNeed` was, at the same standing:
 * one of the same size is; a smaller one is when no request at all was left this minute (the
 * checks before that one, its size and the month's budget, it passes as the larger one did).
 */
function refusedAlike(refusal: QuotaRefusal, refusedNeed: number, need: number): boolean {
  return need === refusedNeed || (refusal === "requests_per_minute" && need < refusedNeed);
}

/**
 * Whether `batch` of `org`'s, which another request sends, was stored within `STORE_WAIT_MS`:
 * looked at on the timers of `c`, the request waiting, as `lookAfter` says (a batch still gathering
 * goes within `GATHER_MS`, or once the commit before it returns), or every `UNSENT_LOOK_MS` until a
 * call to the object has returned here.
 */
async function storedSeenHere(org: OrgLeases, batch: Batch, c: LeaseContext): Promise<boolean> {
  await whileBusy(
    () => !batch.isStored,
    STORE_WAIT_MS,
    () => {
      const now = c.now();
      if (batch.sentAt !== undefined) return lookAfter(org, batch.sentAt, now);
      if (org.callMs === undefined) return UNSENT_LOOK_MS;
      // It goes once the commit before it returns, and is due a call after that one; or it goes now.
      const next = org.committing ? lookAfter(org, org.committing.since, now, 2) : lookAfter(org, now, now);
      return Math.max(UNSENT_LOOK_MS, next);
    },
  );
  return batch.isStored;
}

/**
 * Whether `batch`, which this request opened and sends, was stored within `STORE_WAIT_MS`: on a
 * promise and a timer of this request, which its own `send` resolves.
 */
function storedHere(batch: Batch): Promise<boolean> {
  if (batch.isStored) return Promise.resolve(true);
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), STORE_WAIT_MS);
    batch.wakeSender.push(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Marks `batch` stored, in the context of the request that sent it. */
function markStored(batch: Batch): void {
  batch.isStored = true;
  for (const wake of batch.wakeSender.splice(0)) wake();
}

/** What `batch` carries: settlements, capacity given back and checkpoints. */
function sizeOf(batch: Batch): number {
  return batch.settlements.length + batch.returns.length + batch.checkpoints.length;
}

/** An empty batch. */
function newBatch(sender: LeaseContext): Batch {
  return {
    settlements: [],
    returns: [],
    rows: [],
    checkpoints: [],
    sender,
    isStored: false,
    sentAt: undefined,
    wakeSender: [],
  };
}
