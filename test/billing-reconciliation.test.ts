import { createExecutionContext, createMessageBatch, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { BREAKER_COOL_OFF_MS, BREAKER_FAILURES } from "../worker/billing/breaker";
import type { UsageMessage } from "../worker/billing/queue";
import { STRIPE_TOTALS_TTL_MS } from "../worker/billing/stripe-totals";
import type { AdminRole } from "../worker/config";
import { applications, billingAccounts, billingIntervals } from "../worker/db/schema";
import worker from "../worker/index";
import { clearCallerCache } from "../worker/inference/access";
import { ledgerBatch, ledgerEntry } from "../worker/inference/ledger";
import { fixedClock } from "../worker/platform/clock";
import { quotaStub } from "../worker/quota/org-quota";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedLicense, testGateway } from "./helpers/gateway";
import { ledgerRow } from "./helpers/ledger";
import { approvedToken } from "./helpers/weights";

const LIMITS = { requestsPerMinute: 1_000_000, tokensPerMinute: 1_000_000_000, monthlyTokenBudget: 1e15 };
const HOUR_MS = 3_600_000;

let licenseSha256: string;

beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A gateway billing to its own stand-in account, with one approved organization, on the real clock. */
async function billed() {
  const apiKey = `sk_test_${crypto.randomUUID().replaceAll("-", "")}`;
  const clock = fixedClock(new Date().toISOString());
  const gw = testGateway({
    clock,
    bindings: {
      STRIPE_SECRET_KEY: apiKey,
      STRIPE_API_BASE: env.TEST_STRIPE_URL,
      BILLING_PLANS: JSON.stringify({ "llama-2": { plan: "pro", prices: [] } }),
    },
  });
  const unique = crypto.randomUUID();
  const access = await approvedToken(gw, licenseSha256, {
    organization: `Org ${unique}`,
    email: `${unique}@example.com`,
  });
  const [app] = await gw.db.select().from(applications).where(eq(applications.id, access.applicationId));
  const organizationId = app?.organizationId as string;
  return { gw, clock, apiKey, organizationId };
}

type Billed = Awaited<ReturnType<typeof billed>>;

/** Settles `n` requests of the organization at `at` through its quota object, as the proxy commits them. */
async function settle(b: Billed, n: number, at: number) {
  const stub = quotaStub(env, b.organizationId);
  const lease = `lse_${crypto.randomUUID()}`;
  const granted = await stub.lease(lease, { requests: n, tokens: n * 100, need: 100 }, LIMITS, at);
  expect(granted.ok).toBe(true);
  const iso = new Date(at).toISOString();
  const rows = Array.from({ length: n }, (_, i) =>
    ledgerRow(`use_${crypto.randomUUID().replaceAll("-", "")}`, 20 + i, {
      organizationId: b.organizationId,
      promptTokens: 7,
      startedAt: iso,
      createdAt: iso,
    }),
  );
  await stub.commit(
    {
      settlements: rows.map((r) => ({ id: r.id, lease, reserved: 100, actual: r.totalTokens })),
      rows: ledgerBatch(rows.map(ledgerEntry)),
    },
    LIMITS,
    at,
  );
  return rows;
}

/** Delivers interval messages to the worker's usage consumer, as the queue would. */
async function deliver(b: Billed, intervalIds: string[]) {
  const batch = createMessageBatch<UsageMessage>(
    "modelgate-usage",
    intervalIds.map((intervalId, i) => ({ id: `msg-${i}`, timestamp: new Date(), attempts: 1, body: { intervalId } })),
  );
  const ctx = createExecutionContext();
  await worker.queue(batch, b.gw.env, ctx);
  await waitOnExecutionContext(ctx);
}

/** A billed organization with a Stripe customer and 2 requests (14 prompt tokens) billed two hours ago. */
async function billedTwoHoursAgo(): Promise<Billed> {
  const b = await billed();
  await settle(b, 2, Date.now() - 2 * HOUR_MS);
  expect(await quotaStub(env, b.organizationId).syncUsage()).toBe(true);
  const [interval] = await b.gw.db
    .select()
    .from(billingIntervals)
    .where(eq(billingIntervals.organizationId, b.organizationId));
  await deliver(b, [interval?.id as string]);
  return b;
}

async function reconciliation(b: Billed, query = "", role: AdminRole = "admin") {
  const res = await b.gw.request(
    `/admin/api/billing/reconciliation?organization=${encodeURIComponent(b.organizationId)}${query}`,
    { headers: accessHeaders(await adminToken({ role, issuedAt: b.clock.now() })) },
  );
  return {
    status: res.status,
    headers: res.headers,
    body: (await res.json()) as Record<string, unknown> & { hours: Record<string, unknown>[] },
  };
}

/** The Stripe calls the stand-in has had from the gateway's account, in order. */
async function stripeCalls(b: Billed): Promise<string[]> {
  const res = await fetch(`${env.TEST_STRIPE_URL}/_standin/state`, {
    headers: { authorization: `Bearer ${b.apiKey}` },
  });
  const state = (await res.json()) as { requests: { method: string; path: string }[] };
  return state.requests.map((r) => `${r.method} ${r.path}`);
}

/** Makes the stand-in answer the account's next `count` calls with `status`; none: well again. */
async function stripeFails(b: Billed, status?: number, count?: number) {
  await fetch(`${env.TEST_STRIPE_URL}/_standin/fail`, {
    method: "POST",
    headers: { authorization: `Bearer ${b.apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(status === undefined ? {} : { status, count }),
  });
}

describe("reconciliation with Stripe", () => {
  it("agrees to the token once closed hours are billed, and names the hour where Stripe holds more or billing lost some", async () => {
    const b = await billed();
    // Far enough back that its hour is closed also in the first minutes of an hour (`CLOSE_GRACE_MS`).
    const hourAgo = Date.now() - HOUR_MS - 3 * 60_000;
    const earlier = await settle(b, 5, hourAgo);
    const twoHoursAgo = hourAgo - HOUR_MS;
    await settle(b, 2, twoHoursAgo);
    const now = await settle(b, 3, Date.now());
    const stub = quotaStub(env, b.organizationId);
    // The earlier hour closes; the current one stays open.
    expect(await stub.syncUsage()).toBe(true);
    const intervals = await b.gw.db
      .select()
      .from(billingIntervals)
      .where(eq(billingIntervals.organizationId, b.organizationId))
      .orderBy(billingIntervals.hour);
    expect(intervals).toHaveLength(2);
    const [lostInterval, interval] = intervals;
    // The older hour's interval is lost on its way to billing.
    await b.gw.db.delete(billingIntervals).where(eq(billingIntervals.id, lostInterval?.id as string));
    expect(interval).toMatchObject({
      hour: new Date(hourAgo).toISOString().slice(0, 13),
      requests: 5,
      promptTokens: 35,
      completionTokens: earlier.reduce((sum, r) => sum + r.completionTokens, 0),
      state: "pending",
    });
    // Delivered twice in one batch and once more: Stripe records it once.
    await deliver(b, [interval?.id as string, interval?.id as string]);
    await deliver(b, [interval?.id as string]);

    const before = await reconciliation(b);
    expect(before.status).toBe(200);
    const closedHour = before.body.hours.find((h) => h.hour === interval?.hour);
    const openHour = before.body.hours.find((h) => h.hour === new Date().toISOString().slice(0, 13));
    expect(closedHour).toMatchObject({
      metered: { prompt: 35, completion: interval?.completionTokens },
      sent: { prompt: 35, completion: interval?.completionTokens },
      stripe: { prompt: 35, completion: interval?.completionTokens },
      unsent: { prompt: 0, completion: 0 },
      status: "agrees",
    });
    // The open hour is metered (live parts reach D1 with syncUsage) but not sent: unsent, not a difference.
    expect(openHour).toMatchObject({
      metered: { prompt: 21, completion: now.reduce((sum, r) => sum + r.completionTokens, 0) },
      sent: { prompt: 0, completion: 0 },
      status: "agrees",
    });
    expect(before.body.hours.find((h) => h.hour === lostInterval?.hour)).toMatchObject({
      sent: { prompt: 0, completion: 0 },
      unsent: { prompt: 14 },
      status: "metered_differs",
    });
    expect(before.body.agrees).toBe(false);

    // An event Stripe holds that the gateway never sent: that hour differs too.
    const hourStart = Math.floor(Date.parse(`${interval?.hour}:00:00.000Z`) / 1000);
    const [account] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    const extra = await fetch(`${env.TEST_STRIPE_URL}/v1/billing/meter_events`, {
      method: "POST",
      headers: { authorization: `Bearer ${b.apiKey}`, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        event_name: "modelgate_prompt_tokens",
        identifier: "stray-event",
        timestamp: String(hourStart + 60),
        "payload[stripe_customer_id]": account?.stripeCustomerId as string,
        "payload[value]": "4",
      }),
    });
    expect(extra.status).toBe(200);
    // Stripe's side of an answer is kept for a while; past that, the stray event shows.
    b.clock.advance(STRIPE_TOTALS_TTL_MS);
    const doubled = await reconciliation(b);
    expect(doubled.body.hours.find((h) => h.hour === interval?.hour)).toMatchObject({
      stripe: { prompt: 39 },
      status: "stripe_differs",
    });
  });

  it("refuses bad periods and unknown organizations, and needs an admin", async () => {
    const b = await billed();
    expect((await reconciliation(b, "&from=2026-02-30")).status).toBe(400);
    expect((await reconciliation(b, "&from=2026-01-01&to=2026-03-01")).status).toBe(400);
    expect((await reconciliation(b, "&from=2026-03-02&to=2026-03-01")).status).toBe(400);
    const unknown = await b.gw.request("/admin/api/billing/reconciliation?organization=org_nobody", {
      headers: accessHeaders(await adminToken({ role: "admin", issuedAt: b.clock.now() })),
    });
    expect(unknown.status).toBe(404);
    expect(unknown.headers.get("content-type")).toContain("application/problem+json");
    const anonymous = await b.gw.request(`/admin/api/billing/reconciliation?organization=${b.organizationId}`);
    expect(anonymous.status).toBe(401);
    const before = (await stripeCalls(b)).length;
    expect((await reconciliation(b, "", "reviewer")).status).toBe(403);
    expect((await reconciliation(b, "", "approver")).status).toBe(403);
    expect(await stripeCalls(b)).toHaveLength(before);
  });

  it("asks Stripe once for ten refreshes of the same reconciliation, and again once its totals are a minute old", async () => {
    const b = await billedTwoHoursAgo();
    // With Stripe asked afresh each time, each answer would cost a meter lookup and a page of
    // hourly summaries per meter (more pages for longer periods).
    const period = `&from=${new Date(Date.now() - 6 * 86_400_000).toISOString().slice(0, 10)}`;

    const start = (await stripeCalls(b)).length;
    const first = await reconciliation(b, period);
    expect(first.status).toBe(200);
    expect(first.body.totals).toMatchObject({ stripe: { prompt: 14 } });
    const one = (await stripeCalls(b)).slice(start);
    expect(one.filter((c) => c.endsWith("/event_summaries")).length).toBeGreaterThanOrEqual(2);
    expect(one).toContain("GET /v1/billing/meters");

    for (let i = 0; i < 9; i++) {
      const again = await reconciliation(b, period);
      expect(again.status).toBe(200);
      expect(again.body.totals).toEqual(first.body.totals);
    }
    // Ten requests at once share one answer too.
    const burst = await Promise.all(Array.from({ length: 10 }, () => reconciliation(b, period)));
    expect(burst.map((r) => r.status)).toEqual(Array(10).fill(200));
    expect((await stripeCalls(b)).slice(start)).toEqual(one);

    // A minute on, Stripe is asked again for the summaries; the meters are still known.
    b.clock.advance(STRIPE_TOTALS_TTL_MS);
    expect((await reconciliation(b, period)).status).toBe(200);
    const later = (await stripeCalls(b)).slice(start + one.length);
    expect(later).toEqual(one.filter((c) => c.endsWith("/event_summaries")));
  });

  it("goes through billing's circuit breaker: once Stripe keeps failing, answers 503 with Retry-After without calling it", async () => {
    const b = await billedTwoHoursAgo();
    await stripeFails(b, 503, 1_000);
    for (let i = 0; i < BREAKER_FAILURES; i++) {
      const failed = await reconciliation(b);
      expect(failed.status).toBe(502);
      expect(failed.body).toMatchObject({ code: "bad_gateway" });
    }
    const calls = (await stripeCalls(b)).length;
    const paused = await reconciliation(b);
    expect(paused.status).toBe(503);
    expect(paused.body).toMatchObject({ code: "service_unavailable" });
    expect(paused.headers.get("retry-after")).toBe(String(BREAKER_COOL_OFF_MS / 1000));
    expect(await stripeCalls(b)).toHaveLength(calls);

    // Past the cool-off, with Stripe well again, one call probes it and the answer comes.
    await stripeFails(b);
    b.clock.advance(BREAKER_COOL_OFF_MS);
    expect((await reconciliation(b)).status).toBe(200);
  });
});
