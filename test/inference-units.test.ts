import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { createDatabase } from "../worker/db/client";
import { usageLedger } from "../worker/db/schema";
import { backendRefusal } from "../worker/inference/backend-errors";
import {
  BACKENDS_CACHE_MS,
  BackendHealth,
  checkBackendUrl,
  orderBackends,
  parseBackendPools,
} from "../worker/inference/backends";
import { ledgerBatch, ledgerEntry, recordUsage, type UsageRecord } from "../worker/inference/ledger";
import { completionSchema, plainlyValid } from "../worker/inference/proxy";
import {
  chatTemplateAllowance,
  TEMPLATE_TOKENS_PER_MESSAGE,
  TEMPLATE_TOKENS_PER_PROMPT,
  tokenBound,
  utf8ByteLength,
} from "../worker/inference/token-bound";
import { tokenCounterFor } from "../worker/inference/tokenizer";
import { meterEventStream, type StreamReport } from "../worker/inference/usage";
import { systemClock } from "../worker/platform/clock";
import { jsonLogger } from "../worker/platform/logger";
import { renewIfDue } from "../worker/platform/renew-ahead";
import { boundMember } from "./helpers/bindings";

function sse(...events: string[]): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(events.map((e) => `data: ${e}\n\n`).join(""));
  return new ReadableStream({
    start(controller) {
      // Split across chunk boundaries on purpose, to prove events are reassembled.
      for (let i = 0; i < bytes.length; i += 7) controller.enqueue(bytes.slice(i, i + 7));
      controller.close();
    },
  });
}

async function drain(stream: ReadableStream<Uint8Array>): Promise<{ events: string[]; error?: unknown }> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let text = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
  } catch (error) {
    return { events: text.split("\n\n").filter(Boolean), error };
  }
  return { events: text.split("\n\n").filter(Boolean) };
}

const chunk = (content: string, usage?: object) =>
  JSON.stringify({
    object: "chat.completion.chunk",
    choices: [{ index: 0, delta: { content } }],
    ...(usage ? { usage } : {}),
  });
const usageChunk = (p: number, c: number) =>
  JSON.stringify({
    object: "chat.completion.chunk",
    choices: [],
    usage: { prompt_tokens: p, completion_tokens: c, total_tokens: p + c },
  });

describe("meterEventStream", () => {
  it("forwards every event unmerged and reads the usage chunk, dropping it when the client did not ask", async () => {
    let report: StreamReport | undefined;
    const out = meterEventStream(sse(chunk("a"), chunk("b"), usageChunk(5, 2), "[DONE]"), {
      clientWantsUsage: false,
      now: () => 0,
      onEnd: (r) => {
        report = r;
      },
    });
    const { events, error } = await drain(out);
    expect(error).toBeUndefined();
    expect(events).toEqual([`data: ${chunk("a")}`, `data: ${chunk("b")}`, "data: [DONE]"]);
    expect(report).toMatchObject({
      end: "done",
      usage: { promptTokens: 5, completionTokens: 2, totalTokens: 7 },
    });
  });

  it("forwards whole events in the backend's own chunks, one write each, still metering them", async () => {
    const encoded = [chunk("a"), chunk("b"), usageChunk(5, 2), "[DONE]"].map((e) =>
      new TextEncoder().encode(`data: ${e}\n\n`),
    );
    const upstream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const bytes of encoded) controller.enqueue(bytes);
        controller.close();
      },
    });
    let report: StreamReport | undefined;
    const reader = meterEventStream(upstream, {
      clientWantsUsage: false,
      now: () => 0,
      onEnd: (r) => {
        report = r;
      },
    }).getReader();
    const writes: Uint8Array[] = [];
    for (let next = await reader.read(); !next.done; next = await reader.read()) writes.push(next.value);
    // The usage-only chunk the client did not ask for is gone; every other chunk passes byte for byte.
    expect(writes).toEqual([encoded[0], encoded[1], encoded[3]]);
    expect(report).toMatchObject({ end: "done", usage: { totalTokens: 7 } });
  });

  it("keeps the usage chunk when the client asked for it", async () => {
    const { events } = await drain(
      meterEventStream(sse(chunk("a"), usageChunk(5, 1), "[DONE]"), {
        clientWantsUsage: true,
        now: () => 0,
        onEnd: () => {},
      }),
    );
    expect(events).toEqual([`data: ${chunk("a")}`, `data: ${usageChunk(5, 1)}`, "data: [DONE]"]);
  });

  it("takes the last of per-chunk usage (vLLM continuous stats), never the sum, and strips it for the client", async () => {
    let report: StreamReport | undefined;
    const u = (c: number) => ({ prompt_tokens: 5, completion_tokens: c, total_tokens: 5 + c });
    const { events } = await drain(
      meterEventStream(sse(chunk("a", u(1)), chunk("b", u(2)), chunk("c", u(3)), "[DONE]"), {
        clientWantsUsage: false,
        now: () => 0,
        onEnd: (r) => {
          report = r;
        },
      }),
    );
    expect(report?.usage).toEqual({ promptTokens: 5, completionTokens: 3, totalTokens: 8 });
    expect(events.slice(0, 3).map((e) => JSON.parse(e.slice(6)).usage)).toEqual([undefined, undefined, undefined]);
  });

  it("errors the client's stream when the backend ends without [DONE], and reports it as cut", async () => {
    let report: StreamReport | undefined;
    const { events, error } = await drain(
      meterEventStream(sse(chunk("a"), chunk("b")), {
        clientWantsUsage: false,
        now: () => 0,
        onEnd: (r) => {
          report = r;
        },
      }),
    );
    expect(error).toBeDefined();
    expect(events).toHaveLength(2);
    expect(report).toMatchObject({ end: "backend_cut", usage: undefined, contentChunks: 2 });
  });

  it("reports a client that went away and cancels the backend", async () => {
    let cancelled = false;
    let report: StreamReport | undefined;
    const upstream = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(`data: ${chunk("a")}\n\n`));
      },
      cancel() {
        cancelled = true;
      },
    });
    const out = meterEventStream(upstream, { clientWantsUsage: false, now: () => 0, onEnd: (r) => (report = r) });
    const reader = out.getReader();
    await reader.read();
    await reader.cancel("client went away");
    expect(cancelled).toBe(true);
    expect(report).toMatchObject({ end: "client_closed", contentChunks: 1 });
  });
});

describe("renewIfDue", () => {
  /**
   * An entry due at 4,000, renewed by a renewal whose work is held until `release` runs; `request`
   * is one request that uses the entry at `now`.
   */
  function renewable() {
    const entry = { refreshAt: 4_000, refreshing: false };
    const deferred: Promise<unknown>[] = [];
    const failures: unknown[] = [];
    let renewals = 0;
    let release!: (outcome: "ok" | "fail") => void;
    const gate = new Promise<"ok" | "fail">((done) => (release = done));
    const renew = async () => {
      renewals++;
      if ((await gate) === "fail") throw new Error("database unavailable");
    };
    const request = (now: number) =>
      renewIfDue(
        entry,
        now,
        (work) => deferred.push(work),
        renew,
        (error) => failures.push(error),
      );
    return { entry, deferred, failures, request, release, renewals: () => renewals };
  }

  it("renews once for a thousand concurrent requests that find the entry due, and none of them waits for it", async () => {
    const { deferred, failures, request, release, renewals } = renewable();
    // Before it is due, nobody renews.
    request(3_999);
    expect(renewals()).toBe(0);
    for (let i = 0; i < 1_000; i++) request(4_000 + i);
    // Each call returned at once; the one renewal runs after its request's answer.
    expect(renewals()).toBe(1);
    expect(deferred).toHaveLength(1);
    release("ok");
    await Promise.all(deferred);
    expect(failures).toEqual([]);
  });

  it("lets the next request renew after a renewal failed, and reports the failure", async () => {
    const { entry, deferred, failures, request, release, renewals } = renewable();
    request(5_000);
    request(5_000);
    expect(renewals()).toBe(1);
    release("fail");
    await Promise.all(deferred);
    expect(failures).toHaveLength(1);
    expect(entry.refreshing).toBe(false);
    request(5_000);
    expect(renewals()).toBe(2);
  });
});

describe("backendRefusal", () => {
  const error = (status: number, text: string) => backendRefusal(status, text).body.error;

  it("reads each server's error body into OpenAI's shape", () => {
    expect(
      error(400, JSON.stringify({ error: { message: "m", type: "BadRequestError", param: "n", code: "bad_n" } })),
    ).toEqual({
      message: "m",
      type: "invalid_request_error",
      param: "n",
      code: "bad_n",
    });
    expect(
      error(400, JSON.stringify({ object: "error", message: "m", type: "BadRequestError", param: null, code: 400 })),
    ).toEqual({
      message: "m",
      type: "invalid_request_error",
      param: null,
      code: null,
    });
    expect(error(400, JSON.stringify({ error: "m", error_type: "validation" })).message).toBe("m");
    expect(
      error(422, JSON.stringify({ detail: [{ loc: ["body", "n"], msg: "n must be positive" }, { msg: "x" }] })).message,
    ).toBe("n must be positive; x");
  });

  it("says what happened when the body is no error it knows, and never reads inherited properties", () => {
    for (const text of [
      "<html>Bad Request</html>",
      "",
      "[]",
      "null",
      '{"__proto__": {"message": "inherited"}}',
      '{"error": 42}',
    ]) {
      expect(error(400, text), text).toEqual({
        message: "The inference server refused the request (HTTP 400).",
        type: "invalid_request_error",
        param: null,
        code: null,
      });
    }
    expect(error(400, JSON.stringify({ message: "x".repeat(5000) })).message.length).toBeLessThanOrEqual(2001);
  });

  it("answers a refusal of the gateway's credentials as the gateway's failure", () => {
    for (const status of [401, 403])
      expect(backendRefusal(status, "{}")).toMatchObject({ status: 502, body: { error: { code: "bad_gateway" } } });
    expect(backendRefusal(404, "{}").status).toBe(404);
  });
});

describe("backend URLs", () => {
  it.each([
    ["http://10.0.0.5:8000", "private_address"],
    ["http://127.0.0.1:8000", "private_address"],
    ["http://169.254.169.254/latest/meta-data", "private_address"],
    ["http://[::1]:8000", "private_address"],
    ["http://[fd00::1]/", "private_address"],
    ["http://metadata.google.internal/", "private_address"],
    ["http://localhost:8000", "private_address"],
    ["http://192.168.1.10", "private_address"],
    ["http://172.20.0.1", "private_address"],
    ["http://100.64.1.1", "private_address"],
    ["ftp://gpu.example.com", "scheme"],
    ["https://user:pw@gpu.example.com", "credentials"],
    ["not a url", "not_a_url"],
  ])("refuses %s (%s)", (url, problem) => {
    expect(checkBackendUrl(url, [])).toBe(problem);
  });

  it("accepts public hosts, and private ones an operator allowed", () => {
    expect(checkBackendUrl("https://gpu-1.example.com", [])).toBeUndefined();
    expect(checkBackendUrl("http://172.32.0.1", [])).toBeUndefined();
    expect(checkBackendUrl("http://127.0.0.1:8000", ["127.0.0.1"])).toBeUndefined();
  });

  it("leaves refused backends out of the pool and reports them", () => {
    const { pools, refused } = parseBackendPools(
      JSON.stringify({
        "llama-2-7b-chat": [{ url: "http://10.1.2.3" }, { url: "https://gpu.example.com/v1/", weight: 2 }],
      }),
      [],
    );
    expect(pools.get("llama-2-7b-chat")).toEqual([
      {
        url: "https://gpu.example.com",
        weight: 2,
        timeoutMs: 120_000,
        apiKey: undefined,
        servedModel: "llama-2-7b-chat",
      },
    ]);
    expect(refused).toEqual([{ model: "llama-2-7b-chat", url: "http://10.1.2.3", problem: "private_address" }]);
  });
});

describe("backend order and health", () => {
  const a = { url: "https://a", weight: 3, timeoutMs: 1, apiKey: undefined, servedModel: "m" };
  const b = { url: "https://b", weight: 1, timeoutMs: 1, apiKey: undefined, servedModel: "m" };

  it("balances by weight and puts the rest after, skipping unusable ones", () => {
    expect(
      orderBackends(
        [a, b],
        () => true,
        () => 0.1,
      ),
    ).toEqual([a, b]);
    expect(
      orderBackends(
        [a, b],
        () => true,
        () => 0.9,
      ),
    ).toEqual([b, a]);
    expect(
      orderBackends(
        [a, b],
        (x) => x !== a,
        () => 0.1,
      ),
    ).toEqual([b]);
    let picksA = 0;
    let seed = 1;
    const random = () => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    for (let i = 0; i < 4000; i++) if (orderBackends([a, b], () => true, random)[0] === a) picksA++;
    expect(picksA / 4000).toBeGreaterThan(0.7);
    expect(picksA / 4000).toBeLessThan(0.8);
  });

  it("reports only changes, and adopts other isolates' reports only where they are newer", () => {
    const health = new BackendHealth();
    const ignore = () => {};
    health.markUp(a, 500);
    expect(health.hasReports).toBe(false);
    health.markDown(a, 1_000, "connect");
    const down = health.takeReports();
    expect(down).toEqual([{ url: a.url, state: "down", reason: "connect", at: 1_000, downUntil: 11_000 }]);
    expect(health.hasReports).toBe(false);

    health.adopt([{ url: a.url, state: "up", reason: null, at: 900, downUntil: null }]);
    expect(health.isUsable(a, 1_001, ignore)).toBe(false);
    health.adopt([{ url: a.url, state: "up", reason: null, at: 2_000, downUntil: null }]);
    expect(health.isUsable(a, 2_001, ignore)).toBe(true);
    health.adopt(down); // Its own report, read back after another isolate's newer one.
    expect(health.isUsable(a, 2_002, ignore)).toBe(true);
    health.adopt([{ url: b.url, state: "down", reason: "timeout", at: 2_500, downUntil: 12_500 }]);
    expect(health.isUsable(b, 3_000, ignore)).toBe(false);
    expect(health.hasReports).toBe(false);

    // Reports that could not be shared go out with the next, unless a newer change replaced them.
    health.markDown(a, 3_000, "status 503");
    const unsent = health.takeReports();
    health.markDown(b, 3_500, "connect");
    health.giveBack(unsent);
    health.markUp(b, 4_000);
    expect(health.takeReports().sort((x, y) => x.url.localeCompare(y.url))).toEqual([
      unsent[0],
      { url: b.url, state: "up", reason: null, at: 4_000, downUntil: null },
    ]);
  });

  it("leaves a backend another isolate found down to that isolate's probe, and probes it itself only if no word comes", async () => {
    const probes: string[] = [];
    const health = new BackendHealth(async (input) => {
      probes.push(String(input));
      return new Response(null, { status: 503 });
    });
    const pending: Promise<unknown>[] = [];
    const waitUntil = (p: Promise<unknown>) => pending.push(p);
    health.adopt([{ url: a.url, state: "down", reason: "status 500", at: 1_000, downUntil: 11_000 }]);
    expect(health.isUsable(a, 11_001, waitUntil)).toBe(false);
    expect(health.isUsable(a, 11_000 + BACKENDS_CACHE_MS, waitUntil)).toBe(false);
    expect(probes).toEqual([]);
    // The other isolate's probe failed again: its word moves the wait on.
    health.adopt([{ url: a.url, state: "down", reason: "probe", at: 11_500, downUntil: 21_500 }]);
    expect(health.isUsable(a, 21_501 + BACKENDS_CACHE_MS, waitUntil)).toBe(false);
    expect(probes).toEqual([]);
    // No word after that: this isolate probes for itself, and its failure is news to share.
    expect(health.isUsable(a, 21_500 + BACKENDS_CACHE_MS + 1_001, waitUntil)).toBe(false);
    await Promise.all(pending);
    expect(probes).toEqual(["https://a/health"]);
    expect(health.takeReports()).toEqual([expect.objectContaining({ url: a.url, state: "down", reason: "probe" })]);
  });

  it("keeps a failed backend out until a probe finds it healthy again", async () => {
    let healthy = false;
    const probes: string[] = [];
    const health = new BackendHealth(async (input) => {
      probes.push(String(input));
      return new Response(null, { status: healthy ? 200 : 503 });
    });
    const pending: Promise<unknown>[] = [];
    health.markDown(a, 0, "connect");
    expect(health.isUsable(a, 5_000, (p) => pending.push(p))).toBe(false);
    expect(probes).toEqual([]);
    expect(health.isUsable(a, 10_001, (p) => pending.push(p))).toBe(false);
    await Promise.all(pending);
    expect(probes).toEqual(["https://a/health"]);
    healthy = true;
    expect(health.isUsable(a, Date.now() + 10_001, (p) => pending.push(p))).toBe(false);
    await Promise.all(pending);
    expect(health.isUsable(a, Date.now() + 20_000, (p) => pending.push(p))).toBe(true);
  });
});

describe("security: a request's token bound is never below what Llama 2 can make of it", () => {
  const DEFAULT = 512;
  const user = (content: unknown) => ({ messages: [{ role: "user", content }] });

  it("counts a prompt one token per UTF-8 byte: digits, spaced letters, any script", () => {
    for (const text of ["7".repeat(3000), " a".repeat(1500), "é".repeat(1000), "😀".repeat(500), "\ud800x"]) {
      const bytes = new TextEncoder().encode(text).byteLength;
      expect(utf8ByteLength(text), text.slice(0, 8)).toBe(bytes);
      expect(tokenBound(user(text), DEFAULT).prompt).toBeGreaterThanOrEqual(bytes + TEMPLATE_TOKENS_PER_MESSAGE);
      expect(tokenBound({ prompt: text }, DEFAULT).prompt).toBeGreaterThanOrEqual(bytes + TEMPLATE_TOKENS_PER_PROMPT);
    }
  });

  it("puts a running stream's generated text at no fewer tokens than the tokenizer counts, without tokenizing it", async () => {
    const counter = tokenCounterFor("llama-2");
    const texts = [
      "7".repeat(3000),
      " a".repeat(1500),
      "é".repeat(1000),
      "😀".repeat(500),
      "\ud800x",
      " tok0 tok1",
      "<s>[INST] \u0000\u0007\n\t </s>",
      "東京 transit, Ålesund\n\n".repeat(4000),
      "",
    ];
    for (const text of texts) {
      const counted = (await counter?.generated([text])) ?? 0;
      expect(counter?.generatedAtMost([text]), text.slice(0, 8)).toBeGreaterThanOrEqual(counted);
    }
    // Several texts share the counted length, as they do in `generated`.
    expect(counter?.generatedAtMost(texts)).toBeGreaterThanOrEqual((await counter?.generated(texts)) ?? 0);
  });

  it("counts every text a message carries, and each message's template wrapper", () => {
    const text = "1234567890".repeat(100);
    const parts = tokenBound(
      user([
        { type: "text", text },
        { type: "text", text },
      ]),
      DEFAULT,
    ).prompt;
    expect(parts).toBeGreaterThanOrEqual(2_000 + TEMPLATE_TOKENS_PER_MESSAGE);
    const named = tokenBound({ messages: [{ role: "user", content: "x", name: text }] }, DEFAULT).prompt;
    expect(named).toBeGreaterThanOrEqual(1_000);
    const toolCall = {
      role: "assistant",
      content: null,
      tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: text } }],
    };
    expect(tokenBound({ messages: [toolCall] }, DEFAULT).prompt).toBeGreaterThanOrEqual(1_000);
    const tools = [{ type: "function", function: { name: "f", parameters: { type: "object", description: text } } }];
    expect(tokenBound({ ...user("x"), tools }, DEFAULT).prompt).toBeGreaterThan(JSON.stringify(tools).length);
    const many = tokenBound({ messages: Array.from({ length: 10 }, () => ({ role: "user", content: "" })) }, DEFAULT);
    expect(many.prompt).toBeGreaterThanOrEqual(10 * TEMPLATE_TOKENS_PER_MESSAGE);
  });

  it("walks deeply nested input without running out of stack", () => {
    let deep: unknown = "7";
    for (let i = 0; i < 200_000; i++) deep = [deep];
    expect(tokenBound(user(deep), DEFAULT).prompt).toBeGreaterThanOrEqual(1);
  });

  it("reserves the larger of max_tokens and max_completion_tokens, for every sequence of every prompt", () => {
    expect(tokenBound({ ...user("hi"), max_tokens: 1, max_completion_tokens: 4000 }, DEFAULT)).toMatchObject({
      completionLimit: 4000,
      completion: 4000,
    });
    expect(tokenBound({ ...user("hi"), max_tokens: 4000, max_completion_tokens: 1 }, DEFAULT).completionLimit).toBe(
      4000,
    );
    expect(tokenBound(user("hi"), DEFAULT)).toMatchObject({ completionLimit: DEFAULT, completion: DEFAULT });
    expect(tokenBound({ ...user("hi"), max_tokens: 100, n: 3 }, DEFAULT).completion).toBe(300);
    const texts = tokenBound({ prompt: ["12345", "678", ""], max_tokens: 10, n: 2 }, DEFAULT);
    expect(texts.completion).toBe(60);
    expect(texts.prompt).toBeGreaterThanOrEqual(8 + 3 * TEMPLATE_TOKENS_PER_PROMPT);
    expect(texts.total).toBe(texts.prompt + texts.completion);
  });

  it("counts token-id prompts by their length, one list or several", () => {
    expect(tokenBound({ prompt: [1, 2, 3, 4], max_tokens: 10 }, DEFAULT)).toMatchObject({ prompt: 4, completion: 10 });
    expect(
      tokenBound(
        {
          prompt: [
            [1, 2, 3],
            [4, 5],
          ],
          max_tokens: 10,
        },
        DEFAULT,
      ),
    ).toMatchObject({ prompt: 5, completion: 20 });
    // An empty list is still one prompt's completion.
    expect(tokenBound({ prompt: [], max_tokens: 10 }, DEFAULT).completion).toBe(10);
  });
});

/**
 * Python's `json.dumps` at its longest, as a chat template's `tojson` may print it: `", "` and
 * `": "` between items (with `indent`, a line end and the indentation instead of the space), and
 * every string unit outside plain printable ASCII as a `\uXXXX` escape (Jinja's own filter also
 * escapes `<`, `>`, `&` and `'`).
 */
function worstToJson(value: unknown, indent?: number, depth = 0): string {
  if (typeof value === "string") {
    let out = '"';
    for (let i = 0; i < value.length; i++) {
      const unit = value.charCodeAt(i);
      const char = value[i] as string;
      if (char === '"' || char === "\\") out += `\\${char}`;
      else if (unit >= 0x20 && unit < 0x7f && !"<>&'".includes(char)) out += char;
      else out += `\\u${unit.toString(16).padStart(4, "0")}`;
    }
    return `${out}"`;
  }
  if (typeof value !== "object" || value === null) return JSON.stringify(value);
  const items = Array.isArray(value)
    ? value.map((item) => worstToJson(item, indent, depth + 1))
    : Object.entries(value).map(([k, v]) => `${worstToJson(k)}: ${worstToJson(v, indent, depth + 1)}`);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  if (items.length === 0) return open + close;
  if (indent === undefined) return open + items.join(", ") + close;
  const pad = (d: number) => `\n${" ".repeat(indent * d)}`;
  return `${open}${pad(depth + 1)}${items.join(`,${pad(depth + 1)}`)}${pad(depth)}${close}`;
}

interface TemplateMessage {
  role: string;
  content?: string | null;
  tool_calls?: { function: { name: string; arguments: string } }[];
}

/**
 * A conversation as vLLM's `tool_chat_template_llama3.1_json.jinja` renders it (tools in the
 * first user message, today's date as wide as "26 Jul 2024"), strings at their worst escaping.
 */
function llama31JsonTemplate(messages: TemplateMessage[], tools?: unknown[]): string {
  const header = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  let rest = messages;
  let system = "";
  if (rest[0]?.role === "system") {
    system = (rest[0].content ?? "").trim();
    rest = rest.slice(1);
  } else if (tools) {
    system =
      "You are a helpful assistant with tool calling capabilities. Only reply with a tool call if the function exists in the library provided by the user. If it doesn't exist, just reply directly in natural language. When you receive a tool call response, use the output to format an answer to the original user question.";
  }
  let out = `<|begin_of_text|>${header("system")}`;
  if (tools) out += "Environment: ipython\n";
  out += `Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n${system}<|eot_id|>`;
  if (tools) {
    const first = (rest[0]?.content ?? "").trim();
    rest = rest.slice(1);
    out += `${header("user")}Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n`;
    out += 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. ';
    out += "Do not use variables.\n\n";
    for (const tool of tools) out += `${worstToJson(tool, 4)}\n\n`;
    out += `${first}<|eot_id|>`;
  }
  for (const message of rest) {
    const call = message.tool_calls?.[0]?.function;
    if (call) {
      // vLLM decodes the arguments' JSON text before the template prints them again.
      const args = worstToJson(JSON.parse(call.arguments));
      out += `${header("assistant")}{"name": "${call.name.trim()}", "parameters": ${args}}<|eot_id|>`;
    } else if (message.role === "tool" || message.role === "ipython") {
      out += `${header("ipython")}${worstToJson({ output: message.content })}<|eot_id|>`;
    } else out += `${header(message.role)}${(message.content ?? "").trim()}<|eot_id|>`;
  }
  return out + header("assistant");
}

describe("security: a Llama 3.x request's token bound is never below what its template renders", () => {
  const DEFAULT = 512;
  const llama31 = chatTemplateAllowance("llama-3.1");
  /**
   * The most tokens the rendered prompt can be: a special token is one, and every other byte at
   * most one, as Llama 3's byte-level BPE makes no token shorter than a byte.
   */
  const rendered = (messages: TemplateMessage[], tools?: unknown[]) =>
    utf8ByteLength(
      llama31JsonTemplate(messages, tools).replace(/<\|(begin_of_text|start_header_id|end_header_id|eot_id)\|>/g, "S"),
    );

  it("counts the tool instructions a template adds for tools, even an empty list", () => {
    const messages = [{ role: "user", content: "What is the weather in Oslo?" }];
    const bound = tokenBound({ messages, tools: [] }, DEFAULT, llama31).prompt;
    expect(bound).toBeGreaterThanOrEqual(rendered(messages, []));
    // vLLM counted up to 154 tokens for it; the bound was once 37.
    expect(bound).toBeGreaterThanOrEqual(154);
    const weather = {
      type: "function",
      function: {
        name: "get_weather",
        description: "The weather in a city, in °C — or 'now' if it can't tell <soon>",
        parameters: { type: "object", properties: { city: { type: "string", enum: ["Oslo", "Tromsø"] } } },
      },
    };
    const tools = [weather, weather, weather];
    expect(tokenBound({ messages, tools }, DEFAULT, llama31).prompt).toBeGreaterThanOrEqual(rendered(messages, tools));
  });

  it("counts a tool's output at its worst escaping: control and non-ASCII characters as \\u escapes", () => {
    for (const output of ["\u0001".repeat(20_000), "é".repeat(20_000), "😀".repeat(10_000), "<'&'>".repeat(4_000)]) {
      const messages = [
        { role: "user", content: "Run it." },
        { role: "tool", content: output },
      ];
      const bound = tokenBound({ messages }, DEFAULT, llama31).prompt;
      expect(bound, output.slice(0, 2)).toBeGreaterThanOrEqual(rendered(messages));
    }
    // vLLM counted 60,044 tokens for 20,000 U+0001 characters; the bound was once 20,067.
    const controls = [
      { role: "user", content: "Run it." },
      { role: "tool", content: "\u0001".repeat(20_000) },
    ];
    expect(tokenBound({ messages: controls }, DEFAULT, llama31).prompt).toBeGreaterThanOrEqual(60_044);
  });

  it("counts a tool call's arguments as the server decodes them and prints them again, spaces and floats included", () => {
    const call = (args: string) => [
      { role: "user", content: "Sum them." },
      { role: "assistant", content: null, tool_calls: [{ function: { name: "sum", arguments: args } }] },
    ];
    const cases = [
      `{"a":[${Array(20_000).fill(1).join(",")}]}`,
      `{"a":[${Array(5_000).fill("1e15").join(",")}]}`,
      `{"k":{"x":"${"é".repeat(5_000)}","y":"${"\\u0001".repeat(2_000)}"}}`,
    ];
    for (const args of cases) {
      const messages = call(args);
      expect(tokenBound({ messages }, DEFAULT, llama31).prompt, args.slice(0, 12)).toBeGreaterThanOrEqual(
        rendered(messages),
      );
    }
    // vLLM counted 60,054 tokens for the first; the bound was once 40,105.
    expect(tokenBound({ messages: call(cases[0] as string) }, DEFAULT, llama31).prompt).toBeGreaterThanOrEqual(60_054);
  });

  it("counts tool definitions at tojson(indent=4)'s indentation, level by level", () => {
    let nested: unknown = "x";
    for (let i = 0; i < 300; i++) nested = { n: [nested] };
    const tools = [{ type: "function", function: { name: "deep", parameters: nested } }];
    const messages = [{ role: "user", content: "hi" }];
    expect(tokenBound({ messages, tools }, DEFAULT, llama31).prompt).toBeGreaterThanOrEqual(rendered(messages, tools));
  });
});

describe("the request check without the schemas", () => {
  const chat = { model: "llama-2-7b-chat", messages: [{ role: "user", content: "hi" }] };
  const completion = { model: "llama-2-7b", prompt: "Once upon" };
  const variants: Record<string, unknown>[] = [
    {},
    { stream: true },
    { stream: null },
    { stream: "yes" },
    { stream_options: null },
    { stream_options: { include_usage: true } },
    { stream_options: { include_usage: null } },
    { stream_options: [] },
    { max_tokens: 16 },
    { max_tokens: null },
    { max_tokens: 0 },
    { max_tokens: 1.5 },
    { max_tokens: 1e20 },
    { max_tokens: "16" },
    { max_completion_tokens: 8 },
    { n: 16 },
    { n: 17 },
    { model: "" },
    { model: "x".repeat(129) },
    { model: 7 },
    { messages: [] },
    { messages: [[]] },
    { messages: [{ content: "no role" }] },
    { messages: "hi" },
    { prompt: ["a", "b"] },
    { prompt: [1, 2] },
    { prompt: 3 },
    { chat_template: "{% for i in range(99999) %}7{% endfor %}" },
    { chat_template_kwargs: { bos_token: "7" } },
    { chat_template_kwargs: { enable_thinking: false } },
    { chat_template_kwargs: "x" },
    { messages: [{ role: "user", content: "hi" }] },
    { prompt: "hi" },
    { best_of: 1 },
    { best_of: 2 },
    { best_of: null },
    { n: 2, best_of: 2 },
    { n: 2, best_of: 1.5 },
    { use_beam_search: false },
    { priority: 0 },
    { request_id: "r" },
  ];

  it("passes only what the schemas pass, and passes the common requests", () => {
    for (const [endpoint, base] of [
      ["chat", chat],
      ["completions", completion],
    ] as const) {
      expect(plainlyValid(base, endpoint)).toBe(true);
      expect(plainlyValid({ ...base, stream: true, max_tokens: 16, temperature: 0.2 }, endpoint)).toBe(true);
      for (const body of [null, [], "text", ...variants.map((v) => ({ ...base, ...v }))]) {
        if (plainlyValid(body, endpoint)) {
          expect(completionSchema(endpoint).safeParse(body).success, JSON.stringify(body)).toBe(true);
        }
      }
    }
  });

  it("security: refuses a field of the other endpoint, which the bound would count instead of, or besides, its own", () => {
    expect(plainlyValid({ ...completion, messages: [] }, "completions")).toBe(false);
    expect(completionSchema("completions").safeParse({ ...completion, messages: [] }).error?.issues[0]?.path).toEqual([
      "messages",
    ]);
    expect(plainlyValid({ ...chat, prompt: "hi" }, "chat")).toBe(false);
    expect(completionSchema("chat").safeParse({ ...chat, prompt: "hi" }).error?.issues[0]?.path).toEqual(["prompt"]);
  });

  it("security: refuses vLLM's fields that cost more than the bound or reach past the request, naming each", () => {
    const refused = {
      best_of: 3,
      use_beam_search: false,
      prompt_embeds: "AAAA",
      priority: 0,
      request_id: "r",
      kv_transfer_params: null,
      vllm_xargs: {},
      logits_processors: [],
    };
    for (const [endpoint, base] of [
      ["chat", chat],
      ["completions", completion],
    ] as const) {
      for (const [field, value] of Object.entries(refused)) {
        const body = { ...base, n: 2, [field]: value };
        expect(plainlyValid(body, endpoint), field).toBe(false);
        expect(completionSchema(endpoint).safeParse(body).error?.issues[0]?.path, field).toEqual([field]);
      }
      for (const within of [{ best_of: 2, n: 2 }, { best_of: 1 }, { best_of: null }]) {
        expect(completionSchema(endpoint).safeParse({ ...base, ...within }).success).toBe(true);
      }
    }
  });

  it("security: passes a template's switches on, and refuses its variables that are text", () => {
    const switches = { ...chat, chat_template_kwargs: { enable_thinking: false } };
    expect(completionSchema("chat").safeParse(switches).success).toBe(true);
    const text = { ...chat, chat_template_kwargs: { bos_token: "7".repeat(1_000) } };
    expect(plainlyValid(text, "chat")).toBe(false);
    expect(completionSchema("chat").safeParse(text).error?.issues[0]?.path).toEqual([
      "chat_template_kwargs",
      "bos_token",
    ]);
  });

  it("security: refuses a chat request's own template, which no bound on its prompt could foresee", () => {
    const own = { ...chat, chat_template: "{% for i in range(99999) %}7{% endfor %}" };
    expect(plainlyValid(own, "chat")).toBe(false);
    const parsed = completionSchema("chat").safeParse(own);
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]?.path).toEqual(["chat_template"]);
  });
});

describe("recordUsage", () => {
  const record: UsageRecord = {
    id: "use_flaky",
    organizationId: "org_1",
    grantId: "gr_1",
    tokenId: "tok_1",
    model: "llama-2-7b-chat",
    backend: "https://gpu.example",
    endpoint: "chat.completions",
    stream: false,
    promptTokens: 8,
    completionTokens: 16,
    totalTokens: 24,
    usageReported: true,
    outcome: "ok",
    partial: false,
    status: 200,
    latencyMs: 5,
    startedAt: "2026-06-15T12:00:00.000Z",
  };
  const batch = ledgerBatch([ledgerEntry({ ...record, createdAt: "2026-06-15T12:00:01.000Z" })]);

  /** A D1 binding whose first `failures` statements throw, as D1 does when overloaded. */
  function flakyD1(failures: number): D1Database {
    let left = failures;
    const wrap = (statement: D1PreparedStatement): D1PreparedStatement =>
      new Proxy(statement, {
        get(target, key) {
          if (key === "bind") return (...values: unknown[]) => wrap(target.bind(...values));
          const value = Reflect.get(target, key);
          if (typeof value !== "function") return value;
          return (...args: unknown[]) => {
            if (left-- > 0) return Promise.reject(new Error("D1_ERROR: Database is overloaded"));
            return value.apply(target, args);
          };
        },
      });
    return new Proxy(env.DB, {
      get(target, key) {
        if (key === "prepare") return (query: string) => wrap(target.prepare(query));
        if (key === "batch") {
          return (statements: D1PreparedStatement[]) =>
            left-- > 0 ? Promise.reject(new Error("D1_ERROR: Database is overloaded")) : target.batch(statements);
        }
        return boundMember(target, key);
      },
    });
  }

  function servicesOver(binding: D1Database) {
    const errors: Record<string, unknown>[] = [];
    const log = {
      ...jsonLogger({}),
      error: (_message: string, fields?: Record<string, unknown>) => errors.push(fields ?? {}),
    };
    return { services: { db: createDatabase(binding), clock: systemClock, log }, errors };
  }

  it("retries a failed write until the row lands, once", async () => {
    const { services, errors } = servicesOver(flakyD1(2));
    await recordUsage(services, batch, undefined, 1);
    const rows = await createDatabase(env.DB).select().from(usageLedger);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ id: "use_flaky", totalTokens: 24 });
    expect(errors).toHaveLength(0);
  });

  it("logs the whole row when it cannot be written at all", async () => {
    const { services, errors } = servicesOver(flakyD1(100));
    await recordUsage(services, batch, undefined, 1);
    expect(await createDatabase(env.DB).select().from(usageLedger)).toHaveLength(0);
    expect(errors).toHaveLength(1);
    expect(errors[0]?.row).toMatchObject({ id: "use_flaky", promptTokens: 8, completionTokens: 16 });
  });
});
