/**
 * The most tokens a completion request can cost, known before it is sent: what its quota
 * reservation holds. It must be a true upper bound, never an estimate: a backend that reports
 * more than was reserved is charged in full, past the organization's limit.
 *
 * The prompt's bound rests on how the tokenizers work: Llama 2's SentencePiece with byte fallback
 * turns every character into at least one byte's worth of text per token (a character it knows
 * is one token at most, one it does not is one token per UTF-8 byte), and Llama 3.x's byte-level
 * BPE makes no token shorter than a byte, so a text never makes more tokens than it has UTF-8
 * bytes. What is bounded is therefore the bytes of the text the template renders, at its worst:
 * a text it prints through `tojson` counts as fully escaped, and the fixed text it adds (Llama
 * 3.x's system header and tool instructions) as an allowance per family.
 */

/**
 * Tokens Llama 2's chat template adds around one message, at most. A user turn renders as
 * `<s>[INST] {content} [/INST]`: BOS, the 15 bytes of `[INST] ` and ` [/INST]`, and the "▁" the
 * tokenizer puts before each text between special tokens (17); an assistant turn as
 * ` {content} </s>`: 2 bytes, EOS and a "▁" (4); a system message as
 * `<<SYS>>\n{content}\n<</SYS>>\n\n` inside the first user turn: 19 bytes. The largest, 19, is
 * rounded up to leave a margin that costs a reservation next to nothing. Llama 3.x's wrapper is
 * smaller: `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`, three special
 * tokens and a line break besides the role (counted with the message), or for a tool's output
 * the 7 bytes of `ipython` more.
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
 * A bound on the bytes of the text a template prints from `value` as it is: its strings and
 * numbers, each with a separator (a template that joins text parts puts one between them). Walked
 * with a stack of its own, as decoded JSON may nest deeper than the call stack goes.
 */
function renderedBytes(value: unknown): number {
  let bytes = 0;
  const pending: unknown[] = [value];
  while (pending.length > 0) {
    const next = pending.pop();
    if (typeof next === "string") bytes += utf8ByteLength(next) + 1;
    else if (typeof next === "number") bytes += String(next).length + 2;
    else if (Array.isArray(next)) {
      bytes += 2;
      for (const item of next) pending.push(item);
    } else if (typeof next === "object" && next !== null) {
      bytes += 2;
      for (const item of Object.values(next)) pending.push(item);
    } else bytes += 7; // true, false, null: at most `false` and a separator
  }
  return bytes;
}

/**
 * The most bytes one UTF-16 unit of a string takes in a template's `tojson`: `\uXXXX`. Python's
 * `json.dumps` escapes every control character so and, unless told otherwise, every non-ASCII one
 * (a character beyond the BMP as two); Jinja's own filter escapes `<`, `>`, `&` and `'` too.
 */
const ESCAPED_UNIT_BYTES = 6;

/** Whether a UTF-16 unit stays one byte in every `tojson`: printable ASCII that nothing escapes. */
function plainJsonUnit(unit: number): boolean {
  if (unit < 0x20 || unit >= 0x7f) return false;
  return unit !== 0x22 && unit !== 0x5c && unit !== 0x3c && unit !== 0x3e && unit !== 0x26 && unit !== 0x27;
}

/** A string's worst length as a JSON literal: its quotes, and six bytes for any unit that may be escaped. */
function jsonStringBytes(text: string): number {
  let bytes = 2;
  for (let i = 0; i < text.length; i++) bytes += plainJsonUnit(text.charCodeAt(i)) ? 1 : ESCAPED_UNIT_BYTES;
  return bytes;
}

/**
 * A bound on the bytes of `value` as a template's `tojson` prints it: Python's separators (", "
 * and ": "), every string escaped at its worst, and with `indent` the line end and four spaces per
 * level that `tojson(indent=4)` puts before each item and closing bracket. A number is the server's
 * own rendering of what the gateway sent, which may differ by a zero-padded exponent (`1e-07`).
 * Walked with a stack of its own, as decoded JSON may nest deeper than the call stack goes.
 */
function jsonBytes(value: unknown, indent = false): number {
  let bytes = 0;
  const pending: [unknown, number][] = [[value, 0]];
  while (pending.length > 0) {
    const [next, depth] = pending.pop() as [unknown, number];
    if (typeof next === "string") bytes += jsonStringBytes(next);
    else if (typeof next === "number") bytes += String(next).length + 4;
    else if (typeof next === "object" && next !== null) {
      const items = Array.isArray(next) ? next : Object.entries(next);
      bytes += 2;
      if (items.length === 0) continue;
      // Before each item: ", " (or ",") and, indented, a line end and the item's indentation;
      // before the closing bracket, a line end and the container's own.
      const perItem = 2 + (indent ? 1 + 4 * (depth + 1) : 0);
      bytes += items.length * perItem + (indent ? 1 + 4 * depth : 0);
      for (const item of items) {
        if (Array.isArray(next)) pending.push([item, depth + 1]);
        else {
          const [key, member] = item as [string, unknown];
          bytes += jsonStringBytes(key) + 2;
          pending.push([member, depth + 1]);
        }
      }
    } else bytes += 5; // true, false, null
  }
  return bytes;
}

/**
 * A bound on the bytes of a JSON text once the server has decoded it and a template's `tojson`
 * prints it again: vLLM decodes a tool call's `arguments` so. Scanned, not decoded, so that what
 * Python decodes and JavaScript would not (a 400-digit integer, `NaN`) is bounded all the same.
 * A unit inside a string becomes at most an escape (six bytes); one outside becomes at most two
 * (`,` gains a space, `:` too; whitespace disappears); a number with a fraction or an exponent
 * becomes Python's float, at most 24 characters (`-2.2250738585072014e-308`; `1e15` grows to
 * `1000000000000000.0`), counted on top.
 */
function reencodedJsonBytes(text: string): number {
  let bytes = 0;
  let inString = false;
  let escaped = false;
  let inNumber = false;
  let fraction = false;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (inString) {
      bytes += ESCAPED_UNIT_BYTES;
      if (escaped) escaped = false;
      else if (unit === 0x5c) escaped = true;
      else if (unit === 0x22) inString = false;
      continue;
    }
    bytes += 2;
    const digit = unit >= 0x30 && unit <= 0x39;
    if (unit === 0x22) {
      inString = true;
      inNumber = false;
    } else if (!inNumber && (digit || unit === 0x2d)) {
      inNumber = true;
      fraction = false;
    } else if (inNumber && (unit === 0x2e || unit === 0x65 || unit === 0x45)) {
      if (!fraction) bytes += PYTHON_FLOAT_CHARS;
      fraction = true;
    } else if (inNumber && !digit && unit !== 0x2b && unit !== 0x2d) inNumber = false;
  }
  return bytes;
}

/** The longest text Python gives a float. */
const PYTHON_FLOAT_CHARS = 24;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const own = (holder: Record<string, unknown>, key: string) => (Object.hasOwn(holder, key) ? holder[key] : undefined);

/**
 * Bytes a Llama 3.x template prints around one tool call besides its name and arguments:
 * `{"name": "`, `", "parameters": `, `}` and the assistant header and end of turn (about 45),
 * with a margin.
 */
export const TEMPLATE_BYTES_PER_TOOL_CALL = 64;

/** Bytes a Llama 3.x template prints around a tool's output: `{"output": ` and `}` (12), with a margin. */
export const TEMPLATE_BYTES_PER_TOOL_OUTPUT = 16;

/**
 * A bound on the bytes a template prints of a tool call: its arguments as vLLM passes them
 * (decoded from their JSON text) through `tojson`, everything else of the call as it is.
 */
function toolCallBytes(call: unknown): number {
  if (!isRecord(call)) return jsonBytes(call);
  let bytes = TEMPLATE_BYTES_PER_TOOL_CALL;
  for (const [key, value] of Object.entries(call)) {
    if (key !== "function" || !isRecord(value)) {
      bytes += renderedBytes(value);
      continue;
    }
    for (const [field, part] of Object.entries(value)) {
      if (field !== "arguments") bytes += renderedBytes(part);
      // A text of JSON is decoded, a value sent as one is printed as it is.
      else
        bytes += typeof part === "string" ? Math.max(reencodedJsonBytes(part), jsonStringBytes(part)) : jsonBytes(part);
    }
  }
  return bytes;
}

/**
 * A bound on the bytes a template prints of one message: Llama 3.x templates print a tool's
 * output (`role` `tool` or `ipython`) and each tool call's arguments through `tojson`, and
 * everything else as it is. Llama 2's template prints neither; it is counted all the same.
 */
function messageBytes(message: unknown): number {
  if (!isRecord(message)) return renderedBytes(message);
  const role = own(message, "role");
  const toolOutput = role === "tool" || role === "ipython";
  let bytes = 0;
  for (const [key, value] of Object.entries(message)) {
    if (key === "content" && toolOutput) bytes += TEMPLATE_BYTES_PER_TOOL_OUTPUT + jsonBytes(value);
    else if (key === "tool_calls" && Array.isArray(value)) for (const call of value) bytes += toolCallBytes(call);
    else if (key === "tool_calls") bytes += jsonBytes(value);
    else bytes += renderedBytes(value);
  }
  return bytes;
}

/**
 * A bound on the bytes a template prints of tool definitions: each as `tojson(indent=4)` and a
 * blank line (Llama 3.x); any other shape, the whole as indented JSON.
 */
function toolDefinitionBytes(tools: unknown): number {
  if (!Array.isArray(tools)) return jsonBytes(tools, true);
  let bytes = 2;
  for (const tool of tools) bytes += jsonBytes(tool, true) + 2;
  return bytes;
}

/**
 * The fixed text a family's chat template prints whatever the messages: tokens beyond the
 * messages' own bytes and {@link TEMPLATE_TOKENS_PER_MESSAGE}.
 */
export interface ChatTemplateAllowance {
  /** Printed once per conversation (a default system header, the generation prompt). */
  perConversation: number;
  /** Printed once when the request has `tools` (or `functions`), even an empty list. */
  withTools: number;
}

/** Llama 2's template: nothing beyond each message's wrapper, and tools left out. */
export const LLAMA_2_TEMPLATE: ChatTemplateAllowance = { perConversation: 0, withTools: 0 };

/**
 * Llama 3.x templates (Meta's, and vLLM's `tool_chat_template_llama3.1_json.jinja`). Every
 * conversation gets a system header with "Cutting Knowledge Date: December 2023" and "Today
 * Date: 26 Jul 2024" and the assistant's header after it: about 90 bytes, allowed 128. With tools
 * the templates add "Environment: ipython", a default system message and the instructions before
 * the definitions: about 650 bytes, allowed 1,024 (bytes, not their far fewer tokens, so the
 * allowance needs no tokenizer to hold).
 */
export const LLAMA_3_TEMPLATE: ChatTemplateAllowance = { perConversation: 128, withTools: 1024 };

/**
 * The allowance for a family's chat template: Llama 2's own, and for every other family the
 * Llama 3.x one, the larger.
 */
export function chatTemplateAllowance(familyId: string): ChatTemplateAllowance {
  return familyId === "llama-2" ? LLAMA_2_TEMPLATE : LLAMA_3_TEMPLATE;
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
 * gateway's default) for each of the `n` sequences of each prompt. A chat's `template` is the fixed
 * text of the family's chat template (unnamed, the larger of those known).
 */
export function tokenBound(
  request: BoundedRequest,
  defaultMaxTokens: number,
  template: ChatTemplateAllowance = LLAMA_3_TEMPLATE,
): TokenBound {
  let prompt: number;
  let prompts = 1;
  if (Array.isArray(request.messages)) {
    prompt =
      TEMPLATE_TOKENS_PER_PROMPT + template.perConversation + request.messages.length * TEMPLATE_TOKENS_PER_MESSAGE;
    for (const message of request.messages) prompt += messageBytes(message);
    // Llama 2's template leaves tools out; Llama 3.x templates print them with their instructions.
    if (request.tools != null) prompt += template.withTools + toolDefinitionBytes(request.tools);
    if (request.functions != null) prompt += template.withTools + toolDefinitionBytes(request.functions);
  } else {
    const completions = completionPrompts(request.prompt);
    prompt = completions.tokens;
    prompts = completions.count;
  }
  const completionLimit = Math.max(request.max_tokens ?? 0, request.max_completion_tokens ?? 0) || defaultMaxTokens;
  const completion = completionLimit * (request.n ?? 1) * prompts;
  return { prompt, completionLimit, completion, total: prompt + completion };
}
