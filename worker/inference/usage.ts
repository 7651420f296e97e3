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
}

const encoder = new TextEncoder();
const EVENT_BOUNDARY = /\r?\n\r?\n/;
const ENDS_AT_BOUNDARY = /\r?\n\r?\n$/;

function hasContent(payload: string): boolean {
  // Cheap test before any parsing: a delta or text with at least one character.
  return /"(content|text)":"[^"]/.test(payload);
}

/**
 * Forwards an SSE stream from an OpenAI-compatible backend event by event (never merging or
 * splitting events), watching for usage. When the client did not ask for usage, the usage-only
 * chunk the gateway requested is removed and `usage` fields are dropped from other chunks, so the
 * client sees what it asked for. A stream that ends without `[DONE]` or breaks is an error to the
 * client, never a clean end, and the report says so; a client that goes away cancels the backend.
 */
export function meterEventStream(
  upstream: ReadableStream<Uint8Array>,
  options: { clientWantsUsage: boolean; now: () => number; onEnd: (report: StreamReport) => void },
): ReadableStream<Uint8Array> {
  const reader = upstream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let usage: Usage | undefined;
  let contentChunks = 0;
  let sawDone = false;
  let firstByteAt: number | undefined;
  let ended = false;
  const finish = (end: StreamEnd) => {
    if (ended) return;
    ended = true;
    options.onEnd({ end, usage, contentChunks, firstByteAt });
  };

  /** Returns the event to forward (possibly rewritten), or undefined to drop it. */
  const processEvent = (event: string): string | undefined => {
    const dataLine = event.startsWith("data:") ? event : event.split(/\r?\n/).find((l) => l.startsWith("data:"));
    if (!dataLine) return event;
    const payload = dataLine.slice(5).trim();
    if (payload === "[DONE]") {
      sawDone = true;
      return event;
    }
    if (hasContent(payload)) contentChunks++;
    if (!payload.includes('"usage"')) return event;
    let chunk: Record<string, unknown>;
    try {
      chunk = JSON.parse(payload) as Record<string, unknown>;
    } catch {
      return event;
    }
    usage = readUsage(chunk) ?? usage;
    if (options.clientWantsUsage || chunk.usage === undefined || chunk.usage === null) return event;
    if (Array.isArray(chunk.choices) && chunk.choices.length === 0) return undefined;
    delete chunk.usage;
    return `data: ${JSON.stringify(chunk)}`;
  };

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
            buffer += decoder.decode();
            if (buffer.trim() !== "") {
              const out = processEvent(buffer.trim());
              if (out !== undefined) controller.enqueue(encoder.encode(`${out}\n\n`));
            }
            if (sawDone) {
              finish("done");
              controller.close();
            } else {
              finish("backend_cut");
              controller.error(new Error("the inference server ended the stream early"));
            }
            return;
          }
          const text = decoder.decode(result.value, { stream: true });
          if (buffer === "" && ENDS_AT_BOUNDARY.test(text) && (options.clientWantsUsage || !text.includes('"usage"'))) {
            // The common case: whole events that pass unchanged. Read them for the meter and
            // forward the backend's own bytes, as the backend wrote them.
            for (const event of text.split(EVENT_BOUNDARY)) if (event !== "") processEvent(event);
            firstByteAt ??= options.now();
            controller.enqueue(result.value);
            return;
          }
          buffer += text;
          const events = buffer.split(EVENT_BOUNDARY);
          buffer = events.pop() ?? "";
          let forwarded = false;
          for (const event of events) {
            if (event === "") continue;
            const out = processEvent(event);
            if (out === undefined) continue;
            firstByteAt ??= options.now();
            controller.enqueue(encoder.encode(`${out}\n\n`));
            forwarded = true;
          }
          if (forwarded) return;
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
