/**
 * Counting tokens the way a model's own server does, for the answers whose server reported no
 * usage (a stream cut before its usage chunk, a client that hung up, a server that sends none).
 * The reservation's bound (`token-bound.ts`) is deliberately high — two or more times the real
 * count — so billing it would overbill; this counts what the server itself would have counted.
 *
 * It runs in `waitUntil`, never before the first byte: once the answer is done, in the settlement,
 * and for a long stream's checkpoints, which count its prompt (once) but not its text. The
 * tokenizer (Llama 2's SentencePiece, with its vocabulary embedded) is loaded on first use only,
 * so isolates that never need it never pay for it.
 */

import { TEMPLATE_TOKENS_PER_PROMPT, utf8ByteLength } from "./token-bound";

/** What the counter reads of a completion request (the schemas accepted it). */
export interface CountedRequest {
  messages?: readonly unknown[];
  prompt?: unknown;
}

/** Counts a model family's tokens; see {@link tokenCounterFor}. */
export interface TokenCounter {
  /**
   * The prompt's tokens as the server renders and tokenizes it: every prompt of a list together,
   * special tokens included. Undefined for a prompt of a shape it cannot render.
   */
  prompt(request: CountedRequest): Promise<number | undefined>;
  /** The tokens of generated text (each text a sequence of its own, say one per choice). */
  generated(texts: readonly string[]): Promise<number>;
  /**
   * A figure never below what `generated` counts for the same texts, worked out without the
   * tokenizer: for a running stream's checkpoints, which would otherwise count the text so far
   * again every few seconds, at a cost that grows with the stream.
   */
  generatedAtMost(texts: readonly string[]): number;
}

/** One request's counter: the prompt's count is kept once made; see {@link requestTokenCounter}. */
export interface RequestTokenCounter extends Omit<TokenCounter, "prompt"> {
  /** The request's prompt tokens, as {@link TokenCounter.prompt} counts them. */
  prompt(): Promise<number | undefined>;
}

/**
 * The most characters counted of one request's prompts, or of one answer's text. Llama 2's
 * context is 4,096 tokens, and no token spans more than 16 characters, so a chat prompt its
 * server accepted is shorter than this; a longer one is counted to here, which is less than its
 * real count, never more. The prompts of a completions list share it, and those past it are
 * billed at their bound. It bounds the CPU time counting takes (about 0.3 s at this size).
 */
export const MAX_COUNTED_CHARS = 65_536;

/** Text tokenized in one go between yields, so other requests of the isolate keep streaming. */
const PIECE_CHARS = 4_096;

/** Special tokens the Llama 2 tokenizer reads as themselves wherever they appear in a text. */
const SPECIAL = /<\/?s>/g;

interface Encoder {
  encode(text: string, addBos?: boolean, addPrecedingSpace?: boolean): number[];
}

let loading: Promise<Encoder> | undefined;

/** Llama 2's tokenizer, loaded (and its vocabulary decoded, about 60 ms) on first use. */
function llamaTokenizer(): Promise<Encoder> {
  loading ??= import("llama-tokenizer-js").then((module) => module.default);
  return loading;
}

const yieldToOthers = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/**
 * The tokens of one text between special tokens, as SentencePiece counts it: with the "▁" it
 * puts before a text when `precedingSpace` (Llama 2's normalizer does so before each such text).
 * Long texts are split after line ends: a line end is a byte-fallback token that never merges,
 * so the pieces' counts add up to the whole's.
 */
async function encodedLength(encoder: Encoder, text: string, precedingSpace: boolean): Promise<number> {
  let tokens = 0;
  let start = 0;
  while (start < text.length) {
    let end = text.length;
    if (end - start > PIECE_CHARS) {
      const lineEnd = text.lastIndexOf("\n", start + PIECE_CHARS);
      const next = lineEnd >= start ? lineEnd : text.indexOf("\n", start + PIECE_CHARS);
      if (next !== -1) end = next + 1;
    }
    tokens += encoder.encode(text.slice(start, end), false, precedingSpace && start === 0).length;
    start = end;
    if (start < text.length) await yieldToOthers();
  }
  return tokens;
}

/** A text as the server tokenizes it: `<s>` and `</s>` as one token each, the rest as text. */
async function renderedLength(encoder: Encoder, text: string): Promise<number> {
  let tokens = 0;
  let from = 0;
  for (const special of text.matchAll(SPECIAL)) {
    if (special.index > from) tokens += await encodedLength(encoder, text.slice(from, special.index), true);
    tokens++;
    from = special.index + special[0].length;
  }
  if (from < text.length) tokens += await encodedLength(encoder, text.slice(from), true);
  return tokens;
}

/** A message's text: a string, or its text parts joined by line ends (as vLLM joins them for a text-only template). */
function messageText(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  const texts: string[] = [];
  for (const part of content) {
    if (typeof part !== "object" || part === null || !Object.hasOwn(part, "text")) continue;
    const text = (part as { text: unknown }).text;
    if (typeof text === "string") texts.push(text);
  }
  return texts.join("\n");
}

function ownString(value: unknown, key: string): unknown {
  return typeof value === "object" && value !== null && Object.hasOwn(value, key)
    ? (value as Record<string, unknown>)[key]
    : undefined;
}

/**
 * A conversation as Llama 2's chat template (its `tokenizer_config.json`) renders it: a leading
 * system message goes into the first turn, `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]`;
 * then `<s>[INST] {user} [/INST]` for each user turn and ` {assistant} </s>` for each answer,
 * contents stripped. Other roles render nothing, as in the template (which refuses most of them:
 * such a request fails at the server and is never billed).
 */
export function renderLlama2Chat(messages: readonly unknown[]): string {
  let turns = messages;
  let system: string | undefined;
  if (ownString(messages[0], "role") === "system") {
    system = messageText(ownString(messages[0], "content"));
    turns = messages.slice(1);
  }
  let text = "";
  turns.forEach((message, index) => {
    const role = ownString(message, "role");
    let content = messageText(ownString(message, "content"));
    if (index === 0 && system !== undefined) content = `<<SYS>>\n${system}\n<</SYS>>\n\n${content}`;
    if (role === "user") text += `<s>[INST] ${content.trim()} [/INST]`;
    else if (role === "assistant") text += ` ${content.trim()} </s>`;
  });
  return text;
}

/** Text cut to the counted length, never through a surrogate pair. */
function capped(text: string, budget: number): string {
  if (text.length <= budget) return text;
  const last = text.charCodeAt(budget - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? budget - 1 : budget);
}

/** The non-empty texts, or their beginnings, that fit together in `MAX_COUNTED_CHARS`, in order. */
function* countedTexts(texts: readonly string[]): Generator<string> {
  let budget = MAX_COUNTED_CHARS;
  for (const text of texts) {
    if (budget === 0) return;
    const counted = capped(text, budget);
    budget -= counted.length;
    if (counted !== "") yield counted;
  }
}

const llama2Counter: TokenCounter = {
  async prompt(request) {
    const encoder = await llamaTokenizer();
    if (Array.isArray(request.messages)) {
      // Chat prompts carry their own <s>: the server adds no other.
      return renderedLength(encoder, capped(renderLlama2Chat(request.messages), MAX_COUNTED_CHARS));
    }
    const prompt = request.prompt;
    const prompts = Array.isArray(prompt) && !prompt.every((p) => typeof p === "number") ? prompt : [prompt];
    let tokens = 0;
    // The budget is the request's, not each prompt's: each prompt of a list has a context of its
    // own, so per-prompt caps would let one body of many prompts cost seconds of CPU. A prompt
    // that no longer fits is billed at its bound instead, which is never below its real count.
    let budget = MAX_COUNTED_CHARS;
    for (const one of prompts) {
      if (Array.isArray(one))
        tokens += one.length; // token ids: already counted
      else if (typeof one !== "string") return undefined;
      else if (one.length <= budget) {
        // A completions prompt gets the <s> the tokenizer adds itself.
        tokens += 1 + (await renderedLength(encoder, one));
        budget -= one.length;
      } else {
        tokens += utf8ByteLength(one) + TEMPLATE_TOKENS_PER_PROMPT;
        budget = 0;
      }
    }
    return tokens;
  },

  async generated(texts) {
    const encoder = await llamaTokenizer();
    let tokens = 0;
    // The first token of an answer is usually "▁word", which the server's detokenizer shows
    // without its space; text that kept its space (a completion's continuation) gets no other.
    for (const counted of countedTexts(texts)) {
      tokens += await encodedLength(encoder, counted, !counted.startsWith(" "));
    }
    return tokens;
  },

  generatedAtMost(texts) {
    let tokens = 0;
    // The tokenizer starts from one token per character, or per byte of a character outside its
    // vocabulary, with the "▁" it may put first as one more, and merges only ever lessen that.
    for (const counted of countedTexts(texts)) tokens += utf8ByteLength(counted) + (counted.startsWith(" ") ? 0 : 1);
    return tokens;
  },
};

/**
 * The counter for a model family's tokenizer, or undefined when the gateway has none for it
 * (then the reservation's bound stands, as it did before any counter existed).
 */
export function tokenCounterFor(familyId: string): TokenCounter | undefined {
  return familyId === "llama-2" ? llama2Counter : undefined;
}

/**
 * The counter of one request's tokens, or undefined when the gateway has none for its family. Its
 * prompt is tokenized on the first ask only (about 0.3 s at the counted length's limit), so a long
 * stream's checkpoints and its settlement share one count, however long the stream runs.
 */
export function requestTokenCounter(familyId: string, request: CountedRequest): RequestTokenCounter | undefined {
  const counter = tokenCounterFor(familyId);
  if (!counter) return undefined;
  let prompt: Promise<number | undefined> | undefined;
  return {
    prompt: () => {
      prompt ??= counter.prompt(request);
      return prompt;
    },
    generated: (texts) => counter.generated(texts),
    generatedAtMost: (texts) => counter.generatedAtMost(texts),
  };
}
