import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import OpenAI from "openai";
import { beforeEach, describe, expect, it } from "vitest";
import {
  accessTokens,
  applications,
  inferenceBackendHealth,
  inferenceBackends,
  organizationLimits,
} from "../worker/db/schema";
import { isOpenAiNamespace } from "../worker/http/openai-errors";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { clearQuotaLeases } from "../worker/inference/proxy";
import { chatTemplateAllowance, tokenBound } from "../worker/inference/token-bound";
import { tokenCounterFor } from "../worker/inference/tokenizer";
import { fixedClock, systemClock } from "../worker/platform/clock";
import { accessHeaders, adminToken, TOKEN_NOW } from "./helpers/access";
import { type Backend, openAiCaller, scopedBackend, storedServer } from "./helpers/backends";
import { boundMember } from "./helpers/bindings";
import { seedLicense, testGateway } from "./helpers/gateway";
import { flushUsage, usageRows } from "./helpers/ledger";
import { approvedToken } from "./helpers/weights";

const MODEL = "llama-2-7b-chat";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A gateway routing the model to `backends` (tried in the given order), a token, and an OpenAI client on it. */
async function setup(
  backends: Backend[],
  options: {
    timeoutMs?: number;
    clock?: ReturnType<typeof fixedClock>;
    /** The gateway reads the real time instead of `clock`. */
    realClock?: boolean;
    health?: BackendHealth;
    bindings?: Partial<Env>;
    /** The model routed to `backends` (which serve it as `servedModel`), and covered by the grant. */
    model?: { id: string; servedModel: string };
  } = {},
) {
  const clock = options.clock ?? fixedClock("2026-06-15T12:00:05Z");
  const health = options.health ?? new BackendHealth();
  const gw = testGateway({
    clock: options.realClock ? systemClock : clock,
    inference: { health, random: () => 0 },
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({
        [options.model?.id ?? MODEL]: backends.map((b) => ({
          url: b.url,
          timeoutMs: options.timeoutMs ?? 10_000,
          servedModel: options.model?.servedModel,
        })),
      }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
      ...options.bindings,
    },
  });
  const grant = options.model ? { grantModels: [MODEL, options.model.id] } : {};
  return { gw, clock, health, ...(await openAiCaller(gw, licenseSha256, grant)) };
}

async function ledger(_gw: ReturnType<typeof testGateway>) {
  return usageRows();
}

/** Puts the organization of `applicationId` on limits of its own, in force from the gateway's next token check. */
async function setLimits(
  gw: ReturnType<typeof testGateway>,
  applicationId: string,
  limits: { plan: string; requestsPerMinute: number; tokensPerMinute: number; monthlyTokenBudget: number },
) {
  const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
  await gw.db
    .insert(organizationLimits)
    .values({ organizationId: app?.organizationId as string, ...limits, updatedAt: new Date().toISOString() });
  clearCallerCache();
}

const PROMPT = "say hello to the nice people";

/**
 * Sends a streamed request through the gateway, reads its events until `seen` says enough
 * arrived, then hangs up; resolves once the request's settlement is done.
 */
async function hangUpOnce(
  gw: ReturnType<typeof testGateway>,
  token: string,
  path: string,
  body: object,
  seen: (text: string) => boolean,
) {
  const ctx = createExecutionContext();
  const res = await gw.app.request(
    `http://gw${path}`,
    {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    },
    gw.env,
    ctx,
  );
  expect(res.status, res.status === 200 ? "" : await res.clone().text()).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (!seen(text)) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
  }
  await reader.cancel("client went away");
  await waitOnExecutionContext(ctx);
}

describe("the real openai client through the gateway", () => {
  it("completes a chat and the ledger holds exactly the backend's usage", async () => {
    const backend = scopedBackend(0);
    const { gw, client } = await setup([backend]);
    const { data, response } = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: PROMPT }], max_tokens: 5 })
      .withResponse();
    expect(data.choices[0]?.message.content).toBe("tok0 tok1 tok2 tok3 tok4 ");
    expect(data.usage).toMatchObject({ prompt_tokens: 6, completion_tokens: 5, total_tokens: 11 });
    for (const header of [
      "x-ratelimit-limit-requests",
      "x-ratelimit-remaining-requests",
      "x-ratelimit-reset-requests",
      "x-ratelimit-limit-tokens",
      "x-ratelimit-remaining-tokens",
      "x-ratelimit-reset-tokens",
      "x-modelgate-overhead-ms",
      "x-request-id",
    ]) {
      expect(response.headers.get(header), header).not.toBeNull();
    }
    expect(response.headers.get("x-ratelimit-remaining-requests")).toBe("59");
    const rows = await ledger(gw);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      model: MODEL,
      promptTokens: 6,
      completionTokens: 5,
      totalTokens: 11,
      usageReported: true,
      outcome: "ok",
      partial: false,
      stream: false,
      status: 200,
      backend: backend.url,
    });
  });

  it("streams a chat unmerged, hides the usage chunk it did not ask for, and meters it exactly", async () => {
    const backend = scopedBackend(0);
    const { gw, client } = await setup([backend]);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: 8,
      stream: true,
    });
    const deltas: string[] = [];
    let sawUsage = false;
    for await (const chunk of stream) {
      if (chunk.usage) sawUsage = true;
      const delta = chunk.choices[0]?.delta.content;
      if (delta) deltas.push(delta);
    }
    expect(deltas).toEqual(Array.from({ length: 8 }, (_, i) => `tok${i} `));
    expect(sawUsage).toBe(false);
    const [sent] = await backend.requests();
    expect(sent?.body.stream_options).toEqual({ include_usage: true });
    const [row] = await ledger(gw);
    expect(row).toMatchObject({
      promptTokens: 6,
      completionTokens: 8,
      totalTokens: 14,
      stream: true,
      outcome: "ok",
      usageReported: true,
    });
  });

  it("passes the usage chunk on when the client asked for it", async () => {
    const { client } = await setup([scopedBackend(0)]);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 2,
      stream: true,
      stream_options: { include_usage: true },
    });
    const usage = [];
    for await (const chunk of stream) if (chunk.usage) usage.push(chunk.usage);
    expect(usage).toEqual([{ prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 }]);
  });

  it("serves text completions", async () => {
    const { gw, client } = await setup([scopedBackend(1)]);
    const completion = await client.completions.create({ model: MODEL, prompt: "one two three", max_tokens: 3 });
    expect(completion.choices[0]?.text).toBe("tok0 tok1 tok2 ");
    expect((await ledger(gw))[0]).toMatchObject({ endpoint: "completions", promptTokens: 3, completionTokens: 3 });
  });
});

describe("streams that break", () => {
  it("are an error to the client, not a clean end, and metered as partial", async () => {
    const backend = scopedBackend(0);
    // Counted as Llama 2's tokenizer counts: each chunk's text is then one token, as on vLLM.
    await backend.mode("cut", { cutAfter: 3, promptTokens: "llama" });
    const { gw, client } = await setup([backend]);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: PROMPT }],
      max_tokens: 10,
      stream: true,
    });
    const deltas: string[] = [];
    await expect(
      (async () => {
        for await (const chunk of stream) {
          const delta = chunk.choices[0]?.delta.content;
          if (delta) deltas.push(delta);
        }
      })(),
    ).rejects.toThrow();
    expect(deltas).toEqual([" the", " of", " and"]);
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "partial", partial: true, completionTokens: 3, usageReported: false });
  });

  it("are metered for what was generated when the client hangs up", async () => {
    const backend = scopedBackend(2);
    const { gw, token } = await setup([backend]);
    const ctx = createExecutionContext();
    const res = await gw.app.request(
      "http://gw/v1/chat/completions",
      {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({
          model: MODEL,
          messages: [{ role: "user", content: PROMPT }],
          max_tokens: 50,
          stream: true,
        }),
      },
      gw.env,
      ctx,
    );
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read();
    await reader.read();
    await reader.cancel("client went away");
    await waitOnExecutionContext(ctx);
    const [row] = await ledger(gw);
    expect(row?.outcome).toBe("client_closed");
    expect(row?.partial).toBe(true);
    expect(row?.completionTokens).toBeGreaterThanOrEqual(1);
    expect(row?.completionTokens).toBeLessThan(50);
  });
});

describe("usage no server reported", () => {
  it("bills a Llama 3.x client that hung up before the usage chunk its whole reserved prompt, which the server prefilled, not a token per message", async () => {
    const backend = scopedBackend(1);
    await backend.mode("hang", { cutAfter: 3 });
    // The simulators serve Llama 2's names; the gateway routes the Llama 3.1 model to one of them.
    const model = { id: "llama-3.1-8b-instruct", servedModel: "llama-2-7b-chat" };
    const { gw, token } = await setup([backend], { model });
    const words = Array.from({ length: 3_000 }, (_, i) => `word${i % 97}`).join(" ");
    const body = { model: model.id, messages: [{ role: "user", content: words }], max_tokens: 20, stream: true };
    await hangUpOnce(gw, token, "/v1/chat/completions", body, (text) => {
      return (text.match(/"content":"[^"]/g) ?? []).length >= 3;
    });
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ model: model.id, outcome: "client_closed", usageReported: false });
    // No tokenizer here counts Llama 3.x: the prompt is billed at the bound it reserved, which
    // is at least a token per word, and the completion a token per chunk it streamed.
    expect(row?.promptTokens).toBe(tokenBound(body, 16, chatTemplateAllowance("llama-3.1")).prompt);
    expect(row?.promptTokens).toBeGreaterThanOrEqual(3_000);
    expect(row?.completionTokens).toBe(3);
  });

  it("bills a Llama 2 client that left a list of long prompts no less than its server counted for all of them", async () => {
    const backend = scopedBackend(2);
    const { gw, token, applicationId } = await setup([backend]);
    await setLimits(gw, applicationId, {
      plan: "large",
      requestsPerMinute: 100,
      tokensPerMinute: 1_000_000,
      monthlyTokenBudget: 10_000_000,
    });
    // Digits are a token each: 24 prompts of about 4,000 tokens, 96,000 characters together.
    const prompt = Array.from({ length: 24 }, () => "1234567890".repeat(400));
    const body = { model: MODEL, prompt, max_tokens: 5 };
    await backend.mode("ok", { promptTokens: "llama", reportUsage: true });
    const direct = await fetch(`${backend.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: false }),
    });
    const real = ((await direct.json()) as { usage: { prompt_tokens: number } }).usage.prompt_tokens;
    expect(real).toBeGreaterThan(90_000);
    await backend.mode("hang", { cutAfter: 1, promptTokens: "llama" });
    await hangUpOnce(gw, token, "/v1/completions", { ...body, stream: true }, (text) => /"text":"[^"]/.test(text));
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "client_closed", usageReported: false });
    expect(row?.promptTokens).toBeGreaterThanOrEqual(real);
    expect(row?.promptTokens).toBeLessThanOrEqual(tokenBound(body, 16, chatTemplateAllowance("llama-2")).prompt);
  });
});

describe("backend pool", () => {
  const ask = (client: OpenAI) =>
    client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 });

  it("fails over to a healthy backend before the first byte", async () => {
    const bad = scopedBackend(0);
    const good = scopedBackend(1);
    await bad.mode("500");
    const { gw, client } = await setup([bad, good]);
    expect((await ask(client)).choices[0]?.message.content).toBe("tok0 tok1 ");
    expect(await bad.requests()).toHaveLength(1);
    expect(await good.requests()).toHaveLength(1);
    expect((await ledger(gw))[0]).toMatchObject({ backend: good.url, outcome: "ok" });
  });

  it("fails over when a backend refuses the connection", async () => {
    const bad = scopedBackend(0);
    const good = scopedBackend(1);
    await bad.mode("refuse");
    const { client } = await setup([bad, good]);
    expect((await ask(client)).choices[0]?.message.content).toBe("tok0 tok1 ");
  });

  it("does not retry once bytes reached the client", async () => {
    const cut = scopedBackend(0);
    const good = scopedBackend(1);
    await cut.mode("cut", { cutAfter: 1 });
    const { client } = await setup([cut, good]);
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 5,
      stream: true,
    });
    await expect(
      (async () => {
        for await (const _ of stream) {
        }
      })(),
    ).rejects.toThrow();
    expect(await good.requests()).toHaveLength(0);
  });

  it("skips a down backend, probes it, and sends traffic again once it recovers", async () => {
    const flaky = scopedBackend(0);
    const steady = scopedBackend(1);
    await flaky.mode("500", { count: 1 });
    const { client, clock, health } = await setup([flaky, steady]);
    await ask(client);
    expect(await flaky.requests()).toHaveLength(1);
    await ask(client);
    expect(await flaky.requests()).toHaveLength(1);
    expect(await steady.requests()).toHaveLength(2);
    clock.advance(11_000);
    await ask(client); // Starts the probe; this request still goes to the steady backend.
    await health.settled();
    await ask(client);
    expect(await flaky.requests()).toHaveLength(2);
  });

  it("keeps the only server of a pool serving through its 500s: its error while it fails, never a blanket 503", async () => {
    const only = scopedBackend(0);
    await only.mode("500", { count: 2 });
    // The clock stands still: under a fixed down window the server would never be tried again.
    const { gw, client } = await setup([only]);
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++)
      statuses.push(
        await ask(client).then(
          () => 200,
          (error: { status: number }) => error.status,
        ),
      );
    expect(statuses).toEqual([502, 502, ...Array<number>(18).fill(200)]);
    expect(await only.requests()).toHaveLength(20);
    const rows = await ledger(gw);
    expect(rows.filter((r) => r.outcome === "ok")).toHaveLength(18);
    expect(rows.filter((r) => r.status === 503)).toEqual([]);
  });

  it("sends a request to the server down longest when a whole pool is down, and its first success restores it", async () => {
    const broken = scopedBackend(0);
    const flaky = scopedBackend(1);
    await broken.mode("500");
    await flaky.mode("500", { count: 1 });
    const { client, clock } = await setup([broken, flaky]);
    const status = () =>
      ask(client).then(
        () => 200,
        (error: { status: number }) => error.status,
      );
    expect(await status()).toBe(502); // Both fail: the pool is down.
    clock.advance(1_000);
    expect(await status()).toBe(502); // One trial, of the first: it fails again, so it is now the latest down.
    expect(await status()).toBe(200); // The other, down longer, is tried and has recovered…
    expect(await status()).toBe(200); // …and takes the traffic while the broken one sits out its window.
    expect(await broken.requests()).toHaveLength(2);
    expect(await flaky.requests()).toHaveLength(3);
  });

  it("tells other isolates of a down backend, and of its recovery, so they need not find out themselves", async () => {
    const flaky = scopedBackend(0);
    const steady = scopedBackend(1);
    await flaky.mode("500");
    const clock = fixedClock("2026-06-15T12:00:05Z");
    const now = () => clock.now().getTime();
    // Two isolates: each its own health and pools, one database.
    const first = await setup([flaky, steady], { clock, health: new BackendHealth(undefined, now) });
    const second = await setup([flaky, steady], { clock, health: new BackendHealth(undefined, now) });
    await ask(first.client);
    expect(await flaky.requests()).toHaveLength(1);
    // The second isolate tries the pool in the same order, but already knows to skip the failed
    // server: from its first read of the servers, here for the model list.
    expect((await second.client.models.list()).data.map((m) => m.id)).toContain(MODEL);
    await ask(second.client);
    expect(await flaky.requests()).toHaveLength(1);
    expect(await steady.requests()).toHaveLength(2);

    await flaky.mode("ok");
    clock.advance(11_000);
    await ask(first.client); // The first isolate's probe finds the server up…
    await first.health.settled();
    await ask(first.client); // …and its next request tells the others.
    expect(await flaky.requests()).toHaveLength(2);
    // Without the first isolate's word the second would probe before sending it anything.
    await ask(second.client);
    expect(await flaky.requests()).toHaveLength(3);
    expect(await steady.requests()).toHaveLength(3);
  });

  it("keeps serving when backend health cannot be shared or read, and shares it once it can", async () => {
    const flaky = scopedBackend(0);
    const steady = scopedBackend(1);
    await flaky.mode("500");
    let broken = true;
    // The database refuses every statement on the health table while `broken`.
    const db = new Proxy(env.DB, {
      get(target, property) {
        if (property === "prepare") {
          return (query: string) => {
            if (broken && query.includes("inference_backend_health")) throw new Error("D1_ERROR: table unavailable");
            return target.prepare(query);
          };
        }
        return boundMember(target, property);
      },
    });
    // The steady server is one an admin added: reading it must not depend on reading health.
    const at = new Date().toISOString();
    const { client, gw } = await setup([flaky], { bindings: { DB: db } });
    await gw.db
      .insert(inferenceBackends)
      .values(storedServer({ id: `bkd_${crypto.randomUUID()}`, model: MODEL, url: steady.url, at }));
    const shared = () => gw.db.select().from(inferenceBackendHealth).where(eq(inferenceBackendHealth.url, flaky.url));
    expect((await ask(client)).choices[0]?.message.content).toBe("tok0 tok1 ");
    expect(await shared()).toEqual([]);
    broken = false;
    await ask(client);
    // The failure the first request could not report went out with the next.
    expect(await shared()).toEqual([expect.objectContaining({ state: "down", reason: "status 500" })]);
    expect(await flaky.requests()).toHaveLength(1);
    expect(await steady.requests()).toHaveLength(2);
  });

  it("answers 502 when every backend fails, 504 on a timeout, 503 with none configured — never 200", async () => {
    const a = scopedBackend(0);
    const b = scopedBackend(1);
    await a.mode("500");
    await b.mode("500");
    const failing = await setup([a, b]);
    await expect(ask(failing.client)).rejects.toMatchObject({ status: 502 });
    expect((await ledger(failing.gw))[0]).toMatchObject({ outcome: "backend_error", status: 502, totalTokens: 0 });

    const stalled = scopedBackend(2);
    await stalled.mode("stall");
    const slow = await setup([stalled], { timeoutMs: 300 });
    await expect(ask(slow.client)).rejects.toMatchObject({ status: 504 });

    const none = await setup([]);
    await expect(ask(none.client)).rejects.toMatchObject({ status: 503 });
  });

  it("counts in x-modelgate-overhead-ms the gateway's own time, never the backend's, on answers and refusals alike", async () => {
    const overheadOf = (headers: Headers | undefined) => Number(headers?.get("x-modelgate-overhead-ms") ?? Number.NaN);
    const slow = scopedBackend(0);
    await slow.mode("ok", { tokenLatencyMs: 100 });
    const { gw, client } = await setup([slow], { realClock: true });
    const startedAt = Date.now();
    const { response } = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 6 })
      .withResponse();
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(600);
    expect(overheadOf(response.headers)).toBeGreaterThanOrEqual(0);
    expect(overheadOf(response.headers)).toBeLessThan(300);

    const stalled = scopedBackend(1);
    await stalled.mode("stall");
    const timedOut = await setup([stalled], { timeoutMs: 600, realClock: true });
    const error = (await ask(timedOut.client).catch((e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
    expect(error.status).toBe(504);
    expect(overheadOf(error.headers)).toBeLessThan(300);

    const refused = await gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: "Bearer mg_unknown", "content-type": "application/json" },
      body: "{}",
    });
    expect(refused.status).toBe(401);
    expect(overheadOf(refused.headers)).toBeGreaterThanOrEqual(0);
  });

  it("limits a stream's wait for its first byte, not the stream: a long answer runs past the timeout", async () => {
    const streamOf = (client: OpenAI, max_tokens: number) =>
      client.chat.completions.create({
        model: MODEL,
        messages: [{ role: "user", content: "hi" }],
        max_tokens,
        stream: true,
      });
    const stalled = scopedBackend(0);
    await stalled.mode("stall");
    const slow = await setup([stalled], { timeoutMs: 300 });
    await expect(streamOf(slow.client, 2)).rejects.toMatchObject({ status: 504 });

    const patient = scopedBackend(1);
    await patient.mode("ok", { tokenLatencyMs: 60 });
    const { gw, client } = await setup([patient], { timeoutMs: 300 });
    const startedAt = Date.now();
    let text = "";
    for await (const chunk of await streamOf(client, 8)) text += chunk.choices[0]?.delta.content ?? "";
    expect(Date.now() - startedAt).toBeGreaterThan(300);
    expect(text).toBe("tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ");
    // Two organizations' rows of the same instant: in no particular order.
    const rows = (await ledger(gw)).map(({ backend, outcome, status, completionTokens }) => ({
      backend,
      outcome,
      status,
      completionTokens,
    }));
    expect(rows).toHaveLength(2);
    expect(rows).toEqual(
      expect.arrayContaining([
        { backend: null, outcome: "backend_error", status: 504, completionTokens: 0 },
        { backend: patient.url, outcome: "ok", status: 200, completionTokens: 8 },
      ]),
    );
  });

  it("refuses private-address backend URLs unless the operator allowed the host", async () => {
    const gw = testGateway({
      bindings: {
        INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: "http://10.0.0.7:8000" }] }),
        INFERENCE_ALLOWED_HOSTS: "",
      },
    });
    expect(gw.services().config.inference.backends.refused).toEqual([
      { model: MODEL, url: "http://10.0.0.7:8000", problem: "private_address" },
    ]);
    expect(gw.services().config.inference.backends.pools.get(MODEL)).toEqual([]);
  });
});

describe("limits", () => {
  it("answers 429 with Retry-After in OpenAI's shape once the per-minute request limit is reached", async () => {
    const { gw, client, applicationId } = await setup([scopedBackend(0)]);
    await setLimits(gw, applicationId, {
      plan: "tiny",
      requestsPerMinute: 2,
      tokensPerMinute: 10_000,
      monthlyTokenBudget: 1_000_000,
    });
    const ask = () =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 });
    await ask();
    await ask();
    const error = await ask().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.RateLimitError);
    const limited = error as InstanceType<typeof OpenAI.RateLimitError>;
    expect(limited.headers?.get("retry-after")).toBe("55");
    expect(limited.headers?.get("x-should-retry")).toBeNull(); // Lifts within the minute: clients may retry.
    expect(limited.error).toMatchObject({ code: "rate_limit_exceeded", type: "requests" });
  });

  it("stops OpenAI's client from retrying refusals that waiting will not lift", async () => {
    const { gw, token, applicationId } = await setup([scopedBackend(0)]);
    await setLimits(gw, applicationId, {
      plan: "tiny",
      requestsPerMinute: 100,
      tokensPerMinute: 1_000,
      monthlyTokenBudget: 100,
    });
    let calls = 0;
    // The client as applications use it: with its default retries.
    const client = new OpenAI({
      apiKey: token,
      baseURL: "http://gw/v1",
      fetch: (input: string | URL | Request, init?: RequestInit) => {
        calls++;
        return gw.request(new URL(input instanceof Request ? input.url : String(input)).pathname, init);
      },
    });
    const ask = (max_tokens: number) =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens });
    await expect(ask(2_000)).rejects.toMatchObject({ status: 429, code: "request_too_large" });
    expect(calls).toBe(1);
    await ask(20); // Of the budget of 100 tokens, 21 used.
    calls = 0;
    // Fits the budget (a bound of 96 tokens), not what is left of it.
    await expect(ask(60)).rejects.toMatchObject({ status: 429, code: "insufficient_quota" });
    expect(calls).toBe(1);
  });

  it("admits exactly the limit of concurrent requests", async () => {
    const { gw, token, applicationId } = await setup([scopedBackend(1)]);
    await setLimits(gw, applicationId, {
      plan: "small",
      requestsPerMinute: 5,
      tokensPerMinute: 100_000,
      monthlyTokenBudget: 1_000_000,
    });
    const responses = await Promise.all(
      Array.from({ length: 20 }, () =>
        gw.request("/v1/chat/completions", {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 }),
        }),
      ),
    );
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
    expect(statuses.filter((s) => s === 429)).toHaveLength(15);
    expect(await ledger(gw)).toHaveLength(5);
  });

  it("answers 503 with Retry-After, not 500, when the quota object cannot be reached", async () => {
    const backend = scopedBackend(0);
    const { token, clock } = await setup([backend]);
    const unreachable = {
      idFromName: (name: string) => env.QUOTA.idFromName(name),
      get: () => ({
        lease: () => Promise.reject(new Error("Durable Object is overloaded")),
        commit: () => Promise.reject(new Error("Durable Object is overloaded")),
      }),
    };
    const gw = testGateway({
      clock,
      bindings: {
        QUOTA: unreachable as unknown as Env["QUOTA"],
        INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: backend.url }] }),
        INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
      },
    });
    clearCallerCache();
    clearQuotaLeases();
    const res = await gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 }),
    });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(await res.json()).toMatchObject({ error: { code: "service_unavailable" } });
    // Nothing reached the backend.
    expect(await backend.requests()).toHaveLength(0);
  });

  it("stops a revoked token within the cache window", async () => {
    const { gw, client, clock, tokenId } = await setup([scopedBackend(0)]);
    const ask = () =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    await ask();
    await gw.db.update(accessTokens).set({ revokedAt: clock.now().toISOString() }).where(eq(accessTokens.id, tokenId));
    await ask(); // Still within the 5 s the isolate trusts its last check.
    clock.advance(5_001);
    await expect(ask()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it("renews a token's check after the answer of the first request that finds it 4 s old: in steady use the check never expires, and a revocation it finds stops the token at once", async () => {
    const { gw, client, clock, tokenId } = await setup([scopedBackend(0)]);
    const ask = () =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    await ask();
    clock.advance(4_100);
    // Answered from the cached check, which this request renews after its answer (the test gateway
    // awaits its waitUntil work): valid until 9.1 s now, not 5 s.
    await ask();
    await gw.db.update(accessTokens).set({ revokedAt: clock.now().toISOString() }).where(eq(accessTokens.id, tokenId));
    clock.advance(1_000);
    // 5.1 s after the first check: without the renewal this request would check, and be refused.
    await ask();
    clock.advance(3_000);
    // 8.1 s: the renewed check is 4 s old: this request renews it again, and finds the revocation.
    await ask();
    await expect(ask()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
  });
});

describe("bad requests", () => {
  it("get OpenAI-shaped 4xx answers", async () => {
    const { gw, token } = await setup([scopedBackend(0)]);
    const post = (body: string, headers: Record<string, string> = {}) =>
      gw.request("/v1/chat/completions", {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...headers },
        body,
      });
    const cases: [Promise<Response>, number, string][] = [
      [post("{not json"), 400, "invalid_json"],
      [post(JSON.stringify({ model: MODEL })), 400, "invalid_request"],
      [post(JSON.stringify({ model: "gpt-4", messages: [{ role: "user", content: "x" }] })), 404, "model_not_found"],
      [
        post(JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "x".repeat(1_100_000) }] })),
        413,
        "request_too_large",
      ],
      [post("hello", { "content-type": "text/plain" }), 415, "unsupported_media_type"],
      [
        post(JSON.stringify({ model: MODEL, messages: [] }), { authorization: "Bearer mg_nope" }),
        401,
        "invalid_api_key",
      ],
    ];
    for (const [pending, status, code] of cases) {
      const res = await pending;
      expect(res.status, code).toBe(status);
      const body = (await res.json()) as { error: { code: string; message: string; type: string } };
      expect(body.error.code).toBe(code);
      expect(typeof body.error.message).toBe("string");
    }
    expect(await ledger(gw)).toHaveLength(0);
  });

  it("refuses a token without the inference scope", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { scopes: ["download"] });
    const res = await gw.request("/v1/models", { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ error: { code: "permission_denied" } });
  });
});

describe("backend refusals in OpenAI's shape", () => {
  const VLLM_MESSAGE =
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.";
  const TGI_MESSAGE =
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 1000 `max_new_tokens`";

  it.each([
    ["vllm", VLLM_MESSAGE],
    ["vllm-legacy", VLLM_MESSAGE],
    ["vllm-nested", VLLM_MESSAGE],
    ["tgi", TGI_MESSAGE],
  ])("a %s 400 reaches the real client as a BadRequestError with the server's message", async (shape, message) => {
    const backend = scopedBackend(0);
    await backend.mode("client_error", { errorShape: shape });
    const { gw, client } = await setup([backend]);
    for (const stream of [false, true]) {
      const error = await client.chat.completions
        .create({ model: MODEL, messages: [{ role: "user", content: PROMPT }], max_tokens: 5, stream })
        .then(
          () => undefined,
          (e: unknown) => e,
        );
      expect(error, `stream: ${stream}`).toBeInstanceOf(OpenAI.BadRequestError);
      const refused = error as InstanceType<typeof OpenAI.BadRequestError>;
      expect(refused.status).toBe(400);
      expect(refused.error).toEqual({ message, type: "invalid_request_error", param: null, code: null });
    }
    const rows = await ledger(gw);
    expect(rows.map((r) => [r.outcome, r.status, r.totalTokens])).toEqual([
      ["backend_error", 400, 0],
      ["backend_error", 400, 0],
    ]);
  });

  it("keeps the server's 4xx status, and its message when it chose one", async () => {
    const backend = scopedBackend(1);
    await backend.mode("client_error", {
      errorShape: "tgi",
      errorStatus: 422,
      errorMessage: "`temperature` must be strictly positive",
    });
    const { client } = await setup([backend]);
    const error = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: "hi" }], temperature: 0 })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(OpenAI.UnprocessableEntityError);
    expect((error as InstanceType<typeof OpenAI.APIError>).message).toContain(
      "`temperature` must be strictly positive",
    );
  });

  it("turns a server's refusal of the gateway's own credentials into a 502, never a 401 the client would blame on its key", async () => {
    const backend = scopedBackend(2);
    await backend.mode("client_error", { errorShape: "vllm", errorStatus: 401, errorMessage: "Unauthorized" });
    const { client } = await setup([backend]);
    const error = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: "hi" }] })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(OpenAI.InternalServerError);
    expect((error as InstanceType<typeof OpenAI.APIError>).status).toBe(502);
    expect((error as InstanceType<typeof OpenAI.APIError>).code).toBe("bad_gateway");
  });
});

describe("what the gateway passes on unchanged", () => {
  const TOOLS = [
    {
      type: "function" as const,
      function: {
        name: "get_weather",
        description: "The weather in a city",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    },
  ];
  const extras = {
    tools: TOOLS,
    tool_choice: { type: "function", function: { name: "get_weather" } },
    response_format: {
      type: "json_schema",
      json_schema: { name: "weather", schema: { type: "object", properties: { t: { type: "number" } } } },
    },
    logprobs: true,
    top_logprobs: 3,
    seed: 1234,
    // Fields OpenAI does not know, which vLLM and TGI read.
    repetition_penalty: 1.1,
    guided_json: { type: "object" },
    chat_template_kwargs: { enable_thinking: false },
    x_vendor: { nested: [1, { deep: null }], "with space": "ok" },
  };

  it("sends tools, tool_choice, response_format, logprobs, seed and unknown fields to the backend as the client wrote them", async () => {
    const backend = scopedBackend(0);
    const { client } = await setup([backend]);
    const sent = {
      model: MODEL,
      messages: [{ role: "user" as const, content: PROMPT }],
      max_tokens: 6,
      ...extras,
    };
    await client.chat.completions.create(sent as OpenAI.ChatCompletionCreateParamsNonStreaming);
    const [received] = await backend.requests();
    expect(received?.body).toEqual(sent);
  });

  it("streams tool-call chunks to the client and meters them: the usage the server reported when it ends, each chunk when it breaks", async () => {
    const backend = scopedBackend(1);
    await backend.mode("ok", { answer: "tool_calls" });
    const { gw, client } = await setup([backend]);
    const request = {
      model: MODEL,
      messages: [{ role: "user" as const, content: PROMPT }],
      max_tokens: 6,
      stream: true as const,
      ...extras,
    };
    const stream = await client.chat.completions.create(request as OpenAI.ChatCompletionCreateParamsStreaming);
    let name = "";
    let args = "";
    let finish: string | null | undefined;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      for (const call of choice?.delta.tool_calls ?? []) {
        name += call.function?.name ?? "";
        args += call.function?.arguments ?? "";
      }
      finish = choice?.finish_reason ?? finish;
    }
    expect(name).toBe("get_weather");
    expect(JSON.parse(args)).toEqual({ input: "tok0 tok1 tok2 tok3 tok4 tok5 " });
    expect(finish).toBe("tool_calls");
    const [received] = await backend.requests();
    expect(received?.body).toEqual({ ...request, stream_options: { include_usage: true } });
    expect((await ledger(gw))[0]).toMatchObject({
      promptTokens: 6,
      completionTokens: 6,
      totalTokens: 12,
      usageReported: true,
      outcome: "ok",
    });

    await backend.mode("cut", { cutAfter: 4 });
    const cut = await client.chat.completions.create({
      ...request,
      max_tokens: 30,
    } as OpenAI.ChatCompletionCreateParamsStreaming);
    await expect(
      (async () => {
        for await (const _ of cut);
      })(),
    ).rejects.toThrow();
    const rows = await ledger(gw);
    // The server reported nothing: the arguments it sent are counted with the model's tokenizer.
    const counted = await tokenCounterFor("llama-2")?.generated(['{"input": "tok0 tok1 tok2 tok3 ']);
    expect(counted).toBeGreaterThan(4);
    expect(rows[1]).toMatchObject({ outcome: "partial", usageReported: false, completionTokens: counted });
  });
});

describe("OpenAI's namespace: paths the gateway does not serve", () => {
  it("answer as OpenAI answers an unknown URL, which the real client reads as a 404 with code unknown_url", async () => {
    const { client } = await setup([scopedBackend(0)]);
    const calls: [string, () => Promise<unknown>][] = [
      ["embeddings", () => client.embeddings.create({ model: MODEL, input: "hi" })],
      ["responses", () => client.responses.create({ model: MODEL, input: "hi" })],
      ["moderations", () => client.moderations.create({ input: "hi" })],
      ["images", () => client.images.generate({ prompt: "a llama" })],
      ["audio", () => client.audio.speech.create({ model: "tts-1", voice: "alloy", input: "hi" })],
      ["files", () => client.files.list()],
      ["models.delete", () => client.models.delete(MODEL)],
    ];
    for (const [name, call] of calls) {
      const error = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error, name).toBeInstanceOf(OpenAI.NotFoundError);
      const apiError = error as InstanceType<typeof OpenAI.NotFoundError>;
      expect(apiError.status, name).toBe(404);
      expect(apiError.code, name).toBe("unknown_url");
      expect(apiError.type, name).toBe("invalid_request_error");
      expect(apiError.param, name).toBeNull();
    }
  });

  it("answer anyone in OpenAI's shape, with the method and path, whatever the method or token", async () => {
    const gw = testGateway();
    for (const [method, path] of [
      ["POST", "/v1/embeddings"],
      ["GET", "/v1/chat/completions"],
      ["DELETE", "/v1/models"],
      ["GET", "/v1/models/llama-2-7b/anything"],
      ["POST", "/v1/fine_tuning/jobs"],
      ["GET", "/v1/"],
    ] as const) {
      const res = await gw.request(path, { method, headers: { authorization: "Bearer sk-forged" } });
      expect(res.status, path).toBe(404);
      expect(res.headers.get("content-type"), path).toMatch(/^application\/json/);
      expect(res.headers.get("x-request-id"), path).toBeTruthy();
      expect(await res.json(), path).toEqual({
        error: {
          message: expect.stringContaining(`Unknown request URL: ${method} ${path}.`),
          type: "invalid_request_error",
          param: null,
          code: "unknown_url",
        },
      });
    }
  });

  it("leave the gateway's own /v1 surfaces and everything outside /v1 to problem documents", async () => {
    const gw = testGateway();
    for (const path of [
      "/v1/tokens/tok_x/extra",
      "/v1/applications/app_x/tokens/t/extra",
      "/v1/organization/unknown",
      "/v1/licenses/llama-2/unknown",
      "/v1/usage/unknown",
      "/v1/models/llama-2-7b/manifest/extra",
      "/v2/embeddings",
      "/nowhere",
    ]) {
      const res = await gw.request(path, { method: "PATCH" });
      expect(res.status, path).toBe(404);
      expect(res.headers.get("content-type"), path).toMatch(/^application\/problem\+json/);
      expect(await res.json(), path).toMatchObject({ code: "not_found" });
    }
  });

  it("never include a route of the gateway's own: every /v1 route is OpenAI's or on a listed surface", () => {
    const openAiRoutes = new Set(["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/:model"]);
    const v1Routes = [...new Set(testGateway().app.routes.map((r) => r.path))].filter((p) => p.startsWith("/v1/"));
    expect(v1Routes.length).toBeGreaterThan(10);
    for (const path of v1Routes) {
      if (openAiRoutes.has(path)) continue;
      expect(isOpenAiNamespace(path.replaceAll(/:[^/]+/g, "x").replace(/\{[^}]*\}$/, "")), path).toBe(false);
    }
  });
});

describe("models and usage", () => {
  it("lists and retrieves the models of the family that have backends, and reports usage per day", async () => {
    const { gw, client } = await setup([scopedBackend(0)]);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
    expect(await client.models.retrieve(MODEL)).toMatchObject({
      id: MODEL,
      object: "model",
      owned_by: "Meta Platforms, Inc.",
    });
    // Of the family, but no server serves it; and no model at all.
    await expect(client.models.retrieve("llama-2-13b-chat")).rejects.toBeInstanceOf(OpenAI.NotFoundError);
    await expect(client.models.retrieve("gpt-4")).rejects.toMatchObject({ status: 404, code: "model_not_found" });
    await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "a b c" }],
      max_tokens: 4,
    });
    await client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "a b" }], max_tokens: 1 });
    // The quota object folds the calls into their hour (2026-06-15T12, long over by its clock), and
    // its alarm closes the hour into D1's hourly totals, which the answer reads.
    await flushUsage();
    const res = await gw.request("/v1/usage?from=2026-06-01&to=2026-06-30", {
      headers: { authorization: `Bearer ${(client as unknown as { apiKey: string }).apiKey}` },
    });
    expect(await res.json()).toEqual({
      object: "list",
      from: "2026-06-01",
      to: "2026-06-30",
      data: [
        {
          date: "2026-06-15",
          model: MODEL,
          requests: 2,
          prompt_tokens: 5,
          completion_tokens: 5,
          total_tokens: 10,
          partial_requests: 0,
        },
      ],
    });
  });
});

describe("admin-set limits", () => {
  it("hold at once, also in an isolate that cached the old ones", async () => {
    const clock = fixedClock(TOKEN_NOW);
    const { gw, client, applicationId } = await setup([scopedBackend(2)], { clock });
    const ask = () =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    await ask();
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
    // The caller's contact is at example.com: an admin from elsewhere, as one from there is party to it.
    const set = await gw.request(`/admin/api/organizations/${app?.organizationId}/limits`, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "admin", email: "ops@review.example" })),
      body: JSON.stringify({ plan: "trial", requestsPerMinute: 2, tokensPerMinute: 1_000, monthlyTokenBudget: 10_000 }),
    });
    expect(set.status).toBe(200);
    // Same minute, the token's check still cached with 60 requests per minute: the second request
    // of the minute is the last one the new limit allows.
    const second = await client.chat.completions
      .create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 })
      .withResponse();
    expect(second.response.headers.get("x-ratelimit-limit-requests")).toBe("2");
    await expect(ask()).rejects.toBeInstanceOf(OpenAI.RateLimitError);
  });

  it("take effect for the organization within the cache window, and only admins may set them", async () => {
    const clock = fixedClock(TOKEN_NOW);
    const { gw, client, applicationId } = await setup([scopedBackend(2)], { clock });
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
    const path = `/admin/api/organizations/${app?.organizationId}/limits`;
    const limits = { plan: "trial", requestsPerMinute: 1, tokensPerMinute: 1_000, monthlyTokenBudget: 10_000 };
    const asReviewer = await gw.request(path, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "approver" })),
      body: JSON.stringify(limits),
    });
    expect(asReviewer.status).toBe(403);
    const crossSite = await gw.request(path, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "admin" }), { "sec-fetch-site": "cross-site" }),
      body: JSON.stringify(limits),
    });
    expect(crossSite.status).toBe(403);
    const set = await gw.request(path, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "admin", email: "ops@review.example" })),
      body: JSON.stringify(limits),
    });
    expect(set.status).toBe(200);
    const read = await gw.request(path, { headers: accessHeaders(await adminToken()) });
    expect(await read.json()).toMatchObject({ custom: true, plan: "trial", requestsPerMinute: 1 });
    clock.advance(61_000);
    const ask = () =>
      client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 1 });
    await ask();
    await expect(ask()).rejects.toBeInstanceOf(OpenAI.RateLimitError);
  });
});

describe("security: a request reserves all it can cost, and the backend is held to it", () => {
  const post = (gw: ReturnType<typeof testGateway>, token: string, path: string, body: unknown) =>
    gw.request(path, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });

  // 200 concurrent requests through workerd take seconds on a loaded 2-core machine.
  it("never meters past the tokens-per-minute limit, however many worst-case prompts arrive at once", async () => {
    const backend = scopedBackend(0);
    // The backend's tokenizer at its worst: one token per byte of the prompt (digits, for Llama 2).
    await backend.mode("ok", { promptTokens: "bytes" });
    const { gw, token, applicationId } = await setup([backend]);
    const limit = 100_000;
    await setLimits(gw, applicationId, {
      plan: "worst",
      requestsPerMinute: 1_000,
      tokensPerMinute: limit,
      monthlyTokenBudget: 100_000_000,
    });
    const digits = "1234567890".repeat(200);
    const responses = await Promise.all(
      Array.from({ length: 200 }, () =>
        post(gw, token, "/v1/chat/completions", {
          model: MODEL,
          messages: [{ role: "user", content: digits }],
          max_tokens: 500,
        }),
      ),
    );
    const statuses = responses.map((r) => r.status);
    const admitted = statuses.filter((s) => s === 200).length;
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    expect(admitted).toBeGreaterThan(0);
    const rows = await ledger(gw);
    expect(rows).toHaveLength(admitted);
    // Every row is the backend's own count: 2,000 prompt tokens and the 500 it was allowed.
    for (const row of rows) expect(row).toMatchObject({ promptTokens: 2_000, completionTokens: 500 });
    const metered = rows.reduce((sum, row) => sum + row.totalTokens, 0);
    expect(metered).toBeLessThanOrEqual(limit);
    const sent = await backend.requests();
    expect(sent).toHaveLength(admitted);
    for (const request of sent) expect(request.body.max_tokens).toBe(500);
  }, 60_000);

  it("reserves the larger of max_tokens and max_completion_tokens and forwards it under both names", async () => {
    const backend = scopedBackend(1);
    const { gw, token, applicationId } = await setup([backend]);
    await setLimits(gw, applicationId, {
      plan: "small",
      requestsPerMinute: 100,
      tokensPerMinute: 3_000,
      monthlyTokenBudget: 1_000_000,
    });
    const ask = (max_completion_tokens: number) =>
      post(gw, token, "/v1/chat/completions", {
        model: MODEL,
        messages: [{ role: "user", content: "hi" }],
        max_tokens: 1,
        max_completion_tokens,
      });
    const tooLarge = await ask(4_000);
    expect(tooLarge.status).toBe(429);
    expect(tooLarge.headers.get("x-should-retry")).toBe("false");
    expect(await tooLarge.json()).toMatchObject({ error: { code: "request_too_large" } });
    expect(await backend.requests()).toHaveLength(0);

    const fits = await ask(50);
    expect(fits.status).toBe(200);
    const [sent] = await backend.requests();
    expect(sent?.body).toMatchObject({ max_tokens: 50, max_completion_tokens: 50 });
    expect((await ledger(gw))[0]).toMatchObject({ completionTokens: 50 });
  });

  it("reserves a completion for every prompt of a list, texts or token ids", async () => {
    const backend = scopedBackend(2);
    const { gw, token, applicationId } = await setup([backend]);
    await setLimits(gw, applicationId, {
      plan: "small",
      requestsPerMinute: 100,
      tokensPerMinute: 1_000,
      monthlyTokenBudget: 1_000_000,
    });
    const ask = (prompt: unknown) => post(gw, token, "/v1/completions", { model: MODEL, prompt, max_tokens: 400 });
    for (const prompt of [
      ["a", "b", "c"],
      [[1], [2], [3]],
    ]) {
      const refused = await ask(prompt);
      expect(refused.status, JSON.stringify(prompt)).toBe(429);
      expect(await refused.json()).toMatchObject({ error: { code: "request_too_large" } });
    }
    expect(await backend.requests()).toHaveLength(0);
    expect((await ask([1, 2, 3])).status).toBe(200);
    expect((await backend.requests())[0]?.body).toMatchObject({ prompt: [1, 2, 3], max_tokens: 400 });
  });

  it("refuses a template of the caller's own before anything is reserved or sent", async () => {
    const backend = scopedBackend(0);
    const { gw, token } = await setup([backend]);
    const res = await post(gw, token, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 1,
      chat_template: "{% for i in range(100000) %}7{% endfor %}",
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: "invalid_request", param: "chat_template" } });
    expect(await backend.requests()).toHaveLength(0);
  });

  it("refuses a template variable that is text, which the template could print into the prompt any number of times", async () => {
    const backend = scopedBackend(0);
    const { gw, token } = await setup([backend]);
    const res = await post(gw, token, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 1,
      chat_template_kwargs: { bos_token: "9".repeat(50_000) },
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({
      error: { code: "invalid_request", param: "chat_template_kwargs.bos_token" },
    });
    expect(await backend.requests()).toHaveLength(0);
  });

  it("refuses the other endpoint's prompt field, which the bound would not count: messages beside a prompt, a prompt beside messages", async () => {
    const backend = scopedBackend(0);
    const { gw, token, applicationId } = await setup([backend]);
    await setLimits(gw, applicationId, {
      plan: "tiny",
      requestsPerMinute: 100,
      tokensPerMinute: 1_000,
      monthlyTokenBudget: 1_000,
    });
    // 40,000 bytes of prompt: far over the limit, whatever `messages: []` would have said.
    const prompt = Array.from({ length: 20 }, () => "7".repeat(2_000));
    const completions = await post(gw, token, "/v1/completions", { model: MODEL, prompt, messages: [], max_tokens: 5 });
    expect(completions.status).toBe(400);
    expect(await completions.json()).toMatchObject({ error: { code: "invalid_request", param: "messages" } });
    const chat = await post(gw, token, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      prompt,
      max_tokens: 5,
    });
    expect(chat.status).toBe(400);
    expect(await chat.json()).toMatchObject({ error: { code: "invalid_request", param: "prompt" } });
    expect(await backend.requests()).toHaveLength(0);
    const alone = await post(gw, token, "/v1/completions", { model: MODEL, prompt, max_tokens: 5 });
    expect(alone.status).toBe(429);
  });
});

describe("security: vLLM's own fields that the bound cannot account for", () => {
  const post = (gw: ReturnType<typeof testGateway>, token: string, path: string, body: unknown) =>
    gw.request(path, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  const REFUSED: Record<string, unknown> = {
    best_of: 4,
    use_beam_search: true,
    prompt_embeds: "AAAAAAAA",
    priority: -1_000,
    request_id: "someone-elses-request",
    kv_transfer_params: { do_remote_prefill: true },
    vllm_xargs: { steps: 1_000 },
    logits_processors: ["package.Processor"],
  };

  it("are refused on both endpoints with 400 invalid_request naming the field, before anything is sent", async () => {
    const backend = scopedBackend(0);
    const { gw, token } = await setup([backend]);
    const endpoints = [
      ["/v1/chat/completions", { messages: [{ role: "user", content: "hi" }] }],
      ["/v1/completions", { prompt: "hi" }],
    ] as const;
    for (const [field, value] of Object.entries(REFUSED)) {
      for (const [path, body] of endpoints) {
        const res = await post(gw, token, path, { model: MODEL, ...body, max_tokens: 1, [field]: value });
        expect(res.status, `${field} on ${path}`).toBe(400);
        expect(await res.json()).toMatchObject({ error: { code: "invalid_request", param: field } });
      }
    }
    expect(await backend.requests()).toHaveLength(0);
  });

  it("pass best_of on when it is within n, which costs no more than the n sequences reserved", async () => {
    const backend = scopedBackend(0);
    const { gw, token } = await setup([backend]);
    const over = await post(gw, token, "/v1/completions", { model: MODEL, prompt: "hi", max_tokens: 1, best_of: 2 });
    expect(over.status).toBe(400);
    const res = await post(gw, token, "/v1/completions", {
      model: MODEL,
      prompt: "hi",
      max_tokens: 1,
      n: 2,
      best_of: 2,
    });
    expect(res.status).toBe(200);
    const sent = await backend.requests();
    expect(sent).toHaveLength(1);
    expect(sent[0]?.body).toMatchObject({ n: 2, best_of: 2 });
  });
});

describe("security: a body without a Content-Length is counted as it arrives", () => {
  /** A request body streamed in 64 KiB chunks with no declared length, and how many chunks were pulled. */
  function streamedBody(chunks: number, chunkOf: (i: number) => Uint8Array) {
    const counter = { pulls: 0 };
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (counter.pulls === chunks) {
          controller.close();
          return;
        }
        controller.enqueue(chunkOf(counter.pulls));
        counter.pulls++;
      },
    });
    return { body, counter };
  }

  it("refuses a chunked body past 1 MiB without reading the rest of it", async () => {
    const { gw, token } = await setup([scopedBackend(0)]);
    const chunk = new Uint8Array(64 * 1024).fill(0x20);
    const { body, counter } = streamedBody(128, () => chunk); // 8 MiB in all
    const res = await gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body,
      duplex: "half",
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ error: { code: "request_too_large" } });
    // 16 chunks make the limit; a few more may be buffered, never the whole body.
    expect(counter.pulls).toBeLessThan(24);
  });

  it("still serves a chunked body within the limit", async () => {
    const { gw, token } = await setup([scopedBackend(0)]);
    const text = new TextEncoder().encode(
      JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 2 }),
    );
    const { body } = streamedBody(Math.ceil(text.byteLength / 8), (i) => text.slice(i * 8, i * 8 + 8));
    const res = await gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body,
      duplex: "half",
    } as RequestInit);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ choices: [{ message: { content: "tok0 tok1 " } }] });
  });
});
