/**
 * An answered request's usage survives a crash: the end of an answer (a plain body, a stream's
 * `[DONE]`) goes out only once its ledger row is stored in the organization's quota object, and a
 * long stream's usage so far is checkpointed there while it runs.
 */
import {
  createExecutionContext,
  listDurableObjectIds,
  runInDurableObject,
  waitOnExecutionContext,
} from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { applications, organizationLimits } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { type LedgerRow, ledgerRows } from "../worker/inference/ledger";
import { clearQuotaLeases } from "../worker/inference/proxy";
import { fixedClock } from "../worker/platform/clock";
import type { OrgQuota } from "../worker/quota/org-quota";
import { type Backend, openAiCaller, scopedBackend } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";

const MODEL = "llama-2-7b-chat";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  clearQuotaLeases();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/**
 * The ledger rows and checkpoints of `grantId` stored in quota objects: rows just committed and
 * rows already folded into their hour, whichever the object's alarm has got to.
 */
async function stored(grantId: string): Promise<{ rows: LedgerRow[]; checkpoints: LedgerRow[] }> {
  const rows: LedgerRow[] = [];
  const checkpoints: LedgerRow[] = [];
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    await runInDurableObject(env.QUOTA.get(id), async (instance: OrgQuota, state) => {
      for (const batch of (await state.storage.list<string>({ prefix: "u:" })).values())
        if (typeof batch === "string") rows.push(...ledgerRows(batch));
      for (const line of await instance.rawUsage()) rows.push(JSON.parse(line) as LedgerRow);
      for (const c of (await state.storage.list<{ row: string }>({ prefix: "c:" })).values())
        checkpoints.push(...ledgerRows(`[${c.row}]`));
    });
  }
  const mine = (r: LedgerRow) => r.grantId === grantId;
  return { rows: rows.filter(mine), checkpoints: checkpoints.filter(mine) };
}

async function setup(backend: Backend, checkpointEveryMs?: number, clock = fixedClock("2026-06-15T12:00:05Z")) {
  const gw = testGateway({
    clock,
    inference: { health: new BackendHealth(), random: () => 0, checkpointEveryMs },
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: backend.url, timeoutMs: 10_000 }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
  return { gw, ...(await openAiCaller(gw, licenseSha256)) };
}

function call(gw: ReturnType<typeof testGateway>, token: string, body: object) {
  const ctx = createExecutionContext();
  const response = gw.app.request(
    "http://gw/v1/chat/completions",
    {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], ...body }),
    },
    gw.env,
    ctx,
  );
  return { ctx, response: Promise.resolve(response) };
}

describe("security: an answered request's usage is stored before the answer ends", () => {
  it("stores a plain answer's ledger row in the quota object before the client has the body", async () => {
    const backend = scopedBackend(0);
    const { gw, token, grantId } = await setup(backend);
    const { ctx, response } = call(gw, token, { max_tokens: 4 });
    const res = await response;
    expect(res.status).toBe(200);
    await res.json();
    // Read before the request's deferred work is awaited: the row is already there.
    const { rows } = await stored(grantId);
    expect(rows).toEqual([expect.objectContaining({ outcome: "ok", completionTokens: 4, stream: false })]);
    await waitOnExecutionContext(ctx);
  });

  it("streams the first chunk before any row exists, and holds [DONE] until the row is stored", async () => {
    const backend = scopedBackend(0);
    await backend.mode("ok", { tokenLatencyMs: 30 });
    const { gw, token, grantId } = await setup(backend);
    const { ctx, response } = call(gw, token, { max_tokens: 6, stream: true });
    const res = await response;
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    const first = await reader.read();
    expect(first.done).toBe(false);
    expect(decoder.decode(first.value)).not.toContain("[DONE]");
    // The first token is never delayed by billing: nothing is stored yet.
    expect((await stored(grantId)).rows).toEqual([]);
    let text = "";
    for (let next = await reader.read(); !next.done; next = await reader.read()) {
      text += decoder.decode(next.value, { stream: true });
      if (text.includes("[DONE]")) break;
    }
    expect(text).toContain("data: [DONE]");
    const { rows } = await stored(grantId);
    expect(rows).toEqual([expect.objectContaining({ outcome: "ok", completionTokens: 6, stream: true })]);
    await reader.cancel().catch(() => undefined);
    await waitOnExecutionContext(ctx);
  });

  it("checkpoints a long stream's usage while it runs, and replaces the checkpoint with the settlement", async () => {
    const backend = scopedBackend(0);
    await backend.mode("ok", { tokenLatencyMs: 40 });
    const { gw, token, grantId } = await setup(backend, 150);
    const { ctx, response } = call(gw, token, { max_tokens: 20, stream: true });
    const res = await response;
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    let checkpoint: LedgerRow | undefined;
    for (let next = await reader.read(); !next.done; next = await reader.read()) {
      text += decoder.decode(next.value, { stream: true });
      checkpoint ??= (await stored(grantId)).checkpoints[0];
      if (text.includes("[DONE]")) break;
    }
    // Billed as a cut stream, to what had been seen, should the isolate die now.
    expect(checkpoint).toMatchObject({ outcome: "partial", partial: true });
    expect(checkpoint?.completionTokens).toBeGreaterThan(0);
    await reader.cancel().catch(() => undefined);
    await waitOnExecutionContext(ctx);
    const after = await stored(grantId);
    expect(after.checkpoints).toEqual([]);
    // One row, the final counts: the checkpoint was replaced, not added to.
    expect(after.rows).toEqual([expect.objectContaining({ outcome: "ok", completionTokens: 20 })]);
  });

  it("renews a stalled stream's checkpoint while its client does not read, so that it is not settled as abandoned", async () => {
    const backend = scopedBackend(0);
    await backend.mode("ok", { tokenLatencyMs: 5 });
    const { gw, token } = await setup(backend, 60);
    const { ctx, response } = call(gw, token, { max_tokens: 40, stream: true });
    const reader = ((await response).body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    // The client reads nothing more: no chunk comes through the meter while it waits.
    const seenAt = async () => {
      const at: number[] = [];
      for (const id of await listDurableObjectIds(env.QUOTA)) {
        await runInDurableObject(env.QUOTA.get(id), async (_: OrgQuota, state) => {
          for (const c of (await state.storage.list<{ at: number }>({ prefix: "c:" })).values()) at.push(c.at);
        });
      }
      return at;
    };
    let first: number[] = [];
    for (let i = 0; i < 50 && first.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
      first = await seenAt();
    }
    expect(first).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 400));
    const later = await seenAt();
    expect(later).toHaveLength(1);
    expect(later[0] as number).toBeGreaterThan(first[0] as number);
    for (let next = await reader.read(); !next.done; next = await reader.read()) {}
    await waitOnExecutionContext(ctx);
  });

  it("security: keeps a running stream's reservation past the time an abandoned one is released, so the budget holds", async () => {
    const backend = scopedBackend(0);
    await backend.mode("ok", { tokenLatencyMs: 5 });
    const clock = fixedClock("2026-06-15T12:00:05Z");
    const { gw, token, applicationId, grantId } = await setup(backend, 40, clock);
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
    await gw.db.insert(organizationLimits).values({
      organizationId: app?.organizationId as string,
      plan: "tiny",
      requestsPerMinute: 100,
      tokensPerMinute: 100_000,
      monthlyTokenBudget: 1_000,
      updatedAt: new Date().toISOString(),
    });
    clearCallerCache();
    const running = call(gw, token, { max_tokens: 550, stream: true });
    const reader = ((await running.response).body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    for (let i = 0; i < 50 && (await stored(grantId)).checkpoints.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    // Past the time a reservation nobody settles is released; the stream still runs.
    clock.advance(16 * 60_000);
    const second = call(gw, token, { max_tokens: 550 });
    const refused = await second.response;
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { code: "insufficient_quota" } });
    await waitOnExecutionContext(second.ctx);
    for (let next = await reader.read(); !next.done; next = await reader.read()) {}
    await waitOnExecutionContext(running.ctx);
  });

  it("answers within the cap when the quota object never takes the row", async () => {
    const backend = scopedBackend(0);
    const { gw, token } = await setup(backend);
    // Admit on a lease first, then make every commit to the object hang.
    const warm = call(gw, token, { max_tokens: 1 });
    await (await warm.response).text();
    await waitOnExecutionContext(warm.ctx);
    const quota = env.QUOTA;
    const hanging = {
      idFromName: (name: string) => quota.idFromName(name),
      get: (id: DurableObjectId) => {
        const stub = quota.get(id);
        return {
          lease: (...args: Parameters<typeof stub.lease>) => stub.lease(...args),
          commit: () => new Promise<never>(() => {}),
        };
      },
    } as unknown as Env["QUOTA"];
    const started = Date.now();
    const ctx = createExecutionContext();
    const res = await gw.app.request(
      "http://gw/v1/chat/completions",
      {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }),
      },
      { ...gw.env, QUOTA: hanging },
      ctx,
    );
    expect(res.status).toBe(200);
    await res.json();
    const waited = Date.now() - started;
    expect(waited).toBeGreaterThanOrEqual(1_500);
    expect(waited).toBeLessThan(5_000);
  });
});
