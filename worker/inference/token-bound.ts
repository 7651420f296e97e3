/**
 * The most tokens a completion request can cost, known before it is sent: what its quota
 * reservation holds. It must be a true upper bound, never an estimate: a backend that reports
 * more than was reserved is charged in full, past the organization's limit.
 *
 * The prompt's bound rests on how Llama 2's tokenizer works: SentencePiece with byte fallback
 * turns every character into at least one byte's worth of text per token (a character it knows
 * is one token at most, one it does not is one token per UTF-8 byte), so a text never makes more
 * tokens than it has UTF-8 bytes.
 */

/**
 * Tokens Llama 2's chat template adds around one message, at most. A user turn renders as
 * `<s>[INST] {content} [/INST]`: BOS, the 15 bytes of `[INST] ` and ` [/INST]`, and the "▁" the
 * tokenizer puts before each text between special tokens (17); an assistant turn as
 * ` {content} </s>`: 2 bytes, EOS and a "▁" (4); a system message as
 * `<<SYS>>\n{content}\n<</SYS>>\n\n` inside the first user turn: 19 bytes. The largest, 19, is
 * rounded up to leave a margin that costs a reservation next to nothing.
 */
export const TEMPLATE_TOKENS_PER_MESSAGE = 24;

/**
 * Tokens a prompt gets beyond its text and its messages' wrappers: the BOS a tokenizer adds
 * itself when the template did not (a completions prompt), and the "▁" before its first text.
 */
export const TEMPLATE_TOKENS_PER_PROMPT = 2;

/** What the bound reads of a request the schemas accepted. */
export interface BoundedRequest {
  messages?: readonly unknown[];
  prompt?: unknown;
  tools?: unknown;
  functions?: unknown;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  n?: number | null;
}

/** A request's worst case, in tokens. */
export interface TokenBound {
  /** Every prompt's tokens together, at most. */
  prompt: number;
  /** The most tokens one generated sequence may have: what the backend is told as `max_tokens`. */
  completionLimit: number;
  /** Every sequence's tokens together, at most: `completionLimit` × `n` × prompts. */
  completion: number;
  /** `prompt` + `completion`: what the request reserves. */
  total: number;
}

/**
 * The UTF-8 length of `text`, counted without encoding it. A lone surrogate is encoded as
 * U+FFFD, three bytes.
 */
export function utf8ByteLength(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) bytes += 1;
    else if (unit < 0x800) bytes += 2;
    else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * A bound on the bytes of any text a template renders from `value`: with `asJson`, as JSON with
 * `tojson`'s ", " and ": " separators (keys, quotes, brackets and escapes included); otherwise
 * its strings and numbers, each with a separator (a template that joins text parts puts one
 * between them). Walked with a stack of its own, as decoded JSON may nest deeper than the call
 * stack goes.
 */
function renderedBytes(value: unknown, asJson = false): number {
  let bytes = 0;
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const next = pending.pop();
    if (typeof next === "string") bytes += (asJson ? jsonStringBytes(next) : utf8ByteLength(next)) + 1;
    else if (typeof next === "number") bytes += String(next).length + 2;
    else if (Array.isArray(next)) {
      bytes += 2;
      for (const item of next) pending.push(item);
    } else if (typeof next === "object" && next !== null) {
      bytes += 2;
      for (const [key, item] of Object.entries(next)) {
        if (asJson) bytes += jsonStringBytes(key) + 2;
        pending.push(item);
      }
    } else bytes += 7; // true, false, null: at most `false` and a separator
  }
  return bytes;
}

/** A string's length as a JSON literal: quotes, and six bytes for a character that needs a `\u` escape. */
function jsonStringBytes(text: string): number {
  let bytes = utf8ByteLength(text) + 2;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x20 || unit === 0x22 || unit === 0x5c) bytes += 5;
  }
  return bytes;
}

/** The prompts of a completions request: a text, texts, one list of token ids, or lists of them. */
function completionPrompts(prompt: unknown): { count: number; tokens: number } {
  if (!Array.isArray(prompt)) return { count: 1, tokens: renderedBytes(prompt) + TEMPLATE_TOKENS_PER_PROMPT };
  // A list of numbers is one prompt, already in tokens.
  if (prompt.length > 0 && prompt.every((p) => typeof p === "number")) return { count: 1, tokens: prompt.length };
  let tokens = 0;
  for (const p of prompt) tokens += Array.isArray(p) ? p.length : renderedBytes(p) + TEMPLATE_TOKENS_PER_PROMPT;
  // An empty list is refused by the backend; it is counted as one prompt, never as none.
  return { count: Math.max(1, prompt.length), tokens };
}

/**
 * The most tokens `request` can cost: its prompts' bytes and template wrappers, plus the larger
 * of `max_tokens` and `max_completion_tokens` (backends honour one or the other; absent, the
 * gateway's default) for each of the `n` sequences of each prompt.
 */
export function tokenBound(request: BoundedRequest, defaultMaxTokens: number): TokenBound {
  let prompt: number;
  let prompts = 1;
  if (Array.isArray(request.messages)) {
    prompt = TEMPLATE_TOKENS_PER_PROMPT + request.messages.length * TEMPLATE_TOKENS_PER_MESSAGE;
    for (const message of request.messages) prompt += renderedBytes(message);
    // Llama 2's template leaves tools out; a template that takes them renders them as JSON.
    if (request.tools != null) prompt += renderedBytes(request.tools, true);
    if (request.functions != null) prompt += renderedBytes(request.functions, true);
  } else {
    const completions = completionPrompts(request.prompt);
    prompt = completions.tokens;
    prompts = completions.count;
  }
  const completionLimit = Math.max(request.max_tokens ?? 0, request.max_completion_tokens ?? 0) || defaultMaxTokens;
  const completion = completionLimit * (request.n ?? 1) * prompts;
  return { prompt, completionLimit, completion, total: prompt + completion };
}
