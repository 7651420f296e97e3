/**
 * One request at a time over one kept-alive connection, timed with the monotonic clock to the
 * microsecond: autocannon's histograms count whole milliseconds, too coarse for "no more than
 * 0.5 ms added". For streams it also notes when the first token arrived and checks that every
 * token came as its own SSE event, in order, before `[DONE]`.
 */
import { Agent, request } from "node:http";
import type { TargetRequest } from "./targets";

/** What one sequential run saw. */
export interface SequentialResult {
  requests: number;
  failures: number;
  /** Whole-response times, ms. */
  latencies: number[];
  /** Time to the first token event, ms (streams only). */
  ttfts: number[];
  /** Streams whose token events were exactly `tok0 ` … `tok<n-1> `, one per event, then `[DONE]`. */
  streamsIntact: number;
  /** Streams whose last token came at least half the paced generation time after the first: not buffered. */
  streamsIncremental: number;
  /** The first problem seen, to print. */
  firstProblem?: string;
}

interface OneResponse {
  status: number;
  totalMs: number;
  firstTokenMs?: number;
  lastTokenMs?: number;
  events: string[];
}

function send(agent: Agent, req: TargetRequest, timeoutMs: number): Promise<OneResponse> {
  return new Promise((done, fail) => {
    const started = process.hrtime.bigint();
    const elapsed = () => Number(process.hrtime.bigint() - started) / 1e6;
    const out = request(
      req.url,
      { method: "POST", agent, headers: { ...req.headers, "content-length": Buffer.byteLength(req.body) } },
      (res) => {
        const events: string[] = [];
        let buffer = "";
        let firstTokenMs: number | undefined;
        let lastTokenMs: number | undefined;
        res.setEncoding("utf8");
        res.on("data", (text: string) => {
          buffer += text;
          for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            events.push(event);
            if (event.includes('"content":"tok')) {
              const at = elapsed();
              firstTokenMs ??= at;
              lastTokenMs = at;
            }
          }
        });
        res.on("end", () => {
          if (buffer.trim()) events.push(buffer);
          done({ status: res.statusCode ?? 0, totalMs: elapsed(), firstTokenMs, lastTokenMs, events });
        });
        res.on("error", fail);
      },
    );
    out.setTimeout(timeoutMs, () => out.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    out.on("error", fail);
    out.end(req.body);
  });
}

/** Token contents of the SSE events, or why the stream is not one token per event. */
function checkStream(events: string[], maxTokens: number): string | undefined {
  const tokens: string[] = [];
  let done = false;
  for (const event of events) {
    if (!event.startsWith("data: ")) return `an event that is not a data line: ${event.slice(0, 80)}`;
    const data = event.slice(6);
    if (data === "[DONE]") {
      done = true;
      continue;
    }
    if (done) return "events after [DONE]";
    const chunk = JSON.parse(data) as { choices?: { delta?: { content?: string } }[] };
    const content = chunk.choices?.[0]?.delta?.content;
    if (content) tokens.push(content);
  }
  if (!done) return "no [DONE]";
  const expected = Array.from({ length: maxTokens }, (_, i) => `tok${i} `);
  if (tokens.join("|") !== expected.join("|")) {
    return `token events ${JSON.stringify(tokens.slice(0, 4))}… (${tokens.length}), expected ${maxTokens} single tokens in order`;
  }
  return undefined;
}

/**
 * Sends `build()` one at a time until `durationMs` has passed or `maxRequests` were sent.
 * `pacedGenerationMs`, for paced streams, is how long the backend takes from first to last token.
 */
export async function runSequential(
  build: () => TargetRequest,
  options: { durationMs: number; maxRequests: number; stream: boolean; maxTokens: number; pacedGenerationMs?: number },
): Promise<SequentialResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const result: SequentialResult = {
    requests: 0,
    failures: 0,
    latencies: [],
    ttfts: [],
    streamsIntact: 0,
    streamsIncremental: 0,
  };
  const deadline = performance.now() + options.durationMs;
  try {
    while (performance.now() < deadline && result.requests < options.maxRequests) {
      result.requests++;
      let res: OneResponse;
      try {
        res = await send(agent, build(), 30_000);
      } catch (error) {
        result.failures++;
        result.firstProblem ??= (error as Error).message;
        continue;
      }
      if (res.status !== 200) {
        result.failures++;
        result.firstProblem ??= `HTTP ${res.status}: ${res.events.join(" ").slice(0, 200)}`;
        continue;
      }
      result.latencies.push(res.totalMs);
      if (!options.stream) continue;
      if (res.firstTokenMs !== undefined) result.ttfts.push(res.firstTokenMs);
      const problem = checkStream(res.events, options.maxTokens);
      if (problem) result.firstProblem ??= problem;
      else result.streamsIntact++;
      if (
        options.pacedGenerationMs !== undefined &&
        res.firstTokenMs !== undefined &&
        res.lastTokenMs !== undefined &&
        res.lastTokenMs - res.firstTokenMs >= options.pacedGenerationMs / 2
      ) {
        result.streamsIncremental++;
      }
    }
  } finally {
    agent.destroy();
  }
  return result;
}

/** The p-th percentile (0–100) of `values`, nearest rank; NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}
