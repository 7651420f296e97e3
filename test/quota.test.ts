import { evictDurableObject, runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq, sql } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { verifyAuditChain } from "../worker/audit/log";
import { createDatabase } from "../worker/db/client";
import { auditEvents, organizationLimits, usageHours, usageLedger } from "../worker/db/schema";
import { type LedgerRow, ledgerBatch, ledgerEntry, writeUsageRows } from "../worker/inference/ledger";
import type { QuotaLimits, TokenQuota } from "../worker/quota/org-quota";
import { hourOf } from "../worker/usage/hours";
import { accessHeaders, adminToken } from "./helpers/access";
import { heldWrites } from "./helpers/bindings";
import { seedGrant, seedLicense, testGateway } from "./helpers/fixtures";
import { ledgerRow, usageRows } from "./helpers/ledger";
import { joinByInvitation, signedInMember } from "./helpers/members";

const limits = { requestsPerMinute: 50, tokensPerMinute: 1_000_000, monthlyTokenBudget: 100_000_000 };
const NOW = Date.parse("2026-06-15T12:00:10Z");

/**
 * An organization's quota object used one request at a time, as an isolate whose every lease is
 * a single request would: `reserve` leases exactly one request's worth, `settle` commits that
 * request's usage (and its ledger row) against its lease.
 */
function quota(name = crypto.randomUUID()) {
  const stub = env.QUOTA.get(env.QUOTA.idFromName(name));
  const reserved = new Map<string, number>();
  return {
    stub,
    peek: (l: QuotaLimits, now: number) => stub.peek(l, now),
    async reserve(id: string, tokens: number, l: QuotaLimits, now: number) {
      const result = await stub.lease(id, { requests: 1, tokens, need: tokens }, l, now);
      if (result.ok) reserved.set(id, tokens);
      return result;
    },
    settle: (id: string, actual: number, l: QuotaLimits, now: number, row?: LedgerRow) =>
      stub.commit(
        {
          settlements: [{ id, lease: id, reserved: reserved.get(id) ?? 0, actual }],
          rows: row ? ledgerBatch([ledgerEntry(row)]) : undefined,
        },
        l,
        now,
      ),
  };
}

describe("OrgQuota", () => {
  it("admits exactly the requests-per-minute limit out of 200 concurrent requests", async () => {
    const q = quota();
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => q.reserve(`r${i}`, 10, limits, NOW)));
    expect(results.filter((r) => r.ok)).toHaveLength(50);
    const refused = results.filter((r) => !r.ok);
    expect(refused).toHaveLength(150);
    expect(refused[0]).toMatchObject({ refusal: "requests_per_minute", retryAfterSeconds: 50 });
  });

  it("security: takes a lease's unused capacity back once, however often the return comes", async () => {
    const q = quota();
    // A lease of 4 requests, 10 tokens each; 2 of them run, 2 go back. The return's call lost its
    // answer, so it comes again with the next call: the running requests' capacity stays held.
    const lease = await q.stub.lease("L", { requests: 4, tokens: 40, need: 10 }, limits, NOW);
    expect(lease).toMatchObject({ ok: true, requests: 4 });
    const back = { lease: "L", requests: 2, tokens: 20 };
    await q.stub.commit({ returns: [back] }, limits, NOW);
    const once = await q.peek(limits, NOW);
    await q.stub.commit({ returns: [back] }, limits, NOW);
    await q.stub.lease("M", { requests: 1, tokens: 10, need: 10 }, limits, NOW, [back]);
    const again = await q.peek(limits, NOW);
    expect(again.remainingRequests).toBe(once.remainingRequests - 1);
    expect(again.monthTokens).toBe(once.monthTokens + 10);
    expect(once.monthTokens).toBe(20);
  });

  it("never lets concurrent reservations exceed the monthly budget", async () => {
    const q = quota();
    const tight = { requestsPerMinute: 10_000, tokensPerMinute: 10_000_000, monthlyTokenBudget: 1_000 };
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => q.reserve(`r${i}`, 30, tight, NOW)));
    const admitted = results.filter((r) => r.ok).length;
    expect(admitted).toBe(33);
    expect(admitted * 30).toBeLessThanOrEqual(1_000);
    const refusal = results.find((r) => !r.ok);
    expect(refusal).toMatchObject({ refusal: "monthly_budget" });
    // Retry-After runs to the end of the month (2026-07-01T00:00:00Z).
    expect(refusal && !refusal.ok && refusal.retryAfterSeconds).toBe((Date.parse("2026-07-01T00:00:00Z") - NOW) / 1000);
  });

  it("counts a repeated settlement once, also after thousands of others since", async () => {
    const q = quota();
    const roomy = { requestsPerMinute: 100_000, tokensPerMinute: 100_000_000, monthlyTokenBudget: 100_000_000 };
    // Settlements of leases the object no longer knows count as usage as they come.
    const settle = (ids: string[]) =>
      q.stub.commit({ settlements: ids.map((id) => ({ id, lease: "gone", reserved: 0, actual: 1 })) }, roomy, NOW);
    const first = Array.from({ length: 6_000 }, (_, i) => `s${i}`);
    await settle(first);
    expect((await q.peek(roomy, NOW)).monthTokens).toBe(6_000);
    await settle(["s0", "s2999", "s5999"]);
    await settle(first.slice(0, 10));
    expect((await q.peek(roomy, NOW)).monthTokens).toBe(6_000);
  });

  it("settles reservations to actual usage, giving unused tokens back", async () => {
    const q = quota();
    const small = { requestsPerMinute: 100, tokensPerMinute: 1_000, monthlyTokenBudget: 1_000_000 };
    expect((await q.reserve("a", 600, small, NOW)).ok).toBe(true);
    expect(await q.reserve("b", 600, small, NOW)).toMatchObject({ ok: false, refusal: "tokens_per_minute" });
    const after = await q.settle("a", 100, small, NOW);
    expect(after.snapshot.remainingTokens).toBe(900);
    expect((await q.reserve("b", 600, small, NOW)).ok).toBe(true);
    const standing = await q.peek(small, NOW);
    expect(standing).toMatchObject({ monthTokens: 700, remainingRequests: 98 });
  });

  it("charges usage beyond the reservation in full", async () => {
    const q = quota();
    await q.reserve("a", 10, limits, NOW);
    await q.settle("a", 250, limits, NOW);
    expect((await q.peek(limits, NOW)).monthTokens).toBe(250);
  });

  it("opens a new window each minute and a new budget each month", async () => {
    const q = quota();
    const one = { requestsPerMinute: 1, tokensPerMinute: 100, monthlyTokenBudget: 150 };
    expect((await q.reserve("a", 100, one, NOW)).ok).toBe(true);
    expect((await q.reserve("b", 1, one, NOW + 1_000)).ok).toBe(false);
    await q.settle("a", 100, one, NOW + 2_000);
    expect(await q.reserve("c", 60, one, NOW + 60_000)).toMatchObject({ ok: false, refusal: "monthly_budget" });
    expect((await q.reserve("d", 50, one, NOW + 60_000)).ok).toBe(true);
    expect((await q.reserve("e", 100, one, Date.parse("2026-07-01T00:00:01Z"))).ok).toBe(true);
  });

  it("counts a request reserved last month and settled this month in this month, as it is billed", async () => {
    const q = quota();
    const budget = { requestsPerMinute: 100, tokensPerMinute: 1_000_000, monthlyTokenBudget: 1_000 };
    const june = Date.parse("2026-06-30T23:59:50Z");
    const july = Date.parse("2026-07-01T00:00:30Z");
    const organizationId = `org_${crypto.randomUUID()}`;
    expect((await q.reserve("long", 1_000, budget, june)).ok).toBe(true);
    // A stream admitted before midnight ends after it, its row recorded in July.
    const settled = ledgerRow(`use_${crypto.randomUUID()}`, 1_000, {
      organizationId,
      startedAt: new Date(june).toISOString(),
      createdAt: new Date(july).toISOString(),
    });
    const after = await q.settle("long", 1_000, budget, july, settled);
    expect(after.snapshot.monthlyRemaining).toBe(0);
    expect(await q.peek(budget, july)).toMatchObject({ month: "2026-07", monthTokens: 1_000, monthlyRemaining: 0 });
    expect(await q.reserve("next", 1_000, budget, july + 1_000)).toMatchObject({
      ok: false,
      refusal: "monthly_budget",
    });
    expect(await q.stub.syncUsage()).toBe(true);
    const billed = await createDatabase(env.DB)
      .select({ hour: usageHours.hour, totalTokens: sql<number>`sum(${usageHours.totalTokens})` })
      .from(usageHours)
      .where(eq(usageHours.organizationId, organizationId))
      .groupBy(usageHours.hour);
    expect(billed).toEqual([{ hour: "2026-07-01T00", totalTokens: 1_000 }]);
  });

  it("counts a checkpoint abandoned after midnight in the month of its row", async () => {
    const q = quota();
    const budget = { requestsPerMinute: 100, tokensPerMinute: 1_000_000, monthlyTokenBudget: 1_000 };
    const june = Date.parse("2026-06-30T23:59:50Z");
    const july = Date.parse("2026-07-01T00:00:30Z");
    expect((await q.reserve("stream", 1_000, budget, june)).ok).toBe(true);
    const checkpoint = (now: number) =>
      q.stub.commit(
        {
          checkpoints: [
            {
              settlement: { id: "stream", lease: "stream", reserved: 1_000, actual: 900 },
              row: ledgerEntry(ledgerRow("stream", 900, { createdAt: new Date(now).toISOString() })),
            },
          ],
        },
        budget,
        now,
      );
    await checkpoint(june + 5_000);
    await checkpoint(july);
    // Its isolate is gone: the last checkpoint, sent in July, is settled as the request's row.
    await runInDurableObject(q.stub, (instance) =>
      (instance as unknown as { settleAbandoned(now: number): unknown }).settleAbandoned(Date.now() + 61_000),
    );
    expect(await q.peek(budget, july + 1_000)).toMatchObject({ monthTokens: 900, monthlyRemaining: 100 });
    expect(await q.reserve("next", 200, budget, july + 1_000)).toMatchObject({
      ok: false,
      refusal: "monthly_budget",
    });
  });

  it("refuses a request larger than the per-minute limit at once", async () => {
    const q = quota();
    expect(await q.reserve("a", 2_000, { ...limits, tokensPerMinute: 1_000 }, NOW)).toMatchObject({
      ok: false,
      refusal: "request_too_large",
    });
  });

  it("releases a reservation nobody settled after fifteen minutes", async () => {
    const q = quota();
    const small = { requestsPerMinute: 100, tokensPerMinute: 1_000, monthlyTokenBudget: 1_000 };
    await q.reserve("lost", 900, small, NOW);
    expect(await q.reserve("x", 200, small, NOW + 120_000)).toMatchObject({ ok: false, refusal: "monthly_budget" });
    expect((await q.reserve("y", 200, small, NOW + 16 * 60_000)).ok).toBe(true);
  });

  it("keeps counters and open reservations when the object is evicted", async () => {
    const q = quota();
    const small = { requestsPerMinute: 100, tokensPerMinute: 1_000, monthlyTokenBudget: 1_000_000 };
    await q.reserve("open", 600, small, NOW);
    await q.reserve("done", 100, small, NOW);
    await q.settle("done", 40, small, NOW);
    await evictDurableObject(q.stub);
    // A fresh instance over the same storage must know both the counters and the open reservation.
    expect(await q.peek(small, NOW)).toMatchObject({ monthTokens: 640, remainingRequests: 98 });
    await q.settle("open", 10, small, NOW);
    expect(await q.peek(small, NOW)).toMatchObject({ monthTokens: 50, remainingTokens: 950 });
  });

  it("judges by limits an admin announced over limits read before them, also after a restart", async () => {
    const q = quota();
    const tight = { requestsPerMinute: 2, tokensPerMinute: 1_000_000, monthlyTokenBudget: 100_000_000 };
    await q.stub.announceLimits(tight, NOW);
    await evictDurableObject(q.stub);
    // Read before the announcement: judged by the announced limits, which come back with the answer.
    const lease = (id: string, readAt: number) =>
      q.stub.lease(id, { requests: 10, tokens: 100, need: 10 }, limits, NOW, [], readAt);
    const stale = await lease("a", NOW - 1_000);
    expect(stale).toMatchObject({ ok: true, requests: 1, announced: { limits: tight, at: NOW } });
    expect(stale.snapshot.limitRequests).toBe(2);
    expect(await lease("b", NOW - 1_000)).toMatchObject({ ok: true, requests: 1 });
    expect(await lease("c", NOW - 1_000)).toMatchObject({ ok: false, refusal: "requests_per_minute" });
    // Read after it: the caller's own limits hold, and nothing is announced back.
    const fresh = await lease("d", NOW + 1);
    expect(fresh).toMatchObject({ ok: true });
    expect(fresh.announced).toBeUndefined();
    // An announcement older than the one the object has changes nothing.
    await q.stub.announceLimits(limits, NOW - 5_000);
    expect(await q.stub.commit({}, limits, NOW, NOW - 1_000)).toMatchObject({ announced: { limits: tight } });
  });

  describe("usage rows", () => {
    const usage = ledgerRow;
    const ledger = () => createDatabase(env.DB).select().from(usageLedger).orderBy(usageLedger.id);
    /** The hour's figures in D1, summed over its parts. */
    const hourTotals = async () => {
      const [totals] = await createDatabase(env.DB)
        .select({
          requests: sql<number>`coalesce(sum(${usageHours.requests}), 0)`,
          totalTokens: sql<number>`coalesce(sum(${usageHours.totalTokens}), 0)`,
        })
        .from(usageHours)
        .where(eq(usageHours.hour, hourOf(NOW)));
      return totals;
    };

    it("are kept each once, counted once in their hour, and survive an eviction before they are folded", async () => {
      const q = quota();
      for (const id of ["u1", "u2", "u3"]) {
        await q.reserve(id, 50, limits, NOW);
        await q.settle(id, 10, limits, NOW, usage(id, 10));
      }
      // A settlement repeated with the same row (a retried call) counts and records nothing twice.
      const before = await q.peek(limits, NOW);
      await q.settle("u3", 10, limits, NOW, usage("u3", 10));
      expect((await q.peek(limits, NOW)).monthTokens).toBe(before.monthTokens);
      // Evicted before its fold (unless a slow machine let the alarm fire first): the rows were
      // stored with the counters, so the restarted object still has them.
      await evictDurableObject(q.stub);
      await runDurableObjectAlarm(q.stub);
      expect((await usageRows()).map((r) => [r.id, r.totalTokens])).toEqual([
        ["u1", 10],
        ["u2", 10],
        ["u3", 10],
      ]);
      expect(await hourTotals()).toEqual({ requests: 3, totalTokens: 30 });
      await q.settle("late", 5, limits, NOW, usage("u4", 5));
      expect((await usageRows()).map((r) => r.id)).toEqual(["u1", "u2", "u3", "u4"]);
      expect(await hourTotals()).toEqual({ requests: 4, totalTokens: 35 });
    });

    it("are written as they were settled, field by field, also when stored as objects by an older version", async () => {
      const q = quota();
      await q.reserve("t1", 50, limits, NOW);
      const streamed = { ...usage("t1", 10), stream: true, partial: true, outcome: "partial" as const, backend: null };
      await q.settle("t1", 10, limits, NOW, streamed);
      await runInDurableObject(q.stub, async (_object, state) => {
        await state.storage.put("u:t2", usage("t2", 7));
        await state.storage.put("u:t3", [usage("t3", 8), usage("t4", 9)]);
      });
      const rows = await usageRows();
      expect(rows.map((r) => [r.id, r.totalTokens])).toEqual([
        ["t1", 10],
        ["t2", 7],
        ["t3", 8],
        ["t4", 9],
      ]);
      expect(rows[0]).toEqual(streamed);
    });

    it("go to D1 in parts when a batch is larger than a statement takes", async () => {
      const many = Array.from({ length: 3_500 }, (_, i) => usage(`big-${String(i).padStart(4, "0")}`, 3));
      const batch = ledgerBatch(many.map(ledgerEntry));
      expect(batch.length).toBeGreaterThan(500_000);
      await writeUsageRows({ db: createDatabase(env.DB), log: console }, batch);
      const rows = await ledger();
      expect(rows).toHaveLength(3_500);
      expect(rows[3_499]?.id).toBe("big-3499");
    });
  });
});

describe("OrgQuota: a token's own limits", () => {
  const roomy = { requestsPerMinute: 10_000, tokensPerMinute: 1_000_000, monthlyTokenBudget: 100_000_000 };
  const tokenA = { id: "tok_a", limits: { tokensPerMinute: 100 } };
  const leaseFor = (stub: ReturnType<typeof quota>["stub"], id: string, need: number, token?: TokenQuota, now = NOW) =>
    stub.lease(
      id,
      token ? { requests: 1, tokens: need, need, token } : { requests: 1, tokens: need, need },
      roomy,
      now,
    );

  it("admit a token's requests only while both its counters and the organization's have room", async () => {
    const { stub } = quota();
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => leaseFor(stub, `a${i}`, 30, tokenA)));
    expect(results.filter((r) => r.ok)).toHaveLength(3);
    expect(results.find((r) => !r.ok)).toMatchObject({ refusal: "tokens_per_minute", limitedBy: "token" });
    // The organization's other tokens are not held back by this one's limit.
    expect((await leaseFor(stub, "b", 500)).ok).toBe(true);
    expect(await leaseFor(stub, "big", 101, tokenA)).toMatchObject({ ok: false, refusal: "request_too_large" });
  });

  it("count a token's settled usage, not its reservation, and keep its counters when the object is evicted", async () => {
    const { stub } = quota();
    expect((await leaseFor(stub, "first", 60, tokenA)).ok).toBe(true);
    await stub.commit(
      { settlements: [{ id: "s1", lease: "first", reserved: 60, actual: 10, token: "tok_a" }] },
      roomy,
      NOW,
    );
    await evictDurableObject(stub);
    expect((await leaseFor(stub, "second", 90, tokenA)).ok).toBe(true);
    expect(await leaseFor(stub, "third", 1, tokenA)).toMatchObject({ ok: false, limitedBy: "token" });
    // A settlement whose lease is gone still counts for the token; a new minute starts afresh.
    await stub.commit(
      { settlements: [{ id: "s2", lease: "gone", reserved: 0, actual: 5, token: "tok_a" }] },
      roomy,
      NOW,
    );
    expect((await leaseFor(stub, "next-minute", 100, tokenA, NOW + 60_000)).ok).toBe(true);
  });

  it("count a token's request reserved last month and settled this month in this month", async () => {
    const { stub } = quota();
    const tokenB = { id: "tok_b", limits: { monthlyTokenBudget: 1_000 } };
    const june = Date.parse("2026-06-30T23:59:50Z");
    const july = Date.parse("2026-07-01T00:00:30Z");
    expect((await leaseFor(stub, "long", 1_000, tokenB, june)).ok).toBe(true);
    await stub.commit(
      { settlements: [{ id: "s-long", lease: "long", reserved: 1_000, actual: 1_000, token: "tok_b" }] },
      roomy,
      july,
    );
    expect(await leaseFor(stub, "next", 1_000, tokenB, july + 1_000)).toMatchObject({
      ok: false,
      refusal: "monthly_budget",
      limitedBy: "token",
    });
  });
});

describe("security: admin-set limits and conflict of interest", () => {
  const raised = {
    plan: "mine",
    requestsPerMinute: 1_000_000,
    tokensPerMinute: 1_000_000_000,
    monthlyTokenBudget: 1e12,
  };

  function putLimits(gw: ReturnType<typeof testGateway>, organizationId: string, token: string) {
    return gw.request(`/admin/api/organizations/${organizationId}/limits`, {
      method: "PUT",
      headers: accessHeaders(token),
      body: JSON.stringify(raised),
    });
  }

  it("refuses, audited, an admin party to the organization; an admin who is a member elsewhere sets them", async () => {
    const gw = testGateway();
    const license = await seedLicense(gw.services);
    // The case's contact is ada@acme.example.
    const { grant } = await seedGrant(gw.services, license);
    const organizationId = grant.organizationId;
    await signedInMember(gw, { organizationId, email: "insider@ops.example", role: "viewer" });
    await signedInMember(gw, { email: "outsider@ops.example", role: "owner" });
    for (const [email, conflict] of [
      ["Insider+limits@OPS.example", "organization_member"],
      ["carl@acme.example", "contact_domain"],
    ] as const) {
      const res = await putLimits(gw, organizationId, await adminToken({ email, role: "admin" }));
      expect(res.status, email).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict });
    }
    expect(await gw.db.select().from(organizationLimits)).toEqual([]);
    const refused = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "organization.change_refused"));
    expect(refused.map((e) => [e.actor, e.subjectId, e.data.change, e.data.conflict])).toEqual([
      ["reviewer:insider+limits@ops.example", organizationId, "organization.limits_set", "organization_member"],
      ["reviewer:carl@acme.example", organizationId, "organization.limits_set", "contact_domain"],
    ]);
    // Reading them stays open to the insider.
    const read = await gw.request(`/admin/api/organizations/${organizationId}/limits`, {
      headers: accessHeaders(await adminToken({ email: "insider@ops.example", role: "admin" })),
    });
    expect(read.status).toBe(200);

    const set = await putLimits(gw, organizationId, await adminToken({ email: "outsider@ops.example", role: "admin" }));
    expect(set.status).toBe(200);
    expect(await gw.db.select().from(organizationLimits)).toEqual([
      expect.objectContaining({ organizationId, plan: "mine", requestsPerMinute: 1_000_000 }),
    ]);
    expect(await verifyAuditChain(gw.db)).toMatchObject({ ok: true, checked: 3 });
  });

  it("refuses an admin who joins the organization while their change is on its way", async () => {
    const gw = testGateway();
    const license = await seedLicense(gw.services);
    const { grant } = await seedGrant(gw.services, license);
    const organizationId = grant.organizationId;
    const owner = await signedInMember(gw, { organizationId, email: "owner@acme.example", role: "owner" });
    // The admin's change has passed the door and planned while they were no party to it...
    const held = heldWrites(1);
    const acting = testGateway(gw.clock.now(), { DB: held.db });
    const put = putLimits(acting, organizationId, await adminToken({ email: "joiner@ops.example", role: "admin" }));
    await held.poised;
    // ...when they join the organization.
    await joinByInvitation(gw, owner, "joiner@ops.example");
    held.release();
    const res = await put;
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
    expect(await gw.db.select().from(organizationLimits)).toEqual([]);
    const actions = (await gw.db.select().from(auditEvents)).map((e) => e.action);
    expect(actions).toContain("organization.change_refused");
    expect(actions).not.toContain("organization.limits_set");
  });
});
