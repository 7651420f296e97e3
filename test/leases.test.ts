import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { ledgerEntry, ledgerRows } from "../worker/inference/ledger";
import {
  GATHER_MS,
  IDLE_RETURN_MS,
  LEASE_CALL_WAIT_MS,
  type LeaseContext,
  QuotaLeases,
  type SettledRequest,
} from "../worker/quota/leases";
import type { QuotaLimits } from "../worker/quota/org-quota";
import { ledgerRow, usageRows } from "./helpers/ledger";

const NOW = Date.parse("2026-06-15T12:00:10Z");
const roomy: QuotaLimits = { requestsPerMinute: 10_000, tokensPerMinute: 10_000_000, monthlyTokenBudget: 1e12 };

/**
 * One isolate's view: its own `QuotaLeases` over the organization's real quota object, a clock,
 * and the `waitUntil` work it started, so a test can wait for its batches to land.
 */
function isolate(organization: string, limits: QuotaLimits, overrides: Partial<LeaseContext> = {}) {
  const leases = new QuotaLeases();
  const pending: Promise<unknown>[] = [];
  /** Calls to the object: `settling` counts the commits that carry settlements (not only capacity given back). */
  const calls = { lease: 0, commit: 0, settling: 0 };
  const real = env.QUOTA.get(env.QUOTA.idFromName(organization));
  let ids = 0;
  const context: LeaseContext = {
    stub: {
      lease: (...args: Parameters<typeof real.lease>) => {
        calls.lease += 1;
        return real.lease(...args);
      },
      commit: (...args: Parameters<typeof real.commit>) => {
        calls.commit += 1;
        if (args[0].settlements?.length) calls.settling += 1;
        return real.commit(...args);
      },
    },
    limits,
    now: () => NOW,
    newId: () => `${organization}-lease-${++ids}`,
    waitUntil: (work) => pending.push(work),
    fallback: async () => {},
    ...overrides,
  };
  const settled = async () => {
    while (pending.length) await Promise.all(pending.splice(0));
  };
  /** `count` requests of `tokens` tokens one after another, each settled at what it reserved. */
  const serve = async (count: number, tokens = 10) => {
    for (let i = 0; i < count; i++) {
      const a = await leases.admit(organization, tokens, context);
      if (!a.ok) throw new Error(`refused: ${a.refusal}`);
      void leases.settle(organization, a, row(`${organization}-${crypto.randomUUID()}`, organization, tokens), context);
    }
  };
  return { leases, context, calls, settled, serve, quota: real };
}

/**
 * Makes the first call of `method` through `context` never return, as a call whose request the
 * runtime ended; the calls after it go through. Counts the calls made.
 */
function firstCallNeverReturns(context: LeaseContext, method: "lease" | "commit"): { made: number } {
  const calls = { made: 0 };
  const real = context.stub[method] as (...args: unknown[]) => Promise<never>;
  context.stub = {
    ...context.stub,
    [method]: (...args: unknown[]) => {
      calls.made += 1;
      return calls.made === 1 ? new Promise(() => {}) : real(...args);
    },
  };
  return calls;
}

/** A finished request of `totalTokens` tokens and its ledger row. */
function row(id: string, organizationId: string, totalTokens: number): SettledRequest {
  return { id, actual: totalTokens, entry: ledgerEntry(ledgerRow(id, totalTokens, { organizationId })) };
}

describe("quota leases", () => {
  it("commit a lone request's settlement at once, with no gathering delay before its answer", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls } = isolate(org, roomy);
    for (let i = 0; i < 3; i++) {
      const a = await leases.admit(org, 10, context);
      if (!a.ok) throw new Error(`refused: ${a.refusal}`);
      const before = calls.commit;
      const stored = leases.settle(org, a, row(`${org}-${i}`, org, 10), context);
      // Nothing else runs, so nothing is waited for: the commit is on its way within a few
      // microtasks, before any timer (GATHER_MS) could have fired.
      for (let tick = 0; tick < 3; tick++) await null;
      expect(calls.commit).toBe(before + 1);
      expect(await stored).toBe(true);
    }
  });

  it("tell a request whose row another request sends that it is stored, on its own timers", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, settled } = isolate(org, roomy);
    // Two requests of one isolate: each has a context of its own, as each proxied request does.
    const other: LeaseContext = { ...context };
    const [a, b] = await Promise.all([leases.admit(org, 10, context), leases.admit(org, 10, other)]);
    if (!a?.ok || !b?.ok) throw new Error("refused");
    const first = leases.settle(org, a, row(`${org}-a`, org, 10), context);
    const second = leases.settle(org, b, row(`${org}-b`, org, 10), other);
    expect(await Promise.all([first, second])).toEqual([true, true]);
    await settled();
    expect(calls.settling).toBe(1);
    expect(
      (await usageRows())
        .filter((r) => r.organizationId === org)
        .map((r) => r.id)
        .sort(),
    ).toEqual([`${org}-a`, `${org}-b`]);
  });

  it("gather the settlements of requests running together into one commit", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, settled } = isolate(org, roomy);
    const admitted = await Promise.all(Array.from({ length: 20 }, () => leases.admit(org, 10, context)));
    const commitsBefore = calls.settling;
    const stored = admitted.map(async (a, i) => {
      if (!a.ok) throw new Error(`refused: ${a.refusal}`);
      // Each finishes a moment after the one before, as answers of one busy isolate do.
      await new Promise((resolve) => setTimeout(resolve, i % 3));
      return leases.settle(org, a, row(`${org}-${i}`, org, 10), context);
    });
    expect(await Promise.all(stored)).toEqual(Array(20).fill(true));
    await settled();
    // Without gathering, the first settlement would go alone and the rest after it: two commits at least.
    expect(calls.settling - commitsBefore).toBe(1);
    expect((await usageRows()).filter((r) => r.organizationId === org)).toHaveLength(20);
  });

  it("send a batch once no settlement joins it, not held back by a request that runs on", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, settled } = isolate(org, roomy);
    // A long stream of the same organization is running in the isolate while a short answer ends.
    const [short, long] = await Promise.all([leases.admit(org, 10, context), leases.admit(org, 10, context)]);
    if (!short?.ok || !long?.ok) throw new Error("refused");
    const before = calls.settling;
    const stored = leases.settle(org, short, row(`${org}-short`, org, 10), context);
    // One look finds nothing new, so the batch goes: before the gathering time is up.
    await new Promise((resolve) => setTimeout(resolve, GATHER_MS - 2));
    expect(calls.settling).toBe(before + 1);
    expect(await stored).toBe(true);
    // The stream ends later and goes in a commit of its own.
    expect(await leases.settle(org, long, row(`${org}-long`, org, 10), context)).toBe(true);
    await settled();
    expect(calls.settling).toBe(before + 2);
    expect((await usageRows()).filter((r) => r.organizationId === org)).toHaveLength(2);
  });

  it("keep gathering while settlements keep joining, one before each look, into one commit", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, settled } = isolate(org, roomy);
    const admitted = await Promise.all(Array.from({ length: 4 }, () => leases.admit(org, 10, context)));
    const before = calls.settling;
    const stored: Promise<boolean>[] = [];
    for (const [i, a] of admitted.entries()) {
      if (!a.ok) throw new Error(`refused: ${a.refusal}`);
      stored.push(leases.settle(org, a, row(`${org}-${i}`, org, 10), context));
      // The next answer ends half a millisecond later: before the batch's next look, a millisecond on.
      if (i < admitted.length - 1) await new Promise((resolve) => setTimeout(resolve, 0.5));
    }
    expect(await Promise.all(stored)).toEqual([true, true, true, true]);
    await settled();
    expect(calls.settling - before).toBe(1);
  });

  it("admit most requests without a call to the quota object, and settle them in batches", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, settled, quota } = isolate(org, roomy);
    let n = 0;
    for (let round = 0; round < 10; round++) {
      const admitted = await Promise.all(Array.from({ length: 20 }, () => leases.admit(org, 50, context)));
      for (const a of admitted) {
        if (!a.ok) throw new Error(`refused: ${a.refusal}`);
        n += 1;
        void leases.settle(org, a, row(`${org}-${n}`, org, 20), context);
      }
    }
    await settled();
    // 200 requests: the first ones each ask for a lease, the leases grow, and most need none.
    expect(calls.lease).toBeLessThan(60);
    expect(calls.commit).toBeLessThan(30);
    await new Promise((resolve) => setTimeout(resolve, IDLE_RETURN_MS * 3));
    await settled();
    // Once the isolate is idle, what its leases held goes back: the object counts actual usage only.
    expect(await quota.peek(roomy, NOW)).toMatchObject({ monthTokens: 200 * 20, remainingRequests: 10_000 - 200 });
    const rows = await usageRows();
    expect(rows.filter((r) => r.organizationId === org)).toHaveLength(200);
  });

  it("ask for one lease at a time: requests with no room wait for it, and leases hold what they admit", async () => {
    const org = crypto.randomUUID();
    const { leases, context, calls, quota } = isolate(org, roomy);
    // 32 requests at once on an isolate with no lease: each asking on its own would be 32 calls,
    // whose leases would then idle in the isolate until they expired.
    const admitted = await Promise.all(Array.from({ length: 32 }, () => leases.admit(org, 10, context)));
    expect(admitted.every((a) => a.ok)).toBe(true);
    // The first asks for one; the others wait for it, and one of them asks for them all.
    expect(calls.lease).toBe(2);
    expect((await quota.peek(roomy, NOW)).remainingRequests).toBe(roomy.requestsPerMinute - 32);
  });

  it("refuse the requests that waited for a refused lease call with it, without a call each", async () => {
    const org = crypto.randomUUID();
    const limits: QuotaLimits = { requestsPerMinute: 1, tokensPerMinute: 1_000_000, monthlyTokenBudget: 1e9 };
    const { leases, context, calls } = isolate(org, limits);
    expect((await leases.admit(org, 10, context)).ok).toBe(true);
    const before = calls.lease;
    // A flood over the limit: one call is refused, and the requests that waited for it with it,
    // those that need fewer tokens than the one that asked too.
    const results = await Promise.all(
      Array.from({ length: 50 }, (_, i) => leases.admit(org, i % 2 ? 5 : 10, { ...context })),
    );
    expect(results.every((r) => !r.ok && r.refusal === "requests_per_minute" && r.retryAfterSeconds > 0)).toBe(true);
    expect(calls.lease - before).toBe(1);
    // A larger request is not refused by a call for a smaller one: it asks, and is told why itself.
    const [small, large] = await Promise.all([
      leases.admit(org, 10, context),
      leases.admit(org, 2_000_000, { ...context }),
    ]);
    expect(small).toMatchObject({ ok: false, refusal: "requests_per_minute" });
    expect(large).toMatchObject({ ok: false, refusal: "request_too_large" });
    expect(calls.lease - before).toBe(3);
  });

  it("ask for a busy organization's next lease while its leases still have room", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled, serve } = isolate(org, roomy);
    await serve(60);
    // From now on a lease call returns only when the test lets it.
    const real = context.stub.lease;
    const held: (() => void)[] = [];
    context.stub = {
      ...context.stub,
      lease: (...args) => new Promise((resolve) => held.push(() => resolve(real(...args)))),
    };
    const waited = () => new Promise<"waited">((resolve) => setTimeout(() => resolve("waited"), 50));
    let served = 0;
    while (held.length === 0 && served < 500) {
      expect(await Promise.race([serve(1).then(() => "served"), waited()])).toBe("served");
      served += 1;
    }
    // The call went out before the leases ran out: the next requests are admitted without it.
    expect(held.length).toBe(1);
    const next = await Promise.race([leases.admit(org, 10, context), waited()]);
    expect(next).toMatchObject({ ok: true });
    for (const release of held.splice(0)) release();
    await settled();
  });

  it("give back a lease asked for ahead when the limits changed while it was on its way", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled, serve } = isolate(org, roomy, { limitsAt: NOW - 1_000 });
    await serve(60);
    // The next lease call is held until the test lets it go; the calls after it go through.
    const real = context.stub.lease;
    const asked: QuotaLimits[] = [];
    let release = () => {};
    context.stub = {
      ...context.stub,
      lease: (...args) => {
        asked.push(args[2]);
        if (asked.length > 1) return real(...args);
        return new Promise((resolve) => {
          release = () => resolve(real(...args));
        });
      },
    };
    while (asked.length === 0) await serve(1);
    // A request reads newer limits while the call asked under the old ones is on its way.
    const tighter: QuotaLimits = { ...roomy, requestsPerMinute: roomy.requestsPerMinute - 1 };
    const admitted = leases.admit(org, 10, { ...context, limits: tighter, limitsAt: NOW });
    await new Promise((resolve) => setTimeout(resolve, 5));
    release();
    expect(await admitted).toMatchObject({ ok: true });
    // It was admitted on a lease asked for under the newer limits, not on the one asked ahead.
    expect(asked).toEqual([roomy, tighter]);
    await settled();
  });

  it("security: does not refuse a request under raised limits with the refusal of a call asked under the old", async () => {
    const org = crypto.randomUUID();
    const tight: QuotaLimits = { ...roomy, requestsPerMinute: 1 };
    const raised: QuotaLimits = { ...roomy, requestsPerMinute: 100 };
    const { leases, context, settled } = isolate(org, tight, { limitsAt: NOW - 1_000 });
    expect(await leases.admit(org, 10, context)).toMatchObject({ ok: true });
    // The next request's call, under the old limit, is on its way when a request under the raised
    // limit (read later) comes and waits for it.
    let release = () => {};
    const real = context.stub.lease;
    const held: LeaseContext = {
      ...context,
      stub: {
        ...context.stub,
        lease: (...args: Parameters<typeof real>) =>
          new Promise((resolve) => {
            release = () => resolve(real(...args));
          }),
      },
    };
    const old = leases.admit(org, 10, held);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const newer = leases.admit(org, 10, { ...context, limits: raised, limitsAt: NOW });
    await new Promise((resolve) => setTimeout(resolve, 5));
    release();
    expect(await old).toMatchObject({ ok: false, refusal: "requests_per_minute" });
    expect(await newer).toMatchObject({ ok: true });
    await settled();
  });

  it("ask for a lease itself when the call it waited for never returns, as when its request was ended", async () => {
    const org = crypto.randomUUID();
    const { leases, context } = isolate(org, roomy);
    const leaseCalls = firstCallNeverReturns(context, "lease");
    void leases.admit(org, 10, context);
    const started = Date.now();
    expect(await leases.admit(org, 10, { ...context })).toMatchObject({ ok: true });
    expect(leaseCalls.made).toBe(2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(LEASE_CALL_WAIT_MS - 10);
  });

  it("never admit more than the limit across isolates, and admit exactly the limit when asked for more", async () => {
    const org = crypto.randomUUID();
    const limits: QuotaLimits = { requestsPerMinute: 120, tokensPerMinute: 1_000_000, monthlyTokenBudget: 1e9 };
    const isolates = [isolate(org, limits), isolate(org, limits), isolate(org, limits)];
    // One request after another first, so that each isolate's leases grow past one request.
    let admitted = 0;
    for (const i of isolates) {
      for (let n = 0; n < 10; n++) if ((await i.leases.admit(org, 10, i.context)).ok) admitted += 1;
    }
    const results = await Promise.all(
      isolates.flatMap((i) => Array.from({ length: 100 }, () => i.leases.admit(org, 10, i.context))),
    );
    admitted += results.filter((r) => r.ok).length;
    expect(admitted).toBeLessThanOrEqual(120);
    // Capacity a lease holds in one isolate is not lost: after it goes back, the rest are admitted.
    await new Promise((resolve) => setTimeout(resolve, IDLE_RETURN_MS * 3));
    await Promise.all(isolates.map((i) => i.settled()));
    const more = await Promise.all(
      isolates.flatMap((i) => Array.from({ length: 100 }, () => i.leases.admit(org, 10, i.context))),
    );
    expect(admitted + more.filter((r) => r.ok).length).toBe(120);
    const refused = more.find((r) => !r.ok);
    expect(refused).toMatchObject({ ok: false, refusal: "requests_per_minute" });
  });

  it("never let concurrent requests in several isolates exceed the monthly budget", async () => {
    const org = crypto.randomUUID();
    const limits: QuotaLimits = { requestsPerMinute: 100_000, tokensPerMinute: 10_000_000, monthlyTokenBudget: 1_000 };
    const isolates = [isolate(org, limits), isolate(org, limits)];
    const results = await Promise.all(
      isolates.flatMap((i) => Array.from({ length: 60 }, () => i.leases.admit(org, 30, i.context))),
    );
    expect(results.filter((r) => r.ok).length * 30).toBeLessThanOrEqual(1_000);
    expect(results.find((r) => !r.ok)).toMatchObject({ refusal: "monthly_budget" });
  });

  it("give a lease back at once when the organization's limits change", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled, serve, quota } = isolate(org, roomy);
    await serve(40);
    const tight: QuotaLimits = { requestsPerMinute: 41, tokensPerMinute: 10_000, monthlyTokenBudget: 1e9 };
    context.limits = tight;
    const first = await leases.admit(org, 10, context);
    expect(first.ok).toBe(true);
    // Whatever the old leases held went back: one more request fits and the next does not.
    const second = await leases.admit(org, 10, context);
    expect(second).toMatchObject({ ok: false, refusal: "requests_per_minute" });
    await settled();
    expect((await quota.peek(tight, NOW)).remainingRequests).toBe(0);
  });

  it("take limits an admin set since from the quota object's answer to a commit", async () => {
    const org = crypto.randomUUID();
    const leaseCalls: Parameters<LeaseContext["stub"]["lease"]>[] = [];
    const { leases, context, settled, serve, quota } = isolate(org, roomy, { limitsAt: NOW - 1_000 });
    const real = context.stub.lease;
    context.stub = {
      ...context.stub,
      lease: (...args) => {
        leaseCalls.push(args);
        return real(...args);
      },
    };
    await serve(40);
    const tight: QuotaLimits = { requestsPerMinute: 41, tokensPerMinute: 10_000, monthlyTokenBudget: 1e9 };
    await quota.announceLimits(tight, NOW);
    // The isolate's open lease goes back with a commit after the announcement (its batch, or its
    // idle return), whose answer carries the new limits: the next lease call asks under them.
    await settled();
    const calledBefore = leaseCalls.length;
    // 40 requests are used: one more fits the new limit and the next does not.
    expect((await leases.admit(org, 10, context)).ok).toBe(true);
    expect(await leases.admit(org, 10, context)).toMatchObject({ ok: false, refusal: "requests_per_minute" });
    const [, ask, limits, , , limitsAt] = leaseCalls[calledBefore] ?? [];
    expect({ ask, limits, limitsAt }).toEqual({
      ask: { requests: 1, tokens: 10, need: 10 },
      limits: tight,
      limitsAt: NOW,
    });
    await settled();
    expect(await quota.peek(tight, NOW)).toMatchObject({ remainingRequests: 0, limitRequests: 41 });
  });

  it("charge a request that used more than it reserved in full", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled, quota } = isolate(org, roomy);
    const a = await leases.admit(org, 10, context);
    if (!a.ok) throw new Error("refused");
    await leases.settle(org, a, row(`${org}-big`, org, 250), context);
    await new Promise((resolve) => setTimeout(resolve, IDLE_RETURN_MS * 3));
    await settled();
    expect((await quota.peek(roomy, NOW)).monthTokens).toBe(250);
  });

  it("admit the request that asked even when the lease call outlasted the lease, and give the rest back", async () => {
    const org = crypto.randomUUID();
    let now = NOW;
    const { leases, context, settled, serve, quota } = isolate(org, roomy, { now: () => now });
    // Grow the next ask past one request.
    await serve(3);
    now += 2_000;
    const slowStub = context.stub;
    context.stub = {
      ...slowStub,
      lease: async (...args: Parameters<typeof slowStub.lease>) => {
        const granted = await slowStub.lease(...args);
        now += 1_500; // the call took longer than a lease lives
        return granted;
      },
    };
    const late = await leases.admit(org, 10, context);
    expect(late.ok).toBe(true);
    await settled();
    // Only the late request holds anything: what else its lease had went straight back.
    const standing = await quota.peek(roomy, now);
    expect(standing.remainingRequests).toBe(roomy.requestsPerMinute - 4);
  });

  it("keep capacity to give back when the lease call fails, and send it all the same", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled, serve, quota } = isolate(org, roomy);
    await serve(4);
    // The last lease still holds requests: this isolate has capacity it has not used.
    expect((await quota.peek(roomy, NOW)).remainingRequests).toBeLessThan(roomy.requestsPerMinute - 4);
    const working = context.stub;
    context.stub = { ...working, lease: () => Promise.reject(new Error("object unreachable")) };
    // A request larger than the lease holds makes the isolate give the lease back and ask anew.
    await expect(leases.admit(org, 5_000, context)).rejects.toThrow("object unreachable");
    context.stub = working;
    await settled();
    expect((await quota.peek(roomy, NOW)).remainingRequests).toBe(roomy.requestsPerMinute - 4);
  });

  it("write the rows straight to the ledger when the quota object cannot take them", async () => {
    const org = crypto.randomUUID();
    const fellBack: string[] = [];
    const { leases, context, settled } = isolate(org, roomy, {
      fallback: async (rows) => {
        fellBack.push(...ledgerRows(rows).map((r) => r.id));
      },
    });
    const a = await leases.admit(org, 10, context);
    if (!a.ok) throw new Error("refused");
    context.stub = { ...context.stub, commit: () => Promise.reject(new Error("object unreachable")) };
    await leases.settle(org, a, row(`${org}-lost`, org, 7), context);
    await settled();
    expect(fellBack).toEqual([`${org}-lost`]);
  });

  it("have each request send at most the batch it opened, so that none works on while others keep settling", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled } = isolate(org, roomy);
    const real = context.stub.commit;
    // Commits slower than settlements come: a batch is always open when a commit returns.
    context.stub = {
      ...context.stub,
      commit: async (...args) => {
        await new Promise((resolve) => setTimeout(resolve, 5));
        return real(...args);
      },
    };
    /** A request with a `waitUntil` of its own: the runtime ends its work 30 s after its answer. */
    const request = () => {
      const work: Promise<unknown>[] = [];
      const c: LeaseContext = { ...context, waitUntil: (w) => work.push(w) };
      return { c, work };
    };
    const serveOne = async (r: ReturnType<typeof request>, i: number) => {
      const a = await leases.admit(org, 10, r.c);
      if (!a.ok) throw new Error(`refused: ${a.refusal}`);
      return leases.settle(org, a, row(`${org}-${i}`, org, 10), r.c);
    };
    const first = request();
    // Its settlement opens a batch, which it sends; the others settle while that commit is on its way.
    const firstStored = serveOne(first, 0);
    while (first.work.length === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    let firstDone = false;
    void Promise.all(first.work).then(() => {
      firstDone = true;
    });
    const stored: Promise<boolean>[] = [];
    for (let i = 1; i <= 100; i++) {
      stored.push(serveOne(request(), i));
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // The first request's work ended with its batch, not with the load.
    expect(firstDone).toBe(true);
    expect(await firstStored).toBe(true);
    expect(await Promise.all(stored)).toEqual(Array(100).fill(true));
    await settled();
    expect((await usageRows()).filter((r) => r.organizationId === org)).toHaveLength(101);
  });

  it("look at a call another request made about when it is due, not every millisecond, however far the object", async () => {
    const org = crypto.randomUUID();
    const { leases, context, settled } = isolate(org, roomy, { now: () => Date.now() });
    // An object in another location: each call takes 40 ms, the first 150 as the object starts
    // (on the runtime's scheduler, so that the timers counted below are the requests' own looks).
    const CALL_MS = 40;
    const sent = { commits: 0, calls: 0 };
    const far =
      <A extends unknown[], R>(call: (...args: A) => Promise<R>, counted?: "commits") =>
      async (...args: A): Promise<R> => {
        if (counted) sent[counted] += 1;
        await scheduler.wait(sent.calls++ === 0 ? 150 : CALL_MS);
        return call(...args);
      };
    context.stub = { lease: far(context.stub.lease), commit: far(context.stub.commit, "commits") };
    const looks = { count: 0 };
    const timers = globalThis.setTimeout;
    globalThis.setTimeout = ((...args: Parameters<typeof setTimeout>) => {
      looks.count += 1;
      return timers(...args);
    }) as typeof setTimeout;
    try {
      // Requests of one isolate, each with a context of its own: a few one after another, from
      // which the isolate learns how long its calls take, then twenty together.
      /** Settles an admitted request; resolves with whether its row was stored, and when that was seen. */
      const settleOne = async (a: Awaited<ReturnType<typeof leases.admit>>, id: string) => {
        if (!a.ok) throw new Error(`refused: ${a.refusal}`);
        const stored = await leases.settle(org, a, row(`${org}-${id}`, org, 10), { ...context });
        return { stored, at: Date.now() };
      };
      for (let i = 0; i < 3; i++) {
        expect((await settleOne(await leases.admit(org, 10, { ...context }), `${i}`)).stored).toBe(true);
      }
      const admitted = await Promise.all(Array.from({ length: 20 }, () => leases.admit(org, 10, { ...context })));
      looks.count = 0;
      const before = sent.commits;
      // Ten answers end together, and their batch goes; ten more end while its commit is on its way.
      const first = admitted.slice(0, 10).map((a, i) => settleOne(a, `first-${i}`));
      while (sent.commits === before) await scheduler.wait(1);
      const second = admitted.slice(10).map((a, i) => settleOne(a, `second-${i}`));
      const batches = [await Promise.all(first), await Promise.all(second)];
      // 18 requests waited for a commit another request sent, 40 or 80 ms: looking every
      // millisecond, they looked over 300 times. Looking from when it may be back, a look or two
      // each; the second batch's sender looks for the commit before its own, and each sender has
      // two timers of its own (its cap on the wait, the give-back when idle).
      expect(sent.commits - before).toBe(2);
      expect(looks.count).toBeLessThanOrEqual(18 * 2 + 2 + 2 * 2);
      // And none saw its row stored much later than the request that sent it, whose own `send`
      // wakes it: a look's step, and the timers' slack on a loaded machine (a waiter that looked
      // only once a call would be a call late).
      for (const [sender, ...waiters] of batches) {
        expect(sender?.stored).toBe(true);
        for (const w of waiters) {
          expect(w.stored).toBe(true);
          expect(w.at - (sender?.at ?? 0)).toBeLessThanOrEqual(CALL_MS / 2);
        }
      }
      await settled();
    } finally {
      globalThis.setTimeout = timers;
    }
    expect((await usageRows()).filter((r) => r.organizationId === org)).toHaveLength(23);
  });

  it("send the next batch when the commit before it never returns, as when its request was ended", async () => {
    const org = crypto.randomUUID();
    const { leases, context } = isolate(org, roomy);
    const commits = firstCallNeverReturns(context, "commit");
    const [a, b] = await Promise.all([leases.admit(org, 10, context), leases.admit(org, 10, context)]);
    if (!a?.ok || !b?.ok) throw new Error("refused");
    const first = leases.settle(org, a, row(`${org}-stuck`, org, 10), context);
    while (commits.made === 0) await new Promise((resolve) => setTimeout(resolve, 1));
    // Stored within the answer's cap (`STORE_WAIT_MS`), although the commit before it never returned.
    const second = leases.settle(org, b, row(`${org}-next`, org, 10), { ...context });
    expect(await second).toBe(true);
    expect(await first).toBe(false);
    expect((await usageRows()).filter((r) => r.organizationId === org).map((r) => r.id)).toEqual([`${org}-next`]);
  });
});
