import { EventStreamFramer } from "./event-stream";

/** Token counts as OpenAI-compatible servers report them. */
export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** Reads the `usage` object of an OpenAI-format response or chunk, if it has a complete one. */
export function readUsage(value: unknown): Usage | undefined {
  const usage = (value as { usage?: Record<string, unknown> } | null)?.usage;
  if (!usage || typeof usage !== "object") return undefined;
  const prompt = usage.prompt_tokens;
  const completion = usage.completion_tokens;
  if (typeof prompt !== "number" || typeof completion !== "number") return undefined;
  const total = typeof usage.total_tokens === "number" ? usage.total_tokens : prompt + completion;
  return { promptTokens: prompt, completionTokens: completion, totalTokens: total };
}

/** How a stream ended, as the meter saw it. */
export type StreamEnd = "done" | "backend_cut" | "client_closed";

/** What the meter learned from a stream. */
export interface StreamReport {
  end: StreamEnd;
  /** The last usage the backend reported (never a sum: vLLM may repeat it on every chunk). */
  usage: Usage | undefined;
  /** Chunks that carried generated text: about one token each on vLLM and TGI. */
  contentChunks: number;
  /** When the first byte went to the client, relative to `performance.now()`-style clocks. */
  firstByteAt: number | undefined;
  /**
   * The generated text the meter kept while no usage had come, for counting it with the model's
   * tokenizer (read after the stream, off the hot path): see {@link GeneratedText}.
   */
  generated(): GeneratedText;
}

/**
 * The text of a stream's content, tool-call and reasoning deltas, every choice's in the order
 * they came. At most {@link MAX_KEPT_TEXT} characters are kept; the text chunks past that are
 * only counted, in `chunksBeyond`. `text` is undefined when the kept text could not be read.
 */
export interface GeneratedText {
  text: string | undefined;
  chunksBeyond: number;
}

/** The most generated text a stream keeps for counting: about 16,000 tokens of English, 64 KiB. */
export const MAX_KEPT_TEXT = 65_536;

const encoder = new TextEncoder();
const LF = 10;
const CR = 13;

/** Whether an event's data carries generated text (or tool-call arguments, or reasoning): a cheap test before any parsing. */
const CARRIES_TEXT = /"(?:content|text|arguments|reasoning_content|reasoning)"\s*:\s*"[^"]/;

/** The (JSON-escaped) strings of an event's generated text, read without parsing the event. */
const TEXT_VALUES = /"(?:content|text|arguments|reasoning_content|reasoning)"\s*:\s*"((?:[^"\\]|\\.)+)"/g;

const isDone = (data: string) => data === "[DONE]" || (data.length <= 32 && data.trim() === "[DONE]");

/**
 * Forwards an SSE stream from an OpenAI-compatible backend event by event (never merging or
 * splitting events), watching for usage; events are framed by the WHATWG rules
 * ({@link EventStreamFramer}). When the client did not ask for usage, the usage-only chunk the
 * gateway requested is removed and `usage` fields are dropped from other chunks, so the client
 * sees what it asked for; when it asked for usage and the gateway asked the server for usage on
 * every chunk besides, the other chunks' usage reads `null`, as OpenAI sends it. A stream
 * that ends without `[DONE]` or breaks is an error to the client, never a clean end, and the
 * report says so; a client that goes away cancels the backend.
 *
 * Until usage comes, the text of each generated chunk is kept (escaped as it came, a regular
 * expression's match, no parsing), so a stream cut before its usage can be counted afterwards.
 */
export function meterEventStream(
  upstream: ReadableStream<Uint8Array>,
  options: {
    clientWantsUsage: boolean;
    /**
     * The gateway, not the client, asked the server for usage on every chunk (vLLM's
     * `stream_options.continuous_usage_stats`): only the usage-only chunk may reach a client
     * that asked for usage.
     */
    continuousUsageAdded?: boolean;
    now: () => number;
    onEnd: (report: StreamReport) => void;
  },
): ReadableStream<Uint8Array> {
  const reader = upstream.getReader();
  const decoder = new TextDecoder();
  let usage: Usage | undefined;
  let contentChunks = 0;
  let sawDone = false;
  let firstByteAt: number | undefined;
  let ended = false;
  /** The last chunk's bytes ended in ASCII, so the decoder holds none of them back. */
  let decoderEmpty = true;
  const kept: string[] = [];
  let keptLength = 0;
  let chunksBeyond = 0;
  const keepText = (data: string) => {
    if (keptLength >= MAX_KEPT_TEXT) {
      chunksBeyond++;
      return;
    }
    // An `exec` loop, not `matchAll`: this runs on every generated chunk, and the iterator costs twice as much.
    TEXT_VALUES.lastIndex = 0;
    for (let match = TEXT_VALUES.exec(data); match !== null; match = TEXT_VALUES.exec(data)) {
      const value = match[1] ?? "";
      kept.push(value);
      keptLength += value.length;
    }
  };
  const generated = (): GeneratedText => {
    try {
      return { text: JSON.parse(`"${kept.join("")}"`) as string, chunksBeyond };
    } catch {
      return { text: undefined, chunksBeyond };
    }
  };
  const finish = (end: StreamEnd) => {
    if (ended) return;
    ended = true;
    options.onEnd({ end, usage, contentChunks, firstByteAt, generated });
  };
  const usageAsSent = options.clientWantsUsage && options.continuousUsageAdded !== true;

  /** What to forward in place of an event: undefined for the event as it came. */
  const framer = new EventStreamFramer((data) => {
    if (isDone(data)) {
      sawDone = true;
      return undefined;
    }
    if (CARRIES_TEXT.test(data)) {
      contentChunks++;
      if (usage === undefined) keepText(data);
    }
    if (!data.includes('"usage"')) return undefined;
    let chunk: Record<string, unknown>;
    try {
      chunk = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return undefined;
    }
    const reported = readUsage(chunk);
    if (reported !== undefined && usage === undefined) kept.length = 0; // the count is known: the text is not needed
    usage = reported ?? usage;
    if (usageAsSent || chunk.usage === undefined || chunk.usage === null) return undefined;
    const usageOnly = Array.isArray(chunk.choices) && chunk.choices.length === 0;
    if (options.clientWantsUsage) {
      if (usageOnly) return undefined;
      chunk.usage = null;
    } else {
      if (usageOnly) return "";
      delete chunk.usage;
    }
    return `data: ${JSON.stringify(chunk)}\n\n`;
  });

  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        for (;;) {
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await reader.read();
          } catch (error) {
            finish("backend_cut");
            controller.error(new Error(`upstream stream failed: ${String(error)}`));
            return;
          }
          if (result.done) {
            const rest = framer.push(decoder.decode()) + framer.end();
            if (rest !== "") controller.enqueue(encoder.encode(rest));
            if (sawDone) {
              finish("done");
              controller.close();
            } else {
              finish("backend_cut");
              controller.error(new Error("the inference server ended the stream early"));
            }
            return;
          }
          const bytes = result.value;
          const text = decoder.decode(bytes, { stream: true });
          const out = framer.push(text);
          const last = bytes[bytes.length - 1];
          const whole = decoderEmpty && (last === LF || last === CR);
          decoderEmpty = last !== undefined ? last < 0x80 : decoderEmpty;
          if (out === "") continue;
          firstByteAt ??= options.now();
          // The common case: whole events that pass unchanged go out as the backend's own bytes.
          controller.enqueue(whole && out === text ? bytes : encoder.encode(out));
          return;
        }
      },
      async cancel(reason) {
        finish("client_closed");
        await reader.cancel(reason).catch(() => undefined);
      },
    },
    { highWaterMark: 0 },
  );
}
