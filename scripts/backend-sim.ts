/**
 * A stand-in for an OpenAI-compatible GPU inference server (vLLM, TGI) in development, tests and
 * benchmarks. It speaks the real wire format — `/v1/models`, `/v1/chat/completions`,
 * `/v1/completions`, streamed or not, with usage reported the way vLLM reports it — but answers
 * deterministically: `max_tokens` tokens reading `tok0 tok1 …`, and usage counted as words (or,
 * when a test asks, one token per byte), so a test can compute exactly what the gateway must
 * meter and bill.
 *
 * Tests make one backend misbehave through `POST /_sim/mode` (refuse, 500, stall, cut, down, or
 * a 4xx in vLLM's or TGI's error shape), make it answer with tool calls, and read back what the
 * gateway sent through `GET /_sim/requests`. It also receives webhooks: `POST /hooks/<anything>`
 * is recorded with its exact body and answered `204`, or as the mode says (`500`, `refuse`, …).
 *
 * Scopes keep parallel test files apart: every path may be prefixed with `/scope/<name>`, and a
 * scope has its own mode and request log. A test that routes its gateway to
 * `http://127.0.0.1:PORT/scope/<unique>` can break "its" backend without disturbing a test that
 * runs at the same time against the same simulator.
 *
 *   npm run backend:sim -- --port 8000 [--host 127.0.0.1] [--latency-ms 20] [--models a,b] [--api-key K]
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

/** Every model id the Llama 2 family offers (worker/policy/families/llama-2.ts). */
export const LLAMA_2_MODEL_IDS = [
  "llama-2-7b",
  "llama-2-7b-chat",
  "llama-2-13b",
  "llama-2-13b-chat",
  "llama-2-70b",
  "llama-2-70b-chat",
] as const;

/** How a simulator answers completion requests; see {@link SimulatorModeRequest}. */
export type SimulatorMode = "ok" | "refuse" | "500" | "stall" | "cut" | "hang" | "down" | "client_error";

const MODES: readonly SimulatorMode[] = ["ok", "refuse", "500", "stall", "cut", "hang", "down", "client_error"];

/**
 * The error bodies real servers send with a 4xx: `vllm` (`{object: "error", message, type, param,
 * code: 400}`), `vllm-legacy` (`{message, type, code: 400}`), `vllm-nested` (vLLM's newer
 * `{error: {message, type, param, code: 400}}`), `tgi` (`{error: "…", error_type: "validation"}`).
 */
export type ErrorShape = "vllm" | "vllm-legacy" | "vllm-nested" | "tgi";

const ERROR_SHAPES: readonly ErrorShape[] = ["vllm", "vllm-legacy", "vllm-nested", "tgi"];

/** How a simulator answers a request: text, or a call of the request's first tool. */
export type AnswerKind = "text" | "tool_calls" | "guard";

/**
 * A prompt holding this word is unsafe to a simulator answering as a guard model (`answer: "guard"`):
 * it answers `unsafe\nS1` then, as Llama Guard does, and `safe` otherwise.
 */
export const GUARD_UNSAFE_MARKER = "xyzzy-unsafe";

/** A guard model's verdict on a request's messages or prompt. */
function guardVerdict(request: CompletionRequest): string {
  const texts: unknown[] = Array.isArray(request.messages)
    ? (request.messages as ChatMessage[]).map((m) => m?.content)
    : [request.prompt];
  return JSON.stringify(texts).includes(GUARD_UNSAFE_MARKER) ? "unsafe\nS1" : "safe";
}

/** Body of `POST /_sim/mode`. */
export interface SimulatorModeRequest {
  /**
   * `refuse`: destroy the socket without a response. `500`: an HTTP 500 with an OpenAI error
   * body. `stall`: accept and never answer. `cut`: stream `cutAfter` tokens, then destroy the
   * socket without `[DONE]`. `hang`: stream `cutAfter` tokens, then send nothing more and keep the
   * connection open until the client leaves (a plain answer: never answer). `down`: `/health` and completions answer 503. `client_error`: a 4xx
   * (`errorStatus`, default 400) with the body of `errorShape` (default `vllm`), as a server
   * refuses a request it finds invalid (a context too long, a bad parameter).
   */
  mode: SimulatorMode;
  /** The server whose error body `client_error` sends. */
  errorShape?: ErrorShape;
  /** The status `client_error` answers, 400–499 (default 400). */
  errorStatus?: number;
  /** The message `client_error` sends (default: the server's message for a context too long). */
  errorMessage?: string;
  /**
   * What completions answer from now on: `text` (the default) or `tool_calls`, a call of the
   * request's first tool whose arguments stream in `max_tokens` pieces, as vLLM streams them; or
   * `guard`, a guard model's verdict (`safe`, or `unsafe\nS1` when a message holds
   * {@link GUARD_UNSAFE_MARKER}) in plain answers.
   */
  answer?: AnswerKind;
  /** The mode applies to this many completion requests, then `ok` returns; absent: until changed. */
  count?: number;
  /** Tokens streamed before a `cut` (default 3). */
  cutAfter?: number;
  /** Changes the time to generate a token (see {@link BackendSimulatorOptions}) from now on. */
  tokenLatencyMs?: number;
  /**
   * How prompts are counted from now on: `words` (the default) or `bytes`, one token per UTF-8
   * byte of the prompt's text, as a byte-fallback tokenizer does at worst (digits, for Llama 2),
   * or `llama`, as vLLM counts for Llama 2: the chat rendered with Llama 2's template, then
   * tokenized with its SentencePiece tokenizer. In `llama` mode every generated chunk is one
   * Llama 2 token (" the", " of", …), so the text's tokens are exactly the tokens reported.
   */
  promptTokens?: PromptCount;
  /**
   * Whether usage is reported from now on (default true): false makes a server that never
   * reports it, neither in plain answers nor in streams, whatever the request asks.
   */
  reportUsage?: boolean;
}

/** How a simulator counts a prompt's tokens. */
export type PromptCount = "words" | "bytes" | "llama";

/** One completion request as the simulator received it (`GET /_sim/requests`). */
export interface RecordedRequest {
  path: string;
  /** The parsed JSON body, or the raw text when it was not JSON; always the raw text for `/hooks/…`. */
  body: unknown;
  /** Request headers, lower-cased, as received. */
  headers: Record<string, string>;
  /** The mode the request was answered in. */
  mode: SimulatorMode;
}

/** Options of {@link startBackendSimulator}; every default suits the workerd tests. */
export interface BackendSimulatorOptions {
  /** 0 (the default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1: nothing here should listen beyond loopback. */
  host?: string;
  /** Time to generate a token, default 0: the pause between streamed tokens; a plain answer waits for all of them. */
  tokenLatencyMs?: number;
  /** Models served, default every Llama 2 model id. */
  models?: readonly string[];
  /** Shown in `/health` and error messages, to tell several simulators apart. */
  name?: string;
  /** When set, `/v1/*` requires `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** How many recent completion requests `/_sim/requests` keeps (default 1000; bounds memory under load). */
  maxRecordedRequests?: number;
  /** Log each request to stderr (default false: a benchmark must not pay for logging). */
  log?: boolean;
}

/** A running simulator. */
export interface BackendSimulator {
  /** Base URL without a trailing slash, e.g. `http://127.0.0.1:8000`. */
  url: string;
  port: number;
  /** Stops listening and drops every open connection, stalled ones included. */
  close(): Promise<void>;
}

interface ChatMessage {
  content?: unknown;
}

interface CompletionRequest {
  model?: unknown;
  messages?: unknown;
  prompt?: unknown;
  max_tokens?: unknown;
  max_completion_tokens?: unknown;
  stream?: unknown;
  stream_options?: { include_usage?: unknown; continuous_usage_stats?: unknown } | null;
  tools?: unknown;
}

interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** Mode, pacing and request log of one scope (the default scope is ""). */
interface ScopeState {
  mode: SimulatorMode;
  /** Completion requests left in `mode`; undefined: until changed. */
  remaining: number | undefined;
  cutAfter: number;
  tokenLatencyMs: number;
  promptTokens: PromptCount;
  reportUsage: boolean;
  answer: AnswerKind;
  error: { shape: ErrorShape; status: number; message: string | undefined };
  recorded: RecordedRequest[];
}

/** `/scope/<name>/rest` → name, /rest; any other path → no name, the path itself. */
const SCOPED_PATH = /^(?:\/scope\/([^/]+))?(\/.*)$/;

const DEFAULT_MAX_TOKENS = 16;
/** Far above any test's needs; stops a typo from streaming for minutes. */
const MAX_TOKENS_LIMIT = 100_000;
const BODY_LIMIT_BYTES = 4 * 1024 * 1024;

function countWords(text: string): number {
  let words = 0;
  for (const word of text.split(/\s+/)) if (word) words++;
  return words;
}

interface Tokenizer {
  encode(text: string, addBos?: boolean, addPrecedingSpace?: boolean): number[];
}

let llama: Tokenizer | undefined;

/** Llama 2's tokenizer, loaded when a scope first counts with it. */
async function loadLlama(): Promise<Tokenizer> {
  llama ??= (await import("llama-tokenizer-js")).default;
  return llama;
}

/**
 * Tokens of a text as Llama 2's tokenizer counts it in vLLM: `<s>` and `</s>` are one token
 * each wherever they appear, and each text between them gets SentencePiece's leading "▁".
 */
function llamaTokens(text: string): number {
  if (!llama) throw new Error("the Llama 2 tokenizer is not loaded");
  let tokens = 0;
  for (const part of text.split(/(<\/?s>)/)) {
    if (part === "<s>" || part === "</s>") tokens++;
    else if (part !== "") tokens += llama.encode(part, false, true).length;
  }
  return tokens;
}

function messageContent(message: ChatMessage): string {
  const content = message?.content;
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return "";
  return content
    .map((part) => (part as { text?: unknown } | null)?.text)
    .filter((text): text is string => typeof text === "string")
    .join("\n");
}

/**
 * The prompt vLLM renders for Llama 2's chat models, by the template in their
 * `tokenizer_config.json`: a leading system message is folded into the first turn between
 * `<<SYS>>` and `<</SYS>>`; user turns are `<s>[INST] … [/INST]`, assistant turns ` … </s>`.
 */
function llamaChatPrompt(messages: ChatMessage[]): string {
  const first = messages[0] as { role?: unknown } | undefined;
  const system = first?.role === "system" ? messageContent(messages[0] as ChatMessage) : undefined;
  const turns = system === undefined ? messages : messages.slice(1);
  return turns
    .map((message, i) => {
      const role = (message as { role?: unknown }).role;
      const content =
        i === 0 && system !== undefined
          ? `<<SYS>>\n${system}\n<</SYS>>\n\n${messageContent(message)}`
          : messageContent(message);
      if (role === "user") return `<s>[INST] ${content.trim()} [/INST]`;
      if (role === "assistant") return ` ${content.trim()} </s>`;
      return "";
    })
    .join("");
}

function countTokens(text: string, count: PromptCount): number {
  // A completions prompt gets the <s> vLLM's tokenizer adds.
  if (count === "llama") return 1 + llamaTokens(text);
  return count === "bytes" ? Buffer.byteLength(text) : countWords(text);
}

/** Tokens in every text a chat message carries: plain `content` strings and `text` parts. */
function chatPromptTokens(messages: ChatMessage[], count: PromptCount): number {
  if (count === "llama") return llamaTokens(llamaChatPrompt(messages));
  let tokens = 0;
  for (const message of messages) {
    const content = message?.content;
    if (typeof content === "string") tokens += countTokens(content, count);
    else if (Array.isArray(content)) {
      for (const part of content) {
        const text = (part as { text?: unknown } | null)?.text;
        if (typeof text === "string") tokens += countTokens(text, count);
      }
    }
  }
  return tokens;
}

/** Words that are one Llama 2 token each with their leading space ("▁the"). */
const LLAMA_WORDS = [" the", " of", " and", " to", " in", " is", " that", " for", " it", " with", " as", " on"];

/** The i-th generated token; the whole completion is their concatenation. */
function token(i: number, count: PromptCount = "words"): string {
  return count === "llama" ? (LLAMA_WORDS[i % LLAMA_WORDS.length] as string) : `tok${i} `;
}

function completionText(tokens: number, count: PromptCount = "words"): string {
  let text = "";
  for (let i = 0; i < tokens; i++) text += token(i, count);
  return text;
}

function usageOf(promptTokens: number, completionTokens: number): Usage {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: completionTokens,
    total_tokens: promptTokens + completionTokens,
  };
}

class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

/** An OpenAI-style error body, the shape OpenAI clients and vLLM's current API use. */
function openAiError(message: string, type: string, param: string | null = null, code: string | null = null) {
  return { error: { message, type, param, code } };
}

/** What a server of `error.shape` answers when it refuses a request. */
function clientErrorBody(error: ScopeState["error"]): unknown {
  if (error.shape === "tgi") {
    const message =
      error.message ??
      "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 1000 `max_new_tokens`";
    return { error: message, error_type: "validation" };
  }
  const message =
    error.message ??
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.";
  const type = error.status === 404 ? "NotFoundError" : "BadRequestError";
  if (error.shape === "vllm-legacy") return { message, type, code: error.status };
  if (error.shape === "vllm-nested") return { error: { message, type, param: null, code: error.status } };
  return { object: "error", message, type, param: null, code: error.status };
}

/** The name of the first function among a request's `tools`, which a `tool_calls` answer calls. */
function firstToolName(tools: unknown): string {
  const name = Array.isArray(tools)
    ? (tools[0] as { function?: { name?: unknown } } | null)?.function?.name
    : undefined;
  return typeof name === "string" ? name : "tool";
}

/** The i-th piece of a tool call's arguments; together, `{"input": "tok0 tok1 …"}`. */
function argumentsPiece(i: number, tokens: number): string {
  return `${i === 0 ? '{"input": "' : ""}${token(i)}${i === tokens - 1 ? '"}' : ""}`;
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((done, fail) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > BODY_LIMIT_BYTES) {
        fail(new BadRequest(413, "request body too large", "invalid_request_error"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => done(Buffer.concat(chunks).toString("utf8")));
    req.on("error", fail);
  });
}

function headersOf(req: IncomingMessage): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
  }
  return headers;
}

function sleep(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/**
 * Starts a simulator. Resolves once it listens; `close()` stops it.
 *
 * @example
 * const sim = await startBackendSimulator({ tokenLatencyMs: 5 });
 * await fetch(`${sim.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ … }) });
 * await sim.close();
 */
export async function startBackendSimulator(options: BackendSimulatorOptions = {}): Promise<BackendSimulator> {
  const host = options.host ?? "127.0.0.1";
  const name = options.name ?? "modelgate-sim";
  const models = new Set(options.models ?? LLAMA_2_MODEL_IDS);
  const maxRecorded = options.maxRecordedRequests ?? 1000;
  const startedAt = Math.floor(Date.now() / 1000);
  const idPrefix = randomBytes(4).toString("hex");
  let nextId = 0;
  const scopes = new Map<string, ScopeState>();

  function scopeState(scope: string): ScopeState {
    let state = scopes.get(scope);
    if (!state) {
      state = {
        mode: "ok",
        remaining: undefined,
        cutAfter: 3,
        tokenLatencyMs: options.tokenLatencyMs ?? 0,
        promptTokens: "words",
        reportUsage: true,
        answer: "text",
        error: { shape: "vllm", status: 400, message: undefined },
        recorded: [],
      };
      scopes.set(scope, state);
    }
    return state;
  }

  /** The mode for the next completion request, counting it against `count`. */
  function takeMode(state: ScopeState): SimulatorMode {
    const current = state.mode;
    if (state.remaining !== undefined) {
      state.remaining--;
      if (state.remaining <= 0) {
        state.mode = "ok";
        state.remaining = undefined;
      }
    }
    return current;
  }

  function setMode(state: ScopeState, request: SimulatorModeRequest): void {
    if (!MODES.includes(request.mode)) {
      throw new BadRequest(400, `mode must be one of ${MODES.join(", ")}`, "invalid_request_error", "mode");
    }
    const count = request.count;
    if (count !== undefined && !(Number.isInteger(count) && count > 0)) {
      throw new BadRequest(400, "count must be a positive integer", "invalid_request_error", "count");
    }
    const cut = request.cutAfter ?? 3;
    if (!(Number.isInteger(cut) && cut >= 0)) {
      throw new BadRequest(400, "cutAfter must be a non-negative integer", "invalid_request_error", "cutAfter");
    }
    const latency = request.tokenLatencyMs;
    if (latency !== undefined && !(typeof latency === "number" && latency >= 0)) {
      throw new BadRequest(400, "tokenLatencyMs must be a non-negative number", "invalid_request_error");
    }
    const promptTokens = request.promptTokens;
    if (
      promptTokens !== undefined &&
      promptTokens !== "words" &&
      promptTokens !== "bytes" &&
      promptTokens !== "llama"
    ) {
      throw new BadRequest(400, "promptTokens must be words, bytes or llama", "invalid_request_error", "promptTokens");
    }
    if (request.reportUsage !== undefined && typeof request.reportUsage !== "boolean") {
      throw new BadRequest(400, "reportUsage must be a boolean", "invalid_request_error", "reportUsage");
    }
    const { errorShape, errorStatus, errorMessage, answer } = request;
    if (errorShape !== undefined && !ERROR_SHAPES.includes(errorShape)) {
      throw new BadRequest(400, `errorShape must be one of ${ERROR_SHAPES.join(", ")}`, "invalid_request_error");
    }
    if (errorStatus !== undefined && !(Number.isInteger(errorStatus) && errorStatus >= 400 && errorStatus <= 499)) {
      throw new BadRequest(400, "errorStatus must be an integer from 400 to 499", "invalid_request_error");
    }
    if (errorMessage !== undefined && typeof errorMessage !== "string") {
      throw new BadRequest(400, "errorMessage must be a string", "invalid_request_error");
    }
    if (answer !== undefined && answer !== "text" && answer !== "tool_calls" && answer !== "guard") {
      throw new BadRequest(400, "answer must be text, tool_calls or guard", "invalid_request_error", "answer");
    }
    state.mode = request.mode;
    if (promptTokens !== undefined) state.promptTokens = promptTokens;
    if (request.reportUsage !== undefined) state.reportUsage = request.reportUsage;
    if (answer !== undefined) state.answer = answer;
    if (request.mode === "client_error")
      state.error = { shape: errorShape ?? "vllm", status: errorStatus ?? 400, message: errorMessage };
    state.remaining = request.mode === "ok" ? undefined : count;
    state.cutAfter = cut;
    if (latency !== undefined) state.tokenLatencyMs = latency;
  }

  function describeMode(state: ScopeState) {
    return {
      mode: state.mode,
      count: state.remaining ?? null,
      cutAfter: state.cutAfter,
      tokenLatencyMs: state.tokenLatencyMs,
      promptTokens: state.promptTokens,
      reportUsage: state.reportUsage,
      answer: state.answer,
    };
  }

  function record(state: ScopeState, entry: RecordedRequest): void {
    state.recorded.push(entry);
    if (state.recorded.length > maxRecorded) state.recorded = state.recorded.slice(-maxRecorded);
  }

  function authorized(req: IncomingMessage): boolean {
    return options.apiKey === undefined || req.headers.authorization === `Bearer ${options.apiKey}`;
  }

  async function handleCompletion(
    req: IncomingMessage,
    res: ServerResponse,
    state: ScopeState,
    path: string,
    kind: "chat" | "text",
  ) {
    const text = await readBody(req);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    const answeredIn = takeMode(state);
    record(state, { path, body, headers: headersOf(req), mode: answeredIn });

    switch (answeredIn) {
      case "refuse":
        req.socket.destroy();
        return;
      case "hang":
        // A plain answer that hangs never starts; a stream hangs after its first tokens (below).
        if ((body as CompletionRequest | null)?.stream !== true) return;
        break;
      case "stall":
        // Never answer; the socket goes when the client gives up or the simulator closes.
        return;
      case "500":
        sendJson(res, 500, openAiError(`${name}: injected failure`, "server_error"));
        return;
      case "down":
        sendJson(res, 503, openAiError(`${name} is down`, "server_error"));
        return;
      case "client_error":
        sendJson(res, state.error.status, clientErrorBody(state.error));
        return;
    }

    if (!authorized(req)) {
      throw new BadRequest(401, "Incorrect API key provided", "invalid_request_error", null, "invalid_api_key");
    }
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new BadRequest(400, "the body must be a JSON object", "invalid_request_error");
    }
    const request = body as CompletionRequest;
    if (typeof request.model !== "string") {
      throw new BadRequest(400, "model is required", "invalid_request_error", "model");
    }
    if (!models.has(request.model)) {
      throw new BadRequest(
        404,
        `The model \`${request.model}\` does not exist.`,
        "invalid_request_error",
        "model",
        "model_not_found",
      );
    }
    // vLLM's order: `max_completion_tokens` wins over `max_tokens` when both are sent.
    const maxTokens = request.max_completion_tokens ?? request.max_tokens ?? DEFAULT_MAX_TOKENS;
    if (!(typeof maxTokens === "number" && Number.isInteger(maxTokens) && maxTokens >= 0)) {
      throw new BadRequest(400, "max_tokens must be a non-negative integer", "invalid_request_error", "max_tokens");
    }
    if (maxTokens > MAX_TOKENS_LIMIT) {
      throw new BadRequest(
        400,
        `max_tokens must be at most ${MAX_TOKENS_LIMIT}`,
        "invalid_request_error",
        "max_tokens",
      );
    }
    if (state.promptTokens === "llama") await loadLlama();
    let promptTokens: number;
    if (kind === "chat") {
      if (!Array.isArray(request.messages)) {
        throw new BadRequest(400, "messages must be an array", "invalid_request_error", "messages");
      }
      promptTokens = chatPromptTokens(request.messages as ChatMessage[], state.promptTokens);
    } else {
      const prompt = request.prompt;
      if (typeof prompt === "string") promptTokens = countTokens(prompt, state.promptTokens);
      else if (Array.isArray(prompt) && prompt.every((p) => typeof p === "string")) {
        promptTokens = prompt.reduce((sum: number, p: string) => sum + countTokens(p, state.promptTokens), 0);
      } else if (Array.isArray(prompt) && prompt.every((p) => typeof p === "number")) {
        promptTokens = prompt.length;
      } else if (Array.isArray(prompt) && prompt.every((p) => Array.isArray(p))) {
        promptTokens = prompt.reduce((sum: number, p: unknown[]) => sum + p.length, 0);
      } else {
        throw new BadRequest(
          400,
          "prompt must be a string, an array of strings, or token ids",
          "invalid_request_error",
          "prompt",
        );
      }
    }

    const id = `${kind === "chat" ? "chatcmpl" : "cmpl"}-${idPrefix}${(nextId++).toString(36)}`;
    const created = Math.floor(Date.now() / 1000);
    if (request.stream === true) {
      await streamCompletion(req, res, {
        kind,
        id,
        created,
        model: request.model,
        promptTokens,
        maxTokens,
        includeUsage: state.reportUsage && request.stream_options?.include_usage === true,
        continuousUsage:
          state.reportUsage &&
          request.stream_options?.include_usage === true &&
          request.stream_options?.continuous_usage_stats === true,
        cutAfter: answeredIn === "cut" || answeredIn === "hang" ? state.cutAfter : undefined,
        hang: answeredIn === "hang",
        count: state.promptTokens,
        tokenLatencyMs: state.tokenLatencyMs,
        tool: kind === "chat" && state.answer === "tool_calls" ? firstToolName(request.tools) : undefined,
      });
      return;
    }

    // A plain answer comes once every token is generated, as a GPU server's does.
    if (state.tokenLatencyMs > 0) await sleep(maxTokens * state.tokenLatencyMs);
    const content = state.answer === "guard" ? guardVerdict(request) : completionText(maxTokens, state.promptTokens);
    const usage = state.reportUsage ? usageOf(promptTokens, maxTokens) : undefined;
    const toolCall = {
      id: `call_${id}`,
      type: "function",
      function: {
        name: firstToolName(request.tools),
        arguments: Array.from({ length: maxTokens }, (_, i) => argumentsPiece(i, maxTokens)).join("") || "{}",
      },
    };
    const choice =
      kind !== "chat"
        ? { index: 0, text: content, logprobs: null, finish_reason: "length" }
        : state.answer === "tool_calls"
          ? {
              index: 0,
              message: { role: "assistant", content: null, tool_calls: [toolCall] },
              logprobs: null,
              finish_reason: "tool_calls",
            }
          : { index: 0, message: { role: "assistant", content }, logprobs: null, finish_reason: "length" };
    const object = kind === "chat" ? "chat.completion" : "text_completion";
    const payload = JSON.stringify({ id, object, created, model: request.model, choices: [choice], usage });
    if (answeredIn === "cut") {
      // A body that ends early: the client was promised all of it by Content-Length.
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
      res.write(payload.slice(0, Math.floor(payload.length / 2)), () => req.socket.destroy());
      return;
    }
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
    res.end(payload);
  }

  async function streamCompletion(
    req: IncomingMessage,
    res: ServerResponse,
    s: {
      kind: "chat" | "text";
      id: string;
      created: number;
      model: string;
      promptTokens: number;
      maxTokens: number;
      includeUsage: boolean;
      continuousUsage: boolean;
      cutAfter: number | undefined;
      tokenLatencyMs: number;
      /** The tool a `tool_calls` answer calls; undefined: a text answer. */
      tool: string | undefined;
      /** After `cutAfter` tokens, keep the connection open and silent instead of cutting it. */
      hang: boolean;
      /** How tokens are counted, which decides the generated text. */
      count: PromptCount;
    },
  ): Promise<void> {
    let clientGone = false;
    res.on("close", () => {
      clientGone = true;
    });
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.flushHeaders();
    const object = s.kind === "chat" ? "chat.completion.chunk" : "text_completion";
    // OpenAI puts `usage: null` on every chunk but the last when usage was asked for; vLLM's
    // continuous_usage_stats puts the running total there instead.
    const usageField = (generated: number) =>
      s.continuousUsage ? usageOf(s.promptTokens, generated) : s.includeUsage ? null : undefined;
    const chunk = (choice: Record<string, unknown>, generated: number) => {
      const event: Record<string, unknown> = {
        id: s.id,
        object,
        created: s.created,
        model: s.model,
        choices: [choice],
      };
      const usage = usageField(generated);
      if (usage !== undefined) event.usage = usage;
      return `data: ${JSON.stringify(event)}\n\n`;
    };
    const pause = async () => {
      if (s.tokenLatencyMs > 0) await sleep(s.tokenLatencyMs);
    };
    // A cut must still deliver the tokens before it: destroying the socket drops whatever is
    // not yet flushed, so in that mode each write is awaited before the cut.
    let flushed: Promise<void> = Promise.resolve();
    const send = (data: string) => {
      if (s.cutAfter === undefined) res.write(data);
      else flushed = new Promise((done) => res.write(data, () => done()));
    };
    const cut = async () => {
      await flushed;
      // Hanging: the socket stays until the client leaves or the simulator closes.
      if (!s.hang) req.socket.destroy();
    };

    if (s.kind === "chat") {
      send(chunk({ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }, 0));
    }
    if (s.tool !== undefined) {
      const call = { index: 0, id: `call_${s.id}`, type: "function", function: { name: s.tool, arguments: "" } };
      send(chunk({ index: 0, delta: { tool_calls: [call] }, logprobs: null, finish_reason: null }, 0));
    }
    for (let i = 0; i < s.maxTokens; i++) {
      await pause();
      if (clientGone) return;
      if (s.cutAfter !== undefined && i >= s.cutAfter) {
        await cut();
        return;
      }
      const delta =
        s.tool !== undefined
          ? { tool_calls: [{ index: 0, function: { arguments: argumentsPiece(i, s.maxTokens) } }] }
          : { content: token(i, s.count) };
      const choice =
        s.kind === "chat"
          ? { index: 0, delta, logprobs: null, finish_reason: null }
          : { index: 0, text: token(i, s.count), logprobs: null, finish_reason: null };
      send(chunk(choice, i + 1));
    }
    if (s.cutAfter !== undefined) {
      // Fewer tokens than cutAfter were asked for: still cut before the end of the stream.
      await cut();
      return;
    }
    const last =
      s.kind === "chat"
        ? { index: 0, delta: {}, logprobs: null, finish_reason: s.tool !== undefined ? "tool_calls" : "length" }
        : { index: 0, text: "", logprobs: null, finish_reason: "length" };
    res.write(chunk(last, s.maxTokens));
    if (s.includeUsage) {
      const usage = usageOf(s.promptTokens, s.maxTokens);
      res.write(
        `data: ${JSON.stringify({ id: s.id, object, created: s.created, model: s.model, choices: [], usage })}\n\n`,
      );
    }
    res.end("data: [DONE]\n\n");
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const scoped = SCOPED_PATH.exec((req.url ?? "/").split("?")[0] ?? "/");
    const state = scopeState(scoped?.[1] ? decodeURIComponent(scoped[1]) : "");
    const path = scoped?.[2] ?? "/";
    const method = req.method ?? "GET";
    if (options.log) process.stderr.write(`${name}: ${method} ${req.url}\n`);

    if (path === "/health" && method === "GET") {
      if (state.mode === "down") sendJson(res, 503, { status: "down", name });
      else sendJson(res, 200, { status: "ok" });
      return;
    }
    if (path === "/v1/models" && method === "GET") {
      if (!authorized(req)) {
        throw new BadRequest(401, "Incorrect API key provided", "invalid_request_error", null, "invalid_api_key");
      }
      const data = [...models].map((id) => ({ id, object: "model", created: startedAt, owned_by: "modelgate-sim" }));
      sendJson(res, 200, { object: "list", data });
      return;
    }
    if ((path === "/v1/chat/completions" || path === "/v1/completions") && method === "POST") {
      await handleCompletion(req, res, state, path, path === "/v1/chat/completions" ? "chat" : "text");
      return;
    }
    if (path.startsWith("/hooks/") && method === "POST") {
      // A webhook receiver: the exact body is kept, since signatures are over its bytes.
      const text = await readBody(req);
      const answeredIn = takeMode(state);
      record(state, { path, body: text, headers: headersOf(req), mode: answeredIn });
      if (answeredIn === "refuse") req.socket.destroy();
      else if (answeredIn === "500") sendJson(res, 500, { error: `${name}: injected failure` });
      else if (answeredIn === "down") sendJson(res, 503, { error: `${name} is down` });
      else if (answeredIn === "client_error") sendJson(res, state.error.status, clientErrorBody(state.error));
      else if (answeredIn !== "stall" && answeredIn !== "hang") res.writeHead(204).end();
      return;
    }
    if (path === "/_sim/mode" && method === "POST") {
      let request: SimulatorModeRequest;
      try {
        request = JSON.parse(await readBody(req)) as SimulatorModeRequest;
      } catch {
        throw new BadRequest(400, "the body must be JSON", "invalid_request_error");
      }
      setMode(state, request ?? {});
      sendJson(res, 200, describeMode(state));
      return;
    }
    if (path === "/_sim/mode" && method === "GET") {
      sendJson(res, 200, describeMode(state));
      return;
    }
    if (path === "/_sim/requests" && method === "GET") {
      sendJson(res, 200, state.recorded);
      return;
    }
    if (path === "/_sim/requests" && method === "DELETE") {
      state.recorded = [];
      res.writeHead(204).end();
      return;
    }
    throw new BadRequest(404, `no route for ${method} ${path}`, "invalid_request_error", null, "not_found");
  }

  const server = createServer({ keepAlive: true, noDelay: true }, (req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (res.headersSent || req.socket.destroyed) {
        req.socket.destroy();
        return;
      }
      if (error instanceof BadRequest) {
        sendJson(res, error.status, openAiError(error.message, error.type, error.param, error.code));
      } else {
        sendJson(res, 500, openAiError(`${name}: ${(error as Error).message}`, "server_error"));
      }
    });
  });
  // Clients (workerd, undici, autocannon) reuse connections; closing idle ones early would make
  // the benchmark measure reconnects.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.requestTimeout = 0;

  await new Promise<void>((done, fail) => {
    server.once("error", fail);
    server.listen(options.port ?? 0, host, () => {
      server.off("error", fail);
      done();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(":") ? `[${host}]` : host;
  return {
    url: `http://${urlHost}:${port}`,
    port,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}

function usage(message?: string): never {
  if (message) process.stderr.write(`backend-sim: ${message}\n`);
  process.stderr.write(
    "usage: npm run backend:sim -- [--port 8000] [--host 127.0.0.1] [--latency-ms 0] [--models a,b] [--name N] [--api-key K] [--log]\n",
  );
  process.exit(2);
}

function nonNegativeNumber(flag: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0) usage(`${flag} must be a non-negative number, not "${text}"`);
  return value;
}

async function main(): Promise<void> {
  let values: {
    port?: string;
    host?: string;
    "latency-ms"?: string;
    models?: string;
    name?: string;
    "api-key"?: string;
    log?: boolean;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: "string" },
        host: { type: "string" },
        "latency-ms": { type: "string" },
        models: { type: "string" },
        name: { type: "string" },
        "api-key": { type: "string" },
        log: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  if (values.help) usage();
  const models = values.models
    ?.split(",")
    .map((m) => m.trim())
    .filter(Boolean);
  const sim = await startBackendSimulator({
    port: nonNegativeNumber("--port", values.port) ?? 8000,
    host: values.host,
    tokenLatencyMs: nonNegativeNumber("--latency-ms", values["latency-ms"]),
    models: models?.length ? models : undefined,
    name: values.name,
    apiKey: values["api-key"],
    log: values.log,
  });
  process.stdout.write(`backend simulator listening on ${sim.url}\n`);
  const stop = () => {
    sim.close().then(() => process.exit(0));
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    process.stderr.write(`backend-sim: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
