/**
 * Answers whose server reported no usage — streams cut by the server, clients that hung up,
 * servers that never send usage — are billed what the server counted (asked for usage on every
 * chunk where it is vLLM) or what the model's own tokenizer counts, never the reservation's
 * deliberately high bound. The simulators count in `llama` mode: Llama 2's chat template and
 * tokenizer, the way vLLM counts, so every test has the real count to hold the bill against.
 */
import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import llamaTokenizer from "llama-tokenizer-js";
import { beforeEach, describe, expect, it } from "vitest";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { tokenBound } from "../worker/inference/token-bound";
import { MAX_COUNTED_CHARS, renderLlama2Chat, tokenCounterFor } from "../worker/inference/tokenizer";
import { fixedClock } from "../worker/platform/clock";
import { type Backend, openAiCaller, scopedBackend } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";
import { usageRows } from "./helpers/ledger";

const MODEL = "llama-2-7b-chat";

const MESSAGES = [
  {
    role: "system",
    content: "You are a careful assistant for a shipping company. Answer briefly and cite the policy.",
  },
  { role: "user", content: "Can I send lithium batteries to Norway by air?\nThey are spare ones, 2 × 98 Wh." },
  {
    role: "assistant",
    content: "Spare lithium-ion batteries up to 100 Wh may travel, packed one by one, never in the hold.",
  },
  { role: "user", content: "And the ones inside a laptop? Ünïcödé names: Ålesund, Tromsø, 東京 transit." },
];

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A gateway whose model is served by `backend`, marked as vLLM (`continuousUsage`) or not, and a caller. */
async function setup(backend: Backend, continuousUsage: boolean) {
  const gw = testGateway({
    clock: fixedClock("2026-06-15T12:00:05Z"),
    inference: { health: new BackendHealth(), random: () => 0 },
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: backend.url, timeoutMs: 10_000, continuousUsage }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
  return { gw, ...(await openAiCaller(gw, licenseSha256)) };
}

/** The metered rows of the requests the test sent, oldest first. */
const ledger = (_gw: ReturnType<typeof testGateway>) => usageRows();

/** What the simulator itself counts for `body`'s prompt: asked directly, in `llama` mode, with usage. */
async function realPromptTokens(backend: Backend, path: string, body: Record<string, unknown>): Promise<number> {
  await backend.mode("ok", { promptTokens: "llama", reportUsage: true });
  const res = await fetch(`${backend.url}/v1/${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ ...body, model: MODEL, stream: false, max_tokens: 1 }),
  });
  const json = (await res.json()) as { usage: { prompt_tokens: number } };
  return json.usage.prompt_tokens;
}

/** Sends a streamed request through the gateway and reads `chunks` content chunks, then hangs up. */
async function hangUpAfter(gw: ReturnType<typeof testGateway>, token: string, body: object, chunks: number) {
  const ctx = createExecutionContext();
  const res = await gw.app.request(
    "http://gw/v1/chat/completions",
    {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    },
    gw.env,
    ctx,
  );
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  while ((text.match(/"content":"[^"]/g) ?? []).length < chunks) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the stream ended before the client hung up");
    text += decoder.decode(value, { stream: true });
  }
  await reader.cancel("client went away");
  await waitOnExecutionContext(ctx);
}

/** Reads a streamed answer through the gateway to its end (or its break), returning its events' data. */
async function streamEvents(gw: ReturnType<typeof testGateway>, token: string, body: object): Promise<string[]> {
  const res = await gw.request("/v1/chat/completions", {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch {
    // A cut stream ends in an error; its events so far are what the client saw.
  }
  return text
    .split("\n\n")
    .filter((event) => event.startsWith("data: "))
    .map((event) => event.slice(6));
}

/** The prompt billed is the real one, or at most 5% under it: never over it. */
function expectPromptBilled(billed: number | undefined, real: number) {
  expect(billed).toBeLessThanOrEqual(real);
  expect(billed).toBeGreaterThanOrEqual(Math.floor(real * 0.95));
}

const CHAT = { model: MODEL, messages: MESSAGES, max_tokens: 40, stream: true };

describe("security: partial streams are billed the real prompt, never the reservation's bound", () => {
  it("bills a stream the server cut, without usage, by the model's tokenizer: prompt within 5% and never above, one token per chunk seen", async () => {
    const backend = scopedBackend(0);
    const real = await realPromptTokens(backend, "chat/completions", CHAT);
    // The reservation's bound is what a cut stream was billed before: far above the real count.
    const bound = tokenBound(CHAT, 16).prompt;
    expect(bound).toBeGreaterThan(real * 1.5);
    await backend.mode("cut", { cutAfter: 7, promptTokens: "llama" });
    const { gw, token } = await setup(backend, false);
    const events = await streamEvents(gw, token, CHAT);
    expect(events.filter((e) => e.includes('"content":" '))).toHaveLength(7);
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "partial", partial: true, usageReported: false, status: 499 });
    expectPromptBilled(row?.promptTokens, real);
    expect(Math.abs((row?.completionTokens ?? 0) - 7)).toBeLessThanOrEqual(1);
    expect(row?.totalTokens).toBe((row?.promptTokens ?? 0) + (row?.completionTokens ?? 0));
  });

  it("bills a client that hung up, without usage, the same way", async () => {
    const backend = scopedBackend(1);
    const real = await realPromptTokens(backend, "chat/completions", CHAT);
    await backend.mode("hang", { cutAfter: 5, promptTokens: "llama" });
    const { gw, token } = await setup(backend, false);
    await hangUpAfter(gw, token, CHAT, 5);
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "client_closed", usageReported: false });
    expectPromptBilled(row?.promptTokens, real);
    expect(Math.abs((row?.completionTokens ?? 0) - 5)).toBeLessThanOrEqual(1);
  });

  it("asks a vLLM server for usage on every chunk, and bills a cut stream exactly what it counted to the last chunk", async () => {
    const backend = scopedBackend(2);
    const real = await realPromptTokens(backend, "chat/completions", CHAT);
    await backend.mode("cut", { cutAfter: 6, promptTokens: "llama" });
    const { gw, token } = await setup(backend, true);
    await streamEvents(gw, token, CHAT);
    const [sent] = (await backend.requests()).slice(-1);
    expect(sent?.body.stream_options).toEqual({ include_usage: true, continuous_usage_stats: true });
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "partial", usageReported: true, promptTokens: real, completionTokens: 6 });
  });

  it("bills a client that hung up on a vLLM server exactly what the server counted", async () => {
    const backend = scopedBackend(0);
    const real = await realPromptTokens(backend, "chat/completions", CHAT);
    await backend.mode("hang", { cutAfter: 4, promptTokens: "llama" });
    const { gw, token } = await setup(backend, true);
    await hangUpAfter(gw, token, CHAT, 4);
    const [row] = await ledger(gw);
    expect(row).toMatchObject({
      outcome: "client_closed",
      usageReported: true,
      promptTokens: real,
      completionTokens: 4,
    });
  });

  it("bills a cut text completion by the tokenizer: its <s> and prompt, within 5% and never above", async () => {
    const backend = scopedBackend(1);
    const body = { model: MODEL, prompt: "Translate to French:\nThe ships leave Tromsø at dawn.", max_tokens: 20 };
    const real = await realPromptTokens(backend, "completions", body);
    await backend.mode("cut", { cutAfter: 3, promptTokens: "llama" });
    const { gw, token } = await setup(backend, false);
    const res = await gw.request("/v1/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify({ ...body, stream: true }),
    });
    await res.text().catch(() => "");
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "partial", usageReported: false });
    expectPromptBilled(row?.promptTokens, real);
    expect(Math.abs((row?.completionTokens ?? 0) - 3)).toBeLessThanOrEqual(1);
  });

  it("bills a plain answer that came without usage by the tokenizer, not by the bound", async () => {
    const backend = scopedBackend(2);
    const plain = { ...CHAT, stream: false, max_tokens: 12 };
    const real = await realPromptTokens(backend, "chat/completions", plain);
    await backend.mode("ok", { promptTokens: "llama", reportUsage: false });
    const { gw, client } = await setup(backend, true);
    const answer = await client.chat.completions.create(plain as never);
    expect((answer as { usage?: unknown }).usage).toBeUndefined();
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "ok", usageReported: false, stream: false });
    expectPromptBilled(row?.promptTokens, real);
    // Twelve generated words of one token each: the text's tokens are the real completion.
    expect(row?.completionTokens).toBe(12);
  });

  it("never bills a cut stream's completion past what was reserved, nor under the chunks it sent", async () => {
    const backend = scopedBackend(0);
    // Text the server counts as one token a chunk, which Llama 2's tokenizer splits further.
    await backend.mode("cut", { cutAfter: 4, reportUsage: false });
    const { gw, token } = await setup(backend, false);
    await streamEvents(gw, token, { ...CHAT, max_tokens: 5 });
    const [row] = await ledger(gw);
    expect(row?.completionTokens).toBeGreaterThanOrEqual(4);
    expect(row?.completionTokens).toBeLessThanOrEqual(5);
    expect(row?.promptTokens).toBeLessThanOrEqual(tokenBound(CHAT, 16).prompt);
  });
});

describe("security: a client sees the usage it asked for, whatever the gateway asked the server", () => {
  const hasUsage = (data: string) => data !== "[DONE]" && Object.hasOwn(JSON.parse(data), "usage");

  it("gives a client that did not ask for usage no usage field at all, though every chunk from the server had one", async () => {
    const backend = scopedBackend(1);
    await backend.mode("ok", { promptTokens: "llama" });
    const { gw, token } = await setup(backend, true);
    const events = await streamEvents(gw, token, { ...CHAT, max_tokens: 6 });
    const [sent] = await backend.requests();
    expect(sent?.body.stream_options).toEqual({ include_usage: true, continuous_usage_stats: true });
    expect(events.at(-1)).toBe("[DONE]");
    expect(events.filter((e) => e.includes('"content":" '))).toHaveLength(6);
    expect(events.filter(hasUsage)).toEqual([]);
    const [row] = await ledger(gw);
    expect(row).toMatchObject({ outcome: "ok", usageReported: true, completionTokens: 6 });
  });

  it("gives a client that asked for usage only the final usage chunk, with null on the others as OpenAI sends it", async () => {
    const backend = scopedBackend(2);
    await backend.mode("ok", { promptTokens: "llama" });
    const { gw, token } = await setup(backend, true);
    const events = await streamEvents(gw, token, {
      ...CHAT,
      max_tokens: 3,
      stream_options: { include_usage: true },
    });
    const chunks = events.filter((e) => e !== "[DONE]").map((e) => JSON.parse(e) as Record<string, unknown>);
    const withUsage = chunks.filter((c) => c.usage !== null);
    expect(withUsage).toHaveLength(1);
    expect(withUsage[0]?.choices).toEqual([]);
    expect(withUsage[0]?.usage).toMatchObject({ completion_tokens: 3 });
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
  });

  it("passes usage on every chunk to a client that asked for it, and asks a server not marked vLLM only for what the client asked", async () => {
    const marked = scopedBackend(0);
    await marked.mode("ok", { promptTokens: "llama" });
    const first = await setup(marked, true);
    const continuous = {
      ...CHAT,
      max_tokens: 3,
      stream_options: { include_usage: true, continuous_usage_stats: true },
    };
    const events = await streamEvents(first.gw, first.token, continuous);
    const counts = events
      .filter((e) => e !== "[DONE]")
      .map((e) => (JSON.parse(e) as { usage: { completion_tokens: number } }).usage.completion_tokens);
    expect(counts).toEqual([0, 1, 2, 3, 3, 3]);

    const plain = scopedBackend(1);
    const second = await setup(plain, false);
    await streamEvents(second.gw, second.token, { ...CHAT, max_tokens: 2 });
    const [sent] = await plain.requests();
    expect(sent?.body.stream_options).toEqual({ include_usage: true });
  });
});

describe("counting with Llama 2's tokenizer", () => {
  it("renders a conversation as Llama 2's chat template does", () => {
    expect(renderLlama2Chat(MESSAGES.slice(0, 3))).toBe(
      `<s>[INST] <<SYS>>\n${MESSAGES[0]?.content}\n<</SYS>>\n\n${MESSAGES[1]?.content} [/INST] ${MESSAGES[2]?.content} </s>`,
    );
    expect(
      renderLlama2Chat([
        {
          role: "user",
          content: [
            { type: "text", text: " a " },
            { type: "text", text: "b" },
          ],
        },
      ]),
    ).toBe("<s>[INST] a \nb [/INST]");
  });

  it("counts a long text in pieces exactly as in one piece, and never counts past the characters it may", async () => {
    const counter = tokenCounterFor("llama-2");
    const lines = Array.from({ length: 3000 }, (_, i) => `line ${i}: the quick brown fox, naïve café №${i}`);
    const text = lines.join("\n").slice(0, MAX_COUNTED_CHARS - 10);
    expect(await counter?.generated([text])).toBe(llamaTokenizer.encode(text, false, true).length);
    const huge = "word ".repeat(MAX_COUNTED_CHARS);
    const counted = (await counter?.generated([huge])) ?? 0;
    expect(counted).toBeLessThanOrEqual(llamaTokenizer.encode(huge, false, true).length);
    expect(counted).toBeGreaterThan(MAX_COUNTED_CHARS / 6);
  });

  it("counts token-id prompts by their length and has no counter for a family it does not know", async () => {
    expect(await tokenCounterFor("llama-2")?.prompt({ prompt: [1, 2, 3, 4] })).toBe(4);
    expect(await tokenCounterFor("llama-2")?.prompt({ prompt: [[1, 2], [3]] })).toBe(3);
    expect(tokenCounterFor("some-other-family")).toBeUndefined();
  });
});
