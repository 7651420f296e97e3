/**
 * `npm run bench:sse [-- --rounds 5 --events 60000 --baseline REF]`
 *
 * What the stream meter (`meterEventStream`) costs per streamed event, in Node, next to two peers
 * run the same way on the same bytes in the same run: a pass-through `TransformStream` (what any
 * proxy that reads nothing pays for the stream machinery) and the metering floor of
 * `bench/metering-worker.js` (a pull stream that decodes every chunk and looks for `"usage"`).
 *
 * The streams are shaped as vLLM and the backend simulator send them: a role chunk, N content
 * chunks of a few tokens each (some non-ASCII), a finish chunk, the usage-only chunk and
 * `[DONE]`, in three kinds: `vllm` (no usage field on the content chunks), `null` (`"usage":
 * null` on every chunk, as OpenAI and the simulator send when usage was asked for; the client
 * asked for it too) and `unreported` (no usage at all, so the meter keeps the generated text for
 * counting). Each arrives one event per read, or in 4 KiB reads cut anywhere (several events per
 * read, events split between reads).
 *
 * Each cell runs every peer over `--events` events per round, the peers taking turns going first;
 * the figure is CPU time (`process.cpuUsage`, user + system) per event, the median of the rounds,
 * and the ratios are medians of the ratios within a round. `--baseline REF` adds the meter of
 * another commit (its tree extracted as `bench:proxy --baseline` extracts it) as one more peer, and
 * this tree's meter over it.
 */

import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { meterEventStream } from "../worker/inference/usage";
import { baselineTree } from "./lib/baseline";

const { values: args } = parseArgs({
  options: {
    rounds: { type: "string", default: "5" },
    events: { type: "string", default: "60000" },
    sizes: { type: "string", default: "16,256,2048" },
    baseline: { type: "string" },
  },
});
const ROUNDS = Number(args.rounds);
const EVENTS = Number(args.events);
const SIZES = args.sizes.split(",").map(Number);

type Kind = "vllm" | "null" | "unreported";
type Delivery = "event" | "4KiB";

const TOKENS = [" the", " model", " answers", ",", " é", " and", " 🦙", " then", " stops", "."];
const encoder = new TextEncoder();

/** One stream's events, as the server writes them. */
function streamEvents(contentChunks: number, kind: Kind): string[] {
  const base = {
    id: "chatcmpl-8f2c1e3a9b7d4c6e8f0a1b2c",
    object: "chat.completion.chunk",
    created: 1_767_000_000,
    model: "meta-llama/Llama-2-7b-chat-hf",
  };
  const chunk = (choice: object) => {
    const event: Record<string, unknown> = { ...base, choices: [choice] };
    if (kind === "null") event.usage = null;
    return `data: ${JSON.stringify(event)}\n\n`;
  };
  const events = [chunk({ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null })];
  for (let i = 0; i < contentChunks; i++) {
    const content = TOKENS[i % TOKENS.length] ?? "";
    events.push(chunk({ index: 0, delta: { content }, logprobs: null, finish_reason: null }));
  }
  events.push(chunk({ index: 0, delta: {}, logprobs: null, finish_reason: "length" }));
  if (kind !== "unreported") {
    const usage = { prompt_tokens: 42, completion_tokens: contentChunks, total_tokens: 42 + contentChunks };
    events.push(`data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`);
  }
  events.push("data: [DONE]\n\n");
  return events;
}

/** The reads a stream arrives in. */
function reads(events: string[], delivery: Delivery): Uint8Array[] {
  if (delivery === "event") return events.map((event) => encoder.encode(event));
  const bytes = encoder.encode(events.join(""));
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += 4096) out.push(bytes.slice(i, i + 4096));
  return out;
}

/** A response body handing out the reads one per pull, as a socket does. */
function upstream(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let next = 0;
  return new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        const chunk = chunks[next++];
        if (chunk === undefined) controller.close();
        else controller.enqueue(chunk);
      },
    },
    { highWaterMark: 0 },
  );
}

/** The meter of `--baseline`'s commit. */
const baseline = args.baseline ? baselineTree(args.baseline) : undefined;
const meterBefore: typeof meterEventStream | undefined = baseline
  ? (
      (await import(
        pathToFileURL(join(baseline.root, "worker/inference/usage.ts")).href
      )) as typeof import("../worker/inference/usage")
    ).meterEventStream
  : undefined;

const decoder = new TextDecoder();
/** The reads the floor found usage in (it must find some, or it measured nothing). */
const floorReads = { usage: 0 };

/** The peers: what each does to a response body. */
const PEERS = {
  "pass-through": (body: ReadableStream<Uint8Array>) => body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>()),
  floor: (body: ReadableStream<Uint8Array>) => {
    const reader = body.getReader();
    return new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) {
            controller.close();
            return;
          }
          if (decoder.decode(value, { stream: true }).includes('"usage"')) floorReads.usage++;
          controller.enqueue(value);
        },
        cancel: (reason) => reader.cancel(reason),
      },
      { highWaterMark: 0 },
    );
  },
  meter: (body: ReadableStream<Uint8Array>) =>
    meterEventStream(body, { clientWantsUsage: true, now: () => 0, onEnd: () => Promise.resolve() }),
  before: (body: ReadableStream<Uint8Array>) =>
    (meterBefore ?? meterEventStream)(body, { clientWantsUsage: true, now: () => 0, onEnd: () => Promise.resolve() }),
} satisfies Record<string, (body: ReadableStream<Uint8Array>) => ReadableStream<Uint8Array>>;
type Peer = keyof typeof PEERS;

async function drain(stream: ReadableStream<Uint8Array>): Promise<number> {
  const reader = stream.getReader();
  let bytes = 0;
  for (let next = await reader.read(); !next.done; next = await reader.read()) bytes += next.value.length;
  return bytes;
}

/** CPU microseconds per event of `peer` over `streams` streams of `chunks`. */
async function measure(peer: Peer, chunks: Uint8Array[], events: number, streams: number): Promise<number> {
  const expected = chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  const before = process.cpuUsage();
  for (let i = 0; i < streams; i++) {
    const forwarded = await drain(PEERS[peer](upstream(chunks)));
    if (forwarded !== expected) throw new Error(`${peer} forwarded ${forwarded} bytes of ${expected}`);
  }
  const spent = process.cpuUsage(before);
  return (spent.user + spent.system) / (events * streams);
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
};

const peers = (Object.keys(PEERS) as Peer[]).filter((peer) => peer !== "before" || meterBefore !== undefined);
const rows: string[][] = [];
for (const kind of ["vllm", "null", "unreported"] as const) {
  for (const size of SIZES) {
    for (const delivery of ["event", "4KiB"] as const) {
      const events = streamEvents(size, kind);
      const chunks = reads(events, delivery);
      const streams = Math.max(1, Math.round(EVENTS / events.length));
      // A warm-up, so every peer runs optimized code.
      for (const peer of peers) await measure(peer, chunks, events.length, Math.max(1, streams >> 2));
      const perEvent: Record<Peer, number[]> = { "pass-through": [], floor: [], meter: [], before: [] };
      const ratios = { floor: [] as number[], pass: [] as number[], before: [] as number[] };
      for (let round = 0; round < ROUNDS; round++) {
        const order = peers.map((_, i) => peers[(i + round) % peers.length] as Peer);
        const got = {} as Record<Peer, number>;
        for (const peer of order) got[peer] = await measure(peer, chunks, events.length, streams);
        for (const peer of peers) perEvent[peer].push(got[peer]);
        ratios.floor.push(got.meter / got.floor);
        ratios.pass.push(got.meter / got["pass-through"]);
        if (meterBefore) ratios.before.push(got.meter / got.before);
      }
      rows.push([
        kind,
        String(size),
        delivery,
        ...peers.map((peer) => median(perEvent[peer]).toFixed(2)),
        `${median(ratios.floor).toFixed(2)}×`,
        `${median(ratios.pass).toFixed(2)}×`,
        ...(meterBefore ? [`${median(ratios.before).toFixed(2)}×`] : []),
      ]);
      console.error(rows.at(-1)?.join("  "));
    }
  }
}

if (floorReads.usage === 0) throw new Error("the floor never saw usage");

const header = [
  "stream",
  "chunks",
  "reads",
  "pass-through µs",
  "floor µs",
  "meter µs",
  ...(baseline ? [`${baseline.commit.slice(0, 7)} µs`] : []),
  "meter ÷ floor",
  "meter ÷ pass",
  ...(baseline ? [`meter ÷ ${baseline.commit.slice(0, 7)}`] : []),
];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? "").length)));
const line = (cells: string[]) => `| ${cells.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join(" | ")} |`;
console.log(`CPU per streamed event (Node ${process.version}, ${ROUNDS} rounds of about ${EVENTS} events per peer)`);
console.log(line(header));
console.log(line(widths.map((w) => "-".repeat(w))));
for (const row of rows) console.log(line(row));
