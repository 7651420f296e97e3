/**
 * The stream usage meter against `eventsource-parser`, a reference implementation of the WHATWG
 * event-stream rules: generated streams (CR, LF and CRLF line ends, comments, multi-line and
 * spaced data, BOMs, non-ASCII text, usage on the last or on every chunk) are cut at every byte
 * boundary and at random places, and the meter must read the usage, the end and the events the
 * reference reads — and forward a stream the reference reads as the same events.
 */
import { createParser } from "eventsource-parser";
import { describe, expect, it } from "vitest";
import { meterEventStream, readUsage, type StreamReport, type Usage } from "../worker/inference/usage";

/** A seeded generator (mulberry32), so a failing case can be replayed from its seed. */
function seeded(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)] as T;
  return { next, int, pick };
}
type Random = ReturnType<typeof seeded>;

const usageOf = (p: number, c: number) => ({ prompt_tokens: p, completion_tokens: c, total_tokens: p + c });
const WORDS = ["tok ", "héllo ", "🦙 ", 'say "hi" ', "line\nbreak ", "data: ", "\r\n", "usage "];

/** One chunk object of the kinds vLLM and TGI send. */
function chunkObject(r: Random, i: number): Record<string, unknown> {
  const base = { id: "chatcmpl-1", object: "chat.completion.chunk", created: 1, model: "m" };
  switch (r.int(6)) {
    case 0:
      return { ...base, choices: [], usage: usageOf(r.int(50), r.int(50)) };
    case 1:
      return { ...base, choices: [{ index: 0, delta: { content: r.pick(WORDS) } }], usage: usageOf(7, i) };
    case 2:
      return {
        ...base,
        choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: r.pick(WORDS) } }] } }],
        usage: null,
      };
    case 3:
      return { ...base, choices: [{ index: 0, delta: { role: "assistant", content: "" } }] };
    default:
      return { ...base, choices: [{ index: 0, delta: { content: r.pick(WORDS) }, finish_reason: null }] };
  }
}

/** The `data` lines of a payload: compact, or spaced and spread over several lines. */
function dataLines(r: Random, payload: unknown): string[] {
  const json = r.next() < 0.5 ? JSON.stringify(payload) : JSON.stringify(payload, null, r.int(3) + 1);
  return json.split("\n").map((line) => {
    const form = r.int(8);
    if (form === 0) return `data:${line}`;
    if (form === 1) return `data:  ${line}`;
    return `data: ${line}`;
  });
}

/**
 * A generated event stream, as text; it may end without `[DONE]` or without the last empty line.
 * `lf`: every line ends in LF, as vLLM, TGI and OpenAI end them (and the meter passes most of such
 * a stream through unread).
 */
function generateStream(r: Random, lf = false): string {
  const eol = () => (lf ? "\n" : r.pick(["\n", "\n", "\r", "\r\n"]));
  let text = r.next() < 0.2 ? "\uFEFF" : "";
  // The empty line that ends an event: after a CR, an LF would only complete its line end.
  const blank = () => (text.endsWith("\r") ? r.pick(["\r", "\r\n"]) : eol());
  const events = 2 + r.int(8);
  for (let i = 0; i < events; i++) {
    const lines: string[] = [];
    if (r.next() < 0.25) lines.push(r.pick([": keep-alive", ":", ":data: {}"]));
    if (r.next() < 0.15) lines.push(r.pick(["event: message", "id: 7", "retry: 1000", "x-vendor: 1", "database: x"]));
    lines.push(...dataLines(r, chunkObject(r, i)));
    // A bare `data` is a data line with an empty value: whitespace between JSON tokens here.
    if (r.next() < 0.1) lines.push("data");
    text += lines.map((line) => line + eol()).join("");
    text += blank();
    if (r.next() < 0.1) {
      text += `:${eol()}`;
      text += blank();
    }
  }
  if (r.next() < 0.9) text += `data: [DONE]${eol()}`;
  if (r.next() < 0.8) text += blank();
  return text;
}

interface Reading {
  data: string[];
  usage: Usage | undefined;
  done: boolean;
  textChunks: number;
  /** The generated text (content and tool-call arguments), in the order it came. */
  text: string;
}

/** What the reference parser reads in a stream; the end is read as the end of an event, as the meter does. */
function reference(text: string): Reading {
  const data: string[] = [];
  const parser = createParser({ onEvent: (event) => data.push(event.data) });
  parser.feed(text.replace(/^\uFEFF/, ""));
  parser.feed("\n\n");
  let usage: Usage | undefined;
  let done = false;
  let textChunks = 0;
  let generated = "";
  for (const d of data) {
    if (d.trim() === "[DONE]") {
      done = true;
      continue;
    }
    let parsed: { choices?: { delta?: Record<string, unknown> }[] } | undefined;
    try {
      parsed = JSON.parse(d);
    } catch {
      continue;
    }
    usage = readUsage(parsed) ?? usage;
    const delta = parsed?.choices?.[0]?.delta;
    const toolCalls = delta?.tool_calls as { function: { arguments: string } }[] | undefined;
    if ((typeof delta?.content === "string" && delta.content !== "") || toolCalls?.[0]?.function.arguments) {
      textChunks++;
      generated += (delta?.content as string | undefined) ?? toolCalls?.[0]?.function.arguments ?? "";
    }
  }
  return { data, usage, done, textChunks, text: generated };
}

/** Runs `chunks` through the meter; returns its report and what it forwarded. */
async function meter(chunks: Uint8Array[], clientWantsUsage: boolean) {
  let report: StreamReport | undefined;
  const upstream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
  const reader = meterEventStream(upstream, { clientWantsUsage, now: () => 0, onEnd: (r) => (report = r) }).getReader();
  const decoder = new TextDecoder();
  let forwarded = "";
  try {
    for (let next = await reader.read(); !next.done; next = await reader.read()) {
      forwarded += decoder.decode(next.value, { stream: true });
    }
  } catch {
    // A stream without [DONE] ends in an error, as the report says.
  }
  return { report: report as StreamReport, forwarded };
}

/** The events a client reads, with the usage fields the gateway strips for a client that did not ask. */
function withoutUsage(data: string[]): unknown[] {
  return data.flatMap((d) => {
    const chunk = parsed(d);
    if (typeof chunk === "string" || chunk.usage == null) return [withoutUsageField(chunk)];
    return Array.isArray(chunk.choices) && chunk.choices.length === 0 ? [] : [withoutUsageField(chunk)];
  });
}

function parsed(data: string): string | { usage?: unknown; choices?: unknown } {
  try {
    const value = JSON.parse(data) as unknown;
    return typeof value === "object" && value !== null ? value : data;
  } catch {
    return data;
  }
}

function withoutUsageField(chunk: string | { usage?: unknown }) {
  if (typeof chunk === "string") return chunk;
  const { usage: _, ...rest } = chunk;
  return rest;
}

async function expectSameReading(text: string, chunks: Uint8Array[], clientWantsUsage: boolean, label: string) {
  const expected = reference(text);
  const { report, forwarded } = await meter(chunks, clientWantsUsage);
  expect(report.usage, label).toEqual(expected.usage);
  expect(report.end, label).toBe(expected.done ? "done" : "backend_cut");
  // What was generated is needed, and must be right, only when no usage came.
  if (expected.usage === undefined) {
    expect(report.contentChunks, `${label} ${JSON.stringify(text)}`).toBe(expected.textChunks);
    expect(report.generated().text, `${label} ${JSON.stringify(text)}`).toBe(expected.text);
  }
  // The client reads the same events (less the usage it did not ask for), however they were framed.
  const seen = reference(forwarded).data;
  if (clientWantsUsage) expect(seen, label).toEqual(expected.data);
  else {
    expect(
      seen.filter((d) => typeof parsed(d) !== "string" && (parsed(d) as { usage?: unknown }).usage != null),
      label,
    ).toEqual([]);
    expect(
      seen.map((d) => withoutUsageField(parsed(d))),
      label,
    ).toEqual(withoutUsage(expected.data));
  }
}

const encode = (text: string) => new TextEncoder().encode(text);

describe("the SSE meter against eventsource-parser", () => {
  it("reads what the reference reads in generated streams cut at every byte boundary", async () => {
    for (let seed = 1; seed <= 12; seed++) {
      const r = seeded(seed);
      const text = generateStream(r, seed > 8);
      const bytes = encode(text);
      for (let at = 0; at <= bytes.length; at++) {
        await expectSameReading(
          text,
          [bytes.slice(0, at), bytes.slice(at)],
          seed % 2 === 0,
          `seed ${seed}, cut at ${at}`,
        );
      }
    }
  });

  it("reads what the reference reads in generated streams cut in many random places", async () => {
    for (let seed = 100; seed < 160; seed++) {
      const r = seeded(seed);
      const text = generateStream(r, seed % 2 === 1);
      const bytes = encode(text);
      for (let round = 0; round < 10; round++) {
        const cuts = [...new Set(Array.from({ length: 1 + r.int(12) }, () => r.int(bytes.length + 1)))].sort(
          (a, b) => a - b,
        );
        const chunks = [0, ...cuts].map((from, i) => bytes.slice(from, cuts[i] ?? bytes.length));
        await expectSameReading(text, chunks, r.next() < 0.5, `seed ${seed}, cuts ${cuts.join(",")}`);
      }
    }
  });

  it("reads a stream sent one byte at a time", async () => {
    for (const lf of [false, true]) {
      const text = generateStream(seeded(7), lf);
      const bytes = encode(text);
      await expectSameReading(
        text,
        Array.from(bytes, (b) => Uint8Array.of(b)),
        false,
        `byte by byte${lf ? ", LF" : ""}`,
      );
    }
  });
});

describe("the SSE meter follows the event-stream rules", () => {
  const usage = (p: number, c: number) =>
    JSON.stringify({ object: "chat.completion.chunk", choices: [], usage: usageOf(p, c) });
  const content = JSON.stringify({ choices: [{ index: 0, delta: { content: "a" } }] });
  const read = async (chunks: string[], clientWantsUsage = true) => meter(chunks.map(encode), clientWantsUsage);

  it("ends lines with CR, LF or CRLF, also a CRLF cut between two chunks", async () => {
    for (const eol of ["\n", "\r", "\r\n"]) {
      const text = `data: ${content}${eol}${eol}data: ${usage(3, 4)}${eol}${eol}data: [DONE]${eol}${eol}`;
      const { report } = await read([text]);
      expect(report, JSON.stringify(eol)).toMatchObject({ end: "done", usage: { totalTokens: 7 } });
    }
    // `\r` then `\n` in the next chunk is one line end, not an empty line between two fields.
    const { report } = await read([
      `data: {"usage": {"prompt_tokens": 1,\r`,
      `\ndata: "completion_tokens": 2}}\r\n\r\ndata: [DONE]\n\n`,
    ]);
    expect(report.usage).toEqual({ promptTokens: 1, completionTokens: 2, totalTokens: 3 });
  });

  it("joins multi-line data with LF, skips comments, reads `data:` without a space and `data` without a colon", async () => {
    const text = [
      ": a comment with data: {}",
      "event: message",
      'data:{"object":"chat.completion.chunk",',
      "data",
      'data:  "choices": [],',
      'data: "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}',
      "",
      "data: [DONE]",
      "",
      "",
    ].join("\n");
    const { report } = await read([text]);
    expect(report).toMatchObject({ end: "done", usage: { promptTokens: 5, completionTokens: 6, totalTokens: 11 } });
  });

  it("reads spaced JSON and counts text, tool-call arguments and reasoning as generated chunks", async () => {
    const spaced = (delta: object) =>
      `data: ${JSON.stringify({ choices: [{ index: 0, delta }] }, null, 1).replaceAll("\n", " ")}\n\n`;
    const { report } = await read([
      spaced({ content: "a" }) +
        spaced({ tool_calls: [{ index: 0, function: { arguments: '{"x"' } }] }) +
        spaced({ reasoning_content: "hmm" }) +
        spaced({ content: "" }) +
        "data: [DONE]\n\n",
    ]);
    expect(report.contentChunks).toBe(3);
  });

  it("drops a BOM at the start of the stream", async () => {
    const { report } = await read([`\uFEFFdata: ${usage(2, 2)}\n\ndata: [DONE]\n\n`]);
    expect(report).toMatchObject({ end: "done", usage: { totalTokens: 4 } });
  });

  it("reads a last event the server did not end with a blank line, and ends it for the client too", async () => {
    const { report, forwarded } = await read([`data: ${usage(1, 1)}\n\ndata: [DONE]`]);
    expect(report.end).toBe("done");
    expect(forwarded.endsWith("data: [DONE]\n\n")).toBe(true);
  });

  it("forwards events that pass unchanged as the backend's own bytes, in the backend's line ends", async () => {
    const text = `: ping\r\ndata: ${content}\r\n\r\n`;
    const { forwarded } = await read([text, "data: [DONE]\r\r"], false);
    expect(forwarded).toBe(`${text}data: [DONE]\r\r`);
  });

  it("forwards `usage: null` chunks byte for byte, and still reads usage a chunk carries after a null one", async () => {
    const nullUsage = (text: string) =>
      JSON.stringify({ choices: [{ index: 0, delta: { content: text } }], usage: null }, null, 1).replaceAll("\n", " ");
    // A null `usage` and then, as JSON reads it, the one that counts.
    const tricky = `{"choices":[{"index":0,"delta":{"content":"b"}}],"usage":null,"usage":${JSON.stringify(usageOf(4, 5))}}`;
    const text = `data: ${nullUsage("a")}\n\ndata: ${nullUsage('say "usage"')}\n\ndata: ${tricky}\n\ndata: [DONE]\n\n`;
    const asked = await read([text]);
    expect(asked.forwarded).toBe(text);
    expect(asked.report).toMatchObject({ usage: { totalTokens: 9 } });
    const { forwarded, report } = await read([text], false);
    expect(report.usage?.totalTokens).toBe(9);
    // The client did not ask: the real usage goes, the null ones pass as they came.
    expect(forwarded.startsWith(`data: ${nullUsage("a")}\n\ndata: ${nullUsage('say "usage"')}\n\n`)).toBe(true);
    expect(forwarded).not.toContain("prompt_tokens");
  });

  it("removes a usage chunk the client did not ask for with the LF that ended it in the next chunk", async () => {
    const { forwarded, report } = await read(
      [`data: ${content}\r\rdata: ${usage(1, 2)}\r\r`, "\ndata: [DONE]\r\n\r\n"],
      false,
    );
    expect(report.usage?.totalTokens).toBe(3);
    expect(forwarded).toBe(`data: ${content}\r\rdata: [DONE]\r\n\r\n`);
  });
});

describe("the SSE meter's pass-through", () => {
  const content = (text: string, extra = "") =>
    `data: {"choices":[{"index":0,"delta":{"content":${JSON.stringify(text)}}}]${extra}}\n\n`;
  const read = (chunks: string[]) => meter(chunks.map(encode), false);

  it("reads the events it passed unread before a chunk that looked like usage but brought none", async () => {
    const { report, forwarded } = await read([
      // Read, for the `[DONE]` in its text; then two chunks that pass unread.
      content("x [DONE] "),
      content("a"),
      content("b"),
      // A `usage` without its counts: not usage, so what came before must be read after all.
      content("c", ',"usage":{"prompt_tokens":1}'),
    ]);
    expect(report).toMatchObject({ end: "backend_cut", usage: undefined, contentChunks: 4 });
    expect(report.generated().text).toBe("x [DONE] abc");
    // The client did not ask for usage: the field goes, as any `usage` that is not null does.
    expect(forwarded).toBe(content("x [DONE] ") + content("a") + content("b") + content("c"));
  });

  it("reads a long stream without usage in order, through chunks it must read and past what it keeps unread", async () => {
    const words = Array.from({ length: 3000 }, (_, i) => `w${i} `);
    // A word that reads like the end, mid-stream: that chunk goes through the framer.
    words[1500] = "[DONE] ";
    const chunks = words.map((word) => content(word));
    const { report, forwarded } = await read(chunks);
    expect(forwarded).toBe(chunks.join(""));
    expect(report).toMatchObject({ end: "backend_cut", usage: undefined, contentChunks: 3000 });
    expect(report.generated()).toEqual({ text: words.join(""), chunksBeyond: 0 });
  });

  it("drops what it passed unread once the usage comes, and still forwards every event as it came", async () => {
    const usage = `data: {"choices":[],"usage":${JSON.stringify(usageOf(2, 3))}}\n\n`;
    const { report, forwarded } = await meter(
      [content("a"), content("b"), usage, "data: [DONE]\n\n"].map(encode),
      true,
    );
    expect(report).toMatchObject({ end: "done", usage: { totalTokens: 5 } });
    expect(forwarded).toBe(`${content("a")}${content("b")}${usage}data: [DONE]\n\n`);
  });
});

describe("the SSE meter's checkpoints", () => {
  const chunk = (text: string) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: text } }] })}\n\n`;
  const encoder = new TextEncoder();
  const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  /** A stream of `gaps.length` content chunks, each sent after its gap (ms), then usage and `[DONE]`. */
  function spacedStream(gaps: number[]): ReadableStream<Uint8Array> {
    let i = 0;
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (i < gaps.length) {
          await sleep(gaps[i] as number);
          controller.enqueue(encoder.encode(chunk(`t${i++} `)));
          return;
        }
        controller.enqueue(encoder.encode(`data: ${JSON.stringify({ choices: [], usage: usageOf(3, i) })}\n\n`));
        controller.enqueue(encoder.encode("data: [DONE]\n\n"));
        controller.close();
      },
    });
  }

  async function checkpointsOf(gaps: number[], everyMs: number) {
    const seen: number[] = [];
    const body = meterEventStream(spacedStream(gaps), {
      clientWantsUsage: false,
      now: () => 0,
      onEnd: () => undefined,
      checkpoint: { everyMs, report: (progress) => seen.push(progress.contentChunks) },
    });
    await new Response(body).text();
    return seen;
  }

  it("reports what it has seen with the first chunk due, and again an interval after that report", async () => {
    // Chunks at about 0, 60, 120, 180, 240 and 300 ms; one report every 100 ms or more.
    const seen = await checkpointsOf([0, 60, 60, 60, 60, 60], 100);
    expect(seen.length).toBeGreaterThanOrEqual(1);
    expect(seen.length).toBeLessThanOrEqual(3);
    // Each report counts the chunk it came with, and the counts only grow.
    expect(seen[0]).toBeGreaterThanOrEqual(2);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
  });

  it("reports nothing for a stream shorter than an interval", async () => {
    expect(await checkpointsOf([0, 5, 5], 10_000)).toEqual([]);
  });
});
