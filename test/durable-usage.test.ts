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
import llamaTokenizer from "llama-tokenizer-js";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { applications, organizationLimits } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { type LedgerRow, ledgerRows } from "../worker/inference/ledger";
import { clearQuotaLeases } from "../worker/inference/proxy";
import { MAX_COUNTED_CHARS, tokenCounterFor } from "../worker/inference/tokenizer";
import { fixedClock } from "../worker/platform/clock";
import type { OrgQuota, QuotaCommit } from "../worker/quota/org-quota";
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

function call(gw: ReturnType<typeof testGateway>, token: string, body: object, bindings: Env = gw.env) {
  const ctx = createExecutionContext();
  const response = gw.app.request(
    "http://gw/v1/chat/completions",
    {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], ...body }),
    },
    bindings,
    ctx,
  );
  return { ctx, response: Promise.resolve(response) };
}

/** The quota objects, with every checkpoint the gateway sends them passed to `seen` on its way. */
function watchedQuota(seen: (row: LedgerRow) => void): Env["QUOTA"] {
  const quota = env.QUOTA;
  return {
    idFromName: (name: string) => quota.idFromName(name),
    get: (id: DurableObjectId) => {
      const stub = quota.get(id);
      return {
        lease: (...args: Parameters<typeof stub.lease>) => stub.lease(...args),
        commit: (report: QuotaCommit, ...rest: unknown[]) => {
          for (const c of report.checkpoints ?? []) for (const row of ledgerRows(`[${c.row}]`)) seen(row);
          return (stub.commit as (...args: unknown[]) => unknown)(report, ...rest);
        },
      };
    },
  } as unknown as Env["QUOTA"];
}

/** Reads a streamed answer to its end. */
async function readToEnd(response: Promise<Response>) {
  const reader = ((await response).body as ReadableStream<Uint8Array>).getReader();
  for (let next = await reader.read(); !next.done; next = await reader.read()) {}
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

  it("tokenizes a long stream's prompt once, however many checkpoints the stream makes, and bills what the server reported", async () => {
    const backend = scopedBackend(0);
    // 40 tokens over about 1.6 s, with a checkpoint every 50 ms; usage comes in the last chunk only.
    await backend.mode("ok", { tokenLatencyMs: 40 });
    const { gw, token, grantId } = await setup(backend, 50);
    const checkpoints: LedgerRow[] = [];
    const messages = [{ role: "user", content: "lorem ipsum dolor sit amet\n".repeat(2_519).slice(0, 68_000) }];
    const encode = vi.spyOn(llamaTokenizer, "encode");
    let encodedChars: number;
    try {
      const { ctx, response } = call(
        gw,
        token,
        { messages, max_tokens: 40, stream: true },
        {
          ...gw.env,
          QUOTA: watchedQuota((row) => checkpoints.push(row)),
        },
      );
      await readToEnd(response);
      await waitOnExecutionContext(ctx);
      encodedChars = encode.mock.calls.reduce((sum, [text]) => sum + text.length, 0);
    } finally {
      encode.mockRestore();
    }
    expect(checkpoints.length).toBeGreaterThanOrEqual(10);
    // One count of the prompt, cut at the counted length; the text generated is never tokenized,
    // as the server reported its usage.
    expect(encodedChars).toBeGreaterThan(MAX_COUNTED_CHARS - 100);
    expect(encodedChars).toBeLessThanOrEqual(MAX_COUNTED_CHARS);
    // Each checkpoint bills the prompt as the settlement of a cut stream would: the counted prompt
    // until the server's usage came (its last chunk), the server's own count from then on (a
    // checkpoint may fire between that chunk and the stream's end).
    const counted = await tokenCounterFor("llama-2")?.prompt({ messages });
    const reported = 12_593;
    expect(checkpoints[0]).toMatchObject({ outcome: "partial", promptTokens: counted });
    const firstReported = checkpoints.findIndex((c) => c.promptTokens === reported);
    checkpoints.forEach((c, i) => {
      expect(c).toMatchObject({
        outcome: "partial",
        promptTokens: firstReported === -1 || i < firstReported ? counted : reported,
      });
    });
    // The bill is the server's own count: a word a token in the simulator.
    expect((await stored(grantId)).rows).toEqual([
      expect.objectContaining({ outcome: "ok", promptTokens: reported, completionTokens: 40, totalTokens: 12_633 }),
    ]);
  }, 30_000);

  it("security: never checkpoints less than a cut stream would be billed then, text the tokenizer splits finer than its chunks included", async () => {
    const backend = scopedBackend(0);
    // Three chunks ("tok0 ", "tok1 ", "tok2 "), then nothing: Llama 2's tokenizer makes more than a token of each.
    await backend.mode("hang", { cutAfter: 3, tokenLatencyMs: 5 });
    const { gw, token, grantId } = await setup(backend, 40);
    const checkpoints: LedgerRow[] = [];
    const { ctx, response } = call(
      gw,
      token,
      { max_tokens: 40, stream: true },
      {
        ...gw.env,
        QUOTA: watchedQuota((row) => checkpoints.push(row)),
      },
    );
    const reader = ((await response).body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while ((text.match(/"content":"[^"]/g) ?? []).length < 3) {
      const { value, done } = await reader.read();
      if (done) throw new Error("the stream ended before its third chunk");
      text += decoder.decode(value, { stream: true });
    }
    // The stream stalls; its checkpoints go on, now with all three chunks seen.
    const seen = checkpoints.length;
    for (let i = 0; i < 50 && checkpoints.length < seen + 3; i++) await new Promise((r) => setTimeout(r, 20));
    const last = checkpoints.at(-1);
    await reader.cancel("client went away");
    await waitOnExecutionContext(ctx);
    const [settled] = (await stored(grantId)).rows;
    const generated = await tokenCounterFor("llama-2")?.generated(["tok0 tok1 tok2 "]);
    expect(generated).toBeGreaterThan(3);
    expect(settled).toMatchObject({ outcome: "client_closed", completionTokens: generated });
    expect(last?.promptTokens).toBe(settled?.promptTokens);
    expect(last?.completionTokens).toBeGreaterThanOrEqual(generated as number);
    expect(last?.completionTokens).toBeLessThanOrEqual(40);
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
