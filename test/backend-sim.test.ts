/**
 * The inference-backend simulators that test/global-setup.ts starts in Node, reached from inside
 * workerd the way the gateway reaches them: they speak the OpenAI wire format exactly, count
 * usage deterministically, and misbehave on request.
 */
import { env } from "cloudflare:workers";
import { afterEach, describe, expect, it } from "vitest";

const backendUrls = JSON.parse(env.TEST_BACKEND_URLS) as string[];

interface ChatChunk {
  object: string;
  choices: { index: number; delta: { role?: string; content?: string }; finish_reason: string | null }[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

/** Reads an SSE body into its `data:` payloads; `cut` is true when the body ended in an error. */
async function readEvents(res: Response): Promise<{ data: string[]; cut: boolean }> {
  // Read and decode by hand: a piped TextDecoderStream would leave the cut's error unhandled.
  const reader = res.body?.getReader();
  if (!reader) throw new Error("no body");
  const decoder = new TextDecoder();
  let text = "";
  let cut = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch {
    cut = true;
  }
  const data = text
    .split("\n\n")
    .filter((event) => event.startsWith("data: "))
    .map((event) => event.slice("data: ".length));
  return { data, cut };
}

function chatRequest(body: Record<string, unknown>): RequestInit {
  return {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer sk-test" },
    body: JSON.stringify({ model: "llama-2-7b-chat", ...body }),
  };
}

async function setMode(url: string, mode: Record<string, unknown>): Promise<void> {
  const res = await fetch(`${url}/_sim/mode`, { method: "POST", body: JSON.stringify(mode) });
  expect(res.status).toBe(200);
  await res.body?.cancel();
}

afterEach(async () => {
  for (const url of backendUrls) {
    await setMode(url, { mode: "ok" });
    await fetch(`${url}/_sim/requests`, { method: "DELETE" });
  }
});

describe("backend simulators", () => {
  it("are three distinct loopback servers", () => {
    expect(backendUrls).toHaveLength(3);
    expect(new Set(backendUrls).size).toBe(3);
    for (const url of backendUrls) expect(new URL(url).hostname).toBe("127.0.0.1");
  });

  it.each([0, 1, 2])("simulator %i is healthy and serves every Llama 2 model", async (i) => {
    const url = backendUrls[i] as string;
    const health = await fetch(`${url}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok" });

    const models = (await (await fetch(`${url}/v1/models`)).json()) as { object: string; data: { id: string }[] };
    expect(models.object).toBe("list");
    expect(models.data.map((m) => m.id)).toEqual(expect.arrayContaining(["llama-2-7b-chat", "llama-2-70b-chat"]));
  });

  it.each([0, 1, 2])("simulator %i streams one chunk per token and the usage the words add up to", async (i) => {
    const url = backendUrls[i] as string;
    const res = await fetch(
      `${url}/v1/chat/completions`,
      chatRequest({
        messages: [
          { role: "system", content: "You are terse." },
          { role: "user", content: "  count these five words " },
        ],
        max_tokens: 5,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const { data, cut } = await readEvents(res);
    expect(cut).toBe(false);
    expect(data.at(-1)).toBe("[DONE]");
    const chunks = data.slice(0, -1).map((d) => JSON.parse(d) as ChatChunk);
    // role, five tokens, the finish chunk, the usage chunk
    expect(chunks).toHaveLength(8);
    expect(chunks.every((c) => c.object === "chat.completion.chunk")).toBe(true);
    expect(chunks[0]?.choices[0]?.delta).toEqual({ role: "assistant", content: "" });
    const content = chunks.map((c) => c.choices[0]?.delta.content ?? "").join("");
    expect(content).toBe("tok0 tok1 tok2 tok3 tok4 ");
    expect(chunks[6]?.choices[0]?.finish_reason).toBe("length");
    // Only the last chunk carries usage; the others say null, as OpenAI's API does.
    expect(chunks.slice(0, -1).every((c) => c.usage === null)).toBe(true);
    expect(chunks[7]?.choices).toEqual([]);
    expect(chunks[7]?.usage).toEqual({ prompt_tokens: 7, completion_tokens: 5, total_tokens: 12 });
  });

  it("reports no usage in a stream unless asked, and running usage with continuous_usage_stats", async () => {
    const url = backendUrls[0] as string;
    const plain = await readEvents(
      await fetch(
        `${url}/v1/chat/completions`,
        chatRequest({ messages: [{ content: "a b" }], max_tokens: 2, stream: true }),
      ),
    );
    const plainChunks = plain.data.slice(0, -1).map((d) => JSON.parse(d) as ChatChunk);
    expect(plainChunks).toHaveLength(4);
    expect(plainChunks.every((c) => !("usage" in c))).toBe(true);

    const continuous = await readEvents(
      await fetch(
        `${url}/v1/chat/completions`,
        chatRequest({
          messages: [{ content: "a b" }],
          max_tokens: 2,
          stream: true,
          stream_options: { include_usage: true, continuous_usage_stats: true },
        }),
      ),
    );
    const totals = continuous.data.slice(0, -1).map((d) => (JSON.parse(d) as ChatChunk).usage?.completion_tokens);
    // Running totals: the last one is the answer, the sum would bill 2 + 2 + 2 + 1 + 0 tokens.
    expect(totals).toEqual([0, 1, 2, 2, 2]);
  });

  it("answers a plain completion with exact usage and records what it was sent", async () => {
    const url = backendUrls[1] as string;
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { authorization: "Bearer sk-test" },
      body: JSON.stringify({ model: "llama-2-13b", prompt: ["one two", "three"], max_tokens: 3 }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { object: string; choices: { text: string }[]; usage: unknown };
    expect(body.object).toBe("text_completion");
    expect(body.choices[0]?.text).toBe("tok0 tok1 tok2 ");
    expect(body.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });

    const recorded = (await (await fetch(`${url}/_sim/requests`)).json()) as {
      path: string;
      body: { model: string };
      headers: Record<string, string>;
    }[];
    expect(recorded).toHaveLength(1);
    expect(recorded[0]?.path).toBe("/v1/completions");
    expect(recorded[0]?.body.model).toBe("llama-2-13b");
    expect(recorded[0]?.headers.authorization).toBe("Bearer sk-test");
  });

  it("takes its time per token: a plain answer comes once all are generated, a stream paces them", async () => {
    const url = `${backendUrls[2]}/scope/${crypto.randomUUID()}`;
    await setMode(url, { mode: "ok", tokenLatencyMs: 40 });
    let startedAt = Date.now();
    const plain = await fetch(`${url}/v1/chat/completions`, chatRequest({ messages: [], max_tokens: 5 }));
    expect(plain.status).toBe(200);
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(200);
    await plain.body?.cancel();

    startedAt = Date.now();
    const streamed = await fetch(
      `${url}/v1/chat/completions`,
      chatRequest({ messages: [], max_tokens: 5, stream: true }),
    );
    const headersAfter = Date.now() - startedAt;
    const { data } = await readEvents(streamed);
    expect(headersAfter).toBeLessThan(150);
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(160);
    expect(data.at(-1)).toBe("[DONE]");
  });

  it("answers an unknown model with an OpenAI-style 404", async () => {
    const res = await fetch(
      `${backendUrls[0]}/v1/chat/completions`,
      chatRequest({ model: "gpt-4", messages: [{ role: "user", content: "hi" }] }),
    );
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ error: { code: "model_not_found", param: "model" } });
  });

  it("cuts a stream after the configured tokens, without [DONE]", async () => {
    const url = backendUrls[2] as string;
    await setMode(url, { mode: "cut", cutAfter: 2, count: 1 });
    const res = await fetch(
      `${url}/v1/chat/completions`,
      chatRequest({
        messages: [{ content: "hi" }],
        max_tokens: 10,
        stream: true,
        stream_options: { include_usage: true },
      }),
    );
    expect(res.status).toBe(200);
    const { data, cut } = await readEvents(res);
    expect(cut).toBe(true);
    expect(data).not.toContain("[DONE]");
    // the role chunk and two tokens, never a usage chunk
    expect(data).toHaveLength(3);
    expect(data.map((d) => (JSON.parse(d) as ChatChunk).choices[0]?.delta.content)).toEqual(["", "tok0 ", "tok1 "]);

    // count: 1 — the next request is answered normally again.
    const next = await fetch(
      `${url}/v1/chat/completions`,
      chatRequest({ messages: [{ content: "hi" }], max_tokens: 1 }),
    );
    expect(next.status).toBe(200);
    await next.body?.cancel();
  });

  it("counts as Llama 2 does in llama mode, hangs after the configured tokens, and can report no usage", async () => {
    // A scope of its own: these settings outlive a mode change.
    const url = `${backendUrls[1]}/scope/${crypto.randomUUID()}`;
    await setMode(url, { mode: "ok", promptTokens: "llama" });
    const messages = [
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hello there" },
    ];
    const plain = (await (
      await fetch(`${url}/v1/chat/completions`, chatRequest({ messages, max_tokens: 3 }))
    ).json()) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } };
    // `<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHello there [/INST]`: <s>, then 25 SentencePiece tokens.
    expect(plain.choices[0]?.message.content).toBe(" the of and");
    expect(plain.usage).toMatchObject({ prompt_tokens: 26, completion_tokens: 3 });

    await setMode(url, { mode: "hang", cutAfter: 2, reportUsage: false });
    const res = await fetch(
      `${url}/v1/chat/completions`,
      chatRequest({ messages, max_tokens: 9, stream: true, stream_options: { include_usage: true } }),
    );
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = "";
    const decoder = new TextDecoder();
    while ((text.match(/"content":" /g) ?? []).length < 2) {
      const { value } = await reader.read();
      text += decoder.decode(value, { stream: true });
    }
    // Nothing more comes: the server hangs.
    const next = await Promise.race([reader.read(), new Promise((done) => setTimeout(() => done("silent"), 300))]);
    expect(next).toBe("silent");
    expect(text).not.toContain('"usage"');
    await reader.cancel();

    await setMode(url, { mode: "ok" });
    const none = (await (
      await fetch(`${url}/v1/chat/completions`, chatRequest({ messages, max_tokens: 2 }))
    ).json()) as Record<string, unknown>;
    expect(Object.hasOwn(none, "usage")).toBe(false);
  });

  it("fails the next requests with 500 or 503 only on the simulator told to", async () => {
    const [first, second] = backendUrls as [string, string];
    await setMode(first, { mode: "500", count: 1 });
    const failed = await fetch(`${first}/v1/chat/completions`, chatRequest({ messages: [{ content: "hi" }] }));
    expect(failed.status).toBe(500);
    expect(await failed.json()).toMatchObject({ error: { type: "server_error" } });
    const healthy = await fetch(`${second}/v1/chat/completions`, chatRequest({ messages: [{ content: "hi" }] }));
    expect(healthy.status).toBe(200);
    await healthy.body?.cancel();

    await setMode(first, { mode: "down" });
    expect((await fetch(`${first}/health`)).status).toBe(503);
    const down = await fetch(`${first}/v1/chat/completions`, chatRequest({ messages: [{ content: "hi" }] }));
    expect(down.status).toBe(503);
    await down.body?.cancel();
    expect((await fetch(`${second}/health`)).status).toBe(200);
  });

  it("refuses a request by dropping the connection without an answer", async () => {
    const url = backendUrls[0] as string;
    await setMode(url, { mode: "refuse", count: 1 });
    // workerd also logs the lost connection as an uncaught exception; the test still sees the rejection.
    await expect(fetch(`${url}/v1/chat/completions`, chatRequest({ messages: [{ content: "hi" }] }))).rejects.toThrow();
  });

  it("stalls until the client gives up", async () => {
    const url = backendUrls[0] as string;
    await setMode(url, { mode: "stall", count: 1 });
    await expect(
      fetch(`${url}/v1/chat/completions`, {
        ...chatRequest({ messages: [{ content: "hi" }] }),
        signal: AbortSignal.timeout(200),
      }),
    ).rejects.toThrow();
  });

  it("keeps the mode and request log of one scope away from every other", async () => {
    const url = backendUrls[0] as string;
    await setMode(`${url}/scope/this-test`, { mode: "500" });
    const scoped = await fetch(
      `${url}/scope/this-test/v1/chat/completions`,
      chatRequest({ messages: [{ content: "hi" }] }),
    );
    expect(scoped.status).toBe(500);
    await scoped.body?.cancel();
    const unscoped = await fetch(`${url}/v1/chat/completions`, chatRequest({ messages: [{ content: "hi" }] }));
    expect(unscoped.status).toBe(200);
    await unscoped.body?.cancel();
    const log = (await (await fetch(`${url}/scope/this-test/_sim/requests`)).json()) as { mode: string }[];
    expect(log.map((r) => r.mode)).toEqual(["500"]);
    await setMode(`${url}/scope/this-test`, { mode: "ok" });
  });
});
