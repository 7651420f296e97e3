import {
  createExecutionContext,
  createMessageBatch,
  getQueueResult,
  runDurableObjectAlarm,
  waitOnExecutionContext,
} from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import Stripe from "stripe";
import { beforeEach, describe, expect, it } from "vitest";
import { verifyAuditChain } from "../worker/audit/log";
import { ensureBillingAccount } from "../worker/billing/accounts";
import {
  BREAKER_COOL_OFF_MS,
  BREAKER_FAILURES,
  CircuitBreaker,
  StripeUnavailableError,
} from "../worker/billing/breaker";
import { billIntervals, billLedgerRows, METER_CONCURRENCY } from "../worker/billing/meter";
import { consumeDeadLetters, consumeUsageBatch, type UsageMessage } from "../worker/billing/queue";
import { reconcileBilling, STUCK_AFTER_MS } from "../worker/billing/reconcile";
import { billingStanding } from "../worker/billing/routes";
import { STRIPE_TIMEOUT_MS, stripeClient } from "../worker/billing/stripe";
import { MAX_WEBHOOK_BODY_BYTES } from "../worker/billing/webhooks";
import {
  applications,
  auditEvents,
  billingAccounts,
  billingIntervals,
  organizationLimits,
  stripeEvents,
  usageHours,
  usageLedger,
} from "../worker/db/schema";
import worker from "../worker/index";
import { clearCallerCache } from "../worker/inference/access";
import { fixedClock } from "../worker/platform/clock";
import { carryLedgerRows } from "../worker/usage/carry";
import { CLOSE_GRACE_MS, hourOf, hourStart } from "../worker/usage/hours";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedLicense, testGateway } from "./helpers/gateway";
import { flushUsage, usageRows } from "./helpers/ledger";
import { approvedToken } from "./helpers/weights";

// Real time: the queue and cron entrypoints run on the system clock, as in production.
const NOW = new Date().toISOString();
const SECRETS = ["whsec_retiring", "whsec_current"];
const PLAN = {
  plan: "pro",
  prices: ["price_prompt_tokens", "price_completion_tokens"],
  limits: { requestsPerMinute: 600, tokensPerMinute: 900_000, monthlyTokenBudget: 50_000_000 },
};

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A gateway with billing on, talking to its own account at the Stripe stand-in. */
async function billedGateway(options: { clock?: ReturnType<typeof fixedClock>; backends?: boolean } = {}) {
  const apiKey = `sk_test_${crypto.randomUUID().replaceAll("-", "")}`;
  const clock = options.clock ?? fixedClock(NOW);
  const sim = (JSON.parse(env.TEST_BACKEND_URLS) as string[])[0];
  const gw = testGateway({
    clock,
    bindings: {
      STRIPE_SECRET_KEY: apiKey,
      STRIPE_API_BASE: env.TEST_STRIPE_URL,
      STRIPE_WEBHOOK_SECRETS: SECRETS.join(","),
      BILLING_PLANS: JSON.stringify({ "llama-2": PLAN }),
      BILLING_GRACE_DAYS: "7",
      INFERENCE_BACKENDS: JSON.stringify({ "llama-2-7b-chat": [{ url: `${sim}/scope/${crypto.randomUUID()}` }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
  const standin = async (path: string, body?: unknown) => {
    const res = await fetch(`${env.TEST_STRIPE_URL}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return res.json() as Promise<{
      customers: { id: string; metadata: Record<string, string> }[];
      subscriptions: { items: { data: { price: { id: string } }[] } }[];
      meterEvents: { identifier: string; eventName: string; value: number; customer: string; timestamp: number }[];
      totals: Record<string, Record<string, number>>;
      requests: { path: string; idempotencyKey?: string }[];
    }>;
  };
  await standin("/_standin/clock", { now: Math.floor(clock.now().getTime() / 1000) });
  const unique = crypto.randomUUID();
  const access = await approvedToken(gw, licenseSha256, {
    organization: `Org ${unique}`,
    email: `${unique}@example.com`,
  });
  const [app] = await gw.db.select().from(applications).where(eq(applications.id, access.applicationId));
  return { gw, clock, apiKey, standin, organizationId: app?.organizationId as string, ...access };
}

type Billed = Awaited<ReturnType<typeof billedGateway>>;

/** Writes ledger rows as the proxy would, with varied token counts. */
async function ledgerRows(b: Billed, n: number, startedAt = b.clock.now()) {
  const rows = Array.from({ length: n }, (_, i) => ({
    id: `use_${crypto.randomUUID().replaceAll("-", "")}`,
    organizationId: b.organizationId,
    grantId: "grt_test",
    tokenId: b.tokenId,
    model: "llama-2-7b-chat",
    backend: "http://sim",
    endpoint: "chat.completions",
    stream: i % 2 === 0,
    promptTokens: 10 + i,
    completionTokens: i % 5 === 0 ? 0 : 3 * i,
    totalTokens: 10 + i + (i % 5 === 0 ? 0 : 3 * i),
    usageReported: true,
    outcome: "ok" as const,
    partial: false,
    status: 200,
    latencyMs: 5,
    startedAt: startedAt.toISOString(),
    createdAt: startedAt.toISOString(),
  }));
  for (const row of rows) await b.gw.db.insert(usageLedger).values(row);
  return rows;
}

/** A usage-queue message: a ledger row's id, or the message itself (a billing interval's). */
type Delivered = string | UsageMessage;

function usageBatch(queue: string, messages: Delivered[], attempts: number) {
  return createMessageBatch<UsageMessage>(
    queue,
    messages.map((m, i) => {
      const body = typeof m === "string" ? { ledgerId: m } : m;
      return { id: `msg-${i}-${body.intervalId ?? body.ledgerId}`, timestamp: new Date(), attempts, body };
    }),
  );
}

/** Delivers messages to the worker's queue handler as the usage queue would. */
async function deliver(b: Billed, messages: Delivered[], attempts = 1) {
  const batch = usageBatch("modelgate-usage", messages, attempts);
  const ctx = createExecutionContext();
  await worker.queue(batch, b.gw.env, ctx);
  const result = await getQueueResult(batch, ctx);
  await waitOnExecutionContext(ctx);
  return result;
}

/**
 * Delivers messages to the usage consumer on the gateway's own (fixed, advanceable) clock, so a
 * test can step past the Stripe breaker's cool-off; returns the ids the consumer retries.
 */
async function consume(b: Billed, messages: Delivered[], attempts = 1) {
  const batch = usageBatch("modelgate-usage", messages, attempts);
  const ctx = createExecutionContext();
  await consumeUsageBatch(batch, b.gw.services());
  const result = await getQueueResult(batch, ctx);
  return { ...result, retried: result.retryMessages.map((m) => m.msgId.split("-").slice(2).join("-")) };
}

/** Stripe's meter-event calls the stand-in has seen for this gateway's account. */
async function meterCalls(b: Billed) {
  return (await b.standin("/_standin/state")).requests.filter((r) => r.path === "/v1/billing/meter_events").length;
}

const sum = (rows: { promptTokens: number; completionTokens: number }[], key: "promptTokens" | "completionTokens") =>
  rows.reduce((n, r) => n + r[key], 0);

describe("usage billing", () => {
  it("turns N ledger rows into exactly their meter events, for one customer on the family's plan", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 12);
    const result = await deliver(
      b,
      rows.map((r) => r.id),
    );
    expect(result.explicitAcks).toHaveLength(12);
    expect(result.retryMessages).toEqual([]);
    const state = await b.standin("/_standin/state");
    expect(state.customers).toHaveLength(1);
    expect(state.customers[0]?.metadata).toMatchObject({ organization_id: b.organizationId });
    expect(state.subscriptions[0]?.items.data.map((i) => i.price.id)).toEqual(PLAN.prices);
    const nonZero = rows.reduce((n, r) => n + (r.promptTokens > 0 ? 1 : 0) + (r.completionTokens > 0 ? 1 : 0), 0);
    expect(state.meterEvents).toHaveLength(nonZero);
    const customer = state.customers[0]?.id as string;
    expect(state.totals[customer]).toEqual({
      modelgate_prompt_tokens: sum(rows, "promptTokens"),
      modelgate_completion_tokens: sum(rows, "completionTokens"),
    });
    const stored = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.organizationId, b.organizationId));
    expect(stored.every((r) => r.billingState === "sent" && r.billedAt !== null)).toBe(true);
    const [limits] = await b.gw.db
      .select()
      .from(organizationLimits)
      .where(eq(organizationLimits.organizationId, b.organizationId));
    expect(limits).toMatchObject({ plan: "pro", requestsPerMinute: 600 });
  });

  it("survives a long Stripe outage: retries until recovery, then Stripe's totals equal the ledger's, without duplicates", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 8);
    const ids = rows.map((r) => r.id);
    await b.standin("/_standin/fail", { status: 503, count: 25 });
    let pending = ids;
    let rounds = 0;
    while (pending.length > 0 && rounds < 40) {
      rounds++;
      pending = (await consume(b, pending, rounds)).retried;
      // The queue's backoff, which also outlasts the breaker's cool-off.
      b.clock.advance(BREAKER_COOL_OFF_MS + 1_000);
    }
    expect(rounds).toBeGreaterThan(2);
    expect(pending).toEqual([]);
    const state = await b.standin("/_standin/state");
    const customer = state.customers[0]?.id as string;
    expect(state.customers).toHaveLength(1);
    expect(state.totals[customer]).toEqual({
      modelgate_prompt_tokens: sum(rows, "promptTokens"),
      modelgate_completion_tokens: sum(rows, "completionTokens"),
    });
    expect(new Set(state.meterEvents.map((e) => e.identifier)).size).toBe(state.meterEvents.length);
    const stored = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.organizationId, b.organizationId));
    expect(stored.every((r) => r.billingState === "sent")).toBe(true);
    expect(Math.max(...stored.map((r) => r.billingAttempts))).toBeGreaterThan(0);
  });

  it("sends nothing twice when the queue delivers the same rows twice, even at the same time", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 5);
    const ids = rows.map((r) => r.id);
    await Promise.all([deliver(b, ids), deliver(b, ids)]);
    await deliver(b, ids);
    const state = await b.standin("/_standin/state");
    const customer = state.customers[0]?.id as string;
    expect(state.totals[customer]).toEqual({
      modelgate_prompt_tokens: sum(rows, "promptTokens"),
      modelgate_completion_tokens: sum(rows, "completionTokens"),
    });
  });

  it("re-queues rows left unsent, flags rows too old for Stripe, and marks dead letters", async () => {
    const b = await billedGateway();
    const stuck = await ledgerRows(b, 3, new Date(Date.parse(NOW) - 10 * 60_000));
    const fresh = await ledgerRows(b, 2);
    const old = await ledgerRows(b, 1, new Date(Date.parse(NOW) - 36 * 86_400_000));
    const sent: UsageMessage[] = [];
    const queue = {
      sendBatch: async (messages: { body: UsageMessage }[]) => void sent.push(...messages.map((m) => m.body)),
    };
    const report = await reconcileBilling(b.gw.services(), queue as unknown as Queue<UsageMessage>);
    expect(report.expired).toBe(1);
    expect(sent.map((m) => m.ledgerId).sort()).toEqual(stuck.map((r) => r.id).sort());
    expect(sent.map((m) => m.ledgerId)).not.toContain(fresh[0]?.id);
    const [expired] = await b.gw.db
      .select()
      .from(usageLedger)
      .where(eq(usageLedger.id, old[0]?.id as string));
    expect(expired).toMatchObject({ billingState: "expired" });

    const dlq = createMessageBatch<UsageMessage>("modelgate-usage-dlq", [
      { id: "d1", timestamp: new Date(), attempts: 1, body: { ledgerId: fresh[0]?.id as string } },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(dlq, b.gw.env, ctx);
    await waitOnExecutionContext(ctx);
    const [dead] = await b.gw.db
      .select()
      .from(usageLedger)
      .where(eq(usageLedger.id, fresh[0]?.id as string));
    expect(dead?.billingState).toBe("dead");
    const outbox = await b.gw.request("/admin/api/billing/outbox", {});
    expect(outbox.status).toBe(401);
  });

  it("lets an admin send dead letters again, once each, audited; others may not", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 3);
    const dead = rows.slice(0, 2).map((r) => r.id);
    const dlq = createMessageBatch<UsageMessage>(
      "modelgate-usage-dlq",
      dead.map((ledgerId, i) => ({ id: `d${i}`, timestamp: new Date(), attempts: 10, body: { ledgerId } })),
    );
    const ctx = createExecutionContext();
    await worker.queue(dlq, b.gw.env, ctx);
    await waitOnExecutionContext(ctx);

    const issuedAt = b.clock.now();
    const resend = async (token: string, extra: Record<string, string> = {}) =>
      b.gw.request("/admin/api/billing/outbox/resend", {
        method: "POST",
        headers: accessHeaders(token, extra),
        body: "{}",
      });
    const approver = await adminToken({ role: "approver", email: "ann@example.com", issuedAt });
    expect((await resend(approver)).status).toBe(403);
    const admin = await adminToken({ role: "admin", email: "ada@example.com", issuedAt });
    expect((await resend(admin, { "sec-fetch-site": "cross-site", origin: "https://evil.example" })).status).toBe(403);

    const res = await resend(admin);
    expect(res.status).toBe(200);
    const answer = (await res.json()) as { resent: number; ids: string[] };
    expect(answer.resent).toBe(2);
    expect([...answer.ids].sort()).toEqual([...dead].sort());
    const states = await b.gw.db
      .select({ id: usageLedger.id, state: usageLedger.billingState, attempts: usageLedger.billingAttempts })
      .from(usageLedger)
      .where(eq(usageLedger.organizationId, b.organizationId));
    expect(states.filter((r) => r.state === "dead")).toHaveLength(0);
    const [event] = await b.gw.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "billing.dead_letters_resent"));
    expect(event).toMatchObject({ actor: "reviewer:ada@example.com", data: { rows: 2 } });

    await deliver(b, dead);
    await deliver(b, dead);
    const state = await b.standin("/_standin/state");
    // Each meter event once; a zero count (the first row's completion) is not sent at all.
    const expected = rows
      .slice(0, 2)
      .flatMap((r) => [
        ...(r.promptTokens > 0 ? [`${r.id}.prompt`] : []),
        ...(r.completionTokens > 0 ? [`${r.id}.completion`] : []),
      ]);
    expect(state.meterEvents.map((e) => e.identifier).sort()).toEqual(expected.sort());
    expect(((await (await resend(admin)).json()) as { resent: number }).resent).toBe(0);
  });

  it("meters real proxied requests onto the usage queue: the hour's interval, two meter events named after it", async () => {
    const b = await billedGateway({ clock: hourOver() });
    await chat(b, "one two", 3);
    await flushUsage();
    const [interval, ...more] = await intervalsOf(b);
    expect(more).toEqual([]);
    expect(interval).toMatchObject({
      id: expect.stringMatching(new RegExp(`^${b.organizationId}:${hourOf(b.clock.now().getTime())}:[0-9a-z]{9}$`)),
      requests: 1,
      promptTokens: 2,
      completionTokens: 3,
      state: "pending",
    });
    const id = interval?.id as string;
    await deliver(b, [{ intervalId: id }]);
    const state = await b.standin("/_standin/state");
    expect(state.meterEvents.map((e) => [e.identifier, e.eventName, e.value]).sort()).toEqual([
      [`${id}:completion`, "modelgate_completion_tokens", 3],
      [`${id}:prompt`, "modelgate_prompt_tokens", 2],
    ]);
  });
});

const HOUR_MS = 3_600_000;

/** A clock ten minutes into an hour that is over (`hoursBack` ago): the quota object closes its parts at the next flush. */
function hourOver(hoursBack = 2) {
  return fixedClock(new Date(hourStart(hourOf(Date.now() - hoursBack * HOUR_MS)) + 10 * 60_000));
}

/** One chat completion through the gateway, answered. */
async function chat(b: Billed, content: string, maxTokens: number) {
  const res = await b.gw.request("/v1/chat/completions", {
    method: "POST",
    headers: { authorization: `Bearer ${b.token}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content }], max_tokens: maxTokens }),
  });
  expect(res.status).toBe(200);
  await res.json();
}

/** The organization's billing intervals, oldest hour first. */
function intervalsOf(b: Billed) {
  return b.gw.db
    .select()
    .from(billingIntervals)
    .where(eq(billingIntervals.organizationId, b.organizationId))
    .orderBy(billingIntervals.id);
}

const messagesOf = (intervals: { id: string }[]): UsageMessage[] => intervals.map((i) => ({ intervalId: i.id }));

type Sums = { requests: number; promptTokens: number; completionTokens: number };
const sums = (rows: Sums[]): Sums => ({
  requests: rows.reduce((n, r) => n + r.requests, 0),
  promptTokens: sum(rows, "promptTokens"),
  completionTokens: sum(rows, "completionTokens"),
});

describe("hourly billing intervals", () => {
  it("bills each closed part of an hour as one interval: its sums are the hour's, its two events stamped with the hour's start, sent once however often delivered", async () => {
    const clock = hourOver(3);
    const b = await billedGateway({ clock });
    await chat(b, "one two three", 4);
    await chat(b, "four", 6);
    clock.advance(HOUR_MS);
    await chat(b, "five six", 5);
    await flushUsage();

    const intervals = await intervalsOf(b);
    expect(intervals.map((i) => [i.hour, i.requests, i.state])).toEqual([
      [hourOf(clock.now().getTime() - HOUR_MS), 2, "pending"],
      [hourOf(clock.now().getTime()), 1, "pending"],
    ]);
    const hours = await b.gw.db.select().from(usageHours).where(eq(usageHours.organizationId, b.organizationId));
    const raw = (await usageRows()).filter((r) => r.organizationId === b.organizationId);
    expect(raw).toHaveLength(3);
    for (const interval of intervals) {
      const parts = hours.filter((h) => `${h.organizationId}:${h.hour}:${h.part}` === interval.id);
      expect(parts.length).toBeGreaterThan(0);
      expect(sums([interval])).toEqual(sums(parts));
      const requests = raw
        .filter((r) => r.createdAt.slice(0, 13) === interval.hour)
        .map((r) => ({ ...r, requests: 1 }));
      expect(sums([interval])).toEqual(sums(requests));
    }

    // The same messages delivered twice at once, on the system clock as the queue runs: Stripe
    // records each event once.
    await b.standin("/_standin/clock", { now: Math.floor(Date.now() / 1000) });
    const messages = messagesOf(intervals);
    const results = await Promise.all([deliver(b, messages), deliver(b, messages)]);
    for (const result of results) expect(result.retryMessages).toEqual([]);
    const state = await b.standin("/_standin/state");
    expect(state.meterEvents).toHaveLength(4);
    for (const interval of intervals) {
      const events = state.meterEvents.filter((e) => e.identifier.startsWith(`${interval.id}:`));
      expect(events.map((e) => [e.identifier, e.value, e.timestamp]).sort()).toEqual([
        [`${interval.id}:completion`, interval.completionTokens, hourStart(interval.hour) / 1000],
        [`${interval.id}:prompt`, interval.promptTokens, hourStart(interval.hour) / 1000],
      ]);
    }
    const customer = state.customers[0]?.id as string;
    expect(state.totals[customer]).toEqual({
      modelgate_prompt_tokens: sums(intervals).promptTokens,
      modelgate_completion_tokens: sums(intervals).completionTokens,
    });
    const sent = await intervalsOf(b);
    expect(sent.map((i) => i.state)).toEqual(["sent", "sent"]);
    expect(sent.every((i) => i.billedAt !== null)).toBe(true);

    // Delivered again, and a second run of the consumer: nothing more is sent.
    const calls = await meterCalls(b);
    expect((await deliver(b, messages)).explicitAcks).toHaveLength(2);
    expect((await consume(b, messages)).retried).toEqual([]);
    expect(await meterCalls(b)).toBe(calls);
    expect((await b.standin("/_standin/state")).totals).toEqual(state.totals);
  });

  it("keeps intervals pending while Stripe fails, and the reconciler queues them again once they are stuck", async () => {
    const clock = hourOver();
    const b = await billedGateway({ clock });
    await chat(b, "one two", 3);
    await chat(b, "three", 4);
    await flushUsage();
    const [interval] = await intervalsOf(b);
    const id = interval?.id as string;

    await b.standin("/_standin/fail", { status: 503, count: 1_000 });
    expect((await consume(b, [{ intervalId: id }])).retried).toEqual([id]);
    const [failed] = await intervalsOf(b);
    expect(failed).toMatchObject({ state: "pending", attempts: 1, billedAt: null });
    expect(failed?.error).toBeTruthy();
    expect((await b.standin("/_standin/state")).meterEvents).toEqual([]);

    const queued: UsageMessage[] = [];
    const queue = {
      sendBatch: async (messages: { body: UsageMessage }[]) => void queued.push(...messages.map((m) => m.body)),
    } as unknown as Queue<UsageMessage>;
    // Not stuck yet: the queue's own retries have it.
    clock.set(new Date(Date.parse(interval?.createdAt as string) + STUCK_AFTER_MS - 1_000));
    expect(await reconcileBilling(b.gw.services(), queue)).toMatchObject({ requeued: 0, expired: 0 });
    expect(queued).toEqual([]);
    clock.advance(2_000);
    expect(await reconcileBilling(b.gw.services(), queue)).toMatchObject({ requeued: 1, expired: 0 });
    expect(queued).toEqual([{ intervalId: id }]);

    await b.standin("/_standin/fail", {});
    clock.advance(BREAKER_COOL_OFF_MS + 1);
    expect((await consume(b, queued, 2)).retried).toEqual([]);
    const state = await b.standin("/_standin/state");
    expect(state.meterEvents.map((e) => [e.identifier, e.value]).sort()).toEqual([
      [`${id}:completion`, interval?.completionTokens],
      [`${id}:prompt`, interval?.promptTokens],
    ]);
    expect((await intervalsOf(b))[0]).toMatchObject({ state: "sent", attempts: 1 });
  });

  it("marks dead-lettered intervals dead and shows them in the outbox; an admin sends them again, once, audited", async () => {
    const b = await billedGateway({ clock: hourOver() });
    await chat(b, "one two", 3);
    await flushUsage();
    const [interval] = await intervalsOf(b);
    const id = interval?.id as string;
    const dlq = usageBatch("modelgate-usage-dlq", [{ intervalId: id }], 10);
    const ctx = createExecutionContext();
    await worker.queue(dlq, b.gw.env, ctx);
    await waitOnExecutionContext(ctx);
    expect((await intervalsOf(b))[0]?.state).toBe("dead");

    const issuedAt = b.clock.now();
    const reviewer = await adminToken({ role: "reviewer", email: "rey@example.com", issuedAt });
    const outbox = await b.gw.request("/admin/api/billing/outbox", { headers: accessHeaders(reviewer) });
    expect(outbox.status).toBe(200);
    const backlog = (await outbox.json()) as {
      states: { kind: string; state: string; rows: number; requests: number }[];
      failures: { kind: string; id: string; state: string; requests: number }[];
    };
    expect(backlog.states).toContainEqual(
      expect.objectContaining({ kind: "interval", state: "dead", rows: 1, requests: 1 }),
    );
    expect(backlog.failures).toEqual([expect.objectContaining({ kind: "interval", id, state: "dead", requests: 1 })]);

    const resend = async (token: string) =>
      b.gw.request("/admin/api/billing/outbox/resend", { method: "POST", headers: accessHeaders(token), body: "{}" });
    expect((await resend(reviewer)).status).toBe(403);
    const admin = await adminToken({ role: "admin", email: "ada@example.com", issuedAt });
    const res = await resend(admin);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ resent: 1, ids: [id], intervals: [id], rows: [] });
    expect((await intervalsOf(b))[0]).toMatchObject({ state: "pending", attempts: 0, error: null });
    const [event] = await b.gw.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "billing.dead_letters_resent"));
    expect(event).toMatchObject({
      actor: "reviewer:ada@example.com",
      subjectType: "billing_intervals",
      subjectId: id,
      data: { intervals: 1, ids: [id] },
    });
    expect(await verifyAuditChain(b.gw.db)).toMatchObject({ ok: true });

    await deliver(b, [{ intervalId: id }]);
    await deliver(b, [{ intervalId: id }]);
    const state = await b.standin("/_standin/state");
    expect(state.meterEvents.map((e) => e.identifier).sort()).toEqual([`${id}:completion`, `${id}:prompt`]);
    expect(((await (await resend(admin)).json()) as { resent: number }).resent).toBe(0);
  });

  it("flags an interval older than Stripe accepts as expired and never sends it, whether the consumer or the reconciler finds it", async () => {
    const clock = hourOver(36 * 24);
    const b = await billedGateway({ clock });
    await chat(b, "one two", 3);
    clock.advance(HOUR_MS);
    await chat(b, "three four", 3);
    await flushUsage();
    const [first, second] = await intervalsOf(b);
    expect([first?.state, second?.state]).toEqual(["pending", "pending"]);

    // The queue's consumer, on the system clock: 36 days after the hour.
    const result = await deliver(b, [{ intervalId: first?.id as string }]);
    expect(result.explicitAcks).toHaveLength(1);
    // The reconciler, on a clock as late.
    clock.set(new Date());
    const queued: UsageMessage[] = [];
    const queue = {
      sendBatch: async (messages: { body: UsageMessage }[]) => void queued.push(...messages.map((m) => m.body)),
    } as unknown as Queue<UsageMessage>;
    expect(await reconcileBilling(b.gw.services(), queue)).toMatchObject({ expired: 1, requeued: 0 });
    expect(queued).toEqual([]);

    const flagged = await intervalsOf(b);
    expect(flagged.map((i) => [i.state, i.billedAt])).toEqual([
      ["expired", null],
      ["expired", null],
    ]);
    expect(flagged.every((i) => i.error?.includes("35 days"))).toBe(true);
    expect((await b.standin("/_standin/state")).meterEvents).toEqual([]);
    expect(await deliver(b, messagesOf(flagged))).toMatchObject({ retryMessages: [] });
    expect(await meterCalls(b)).toBe(0);
  });
});

describe("billing standing", () => {
  it("counts this month's calls from the hours in D1 and the parts still open, each once, and what Stripe has yet to accept", async () => {
    const b = await billedGateway({ clock: fixedClock(new Date()) });
    const quota = env.QUOTA.get(env.QUOTA.idFromName(b.organizationId));
    const usage = async () => {
      const res = await b.gw.request("/v1/billing", { headers: { authorization: `Bearer ${b.token}` } });
      expect(res.status).toBe(200);
      return ((await res.json()) as { usage: Sums & { totalTokens: number; unbilledRequests: number } }).usage;
    };
    await chat(b, "one two", 3);
    await chat(b, "three", 4);
    // Folded into the hour's open part, which D1 does not have yet.
    await runDurableObjectAlarm(quota);
    expect(await b.gw.db.select().from(usageHours).where(eq(usageHours.organizationId, b.organizationId))).toEqual([]);
    const raw = () => usageRows().then((rows) => rows.filter((r) => r.organizationId === b.organizationId));
    const two = await usage();
    expect(two).toEqual({
      requests: 2,
      promptTokens: sum(await raw(), "promptTokens"),
      completionTokens: 7,
      totalTokens: sum(await raw(), "promptTokens") + 7,
      unbilledRequests: 2,
    });
    // `raw()` wrote the open part to D1: the figures are the same, not doubled.
    expect(await usage()).toEqual(two);

    // The object has a newer total of the part than D1: its figure replaces D1's.
    await chat(b, "four five six", 5);
    await runDurableObjectAlarm(quota);
    const three = await usage();
    expect(three).toMatchObject({ requests: 3, completionTokens: 12, unbilledRequests: 3 });
    // Without the object, D1's figures.
    const unreachable = () => Promise.reject(new Error("quota object unreachable"));
    const d1 = await billingStanding(b.gw.services(), b.organizationId, unreachable);
    expect(d1.usage).toEqual(two);

    // The hour closes into an interval; once Stripe accepted it, nothing is unbilled.
    const hour = hourOf(b.clock.now().getTime());
    await quota.syncUsage(hourStart(hour) + HOUR_MS + CLOSE_GRACE_MS + 1);
    expect(await usage()).toEqual(three);
    const [interval] = await intervalsOf(b);
    await deliver(b, [{ intervalId: interval?.id as string }]);
    expect(await usage()).toEqual({ ...three, unbilledRequests: 0 });

    // A request recorded on its own (its quota object out of reach) counts too, carried or not, and is billed by itself.
    const [row] = await ledgerRows(b, 1);
    const withRow = {
      requests: 4,
      promptTokens: three.promptTokens + (row?.promptTokens ?? 0),
      completionTokens: three.completionTokens + (row?.completionTokens ?? 0),
      totalTokens: three.totalTokens + (row?.totalTokens ?? 0),
    };
    expect(await usage()).toEqual({ ...withRow, unbilledRequests: 1 });
    await deliver(b, [row?.id as string]);
    expect(await usage()).toEqual({ ...withRow, unbilledRequests: 0 });
    expect(await carryLedgerRows(env.DB, new Date())).toMatchObject({ usage: 1 });
    expect(await usage()).toEqual({ ...withRow, unbilledRequests: 0 });
  });
});

describe("faults: a failing Stripe slows billing by a short timeout, never a timeout per row", () => {
  /** A gateway whose Stripe account already exists, and `n` fresh ledger rows to bill. */
  async function billedWithRows(n: number) {
    const b = await billedGateway();
    const opening = await ledgerRows(b, 1);
    expect((await consume(b, [opening[0]?.id as string])).retried).toEqual([]);
    const rows = await ledgerRows(b, n);
    return { b, rows: [...opening, ...rows], ids: rows.map((r) => r.id) };
  }

  /** Stripe's totals equal the ledger's, each meter event once, every row sent. */
  async function expectBilledExactly(b: Billed, rows: { promptTokens: number; completionTokens: number }[]) {
    const state = await b.standin("/_standin/state");
    const customer = state.customers[0]?.id as string;
    expect(state.customers).toHaveLength(1);
    expect(state.totals[customer]?.modelgate_prompt_tokens ?? 0).toBe(sum(rows, "promptTokens"));
    expect(state.totals[customer]?.modelgate_completion_tokens ?? 0).toBe(sum(rows, "completionTokens"));
    expect(new Set(state.meterEvents.map((e) => e.identifier)).size).toBe(state.meterEvents.length);
    const stored = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.organizationId, b.organizationId));
    expect(stored.map((r) => r.billingState).filter((s) => s !== "sent" && s !== "skipped")).toEqual([]);
  }

  it("a hanging Stripe: a batch of 50 takes a short timeout or two, the breaker stops calling, probes once after its cool-off, and the totals end equal", {
    timeout: 60_000,
  }, async () => {
    const { b, rows, ids } = await billedWithRows(50);
    await b.standin("/_standin/fail", { status: "hang" });
    const before = await meterCalls(b);
    let startedAt = Date.now();
    let result = await consume(b, ids);
    // Old behaviour: one row at a time, 15 s each — 50 rows would have taken over ten minutes.
    expect(Date.now() - startedAt).toBeLessThan(3 * STRIPE_TIMEOUT_MS);
    expect(result.retried).toHaveLength(50);
    const firstWave = (await meterCalls(b)) - before;
    expect(firstWave).toBeGreaterThanOrEqual(BREAKER_FAILURES);
    expect(firstWave).toBeLessThanOrEqual(METER_CONCURRENCY + BREAKER_FAILURES - 1);

    // Open: a redelivery calls nobody and is done at once; nothing is marked or counted.
    startedAt = Date.now();
    result = await consume(b, ids, 2);
    expect(Date.now() - startedAt).toBeLessThan(STRIPE_TIMEOUT_MS / 2);
    expect(result.retried).toHaveLength(50);
    expect((await meterCalls(b)) - before).toBe(firstWave);

    // Half-open after the cool-off: one probe, which hangs too, and the breaker opens again.
    b.clock.advance(BREAKER_COOL_OFF_MS + 1);
    result = await consume(b, ids, 3);
    expect(result.retried).toHaveLength(50);
    expect((await meterCalls(b)) - before).toBe(firstWave + 1);
    result = await consume(b, ids, 4);
    expect((await meterCalls(b)) - before).toBe(firstWave + 1);

    // Stripe recovers: the next probe succeeds and the whole batch goes in the same delivery.
    await b.standin("/_standin/fail", {});
    b.clock.advance(BREAKER_COOL_OFF_MS + 1);
    result = await consume(b, ids, 5);
    expect(result.retried).toEqual([]);
    expect(result.explicitAcks).toHaveLength(50);
    await expectBilledExactly(b, rows);
  });

  it("Stripe answering 503 for a while: the breaker stops the batch after a few calls, and after recovery the totals equal the ledger's", {
    timeout: 60_000,
  }, async () => {
    const { b, rows, ids } = await billedWithRows(50);
    await b.standin("/_standin/fail", { status: 503, count: 15 });
    const before = await meterCalls(b);
    let pending = (await consume(b, ids)).retried;
    expect(pending).toHaveLength(50);
    expect((await meterCalls(b)) - before).toBeLessThanOrEqual(METER_CONCURRENCY + BREAKER_FAILURES - 1);
    let rounds = 1;
    while (pending.length > 0 && rounds < 30) {
      rounds++;
      b.clock.advance(BREAKER_COOL_OFF_MS + 1);
      const callsBefore = await meterCalls(b);
      pending = (await consume(b, pending, rounds)).retried;
      // Half-open: while Stripe still fails, each cool-off costs it one call.
      if (pending.length > 0) expect((await meterCalls(b)) - callsBefore).toBe(1);
    }
    expect(pending).toEqual([]);
    await expectBilledExactly(b, rows);
    const attempts = (
      await b.gw.db
        .select({ attempts: usageLedger.billingAttempts })
        .from(usageLedger)
        .where(eq(usageLedger.organizationId, b.organizationId))
    ).map((r) => r.attempts);
    // Only the rows whose calls failed count an attempt; those the breaker held back were never tried.
    expect(attempts.reduce((n, a) => n + a, 0)).toBe(15);
  });

  it("an event Stripe recorded after the gateway gave up waiting is not billed again on the retry", {
    timeout: 30_000,
  }, async () => {
    const { b, rows, ids } = await billedWithRows(1);
    await b.standin("/_standin/fail", { status: "slow", count: 1, delayMs: STRIPE_TIMEOUT_MS + 2_000 });
    expect((await consume(b, ids)).retried).toEqual(ids);
    expect((await b.standin("/_standin/state")).meterEvents).toHaveLength(2);
    expect((await consume(b, ids, 2)).retried).toEqual([]);
    await expectBilledExactly(b, rows);
  });

  it("the breaker lets one probe through when half-open; the calls that came meanwhile follow its word", async () => {
    let now = 0;
    const clock = () => now;
    const breaker = new CircuitBreaker(2, 1_000);
    const down = () => Promise.reject(new Error("down"));
    const failed = () => true;
    for (let i = 0; i < 2; i++) await expect(breaker.call(clock, down, failed)).rejects.toThrow("down");
    let calls = 0;
    const up = async () => ++calls;
    await expect(breaker.call(clock, up, failed)).rejects.toBeInstanceOf(StripeUnavailableError);
    expect(calls).toBe(0);

    now = 1_000;
    let release: (ok: boolean) => void = () => {};
    const probe = breaker.call(
      clock,
      () =>
        new Promise<string>((resolve, reject) => {
          release = (ok) => (ok ? resolve("probe") : reject(new Error("still down")));
        }),
      failed,
    );
    const waiting = breaker.call(clock, up, failed);
    await Promise.resolve();
    expect(calls).toBe(0);
    release(false);
    await expect(probe).rejects.toThrow("still down");
    await expect(waiting).rejects.toBeInstanceOf(StripeUnavailableError);
    expect(breaker.reopensAt).toBe(2_000);

    now = 2_000;
    const secondProbe = breaker.call(
      clock,
      () =>
        new Promise<string>((resolve) => {
          release = () => resolve("probe");
        }),
      failed,
    );
    const following = [breaker.call(clock, up, failed), breaker.call(clock, up, failed)];
    await Promise.resolve();
    expect(calls).toBe(0);
    release(true);
    expect(await secondProbe).toBe("probe");
    expect((await Promise.all(following)).sort()).toEqual([1, 2]);
    expect(breaker.reopensAt).toBeUndefined();
  });

  it("a probe whose request ended without a word holds the calls back for one cool-off at most; then another call probes", async () => {
    let now = 0;
    const clock = () => now;
    const breaker = new CircuitBreaker(1, 1_000);
    const failed = () => true;
    await expect(breaker.call(clock, () => Promise.reject(new Error("down")), failed)).rejects.toThrow("down");
    now = 1_000;
    // The probe's request (another delivery) ends while its call is under way: it never settles.
    void breaker.call(clock, () => new Promise<never>(() => {}), failed);
    let calls = 0;
    const waiting = breaker.call(clock, async () => ++calls, failed);
    await new Promise((resolve) => setTimeout(resolve, 50));
    // Held back while the probe may still answer.
    expect(calls).toBe(0);
    now = 2_000;
    expect(await waiting).toBe(1);
    expect(breaker.reopensAt).toBeUndefined();
  });
});

describe("Stripe webhooks", () => {
  const stripe = new Stripe("sk_test_unused", { httpClient: Stripe.createFetchHttpClient() });

  async function post(
    b: Billed,
    event: Record<string, unknown>,
    options: { secret?: string; timestamp?: number; signature?: string; payload?: string } = {},
  ) {
    const payload = options.payload ?? JSON.stringify(event);
    const signature =
      options.signature ??
      (await stripe.webhooks.generateTestHeaderStringAsync({
        payload,
        secret: options.secret ?? (SECRETS[1] as string),
        timestamp: options.timestamp ?? Math.floor(b.clock.now().getTime() / 1000),
        cryptoProvider: Stripe.createSubtleCryptoProvider(),
      }));
    return b.gw.request("/webhooks/stripe", {
      method: "POST",
      headers: { "stripe-signature": signature, "content-type": "application/json" },
      body: payload,
    });
  }

  async function withAccount(b: Billed) {
    const rows = await ledgerRows(b, 1);
    await deliver(
      b,
      rows.map((r) => r.id),
    );
    const [account] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    return account as NonNullable<typeof account>;
  }

  const event = (id: string, type: string, created: number, object: Record<string, unknown>) => ({
    id,
    object: "event",
    type,
    created,
    api_version: "2025-01-01",
    livemode: false,
    data: { object },
  });

  /** A subscription's `items` as Stripe sends them: one per price, by default the plan's (the gateway's kind). */
  function gatewayItems(prices: readonly string[] = PLAN.prices) {
    return {
      object: "list",
      data: prices.map((price) => ({
        id: `si_${price}`,
        object: "subscription_item",
        price: { id: price, object: "price" },
      })),
    };
  }

  async function accountOf(b: Billed) {
    const [account] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    return account;
  }

  /** An inference call of the organization: 402 once payment has been failing past the grace period. */
  const ask = (b: Billed) =>
    b.gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${b.token}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content: "hi" }], max_tokens: 1 }),
    });

  it("refuses bad signatures, unknown secrets and stale timestamps with 400, changing nothing", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const failed = event("evt_1", "invoice.payment_failed", 1_781_500_000, { customer: account.stripeCustomerId });
    const now = Math.floor(b.clock.now().getTime() / 1000);
    for (const [name, options] of [
      ["bad signature", { signature: `t=${now},v1=${"0".repeat(64)}` }],
      ["unknown secret", { secret: "whsec_attacker" }],
      ["timestamp outside tolerance", { timestamp: now - 301 }],
      ["no signature", { signature: "" }],
    ] as const) {
      const res = await post(b, failed, options);
      expect(res.status, name).toBe(400);
      expect(await res.json(), name).toMatchObject({ code: "invalid_signature" });
    }
    const [after] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    expect(after).toMatchObject({ status: "active", paymentFailedAt: null });
    expect((await post(b, failed, { secret: SECRETS[0] })).status).toBe(200);
  });

  it("applies a replayed event once and ignores events that arrive out of order", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const invoice = { customer: account.stripeCustomerId, subscription: account.stripeSubscriptionId };
    const failed = event("evt_failed", "invoice.payment_failed", t - 100, invoice);
    const paid = event("evt_paid", "invoice.paid", t - 50, invoice);
    expect(await (await post(b, paid)).json()).toMatchObject({ result: "applied" });
    expect(await (await post(b, failed)).json()).toMatchObject({ result: "ignored" });
    expect(await (await post(b, paid)).json()).toMatchObject({ result: "duplicate" });
    const [after] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    expect(after).toMatchObject({ status: "active", paymentFailedAt: null });

    const failedLater = event("evt_failed_2", "invoice.payment_failed", t - 10, invoice);
    await Promise.all([post(b, failedLater), post(b, failedLater)]);
    const audits = (await b.gw.db.select().from(auditEvents)).filter((e) => e.action === "billing.status_changed");
    expect(audits).toHaveLength(1);
  });

  it("security: keeps the status of the newer event of either kind: an older renewal or payment arriving late restores nothing", async () => {
    for (const [newer, older] of [
      ["invoice.payment_failed", ["customer.subscription.updated", "active"]],
      ["customer.subscription.updated", ["invoice.paid", undefined]],
    ] as const) {
      const b = await billedGateway();
      const account = await withAccount(b);
      const t = Math.floor(b.clock.now().getTime() / 1000);
      const sub = { id: account.stripeSubscriptionId, object: "subscription", customer: account.stripeCustomerId };
      const invoice = { customer: account.stripeCustomerId, subscription: account.stripeSubscriptionId };
      const first =
        newer === "invoice.payment_failed"
          ? event(`evt_newer_${newer}`, newer, t - 10, invoice)
          : event(`evt_newer_${newer}`, newer, t - 10, { ...sub, status: "past_due" });
      expect(await (await post(b, first)).json()).toMatchObject({ result: "applied" });
      const late =
        older[0] === "invoice.paid"
          ? event(`evt_older_${newer}`, older[0], t - 100, invoice)
          : event(`evt_older_${newer}`, older[0], t - 100, { ...sub, status: older[1] });
      await post(b, late);
      const [after] = await b.gw.db
        .select()
        .from(billingAccounts)
        .where(eq(billingAccounts.organizationId, b.organizationId));
      expect(after, `${newer}, then an older ${older[0]}`).toMatchObject({ status: "past_due" });
      b.clock.advance(8 * 86_400_000);
      clearCallerCache();
      const res = await b.gw.request("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${b.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content: "hi" }], max_tokens: 1 }),
      });
      expect(res.status).toBe(402);
    }
  });

  it("security: an event about another subscription of the customer that ends says nothing about the account's own", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const other = { id: "sub_old_or_added", object: "subscription", customer: account.stripeCustomerId };
    await post(b, event("evt_other_deleted", "customer.subscription.deleted", t - 5, { ...other, status: "canceled" }));
    await post(b, event("evt_other_unpaid", "customer.subscription.updated", t - 4, { ...other, status: "unpaid" }));
    await post(
      b,
      event("evt_other_invoice", "invoice.payment_failed", t - 3, {
        customer: account.stripeCustomerId,
        subscription: "sub_old_or_added",
      }),
    );
    const [after] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    expect(after).toMatchObject({ stripeSubscriptionId: account.stripeSubscriptionId, status: "active" });
  });

  it("makes a canceled account active again by a new subscription, never by an invoice", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const sub = { id: account.stripeSubscriptionId, object: "subscription", customer: account.stripeCustomerId };
    await post(b, event("evt_cancel", "customer.subscription.deleted", t - 30, { ...sub, status: "canceled" }));
    await post(
      b,
      event("evt_paid_after", "invoice.paid", t - 20, {
        customer: account.stripeCustomerId,
        subscription: account.stripeSubscriptionId,
      }),
    );
    const status = async () =>
      (await b.gw.db.select().from(billingAccounts).where(eq(billingAccounts.organizationId, b.organizationId)))[0];
    expect(await status()).toMatchObject({ status: "canceled" });
    const renewed = {
      id: "sub_resubscribed",
      object: "subscription",
      customer: account.stripeCustomerId,
      items: gatewayItems(),
    };
    await post(b, event("evt_resubscribed", "customer.subscription.updated", t - 10, { ...renewed, status: "active" }));
    expect(await status()).toMatchObject({ status: "active", stripeSubscriptionId: "sub_resubscribed" });
  });

  it("suspends inference after the grace period of a failed payment and restores it when paid", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const ask = () =>
      b.gw.request("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${b.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content: "hi" }], max_tokens: 1 }),
      });
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const invoice = { customer: account.stripeCustomerId, subscription: account.stripeSubscriptionId };
    await post(b, event("evt_f", "invoice.payment_failed", t, invoice));
    clearCallerCache();
    b.clock.advance(6 * 86_400_000);
    expect((await ask()).status).toBe(200);
    b.clock.advance(2 * 86_400_000);
    clearCallerCache();
    const suspended = await ask();
    expect(suspended.status).toBe(402);
    expect(await suspended.json()).toMatchObject({ error: { code: "billing_suspended" } });
    const billing = await b.gw.request("/v1/billing", { headers: { authorization: `Bearer ${b.token}` } });
    expect(await billing.json()).toMatchObject({ enabled: true, status: "past_due", suspended: true, plan: "pro" });
    expect(
      (
        await b.gw.request(`/${"meta-llama/Llama-2-7b-hf"}/resolve/main/x`, {
          headers: { authorization: `Bearer ${b.token}` },
        })
      ).status,
    ).not.toBe(402);

    await post(b, event("evt_p", "invoice.paid", Math.floor(b.clock.now().getTime() / 1000), invoice));
    clearCallerCache();
    expect((await ask()).status).toBe(200);
  });

  it("security: an invoice of another subscription, or of none, neither clears nor causes a failure of the account's own", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const customer = account.stripeCustomerId;
    const own = { id: "in_metered", customer, subscription: account.stripeSubscriptionId };
    expect(await (await post(b, event("evt_own_failed", "invoice.payment_failed", t - 100, own))).json()).toMatchObject(
      {
        result: "applied",
      },
    );
    // Paid later: a one-off invoice (a small manual charge), an add-on's, and an add-on's in the
    // newer API versions' place (`parent.subscription_details`).
    for (const [id, invoice] of [
      ["evt_oneoff_paid", { id: "in_oneoff", customer }],
      ["evt_addon_paid", { id: "in_addon", customer, subscription: "sub_addon" }],
      [
        "evt_addon_paid_parent",
        { id: "in_addon_2", customer, parent: { subscription_details: { subscription: "sub_addon" } } },
      ],
    ] as const) {
      const res = await post(b, event(id, "invoice.paid", t - 50, invoice));
      expect(res.status, id).toBe(200);
      expect(await res.json(), id).toMatchObject({ result: "ignored" });
      // Recorded as seen all the same: a redelivery is a duplicate.
      expect(await b.gw.db.select().from(stripeEvents).where(eq(stripeEvents.id, id)), id).toHaveLength(1);
    }
    expect(await accountOf(b)).toMatchObject({
      status: "past_due",
      paymentFailedAt: new Date((t - 100) * 1000).toISOString(),
      invoiceEventCreated: t - 100,
    });
    b.clock.advance(8 * 86_400_000);
    clearCallerCache();
    expect((await ask(b)).status).toBe(402);

    // The account's own invoice paid (in the newer place): active. A one-off failing after it says nothing.
    const ownPaid = {
      id: "in_metered",
      customer,
      parent: { subscription_details: { subscription: own.subscription } },
    };
    await post(b, event("evt_own_paid", "invoice.paid", t - 40, ownPaid));
    expect(await accountOf(b)).toMatchObject({ status: "active", paymentFailedAt: null });
    const oneOffFailed = event("evt_oneoff_failed", "invoice.payment_failed", t - 30, { id: "in_oneoff_2", customer });
    expect(await (await post(b, oneOffFailed)).json()).toMatchObject({ result: "ignored" });
    expect(await accountOf(b)).toMatchObject({ status: "active", paymentFailedAt: null });
  });

  it("security: another live subscription of the customer never replaces the account's own while it lives, nor lifts its failure", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const live = (id: string, items?: ReturnType<typeof gatewayItems>) => ({
      id,
      object: "subscription",
      customer: account.stripeCustomerId,
      status: "active",
      ...(items ? { items } : {}),
    });
    // An add-on that is not the gateway's kind, and a second one that is (an operator's by hand).
    const others = [live("sub_addon", gatewayItems(["price_support"])), live("sub_second", gatewayItems())];
    for (const [i, sub] of others.entries()) {
      const res = await post(b, event(`evt_other_${i}`, "customer.subscription.updated", t - 100 + i, sub));
      expect(await res.json(), sub.id).toMatchObject({ result: "ignored" });
    }
    const failed = { id: "in_metered", customer: account.stripeCustomerId, subscription: account.stripeSubscriptionId };
    await post(b, event("evt_metered_failed", "invoice.payment_failed", t - 50, failed));
    const pastDue = { status: "past_due", stripeSubscriptionId: account.stripeSubscriptionId };
    expect(await accountOf(b)).toMatchObject(pastDue);
    // Newer events of both, live, or ending: the failure of the account's own stands.
    for (const [i, sub] of others.entries()) {
      await post(b, event(`evt_other_later_${i}`, "customer.subscription.updated", t - 40 + i, sub));
      await post(
        b,
        event(`evt_other_end_${i}`, "customer.subscription.deleted", t - 30 + i, { ...sub, status: "canceled" }),
      );
    }
    expect(await accountOf(b)).toMatchObject({ ...pastDue, paymentFailedAt: new Date((t - 50) * 1000).toISOString() });
    b.clock.advance(8 * 86_400_000);
    clearCallerCache();
    expect((await ask(b)).status).toBe(402);
  });

  it("security: once the account's subscription ended, only a live one carrying the plan's prices takes its place", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000);
    const customer = account.stripeCustomerId;
    const own = { id: account.stripeSubscriptionId, object: "subscription", customer };
    await post(b, event("evt_own_deleted", "customer.subscription.deleted", t - 100, { ...own, status: "canceled" }));
    expect(await accountOf(b)).toMatchObject({ status: "canceled" });
    const candidates = [
      ["no prices", { id: "sub_addon", status: "active" }],
      [
        "one of the plan's two prices",
        { id: "sub_half", status: "active", items: gatewayItems([PLAN.prices[0] as string]) },
      ],
      ["other prices", { id: "sub_other", status: "active", items: gatewayItems(["price_a", "price_b"]) }],
      ["the plan's prices, not live yet", { id: "sub_new", status: "incomplete", items: gatewayItems() }],
    ] as const;
    for (const [i, [name, sub]] of candidates.entries()) {
      const res = await post(
        b,
        event(`evt_candidate_${i}`, "customer.subscription.updated", t - 90 + i, { ...sub, customer }),
      );
      expect(await res.json(), name).toMatchObject({ result: "ignored" });
      expect(await accountOf(b), name).toMatchObject({ status: "canceled", stripeSubscriptionId: own.id });
    }
    const adopted = { id: "sub_new", object: "subscription", customer, status: "active", items: gatewayItems() };
    expect(
      await (await post(b, event("evt_adopted", "customer.subscription.updated", t - 80, adopted))).json(),
    ).toMatchObject({
      result: "applied",
    });
    expect(await accountOf(b)).toMatchObject({
      status: "active",
      stripeSubscriptionId: "sub_new",
      paymentFailedAt: null,
    });
    const [changed] = (
      await b.gw.db.select().from(auditEvents).where(eq(auditEvents.action, "billing.status_changed"))
    ).filter((e) => (e.data as { event?: string }).event === "evt_adopted");
    expect(changed?.data).toMatchObject({
      from: "canceled",
      to: "active",
      subscription: { from: own.id, to: "sub_new" },
    });
    // The ended one's invoices say nothing about the new one.
    const oldInvoice = { id: "in_old", customer, subscription: own.id };
    expect(
      await (await post(b, event("evt_old_failed", "invoice.payment_failed", t - 70, oldInvoice))).json(),
    ).toMatchObject({
      result: "ignored",
    });
    expect(await accountOf(b)).toMatchObject({ status: "active", stripeSubscriptionId: "sub_new" });
  });

  it("security: a deletion is final: an update of the same second, or a later one, arriving after it revives nothing", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000) - 60;
    const customer = account.stripeCustomerId;
    const first = { id: account.stripeSubscriptionId, object: "subscription", customer, items: gatewayItems() };
    await post(b, event("evt_del", "customer.subscription.deleted", t, { ...first, status: "canceled" }));
    // Stripe's `created` is whole seconds: an update of the deletion's second arrives after it.
    for (const [id, created] of [
      ["evt_upd_same_second", t],
      ["evt_upd_later", t + 5],
    ] as const) {
      const res = await post(b, event(id, "customer.subscription.updated", created, { ...first, status: "active" }));
      expect(await res.json(), id).toMatchObject({ result: "ignored" });
      expect(await accountOf(b), id).toMatchObject({ status: "canceled", stripeSubscriptionId: first.id });
    }
    // A new subscription takes its place and ends too: the first, ended before, does not come back.
    const second = { id: "sub_second", object: "subscription", customer, items: gatewayItems() };
    await post(b, event("evt_second", "customer.subscription.updated", t + 10, { ...second, status: "active" }));
    expect(await accountOf(b)).toMatchObject({ status: "active", stripeSubscriptionId: "sub_second" });
    await post(b, event("evt_second_del", "customer.subscription.deleted", t + 20, { ...second, status: "canceled" }));
    for (const [id, sub] of [
      ["evt_first_again", first],
      ["evt_second_again", second],
    ] as const) {
      const res = await post(b, event(id, "customer.subscription.updated", t + 30, { ...sub, status: "active" }));
      expect(await res.json(), id).toMatchObject({ result: "ignored" });
    }
    expect(await accountOf(b)).toMatchObject({ status: "canceled", stripeSubscriptionId: "sub_second" });
  });

  it("security: after a deletion, many copies of it and of an update of its second, delivered at once, leave the account canceled", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const t = Math.floor(b.clock.now().getTime() / 1000) - 30;
    const sub = { id: account.stripeSubscriptionId, object: "subscription", customer: account.stripeCustomerId };
    const deleted = event("evt_race_del", "customer.subscription.deleted", t, { ...sub, status: "canceled" });
    const updated = event("evt_race_upd", "customer.subscription.updated", t, { ...sub, status: "active" });
    expect(await (await post(b, deleted)).json()).toMatchObject({ result: "applied" });
    const results = await Promise.all(Array.from({ length: 24 }, (_, i) => post(b, i % 2 === 0 ? updated : deleted)));
    expect(results.map((r) => r.status).filter((s) => s !== 200)).toEqual([]);
    const bodies = (await Promise.all(results.map((r) => r.json()))) as { result: string }[];
    expect(bodies.filter((r) => r.result === "applied")).toEqual([]);
    expect(await accountOf(b)).toMatchObject({ status: "canceled", subscriptionEventCreated: t });
    const changes = (await b.gw.db.select().from(auditEvents)).filter(
      (e) => e.action === "billing.status_changed" || e.action === "billing.account_updated",
    );
    expect(changes.map((e) => [e.action, (e.data as { event: string }).event])).toEqual([
      ["billing.status_changed", "evt_race_del"],
    ]);
    expect(await b.gw.db.select().from(stripeEvents).where(eq(stripeEvents.id, "evt_race_upd"))).toHaveLength(1);
  });

  it("security: a replacement's adoption and its deletion arriving together never leave the account active on an ended subscription", async () => {
    for (let round = 0; round < 3; round++) {
      const b = await billedGateway();
      const account = await withAccount(b);
      const t = Math.floor(b.clock.now().getTime() / 1000) - 60;
      const customer = account.stripeCustomerId;
      const own = { id: account.stripeSubscriptionId, object: "subscription", customer };
      await post(b, event(`evt_own_end_${round}`, "customer.subscription.deleted", t, { ...own, status: "canceled" }));
      const next = { id: `sub_next_${round}`, object: "subscription", customer, items: gatewayItems() };
      const adopted = event(`evt_next_live_${round}`, "customer.subscription.updated", t + 1, {
        ...next,
        status: "active",
      });
      const ended = event(`evt_next_end_${round}`, "customer.subscription.deleted", t + 1, {
        ...next,
        status: "canceled",
      });
      const results = await Promise.all(
        Array.from({ length: 16 }, (_, i) => post(b, i % 2 === round % 2 ? adopted : ended)),
      );
      expect(results.map((r) => r.status).filter((s) => s !== 200)).toEqual([]);
      expect(await accountOf(b), `round ${round}`).toMatchObject({ status: "canceled" });
    }
  });

  it("security: refuses a signature timestamped ahead of the gateway's clock by more than the tolerance, as one behind it", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const now = Math.floor(b.clock.now().getTime() / 1000);
    const failed = event("evt_ahead", "invoice.payment_failed", now, {
      customer: account.stripeCustomerId,
      subscription: account.stripeSubscriptionId,
    });
    for (const timestamp of [now + 301, now + 3600, now + 30 * 86_400, now - 301]) {
      const res = await post(b, failed, { timestamp });
      expect(res.status, `t = now ${timestamp - now}`).toBe(400);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      expect(await res.json()).toMatchObject({ code: "invalid_signature" });
    }
    expect(await accountOf(b)).toMatchObject({ status: "active" });
    expect(await b.gw.db.select().from(stripeEvents).where(eq(stripeEvents.id, "evt_ahead"))).toEqual([]);
    // At the tolerance either way (a signer's clock a little ahead), received.
    expect((await post(b, failed, { timestamp: now + 300 })).status).toBe(200);
    expect((await post(b, failed, { timestamp: now - 300 })).status).toBe(200);
    expect(await accountOf(b)).toMatchObject({ status: "past_due" });
  });

  it("security: refuses a body over the limit as 413, declared or not, and a request without a signature before reading it", async () => {
    const b = await billedGateway();
    const account = await withAccount(b);
    const expectProblem = async (res: Response, status: number, code: string, what: string) => {
      expect(res.status, what).toBe(status);
      expect(res.headers.get("content-type"), what).toContain("application/problem+json");
      expect(await res.json(), what).toMatchObject({ code });
    };
    // A declared length over the limit, signed or not: refused before anything is read.
    for (const signature of [undefined, "t=1,v1=00"]) {
      const res = await b.gw.request("/webhooks/stripe", {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "content-length": String(MAX_WEBHOOK_BODY_BYTES + 1),
          ...(signature ? { "stripe-signature": signature } : {}),
        },
        body: "{}",
      });
      await expectProblem(res, 413, "payload_too_large", `declared, signature ${signature}`);
    }
    // No length declared (chunked): counted as it is read and cut at the limit, not read to its end.
    let pulled = 0;
    const chunk = new TextEncoder().encode(" ".repeat(16 * 1024));
    const chunked = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 1;
        if (pulled > 1000) controller.close();
        else controller.enqueue(chunk);
      },
    });
    const now = Math.floor(b.clock.now().getTime() / 1000);
    const res = await b.gw.request("/webhooks/stripe", {
      method: "POST",
      headers: { "content-type": "application/json", "stripe-signature": `t=${now},v1=${"0".repeat(64)}` },
      body: chunked,
      duplex: "half",
    } as RequestInit);
    await expectProblem(res, 413, "payload_too_large", "chunked");
    expect(pulled).toBeLessThan(MAX_WEBHOOK_BODY_BYTES / chunk.byteLength + 5);
    // No signature: refused without a byte of the body read.
    let read = false;
    const untouched = new ReadableStream<Uint8Array>(
      {
        pull(controller) {
          read = true;
          controller.enqueue(new TextEncoder().encode("{}"));
          controller.close();
        },
      },
      { highWaterMark: 0 },
    );
    const unsigned = await b.gw.request("/webhooks/stripe", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: untouched,
      duplex: "half",
    } as RequestInit);
    await expectProblem(unsigned, 400, "invalid_signature", "no signature");
    expect(read, "the unsigned body was read").toBe(false);
    // A signed event of exactly the limit is received; a byte more is not.
    const failed = event("evt_padded", "invoice.payment_failed", now, {
      customer: account.stripeCustomerId,
      subscription: account.stripeSubscriptionId,
    });
    const json = JSON.stringify(failed);
    const atLimit = json + " ".repeat(MAX_WEBHOOK_BODY_BYTES - json.length);
    await expectProblem(await post(b, failed, { payload: `${atLimit} ` }), 413, "payload_too_large", "a byte over");
    expect(await (await post(b, failed, { payload: atLimit })).json()).toMatchObject({ result: "applied" });
    expect(await accountOf(b)).toMatchObject({ status: "past_due" });
  });

  it("is off without a Stripe key: usage is still metered, nothing is queued or sent", async () => {
    const gw = testGateway({ clock: fixedClock(NOW) });
    const { token } = await approvedToken(gw, licenseSha256);
    const res = await gw.request("/v1/billing", { headers: { authorization: `Bearer ${token}` } });
    expect(await res.json()).toMatchObject({ enabled: false, status: null, suspended: false });
    const hook = await gw.request("/webhooks/stripe", {
      method: "POST",
      headers: { "stripe-signature": "t=1,v1=x" },
      body: "{}",
    });
    expect(hook.status).toBe(503);
  });
});

describe("security: billing writes are audited", () => {
  it("records the account's opening and the plan limits it writes, by the system, with the account", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 1);
    await deliver(
      b,
      rows.map((r) => r.id),
    );
    const [account] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    const events = (await b.gw.db.select().from(auditEvents).orderBy(auditEvents.seq)).filter(
      (e) => e.action.startsWith("billing.") || e.action === "organization.limits_set",
    );
    expect(events.map((e) => [e.actor, e.action, e.subjectType, e.subjectId])).toEqual([
      ["system", "billing.account_opened", "organization", b.organizationId],
      ["system", "organization.limits_set", "organization", b.organizationId],
    ]);
    expect(events[0]?.data).toEqual({
      family: "llama-2",
      plan: "pro",
      customer: account?.stripeCustomerId,
      subscription: account?.stripeSubscriptionId,
    });
    expect(events[1]?.data).toEqual({ plan: "pro", ...PLAN.limits, source: "billing_plan" });
    expect(await verifyAuditChain(b.gw.db)).toMatchObject({ ok: true });
  });

  it("opens one account with one pair of events when the reconciler and the queue race", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 2);
    await Promise.all([
      deliver(b, [rows[0]?.id as string]),
      deliver(b, [rows[1]?.id as string]),
      reconcileBilling(b.gw.services(), b.gw.env.USAGE_QUEUE),
    ]);
    const opened = (await b.gw.db.select().from(auditEvents)).filter((e) => e.subjectId === b.organizationId);
    expect(opened.map((e) => e.action).sort()).toEqual(["billing.account_opened", "organization.limits_set"]);
  });

  it("records a webhook update that leaves the status alone, with what it changed", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 1);
    await deliver(
      b,
      rows.map((r) => r.id),
    );
    const [account] = await b.gw.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, b.organizationId));
    const created = Math.floor(b.clock.now().getTime() / 1000) - 5;
    const payload = JSON.stringify({
      id: "evt_sub_renewed",
      object: "event",
      type: "customer.subscription.updated",
      created,
      api_version: "2025-01-01",
      livemode: false,
      data: { object: { id: account?.stripeSubscriptionId, status: "active", customer: account?.stripeCustomerId } },
    });
    const signature = await new Stripe("sk_test_unused").webhooks.generateTestHeaderStringAsync({
      payload,
      secret: SECRETS[1] as string,
      timestamp: Math.floor(b.clock.now().getTime() / 1000),
      cryptoProvider: Stripe.createSubtleCryptoProvider(),
    });
    const res = await b.gw.request("/webhooks/stripe", {
      method: "POST",
      headers: { "stripe-signature": signature, "content-type": "application/json" },
      body: payload,
    });
    expect(await res.json()).toMatchObject({ result: "applied" });
    const [updated] = await b.gw.db.select().from(auditEvents).where(eq(auditEvents.action, "billing.account_updated"));
    expect(updated).toMatchObject({ actor: "stripe", subjectType: "organization", subjectId: b.organizationId });
    expect(updated?.data).toEqual({
      event: "evt_sub_renewed",
      type: "customer.subscription.updated",
      changes: { subscriptionEventCreated: { from: 0, to: created } },
    });
    expect((await b.gw.db.select().from(auditEvents)).filter((e) => e.action === "billing.status_changed")).toEqual([]);
  });
});

/** A usage-queue batch of any bodies, as a queue holding messages of another shape would deliver them. */
function rawBatch(queue: string, bodies: unknown[], attempts = 1) {
  return createMessageBatch<UsageMessage>(
    queue,
    bodies.map((body, i) => ({ id: `raw-${i}`, timestamp: new Date(), attempts, body: body as UsageMessage })),
  );
}

describe("security: malformed usage-queue messages", () => {
  it("are acknowledged and logged, and the rest of their batch is billed; the dead-letter consumer likewise", async () => {
    const b = await billedGateway();
    const rows = await ledgerRows(b, 4);
    const [one, two, three, four] = rows.map((r) => r.id) as [string, string, string, string];
    const malformed: unknown[] = [
      null,
      {},
      "x",
      42,
      [],
      [{ ledgerId: four }],
      { ledgerId: "" },
      { ledgerId: 5 },
      { ledgerId: "x".repeat(300) },
      { intervalId: "x", ledgerId: four },
      Object.create({ ledgerId: four }),
    ];
    const batch = rawBatch("modelgate-usage", [{ ledgerId: one }, ...malformed, { ledgerId: two }]);
    const ctx = createExecutionContext();
    await worker.queue(batch, b.gw.env, ctx);
    await waitOnExecutionContext(ctx);
    const result = await getQueueResult(batch, ctx);
    expect(result.retryMessages).toEqual([]);
    expect([...result.explicitAcks].sort()).toEqual(batch.messages.map((m) => m.id).sort());
    const states = async () =>
      Object.fromEntries(
        (await b.gw.db.select().from(usageLedger).where(eq(usageLedger.organizationId, b.organizationId))).map((r) => [
          r.id,
          r.billingState,
        ]),
      );
    expect(await states()).toEqual({ [one]: "sent", [two]: "sent", [three]: "pending", [four]: "pending" });
    const billed = (await b.standin("/_standin/state")).meterEvents.map((e) => e.identifier.split(".")[0]);
    expect([...new Set(billed)].sort()).toEqual([one, two].sort());

    const dlq = rawBatch("modelgate-usage-dlq", [...malformed, { ledgerId: three }]);
    const dlqCtx = createExecutionContext();
    await worker.queue(dlq, b.gw.env, dlqCtx);
    await waitOnExecutionContext(dlqCtx);
    const dead = await getQueueResult(dlq, dlqCtx);
    expect(dead.retryMessages).toEqual([]);
    expect([...dead.explicitAcks].sort()).toEqual(dlq.messages.map((m) => m.id).sort());
    expect(await states()).toEqual({ [one]: "sent", [two]: "sent", [three]: "dead", [four]: "pending" });
  });
});

describe("meter events accepted part by part", () => {
  /** A Stripe client that refuses the completion meter's events (as when that meter is missing) and passes the rest on. */
  function refusingCompletions(b: Billed): Stripe {
    const services = b.gw.services();
    const real = stripeClient(services.config.billing) as Stripe;
    return {
      billing: {
        meterEvents: {
          create: (params: Stripe.Billing.MeterEventCreateParams, options?: Stripe.RequestOptions) =>
            params.event_name === services.config.billing.meters.completion
              ? Promise.reject(
                  new Stripe.errors.StripeInvalidRequestError({
                    message: "No active meter found for event_name",
                    type: "invalid_request_error",
                  }),
                )
              : real.billing.meterEvents.create(params, options),
        },
      },
    } as unknown as Stripe;
  }

  /** Requests to Stripe's meter-event endpoint under an identifier's idempotency key, and the events it accepted. */
  async function sendsOf(b: Billed, identifier: string) {
    const state = await b.standin("/_standin/state");
    return {
      requests: state.requests.filter(
        (r) => r.path === "/v1/billing/meter_events" && r.idempotencyKey === `modelgate-meter-${identifier}`,
      ).length,
      accepted: state.meterEvents.filter((e) => e.identifier === identifier).length,
    };
  }

  /** Two days on, for the gateway and Stripe: past Stripe's ~24 h memory of identifiers and idempotency keys. */
  async function twoDaysLater(b: Billed) {
    b.clock.advance(2 * 86_400_000);
    await b.standin("/_standin/clock", { now: Math.floor(b.clock.now().getTime() / 1000) });
  }

  /** Resends dead letters as an admin does, through the API. */
  async function resend(b: Billed, ids: string[]) {
    const admin = await adminToken({ role: "admin", email: "ada@example.com", issuedAt: b.clock.now() });
    const res = await b.gw.request("/admin/api/billing/outbox/resend", {
      method: "POST",
      headers: accessHeaders(admin),
      body: JSON.stringify({ ids }),
    });
    expect(res.status).toBe(200);
    expect(((await res.json()) as { ids: string[] }).ids).toEqual(ids);
  }

  /**
   * A ledger row with both parts whose prompt Stripe accepted and whose completion it refused
   * until the queue gave up: dead, with its prompt recorded.
   */
  async function deadRowWithPromptAccepted(b: Billed) {
    const services = b.gw.services();
    await ensureBillingAccount(services, stripeClient(services.config.billing) as Stripe, b.organizationId);
    const row = (await ledgerRows(b, 2))[1] as Awaited<ReturnType<typeof ledgerRows>>[number];
    expect(row.completionTokens).toBeGreaterThan(0);
    for (let i = 0; i < 3; i++)
      expect((await billLedgerRows(services, refusingCompletions(b), [row.id])).get(row.id)).toBe("retry");
    const [stored] = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.id, row.id));
    expect(stored).toMatchObject({ billingState: "pending", billingAttempts: 3 });
    await consumeDeadLetters(rawBatch("modelgate-usage-dlq", [{ ledgerId: row.id }]), services);
    return { row, recorded: stored?.billingAcceptedParts, promptSends: await sendsOf(b, `${row.id}.prompt`) };
  }

  it("a resend days later, past Stripe's memory of identifiers, sends only the parts Stripe has not accepted", async () => {
    const b = await billedGateway();
    const { row } = await deadRowWithPromptAccepted(b);
    await twoDaysLater(b);
    await resend(b, [row.id]);
    expect((await consume(b, [row.id])).retried).toEqual([]);
    const state = await b.standin("/_standin/state");
    // Billed once: the row's tokens, not its prompt twice (the row beside it was never sent).
    expect(state.totals[state.customers[0]?.id as string]).toEqual({
      modelgate_prompt_tokens: row.promptTokens,
      modelgate_completion_tokens: row.completionTokens,
    });
    expect(await sendsOf(b, `${row.id}.prompt`)).toEqual({ requests: 1, accepted: 1 });
    expect(await sendsOf(b, `${row.id}.completion`)).toMatchObject({ accepted: 1 });
    const [stored] = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.id, row.id));
    expect(stored?.billingState).toBe("sent");
    expect([...(stored?.billingAcceptedParts ?? [])].sort()).toEqual(["completion", "prompt"]);
  });

  it("a resend racing the queue's retries sends each part Stripe accepted once, and records each part once", async () => {
    const b = await billedGateway();
    const { row, recorded, promptSends } = await deadRowWithPromptAccepted(b);
    // Accepted once and recorded as it was accepted; the queue's later attempts did not send it again.
    expect(recorded).toEqual(["prompt"]);
    expect(promptSends).toEqual({ requests: 1, accepted: 1 });
    await twoDaysLater(b);
    await resend(b, [row.id]);
    // The resend's message and stale redeliveries of the row, consumed at the same moment.
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => consume(b, [row.id], i + 1)));
    expect(results.flatMap((r) => r.retried)).toEqual([]);
    expect(await sendsOf(b, `${row.id}.prompt`)).toEqual({ requests: 1, accepted: 1 });
    expect(await sendsOf(b, `${row.id}.completion`)).toMatchObject({ accepted: 1 });
    const [stored] = await b.gw.db.select().from(usageLedger).where(eq(usageLedger.id, row.id));
    expect(stored).toMatchObject({ billingState: "sent" });
    expect([...(stored?.billingAcceptedParts ?? [])].sort()).toEqual(["completion", "prompt"]);

    // A fresh row billed by several consumers at once: each part recorded once.
    const [fresh] = await ledgerRows(b, 2).then((rows) => rows.slice(1));
    await Promise.all(Array.from({ length: 6 }, () => consume(b, [fresh?.id as string])));
    const [billed] = await b.gw.db
      .select()
      .from(usageLedger)
      .where(eq(usageLedger.id, fresh?.id as string));
    expect(billed?.billingState).toBe("sent");
    expect([...(billed?.billingAcceptedParts ?? [])].sort()).toEqual(["completion", "prompt"]);
    expect((await sendsOf(b, `${fresh?.id}.prompt`)).accepted).toBe(1);
  });

  it("an interval likewise: the part Stripe accepted is recorded and not sent again when the interval is resent days later", async () => {
    const b = await billedGateway({ clock: hourOver() });
    await chat(b, "one two", 3);
    await flushUsage();
    const [interval] = await intervalsOf(b);
    const id = interval?.id as string;
    const services = b.gw.services();
    await ensureBillingAccount(services, stripeClient(services.config.billing) as Stripe, b.organizationId);
    expect((await billIntervals(services, refusingCompletions(b), [id])).get(id)).toBe("retry");
    const [refused] = await intervalsOf(b);
    expect(refused).toMatchObject({ state: "pending", attempts: 1 });
    await consumeDeadLetters(rawBatch("modelgate-usage-dlq", [{ intervalId: id }]), services);
    expect((await intervalsOf(b))[0]?.state).toBe("dead");

    await twoDaysLater(b);
    await resend(b, [id]);
    expect((await consume(b, [{ intervalId: id }])).retried).toEqual([]);
    const state = await b.standin("/_standin/state");
    expect(state.totals[state.customers[0]?.id as string]).toEqual({
      modelgate_prompt_tokens: interval?.promptTokens,
      modelgate_completion_tokens: interval?.completionTokens,
    });
    expect(await sendsOf(b, `${id}:prompt`)).toEqual({ requests: 1, accepted: 1 });
    expect(await sendsOf(b, `${id}:completion`)).toMatchObject({ accepted: 1 });
    expect(refused?.acceptedParts).toEqual(["prompt"]);
    const [sent] = await intervalsOf(b);
    expect(sent?.state).toBe("sent");
    expect([...(sent?.acceptedParts ?? [])].sort()).toEqual(["completion", "prompt"]);
  });

  it("the Stripe stand-in forgets identifiers and idempotency keys after 24 hours of its clock, as Stripe may", async () => {
    const b = await billedGateway();
    const services = b.gw.services();
    const stripe = stripeClient(services.config.billing) as Stripe;
    const account = await ensureBillingAccount(services, stripe, b.organizationId);
    const at = Math.floor(b.clock.now().getTime() / 1000);
    const params = {
      event_name: "modelgate_prompt_tokens",
      identifier: "use_window.prompt",
      timestamp: at,
      payload: { stripe_customer_id: account?.stripeCustomerId as string, value: "5" },
    };
    const clock = (hours: number) => b.standin("/_standin/clock", { now: at + hours * 3600 });
    await stripe.billing.meterEvents.create(params, { idempotencyKey: "window" });
    await clock(23);
    // Within the window: the key replays the first answer; the identifier refuses a new request.
    await stripe.billing.meterEvents.create(params, { idempotencyKey: "window" });
    await expect(stripe.billing.meterEvents.create(params)).rejects.toMatchObject({ code: "resource_already_exists" });
    expect((await b.standin("/_standin/state")).meterEvents).toHaveLength(1);
    await clock(25);
    // After it: the same event is a new one, billed again.
    await stripe.billing.meterEvents.create(params, { idempotencyKey: "window" });
    const state = await b.standin("/_standin/state");
    expect(state.meterEvents).toHaveLength(2);
    expect(state.totals[account?.stripeCustomerId as string]).toEqual({ modelgate_prompt_tokens: 10 });
  });
});
