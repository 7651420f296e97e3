/**
 * Usage survives faults: a quota object that dies between any two steps of its usage book, an
 * alarm and an operator's sync at the same moment, D1 and R2 refusing for a while, Stripe failing
 * for a while and the usage queue delivering messages twice. After each run the raw rows (archived
 * and still held), `usage_hours`, `billing_intervals` and the meter events Stripe accepted agree
 * to the token, and no row is lost or counted twice.
 */
import {
  createExecutionContext,
  createMessageBatch,
  evictDurableObject,
  getQueueResult,
  runInDurableObject,
} from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it, vi } from "vitest";
import { BREAKER_COOL_OFF_MS } from "../worker/billing/breaker";
import { consumeUsageBatch, type UsageMessage } from "../worker/billing/queue";
import { reconcileBilling, STUCK_AFTER_MS } from "../worker/billing/reconcile";
import { type LedgerRow, ledgerBatch, ledgerEntry, recordUsage } from "../worker/inference/ledger";
import { fixedClock } from "../worker/platform/clock";
import { type LeaseContext, QuotaLeases } from "../worker/quota/leases";
import type { OrgQuota } from "../worker/quota/org-quota";
import { quotaStub } from "../worker/quota/org-quota";
import { createServices, type Services } from "../worker/services";
import { carryLedgerRows } from "../worker/usage/carry";
import { hourOf, hourStart } from "../worker/usage/hours";
import { boundMember } from "./helpers/bindings";
import {
  archiveObjects,
  type BookInside,
  bindBook,
  byId,
  commitRows,
  failingAfter,
  hourSums,
  intervals,
  into,
  LIMITS,
  newOrganization,
  refusing,
  row,
  runAlarm,
  sumsOf,
  usageHourRows,
} from "./helpers/usage-parts";

const PAST = "2026-06-15T12";

/** The usage book's steps, called one at a time to stop the object between any two of them. */
interface BookSteps {
  ctx: DurableObjectState;
  env: Env;
  fold(now: number): Promise<boolean>;
  sync(now: number, force?: boolean): Promise<boolean>;
  archive(): Promise<boolean>;
}

function bookOf(instance: OrgQuota): BookSteps {
  return (instance as unknown as BookInside & { book: BookSteps }).book;
}

/** The object's state with a storage whose `method` fails, as when the object dies in that write. */
function storageRefusing(ctx: DurableObjectState, method: "put" | "delete"): DurableObjectState {
  const storage = refusing(ctx.storage, method);
  return new Proxy(ctx, {
    get(target, name) {
      if (name === "storage") return storage;
      return boundMember(target, name);
    },
  });
}

/**
 * Leases and commits `rows` inside the object itself, then takes its alarm away so that only the
 * test moves its usage on (the object is dropped before anything else would need the alarm).
 */
async function commitHeld(instance: OrgQuota, state: DurableObjectState, rows: readonly LedgerRow[], now: number) {
  const lease = `lease-${crypto.randomUUID()}`;
  const tokens = rows.reduce((n, r) => n + r.totalTokens, 0);
  await instance.lease(lease, { requests: rows.length, tokens: Math.max(1, tokens), need: 1 }, LIMITS, now);
  await instance.commit(
    {
      settlements: rows.map((r) => ({ id: r.id, lease, reserved: r.totalTokens, actual: r.totalTokens })),
      rows: ledgerBatch(rows.map(ledgerEntry)),
    },
    LIMITS,
    now,
  );
  await state.storage.deleteAlarm();
}

/** Drops the object's instance: what it kept only in memory is gone, its storage stays. */
async function restart(org: string): Promise<void> {
  await evictDurableObject(quotaStub(env, org));
}

/** Moves everything on now: the alarm, then an operator's sync, as `flushUsage` does. */
async function settle(org: string): Promise<void> {
  await runAlarm(org);
  expect(await quotaStub(env, org).syncUsage()).toBe(true);
}

async function archivedRows(org: string): Promise<LedgerRow[]> {
  return (await archiveObjects(org))
    .filter((o) => o.key.includes("/inference-"))
    .flatMap((o) => o.lines.map((line) => JSON.parse(line) as LedgerRow));
}

/**
 * Every figure of the organization agrees with the rows it committed: each row is in the archive
 * or held by the object, once; `usage_hours` sums them per hour, model, grant and token; each
 * billing interval equals its part's totals; and, with `billed`, Stripe accepted each interval's
 * events once with the same tokens.
 */
async function expectAgreement(org: string, committed: readonly LedgerRow[], billed?: Standin) {
  const archived = await archivedRows(org);
  expect(new Set(archived.map((r) => r.id)).size, "no row archived twice").toBe(archived.length);
  const rows = new Map(archived.map((r) => [r.id, r]));
  for (const line of await quotaStub(env, org).rawUsage()) {
    const r = JSON.parse(line) as LedgerRow;
    rows.set(r.id, r);
  }
  expect(byId([...rows.values()])).toEqual(byId(committed));
  expect(await hourSums(org)).toEqual(sumsOf(committed));

  const hours = await usageHourRows(org);
  const all = await intervals(org);
  const partsWithTokens = new Set(
    hours.filter((h) => h.prompt_tokens + h.completion_tokens > 0).map((h) => `${org}:${h.hour}:${h.part}`),
  );
  expect(new Set(all.map((i) => i.id))).toEqual(partsWithTokens);
  for (const interval of all) {
    const ofPart = hours.filter((h) => `${org}:${h.hour}:${h.part}` === interval.id);
    expect(interval, interval.id).toMatchObject({
      requests: ofPart.reduce((n, h) => n + h.requests, 0),
      prompt_tokens: ofPart.reduce((n, h) => n + h.prompt_tokens, 0),
      completion_tokens: ofPart.reduce((n, h) => n + h.completion_tokens, 0),
    });
  }
  if (!billed) return;
  expect(all.map((i) => i.state)).toEqual(all.map(() => "sent"));
  const state = await billed.state();
  const expected = all.flatMap((i) => [
    ...(i.prompt_tokens > 0 ? [{ identifier: `${i.id}:prompt`, value: i.prompt_tokens }] : []),
    ...(i.completion_tokens > 0 ? [{ identifier: `${i.id}:completion`, value: i.completion_tokens }] : []),
  ]);
  const accepted = state.meterEvents.map((e) => ({ identifier: e.identifier, value: e.value }));
  const byIdentifier = (a: { identifier: string }, b: { identifier: string }) =>
    a.identifier.localeCompare(b.identifier);
  expect(accepted.sort(byIdentifier)).toEqual(expected.sort(byIdentifier));
  const customer = state.customers[0]?.id as string;
  expect(state.customers).toHaveLength(1);
  expect(state.totals[customer]).toEqual({
    modelgate_prompt_tokens: committed.reduce((n, r) => n + r.promptTokens, 0),
    modelgate_completion_tokens: committed.reduce((n, r) => n + r.completionTokens, 0),
  });
}

/**
 * Commits `rows` of `PAST` and closes their part as far as D1: the object stops in the write that
 * would note the part closed.
 */
async function closeReachesD1Only(stub: DurableObjectStub<OrgQuota>, rows: readonly LedgerRow[]) {
  await runInDurableObject(stub, async (instance: OrgQuota, state) => {
    await commitHeld(instance, state, rows, hourStart(PAST));
    const book = bookOf(instance);
    const now = Date.now();
    await book.fold(now);
    const ctx = book.ctx;
    book.ctx = storageRefusing(ctx, "put");
    await expect(book.sync(now)).rejects.toThrow(/put/);
    book.ctx = ctx;
  });
}

describe("usage faults: a quota object restarted mid-batch", () => {
  it("restarted between fold and sync, with batches still unfolded: finishes by itself, every row once", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    // More commits than one fold takes, so the object dies with some folded and some not.
    const commits = Array.from({ length: 205 }, (_, i) => [row(org, into(PAST, i / 5), 3, i % 7)]);
    const more = await runInDurableObject(stub, async (instance: OrgQuota, state) => {
      const now = Date.now();
      for (const rows of commits) await commitHeld(instance, state, rows, Date.parse(rows[0]?.createdAt ?? ""));
      return bookOf(instance).fold(now);
    });
    expect(more).toBe(true);
    expect(await usageHourRows(org)).toEqual([]);
    await restart(org);

    // The restarted object wakes for what it holds, without anyone calling it but this read.
    await stub.ping();
    const committed = commits.flat();
    await vi.waitFor(async () => expect(await archivedRows(org)).toHaveLength(committed.length), {
      timeout: 10_000,
      interval: 50,
    });
    await settle(org);
    await expectAgreement(org, committed);
  });

  it("restarted after D1 took a closing part but before the object noted it: closed again the same, its interval as billed", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const rows = Array.from({ length: 6 }, (_, i) => row(org, into(PAST, 5 + i), 4, 3 * i));
    await closeReachesD1Only(stub, rows);
    const [interval] = await intervals(org);
    expect(interval).toMatchObject({ requests: 6, state: "pending" });
    // The queue's consumer billed it meanwhile.
    await env.DB.prepare("update billing_intervals set state = 'sent', billed_at = created_at where id = ?")
      .bind(interval?.id)
      .run();
    const billed = await intervals(org);
    const totals = (await usageHourRows(org)).map(({ updated_at: _, ...h }) => h);
    await restart(org);

    await settle(org);
    expect(await intervals(org)).toEqual(billed);
    expect((await usageHourRows(org)).map(({ updated_at: _, ...h }) => h)).toEqual(totals);
    expect(await archiveObjects(org)).toHaveLength(1);
    await expectAgreement(org, rows);
  });

  it("restarted after D1 took a closing part but before the object noted it, then a late row: the row goes to a part of its own, billed", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const rows = Array.from({ length: 6 }, (_, i) => row(org, into(PAST, 5 + i), 4, 3 * i));
    await closeReachesD1Only(stub, rows);
    await restart(org);
    // A stream settled from its checkpoint, or an isolate's late batch, of the same hour.
    const late = row(org, into(PAST, 58), 1000, 2000);
    await commitRows(org, [late], Date.now());
    await settle(org);
    const billed = await intervals(org);
    expect(billed).toHaveLength(2);
    const tokens = (r: { prompt_tokens: number; completion_tokens: number }) => r.prompt_tokens + r.completion_tokens;
    expect(billed.reduce((n, i) => n + tokens(i), 0)).toBe(
      [...rows, late].reduce((n, r) => n + r.promptTokens + r.completionTokens, 0),
    );
    await expectAgreement(org, [...rows, late]);
  });

  it("a close D1 committed but answered with an error, then a late row: the row goes to a part of its own, billed", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const first = row(org, into(PAST, 5), 10, 20);
    await commitRows(org, [first], Date.now());
    const logged = await bindBook(org, { DB: failingAfter(env.DB, "batch") });
    expect(await stub.syncUsage()).toBe(false);
    expect(logged).toContain("usage totals not written to D1; kept and retried");
    expect(await intervals(org)).toMatchObject([{ requests: 1, prompt_tokens: 10, completion_tokens: 20 }]);
    await bindBook(org, {});
    // A late row of the same hour: the interval D1 holds already is never written again.
    const late = row(org, into(PAST, 50), 100, 200);
    await commitRows(org, [late], Date.now());
    expect(await stub.syncUsage()).toBe(true);
    const billed = await intervals(org);
    expect(billed).toHaveLength(2);
    expect(billed.reduce((n, i) => n + i.prompt_tokens + i.completion_tokens, 0)).toBe(330);
    await expectAgreement(org, [first, late]);
  });

  it("restarted between sync and archive: archives the closed part after the restart, once", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const rows = Array.from({ length: 4 }, (_, i) => row(org, into(PAST, 20 + i), 9, i));
    await runInDurableObject(stub, async (instance: OrgQuota, state) => {
      await commitHeld(instance, state, rows, hourStart(PAST));
      const book = bookOf(instance);
      const now = Date.now();
      await book.fold(now);
      expect(await book.sync(now)).toBe(true);
    });
    expect(await intervals(org)).toHaveLength(1);
    expect(await archiveObjects(org)).toEqual([]);
    await restart(org);

    await stub.ping();
    await vi.waitFor(async () => expect(await archivedRows(org)).toHaveLength(4), { timeout: 10_000, interval: 50 });
    await settle(org);
    expect(await intervals(org)).toHaveLength(1);
    await expectAgreement(org, rows);
  });

  it("restarted after R2 took a part but before the object forgot it: archived again under the same key, each row once", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const rows = Array.from({ length: 5 }, (_, i) => row(org, into(PAST, 30 + i), 2, 2 + i));
    await runInDurableObject(stub, async (instance: OrgQuota, state) => {
      await commitHeld(instance, state, rows, hourStart(PAST));
      const book = bookOf(instance);
      const now = Date.now();
      await book.fold(now);
      await book.sync(now);
      const ctx = book.ctx;
      book.ctx = storageRefusing(ctx, "delete");
      await expect(book.archive()).rejects.toThrow(/delete/);
      book.ctx = ctx;
    });
    const [first] = await archiveObjects(org);
    expect(first?.lines).toHaveLength(5);
    await restart(org);

    await settle(org);
    const objects = await archiveObjects(org);
    expect(objects.map((o) => o.key)).toEqual([first?.key]);
    expect(objects[0]?.lines).toHaveLength(5);
    await expectAgreement(org, rows);
  });
});

describe("usage faults: a stream whose isolate comes back after it was given up", () => {
  it.each([
    ["before", false],
    ["after", true],
  ])(
    "is one row when its late settlement comes %s the abandoned checkpoints were folded, and rows abandoned with it stay",
    async (_, folded) => {
      const org = newOrganization();
      const stub = quotaStub(env, org);
      const now = hourStart(PAST);
      const cut = row(org, into(PAST, 5), 2, 3, { stream: true, partial: true, outcome: "partial" });
      const other = row(org, into(PAST, 5), 2, 4, { stream: true, partial: true, outcome: "partial" });
      await stub.lease("lease-streams", { requests: 2, tokens: 100, need: 1 }, LIMITS, now);
      await stub.commit(
        {
          checkpoints: [cut, other].map((r) => ({
            settlement: { id: r.id, lease: "lease-streams", reserved: 50, actual: r.totalTokens },
            row: ledgerEntry(r),
          })),
        },
        LIMITS,
        now,
      );
      // Neither checkpoint is renewed for a minute: both are settled and billed as cut streams.
      await runInDurableObject(stub, (instance: OrgQuota) =>
        (instance as unknown as { settleAbandoned(now: number): unknown }).settleAbandoned(Date.now() + 61_000),
      );
      if (folded) await runAlarm(org);
      // Then the first stream's isolate reports its end after all.
      const late = { ...cut, completionTokens: 9, totalTokens: 11, partial: false, outcome: "ok" as const };
      await stub.commit(
        {
          settlements: [{ id: cut.id, lease: "lease-streams", reserved: 50, actual: late.totalTokens }],
          rows: ledgerBatch([ledgerEntry(late)]),
        },
        LIMITS,
        now,
      );
      await settle(org);
      await expectAgreement(org, [cut, other]);
    },
  );
});

describe("usage faults: work that overlaps", () => {
  it("an alarm and syncUsage at once while D1 is slow: rows folded meanwhile are in the totals and billed, once", async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const first = Array.from({ length: 3 }, (_, i) => row(org, into(PAST, 1 + i), 5, 5));
    const late = Array.from({ length: 2 }, (_, i) => row(org, into(PAST, 50 + i), 7, 11));
    await runInDurableObject(stub, async (instance: OrgQuota, state) => {
      const book = bookOf(instance);
      await commitHeld(instance, state, first, hourStart(PAST));
      let release = () => {};
      const slow = new Promise<void>((resolve) => {
        release = resolve;
      });
      let reached = () => {};
      const atD1 = new Promise<void>((resolve) => {
        reached = resolve;
      });
      const real = book.env;
      book.env = {
        ...real,
        DB: new Proxy(real.DB, {
          get(target, name) {
            if (name === "batch")
              return async (statements: D1PreparedStatement[]) => {
                reached();
                await slow;
                return target.batch(statements);
              };
            return boundMember(target, name);
          },
        }),
      };
      const alarm = instance.alarm();
      await atD1;
      // While the alarm's close waits on D1: more rows of the same hour, and an operator's sync.
      await commitHeld(instance, state, late, hourStart(PAST));
      const sync = instance.syncUsage();
      await new Promise((resolve) => setTimeout(resolve, 50));
      release();
      await Promise.all([alarm, sync]);
      book.env = real;
    });
    await settle(org);
    await expectAgreement(org, [...first, ...late]);
  });
});

/**
 * An isolate's leases over the organization's object whose commits reach the object, are applied
 * there, and then fail as a lost connection would: every one (`always`), or the first only. The
 * rows it falls back with go to the ledger as the proxy writes them, queued for billing in `queued`.
 */
function commitsAnswerLost(org: string, at: number, always: boolean, beforeAnswer?: () => Promise<void>) {
  const stub = quotaStub(env, org);
  const pending: Promise<unknown>[] = [];
  const queued: UsageMessage[] = [];
  let commits = 0;
  const quiet = () => {};
  const services = { ...createServices(env), log: { info: quiet, warn: quiet, error: quiet } };
  const context: LeaseContext = {
    stub: {
      lease: (...args: Parameters<typeof stub.lease>) => stub.lease(...args),
      commit: async (...args: Parameters<typeof stub.commit>) => {
        const answer = await stub.commit(...args);
        commits += 1;
        if (!always && commits > 1) return answer;
        await beforeAnswer?.();
        throw new Error("Network connection lost.");
      },
    },
    limits: LIMITS,
    now: () => at,
    newId: () => `lease-${crypto.randomUUID()}`,
    waitUntil: (work) => pending.push(work),
    fallback: (rows) => recordUsage(services, rows, recordingQueue(queued), 1),
  };
  const leases = new QuotaLeases();
  return {
    queued,
    /** Admits and settles `r` as the proxy does, and waits for its batch to land. */
    async serve(r: LedgerRow) {
      const admitted = await leases.admit(org, r.totalTokens, context);
      if (!admitted.ok) throw new Error(admitted.refusal);
      await leases.settle(org, admitted, { id: r.id, actual: r.totalTokens, entry: ledgerEntry(r) }, context);
      while (pending.length) await Promise.all(pending.splice(0));
    },
  };
}

async function ledgerOf(org: string) {
  const { results } = await env.DB.prepare(
    "select id, billing_state, aggregated_at from usage_ledger where organization_id = ? order by id",
  )
    .bind(org)
    .all<{ id: string; billing_state: string; aggregated_at: string | null }>();
  return results;
}

describe("usage faults: a commit the object took whose answer was lost", () => {
  /** The ids of the rows the object holds, folded. */
  const held = async (org: string) => {
    const stub = quotaStub(env, org);
    await stub.liveUsage();
    return (await stub.rawUsage()).map((line) => (JSON.parse(line) as LedgerRow).id);
  };
  /** Closes the hour of `at` (rows of the hour still open, so that nothing closes it before the test does). */
  const closeHourOf = async (org: string, at: number) => {
    await runAlarm(org);
    expect(await quotaStub(env, org).syncUsage(at + 2 * 3_600_000)).toBe(true);
  };

  it("written to the ledger as well when the object cannot be reached again: billed once, from the ledger, and counted once", async () => {
    const org = newOrganization();
    const at = Date.now();
    const r = row(org, new Date(at).toISOString(), 12, 34);
    const isolate = commitsAnswerLost(org, at, true);
    await isolate.serve(r);
    // The object took it, once however often it came; the isolate could not tell, and wrote it to
    // the ledger, which queued it for billing.
    expect(await held(org)).toEqual([r.id]);
    expect(isolate.queued).toEqual([{ ledgerId: r.id }]);
    await closeHourOf(org, at);
    await carryLedgerRows(env.DB, new Date());
    expect(await ledgerOf(org)).toEqual([{ id: r.id, billing_state: "pending", aggregated_at: expect.any(String) }]);
    expect(await intervals(org)).toEqual([]);
    expect(await hourSums(org)).toEqual(sumsOf([r]));
    expect(await quotaStub(env, org).rawUsage()).toEqual([]);
  });

  it("sent again to an object that restarted in between: billed once, by the object, and counted once", async () => {
    const org = newOrganization();
    const at = Date.now();
    const r = row(org, new Date(at).toISOString(), 56, 78);
    const isolate = commitsAnswerLost(org, at, false, () => restart(org));
    await isolate.serve(r);
    expect(isolate.queued).toEqual([]);
    // The restarted object forgot the first commit and took the row again.
    expect(await held(org)).toEqual([r.id, r.id]);
    await closeHourOf(org, at);
    await carryLedgerRows(env.DB, new Date());
    expect(await ledgerOf(org)).toEqual([]);
    expect(await intervals(org)).toMatchObject([{ requests: 1, prompt_tokens: 56, completion_tokens: 78 }]);
    await expectAgreement(org, [r]);
  });
});

/** The Stripe stand-in's account of one test. */
interface Standin {
  state(): Promise<{
    customers: { id: string }[];
    meterEvents: { identifier: string; value: number }[];
    totals: Record<string, Record<string, number>>;
  }>;
  fail(status?: number, count?: number): Promise<void>;
}

function standin(apiKey: string): Standin {
  const call = async (path: string, body?: unknown) => {
    const res = await fetch(`${env.TEST_STRIPE_URL}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return res.json();
  };
  return {
    state: () => call("/_standin/state") as ReturnType<Standin["state"]>,
    fail: async (status, count) => {
      await call("/_standin/fail", status === undefined ? {} : { status, count });
    },
  };
}

/** A queue that keeps what is sent to it, for handing to the consumer as the usage queue would. */
function recordingQueue(sent: UsageMessage[]): Queue<UsageMessage> {
  return {
    send: async (body: UsageMessage) => {
      sent.push(body);
    },
    sendBatch: async (messages: Iterable<MessageSendRequest<UsageMessage>>) => {
      for (const m of messages) sent.push(m.body);
    },
  } as unknown as Queue<UsageMessage>;
}

/** Delivers interval ids to the usage consumer; returns the ids it asked to have again. */
async function deliver(services: Services, ids: readonly string[], attempts: number): Promise<string[]> {
  const batch = createMessageBatch<UsageMessage>(
    "modelgate-usage",
    ids.map((intervalId, i) => ({ id: `msg-${i}`, timestamp: new Date(), attempts, body: { intervalId } })),
  );
  await consumeUsageBatch(batch, services);
  const result = await getQueueResult(batch, createExecutionContext());
  return result.retryMessages.map((m) => ids[Number(m.msgId.slice(4))] as string);
}

describe("usage faults: billing through restarts, retries and a failing Stripe", () => {
  it("agrees to the token between raw rows, usage_hours, billing_intervals and Stripe's accepted meter events", {
    timeout: 60_000,
  }, async () => {
    const org = newOrganization();
    const stub = quotaStub(env, org);
    const apiKey = `sk_test_${crypto.randomUUID().replaceAll("-", "")}`;
    const billing: Partial<Env> = { STRIPE_SECRET_KEY: apiKey, STRIPE_API_BASE: env.TEST_STRIPE_URL };
    const stripe = standin(apiKey);
    const now = Date.now();
    await env.DB.prepare(
      "insert into organizations (id, name, normalized_name, website, country, created_at) values (?1, ?1, ?1, null, 'DE', ?2)",
    )
      .bind(org, new Date(now).toISOString())
      .run();
    // Two hours that are over by the real clock, recent enough for Stripe.
    const h1 = hourOf(now - 3 * 3_600_000);
    const h2 = hourOf(now - 2 * 3_600_000);
    const sent: UsageMessage[] = [];
    const queue = recordingQueue(sent);
    const committed: LedgerRow[] = [];
    const commit = async (rows: LedgerRow[]) => {
      committed.push(...rows);
      const lease = `lease-${crypto.randomUUID()}`;
      await stub.lease(lease, { requests: rows.length, tokens: 1_000_000, need: 1 }, LIMITS, now);
      await stub.commit(
        {
          settlements: rows.map((r) => ({ id: r.id, lease, reserved: 1, actual: r.totalTokens })),
          rows: ledgerBatch(rows.map(ledgerEntry)),
        },
        LIMITS,
        now,
      );
    };

    // Both hours close and are queued by the object.
    await bindBook(org, { ...billing, USAGE_QUEUE: queue });
    await commit([
      ...Array.from({ length: 5 }, (_, i) => row(org, into(h1, 3 + i), 10 + i, 20 * i)),
      ...Array.from({ length: 3 }, (_, i) => row(org, into(h2, 7 + i), 6, 1 + i)),
    ]);
    await settle(org);
    expect(sent).toHaveLength(2);

    // Late rows of the first hour while D1 refuses: kept, then a second part once D1 is back.
    const logged = await bindBook(org, { ...billing, USAGE_QUEUE: queue, DB: refusing(env.DB, "batch") });
    await commit(Array.from({ length: 2 }, (_, i) => row(org, into(h1, 50 + i), 3, 30)));
    expect(await stub.syncUsage()).toBe(false);
    expect(logged).toContain("usage totals not written to D1; kept and retried");
    await bindBook(org, { ...billing, USAGE_QUEUE: queue });
    await settle(org);
    expect(sent).toHaveLength(3);

    // Late rows of the second hour; the object dies after D1 closed their part and before it noted
    // that or queued the interval. It comes back without billing bindings: the reconciler sends it.
    const late = Array.from({ length: 2 }, (_, i) => row(org, into(h2, 40 + i), 8, 8));
    committed.push(...late);
    await runInDurableObject(stub, async (instance: OrgQuota, state) => {
      await commitHeld(instance, state, late, now);
      const book = bookOf(instance);
      await book.fold(Date.now());
      const ctx = book.ctx;
      book.ctx = storageRefusing(ctx, "put");
      await expect(book.sync(Date.now())).rejects.toThrow(/put/);
      book.ctx = ctx;
    });
    await restart(org);
    await settle(org);
    expect(sent).toHaveLength(3);
    expect(await intervals(org)).toHaveLength(4);

    // Billing, a few minutes on: Stripe fails for a while, and every message comes twice.
    const clock = fixedClock(new Date(now + STUCK_AFTER_MS + 60_000));
    const quiet = () => {};
    const services: Services = {
      ...createServices({ ...env, ...billing }, { clock }),
      log: { info: quiet, warn: quiet, error: quiet },
    };
    await reconcileBilling(services, queue);
    expect(sent.length).toBeGreaterThanOrEqual(7);
    await stripe.fail(503, 12);
    let pending = sent.map((m) => m.intervalId as string);
    let rounds = 0;
    while (pending.length > 0 && rounds < 30) {
      rounds++;
      const [a, b] = await Promise.all([deliver(services, pending, rounds), deliver(services, pending, rounds)]);
      pending = [...new Set([...a, ...b])];
      clock.advance(BREAKER_COOL_OFF_MS + 1_000);
    }
    expect(rounds).toBeGreaterThan(1);
    expect(pending).toEqual([]);
    // Delivered once more after everything was sent: nothing changes.
    expect(await deliver(services, [...new Set(sent.map((m) => m.intervalId as string))], 1)).toEqual([]);

    await expectAgreement(org, committed, stripe);
  });
});
