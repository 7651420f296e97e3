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

/** What the meter learned from a stream so far. */
export interface StreamProgress {
  /** The last usage the backend reported (never a sum: vLLM may repeat it on every chunk). */
  usage: Usage | undefined;
  /**
   * Chunks that carried generated text, about one token each on vLLM and TGI: counted until the
   * server reports usage, which makes the count needless (all of them, when the text is kept for
   * screening).
   */
  contentChunks: number;
  /** When the first byte went to the client, relative to `performance.now()`-style clocks. */
  firstByteAt: number | undefined;
  /**
   * The generated text the meter kept while no usage had come, for counting it with the model's
   * tokenizer (read after the stream, off the hot path): see {@link GeneratedText}.
   */
  generated(): GeneratedText;
}

/** What the meter learned from a stream, and how it ended. */
export interface StreamReport extends StreamProgress {
  end: StreamEnd;
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

/** `"usage": null` ending its member: the key OpenAI's streams carry on every chunk but the last. */
const USAGE_NULL = /"usage"\s*:\s*null\s*[,}]/;

/** A `"choices"` list with something in it. */
const LISTED_CHOICES = /"choices"\s*:\s*\[\s*[^\]\s]/;

/**
 * Whether an event that mentions `"usage"` can have none to read or change: its one `"usage"` is
 * `null` and its one `"choices"` lists something. Parsing it would find usage absent or null and
 * the chunk no usage-only chunk, and forward it as it came; OpenAI-style servers send one per token.
 */
const onlyNullUsage = (data: string) =>
  USAGE_NULL.test(data) &&
  data.indexOf('"usage"') === data.lastIndexOf('"usage"') &&
  data.indexOf('"choices"') === data.lastIndexOf('"choices"') &&
  LISTED_CHOICES.test(data);

const isDone = (data: string) => data === "[DONE]" || (data.length <= 32 && data.trim() === "[DONE]");

/**
 * What in a stream's text may be an event the meter must read before it goes out: `[DONE]`, a
 * `usage` that is not `null`, an empty `choices` list (a usage-only chunk), or a CR, a line end
 * the pass-through below does not split on. Text without any of these is whole events that pass
 * unchanged, or the start of one.
 */
const MAY_MATTER = /\[DONE\]|"usage"\s*:\s*[^\sn]|"choices"\s*:\s*\[\s*\]|\r/;

/** A `usage` that is not `null`: what the end of a stream brings, after which no text need be counted. */
const USAGE_VALUE = /"usage"\s*:\s*[^\sn]/;

/**
 * The most text of an event not yet complete that the pass-through carries to the next chunk; a
 * longer event is read by the framer, which never reads a character twice.
 */
const MAX_PARTIAL = 4096;

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
 * The stream's last events (the usage-only chunk and `[DONE]`, and anything after them) are held
 * back until the promise `onEnd` returns for a stream that ended well has settled: the client sees
 * the answer complete only once its usage is recorded. `checkpoint.report` is told what the meter
 * has seen while the stream runs, with the first chunk that comes `checkpoint.everyMs` or more after
 * the last report (or the stream's start), or on a timer when no chunk came: a stream that stalls
 * (its server slow, its client not reading) still says that it runs, or its quota object would
 * settle it as abandoned and free what it reserved while it may go on.
 *
 * Until usage comes, the text of each generated chunk is kept (escaped as it came, a regular
 * expression's match, no parsing), so a stream cut before its usage can be counted afterwards.
 *
 * Most of a stream is read no further than a regular expression's test: a chunk whose text shows
 * none of what the meter acts on ({@link MAY_MATTER}) goes out as it came, up to its last whole
 * event, and its events are kept unread ({@link MAX_KEPT_TEXT} characters at most; past that they
 * are read). They are read — for their text and chunks — only if the stream ends, is cut or
 * checkpoints before its usage comes: a stream that reports usage never reads the events before
 * it. The first chunk that may matter goes to the framer, which reads it event by event; once the
 * framer holds nothing back, chunks pass through unread again.
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
    /** A promise it returns, for a stream that ended well, holds the stream's last events back until it settles. */
    onEnd: (report: StreamReport) => unknown;
    /**
     * Keep the generated text (up to {@link MAX_KEPT_TEXT}) even once usage came, for a guard model
     * to screen after the stream; otherwise it is kept only until the server reports usage.
     */
    keepAllText?: boolean;
    checkpoint?: { everyMs: number; report: (progress: StreamProgress) => void };
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
  const keepAllText = options.keepAllText === true;
  const kept: string[] = [];
  let keptLength = 0;
  let chunksBeyond = 0;
  /** Whether chunks may pass through unread: not when the text is kept for screening, nor when every chunk is rewritten. */
  const canPass = !keepAllText && options.continuousUsageAdded !== true;
  let passing = canPass;
  /** Whole events that passed through unread, while no usage had come. */
  let unread: string[] = [];
  let unreadLength = 0;
  /** The text after the last whole event passed through: the start of an event, not yet gone out. */
  let partial = "";
  /** Keeps the text of a chunk that carries some; says whether it does. */
  const keepText = (data: string): boolean => {
    if (keptLength >= MAX_KEPT_TEXT) {
      if (!CARRIES_TEXT.test(data)) return false;
      chunksBeyond++;
      return true;
    }
    // An `exec` loop, not `matchAll`: this runs on every generated chunk, and the iterator costs twice as much.
    // A match is text carried; one pass of the regular expression both finds and keeps it.
    TEXT_VALUES.lastIndex = 0;
    let found = false;
    for (let match = TEXT_VALUES.exec(data); match !== null; match = TEXT_VALUES.exec(data)) {
      const value = match[1] ?? "";
      kept.push(value);
      keptLength += value.length;
      found = true;
    }
    // Text whose string never ends (no match to keep) still counts, as it always has.
    return found || CARRIES_TEXT.test(data);
  };
  const generated = (): GeneratedText => {
    try {
      return { text: JSON.parse(`"${kept.join("")}"`) as string, chunksBeyond };
    } catch {
      return { text: undefined, chunksBeyond };
    }
  };
  /** Counts an event's generated text and keeps it while it may be needed. */
  const count = (data: string) => {
    if (usage !== undefined && !keepAllText) return;
    if (keepText(data)) contentChunks++;
  };
  const catchUp = new EventStreamFramer((data) => {
    count(data);
    return undefined;
  });
  /**
   * Reads the events that passed through unread (each text whole events, read one by one: a
   * string joined from them costs more to read than they do), keeping their text at `at` in what
   * is kept: at its end, or before the text of a chunk that was read while they waited.
   */
  const readUnread = (at = kept.length) => {
    if (unread.length === 0) return;
    const texts = unread;
    unread = [];
    unreadLength = 0;
    const later = kept.splice(at);
    let laterLength = 0;
    for (const value of later) laterLength += value.length;
    keptLength -= laterLength;
    for (const text of texts) catchUp.push(text);
    for (const value of later) kept.push(value);
    keptLength += laterLength;
  };
  const progress = (): StreamProgress => {
    if (usage === undefined) readUnread();
    return { usage, contentChunks, firstByteAt, generated };
  };
  const checkpoint = options.checkpoint;
  /** When the next checkpoint is due, in the runtime's time (as a timer's); never without checkpoints. */
  let checkpointAt = checkpoint ? Date.now() + checkpoint.everyMs : Number.POSITIVE_INFINITY;
  /** Reports a checkpoint once one is due; the chunks that come call it, and a timer while none do. */
  const checkpointIfDue = () => {
    if (!checkpoint || ended) return;
    const now = Date.now();
    if (now < checkpointAt) return;
    checkpointAt = now + checkpoint.everyMs;
    checkpoint.report(progress());
  };
  let stallTimer: ReturnType<typeof setTimeout> | undefined;
  const onStall = () => {
    checkpointIfDue();
    stallTimer = ended ? undefined : setTimeout(onStall, Math.max(1, checkpointAt - Date.now()));
  };
  if (checkpoint) stallTimer = setTimeout(onStall, checkpoint.everyMs);
  const finish = (end: StreamEnd): unknown => {
    if (ended) return undefined;
    ended = true;
    if (stallTimer !== undefined) clearTimeout(stallTimer);
    return options.onEnd({ end, ...progress() });
  };
  /**
   * The stream's end is held back until its usage is recorded: from the usage-only chunk the client
   * sees, or `[DONE]`, on. `holdAt` is the first such event's data, until the text it came in is
   * split there; `held` is the text held back after that.
   */
  let holdAt: string | undefined;
  let held: string | undefined;
  /** The error a cut stream ends in, once what was held back has gone out. */
  let cut: Error | undefined;
  /** What of the framer's output goes to the client now; the rest is held back. */
  const release = (out: string): string => {
    if (held !== undefined) {
      held += out;
      return "";
    }
    if (holdAt === undefined) return out;
    // The held event starts at the line that carries (the first line of) its data.
    const at = out.indexOf(holdAt.split("\n", 1)[0] ?? holdAt);
    const lineStart = at < 0 ? 0 : Math.max(out.lastIndexOf("\n", at), out.lastIndexOf("\r", at)) + 1;
    held = out.slice(lineStart);
    return out.slice(0, lineStart);
  };
  const usageAsSent = options.clientWantsUsage && options.continuousUsageAdded !== true;

  /** What to forward in place of an event: undefined for the event as it came. */
  const framer = new EventStreamFramer((data) => {
    if (isDone(data)) {
      sawDone = true;
      holdAt ??= data;
      return undefined;
    }
    count(data);
    if (!data.includes('"usage"') || onlyNullUsage(data)) return undefined;
    let chunk: Record<string, unknown>;
    try {
      chunk = JSON.parse(data) as Record<string, unknown>;
    } catch {
      return undefined;
    }
    const reported = readUsage(chunk);
    // The count is known: the text is not needed (unless it is to be screened).
    if (reported !== undefined && usage === undefined && !keepAllText) {
      kept.length = 0;
      keptLength = 0;
      unread = [];
      unreadLength = 0;
    }
    usage = reported ?? usage;
    const usageOnly = Array.isArray(chunk.choices) && chunk.choices.length === 0;
    if (usageAsSent || chunk.usage === undefined || chunk.usage === null) {
      if (usageOnly) holdAt ??= data;
      return undefined;
    }
    if (options.clientWantsUsage) {
      if (usageOnly) {
        holdAt ??= data;
        return undefined;
      }
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
        if (cut) {
          controller.error(cut);
          return;
        }
        /** Ends the stream in an error, after what was held back (an error discards what is queued with it). */
        const fail = (error: Error) => {
          finish("backend_cut");
          if (!held) return controller.error(error);
          controller.enqueue(encoder.encode(held));
          held = "";
          cut = error;
        };
        for (;;) {
          let result: ReadableStreamReadResult<Uint8Array>;
          try {
            result = await reader.read();
          } catch (error) {
            fail(new Error(`upstream stream failed: ${String(error)}`));
            return;
          }
          if (result.done) {
            if (usage === undefined) readUnread();
            const tail = partial + decoder.decode();
            partial = "";
            const rest = release(framer.push(tail) + framer.end());
            if (rest !== "") controller.enqueue(encoder.encode(rest));
            if (sawDone) {
              await finish("done");
              try {
                if (held) controller.enqueue(encoder.encode(held));
                controller.close();
              } catch {
                // The client left while the usage was being recorded.
              }
            } else fail(new Error("the inference server ended the stream early"));
            return;
          }
          const bytes = result.value;
          const text = decoder.decode(bytes, { stream: true });
          const last = bytes[bytes.length - 1];
          const whole = decoderEmpty && (last === LF || last === CR);
          decoderEmpty = last !== undefined ? last < 0x80 : decoderEmpty;
          const buffer = partial === "" ? text : partial + text;
          /** Whole events that go out unread; the framer reads what follows them, if anything must be. */
          let passed = "";
          let rest: string | undefined = buffer;
          if (passing && partial.length < MAX_PARTIAL) {
            const match = MAY_MATTER.exec(buffer);
            // Up to the event with something to act on, or else up to the last whole event.
            const end = (match === null ? buffer.lastIndexOf("\n\n") : buffer.lastIndexOf("\n\n", match.index)) + 2;
            if (end >= 2) passed = end === buffer.length ? buffer : buffer.slice(0, end);
            if (match !== null) rest = end < 2 ? buffer : buffer.slice(end);
            else {
              rest = undefined;
              partial = end < 2 ? buffer : end === buffer.length ? "" : buffer.slice(end);
            }
            if (passed !== "" && usage === undefined) {
              unread.push(passed);
              unreadLength += passed.length;
              if (unreadLength >= MAX_KEPT_TEXT) readUnread();
            }
          }
          let out = passed;
          if (rest !== undefined) {
            // The events that passed unread came before these: they are read first, unless these
            // bring the usage that makes them needless (and then, should they not, after, their
            // text put before these events').
            const mark = kept.length;
            if (usage === undefined && !USAGE_VALUE.test(rest)) readUnread();
            partial = "";
            passing = false;
            const pushed = framer.push(rest);
            if (usage === undefined) readUnread(mark);
            const framed = holdAt === undefined ? pushed : release(pushed);
            // All of it unchanged is the very text given: `buffer`, or this chunk's own.
            out = passed === "" ? framed : framed === rest ? buffer : passed + framed;
            passing = canPass && holdAt === undefined && framer.idle();
          }
          checkpointIfDue();
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
