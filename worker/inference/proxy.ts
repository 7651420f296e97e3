import { z } from "zod";
import { bearerToken } from "../auth/bearer";
import { billingEnabled } from "../config";
import { AppError } from "../errors";
import { modelCoverage, notCoveredProblem } from "../grants/coverage";
import { type GuardCall, screenAnswer, screenPrompt, screenStreamedAnswer } from "../guard/screen";
import { readBodyText } from "../http/body";
import { fieldErrors } from "../http/router";
import { REACCEPT_WARNING_HEADER } from "../licenses/reacceptance";
import { recordCompletion } from "../observability/analytics";
import { findModel } from "../policy/families";
import { type LeaseContext, QuotaLeases } from "../quota/leases";
import { type QuotaRefusal, type QuotaSnapshot, quotaStub } from "../quota/org-quota";
import { exportRefusal } from "../screening/use-country";
import type { Services } from "../services";
import { authenticateInference, type InferenceCaller } from "./access";
import { backendRefusal } from "./backend-errors";
import { backendPools, cachedBackendPools, shareHealthReports } from "./backend-store";
import { type Backend, BackendHealth } from "./backends";
import { ledgerEntry, recordUsage, type UsageRecord } from "./ledger";
import { chatTemplateAllowance, type TokenBound, tokenBound } from "./token-bound";
import { type RequestTokenCounter, requestTokenCounter } from "./tokenizer";
import { meterEventStream, readUsage, type StreamEnd, type StreamProgress, type Usage } from "./usage";

/** The largest request body accepted, in bytes. */
export const MAX_REQUEST_BYTES = 1024 * 1024;

const Common = {
  model: z.string().min(1).max(128),
  stream: z.boolean().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).passthrough().nullish(),
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
  n: z.number().int().min(1).max(16).nullish(),
};

/** A refinement that refuses a body carrying `field` at all. */
function refuseField(field: string, message: string) {
  return (body: object, ctx: z.RefinementCtx) => {
    if (Object.hasOwn(body, field)) ctx.addIssue({ code: "custom", path: [field], message });
  };
}

/**
 * vLLM's own fields that would make a request cost more than its reservation, or reach past the
 * caller's own request on a shared server; each is refused with its reason. Every other field
 * passes on as written (vendors' sampling options such as `repetition_penalty` or `guided_json`
 * are what clients send them for), so a field vLLM adds of either kind belongs here.
 */
const REFUSED_FIELDS: Readonly<Record<string, string>> = {
  use_beam_search: "Beam search generates more sequences than the n the request reserves.",
  prompt_embeds: "A prompt given as embeddings cannot be counted before it is sent.",
  priority: "The inference servers are shared: requests are not reordered on them.",
  request_id: "The inference servers are shared: their request ids are the gateway's.",
  kv_transfer_params: "Moving a request's cache between inference servers is the operator's to set.",
  vllm_xargs: "vLLM's extra arguments are the operator's to set.",
  logits_processors: "Logits processors run code of the operator's choosing, set by the operator.",
};

/**
 * Whether `best_of` stays within the `n` sequences reserved: vLLM's V0 engine generates `best_of`
 * of them and returns `n`, so only `best_of` up to `n` (which vLLM requires it to reach: equal)
 * costs no more than the reservation counts.
 */
function bestOfWithinN(body: Record<string, unknown>): boolean {
  const bestOf = Object.hasOwn(body, "best_of") ? body.best_of : undefined;
  if (bestOf == null) return true;
  const n = Object.hasOwn(body, "n") && body.n != null ? body.n : 1;
  return isPositiveInt(bestOf) && typeof n === "number" && (bestOf as number) <= n;
}

/** Whether `body` carries a field the reservation cannot account for. */
function carriesRefusedField(body: Record<string, unknown>): boolean {
  for (const field in REFUSED_FIELDS) if (Object.hasOwn(body, field)) return true;
  return !bestOfWithinN(body);
}

/** A refinement that refuses the fields the reservation cannot account for. */
function refuseUnmetered(body: Record<string, unknown>, ctx: z.RefinementCtx) {
  for (const [field, message] of Object.entries(REFUSED_FIELDS))
    if (Object.hasOwn(body, field)) ctx.addIssue({ code: "custom", path: [field], message });
  if (!bestOfWithinN(body))
    ctx.addIssue({
      code: "custom",
      path: ["best_of"],
      message: "best_of may not exceed n: the request reserves n sequences.",
    });
}

const ChatRequest = z
  .object({
    ...Common,
    messages: z.array(z.object({ role: z.string() }).passthrough()).min(1),
    // vLLM renders a request's own template, which could make a prompt of any length from a short
    // body: the reservation's bound holds for the model's template only. Its variables likewise: a
    // text (`bos_token`, say) goes into the prompt as often as the template prints it, so only
    // switches (`enable_thinking`) are passed on.
    chat_template: z.never({ error: "Prompts are rendered with the model's own template." }).optional(),
    chat_template_kwargs: z
      .record(z.string(), z.boolean(), { error: "The template's variables may only be switched on or off." })
      .optional(),
  })
  .passthrough()
  // The bound is the messages'; a prompt beside them is the other endpoint's, and never counted.
  .superRefine(refuseField("prompt", "A chat request has messages, not a prompt."))
  .superRefine(refuseUnmetered);
const CompletionRequest = z
  .object({
    ...Common,
    prompt: z.union([z.string(), z.array(z.string()), z.array(z.number()), z.array(z.array(z.number()))]),
  })
  .passthrough()
  // The bound is the prompt's; messages beside it would be counted instead, and never sent.
  .superRefine(refuseField("messages", "A completions request has a prompt, not messages."))
  .superRefine(refuseUnmetered);

export type Endpoint = "chat" | "completions";
type CompletionBody = z.infer<typeof ChatRequest> & z.infer<typeof CompletionRequest>;

/** The schema an endpoint's body must meet. */
export const completionSchema = (endpoint: Endpoint) => (endpoint === "chat" ? ChatRequest : CompletionRequest);

const isPositiveInt = (v: unknown) => typeof v === "number" && Number.isSafeInteger(v) && v > 0;
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Whether `body` is a request the schemas accept, checked without them: the common request
 * skips zod, and anything this does not recognise is judged (and explained) by the schemas.
 */
export function plainlyValid(body: unknown, endpoint: Endpoint): body is CompletionBody {
  if (!isObject(body)) return false;
  const { model, stream, stream_options, max_tokens, max_completion_tokens, n } = body;
  if (typeof model !== "string" || model.length === 0 || model.length > 128) return false;
  if (stream !== undefined && typeof stream !== "boolean") return false;
  if (
    stream_options != null &&
    !(isObject(stream_options) && [undefined, true, false].includes(stream_options.include_usage as never))
  )
    return false;
  if (max_tokens != null && !isPositiveInt(max_tokens)) return false;
  if (max_completion_tokens != null && !isPositiveInt(max_completion_tokens)) return false;
  if (n != null && !(isPositiveInt(n) && (n as number) <= 16)) return false;
  if (carriesRefusedField(body)) return false;
  if (endpoint === "chat") {
    const { messages } = body;
    if (Object.hasOwn(body, "chat_template") || Object.hasOwn(body, "chat_template_kwargs")) return false;
    if (Object.hasOwn(body, "prompt")) return false;
    return (
      Array.isArray(messages) && messages.length > 0 && messages.every((m) => isObject(m) && typeof m.role === "string")
    );
  }
  return typeof body.prompt === "string" && !Object.hasOwn(body, "messages");
}

/** Shared, per-isolate backend health. */
const isolateHealth = new BackendHealth();

/** The backend health the proxy keeps with `options`: this isolate's, unless a test passes its own. */
export function proxyHealth(options: ProxyOptions): BackendHealth {
  return options.health ?? isolateHealth;
}

/** This isolate's leases of organizations' quota. */
const isolateLeases = new QuotaLeases();

/** Forgets the leases this isolate holds (tests that change limits behind the gateway's back). */
export function clearQuotaLeases(): void {
  isolateLeases.clear();
}

/** How often a running stream's usage so far is checkpointed in its quota object. */
export const CHECKPOINT_EVERY_MS = 10_000;

/** What the proxy depends on beyond the request's services; tests pass their own. */
export interface ProxyOptions {
  health?: BackendHealth;
  fetcher?: typeof fetch;
  random?: () => number;
  /** How often a running stream's usage is checkpointed (default `CHECKPOINT_EVERY_MS`). */
  checkpointEveryMs?: number;
}

/** OpenAI's rate-limit headers, from the organization's standing. */
export function rateLimitHeaders(s: QuotaSnapshot): Record<string, string> {
  return {
    "x-ratelimit-limit-requests": String(s.limitRequests),
    "x-ratelimit-remaining-requests": String(s.remainingRequests),
    "x-ratelimit-reset-requests": `${s.resetSeconds}s`,
    "x-ratelimit-limit-tokens": String(s.limitTokens),
    "x-ratelimit-remaining-tokens": String(s.remainingTokens),
    "x-ratelimit-reset-tokens": `${s.resetSeconds}s`,
    "x-modelgate-monthly-token-budget": String(s.monthlyBudget),
    "x-modelgate-monthly-tokens-remaining": String(s.monthlyRemaining),
  };
}

const REFUSALS: Record<QuotaRefusal, [string, string]> = {
  requests_per_minute: ["Rate limit reached for requests per minute.", "rate_limit_exceeded"],
  tokens_per_minute: ["Rate limit reached for tokens per minute.", "rate_limit_exceeded"],
  monthly_budget: ["Your organization's monthly token budget is used up.", "insufficient_quota"],
  request_too_large: [
    "This request (prompt plus max_tokens) is larger than your tokens-per-minute limit allows.",
    "request_too_large",
  ],
};

/** What a refusal by the token's own limits says instead. */
const TOKEN_REFUSALS: Record<QuotaRefusal, string> = {
  requests_per_minute: "Rate limit reached for this token's requests per minute.",
  tokens_per_minute: "Rate limit reached for this token's tokens per minute.",
  monthly_budget: "This token's monthly token budget is used up.",
  request_too_large: "This request (prompt plus max_tokens) is larger than this token's limits allow.",
};

/** Refusals that lift within the minute; the others (budget used up, too large a request) do not. */
const PASSING_REFUSALS = new Set<QuotaRefusal>(["requests_per_minute", "tokens_per_minute"]);

async function readJson(request: Request): Promise<unknown> {
  const type = (request.headers.get("content-type") ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/json") throw new AppError("unsupported_media_type", "Send the body as application/json.");
  // Counted as it arrives: a body without a Content-Length is refused once past the limit, not read whole.
  const text = await readBodyText(request, MAX_REQUEST_BYTES);
  try {
    return JSON.parse(text);
  } catch {
    throw new AppError("malformed_body", "The body is not valid JSON.");
  }
}

type Attempt =
  | { ok: true; backend: Backend; response: Response; deadline: Deadline }
  | { ok: false; failure: "timeout" | "connect" | "server_error" | "none_usable" };

/** A backend call's time limit, and the means to end the call early. */
interface Deadline {
  signal: AbortSignal;
  /** Stops the clock (a stream's limit covers its response headers, not the whole stream). */
  clear(): void;
  /** Ends the call (a stream whose client left). */
  abort(): void;
}

/**
 * A plain answer's limit covers the whole answer and is never cleared or aborted: the runtime's
 * own timeout signal, whose timer ends with the request, costs no JavaScript timer. A stream's
 * limit ends at its headers and the call ends with its client, so it needs a controller.
 */
function deadlineFor(ms: number, stream: boolean): Deadline {
  if (!stream) return { signal: AbortSignal.timeout(ms), clear() {}, abort() {} };
  const controller = new AbortController();
  const timer = setTimeout(
    () => controller.abort(new DOMException("The backend did not answer in time.", "TimeoutError")),
    ms,
  );
  return { signal: controller.signal, clear: () => clearTimeout(timer), abort: () => controller.abort() };
}

/**
 * Tries the pool's backends in weighted order until one answers without a server error. A request
 * is only retried before anything reached the client: connection failures, timeouts before the
 * response headers and 5xx answers move on to the next backend and mark the failed one down.
 */
async function sendToBackends(
  services: Services,
  pool: readonly Backend[],
  path: string,
  bodyFor: (backend: Backend) => string,
  stream: boolean,
  options: Required<ProxyOptions>,
  waitUntil: (p: Promise<unknown>) => void,
): Promise<Attempt> {
  const now = services.clock.now().getTime();
  const order = options.health.order(pool, now, waitUntil, options.random);
  let failure: Exclude<Attempt, { ok: true }>["failure"] = "none_usable";
  for (const backend of order) {
    const deadline = deadlineFor(backend.timeoutMs, stream);
    const headers: Record<string, string> = {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
    };
    if (backend.apiKey) headers.authorization = `Bearer ${backend.apiKey}`;
    let response: Response;
    try {
      response = await options.fetcher(`${backend.url}/v1/${path}`, {
        method: "POST",
        headers,
        body: bodyFor(backend),
        redirect: "manual",
        signal: deadline.signal,
      });
    } catch {
      deadline.clear();
      failure = deadline.signal.aborted ? "timeout" : "connect";
      options.health.markDown(backend, services.clock.now().getTime(), failure);
      services.log.warn("inference backend failed", { backend: backend.url, failure });
      continue;
    }
    if (response.status >= 500 || (response.status >= 300 && response.status < 400)) {
      deadline.clear();
      await response.body?.cancel();
      if (response.status >= 500)
        options.health.markDown(backend, services.clock.now().getTime(), `status ${response.status}`);
      failure = "server_error";
      services.log.warn("inference backend failed", { backend: backend.url, status: response.status });
      continue;
    }
    options.health.markUp(backend, now);
    shareHealth(services, options.health, waitUntil);
    return { ok: true, backend, response, deadline };
  }
  shareHealth(services, options.health, waitUntil);
  return { ok: false, failure };
}

/** Tells other isolates of the backend health changes this one saw (after the request). */
function shareHealth(services: Services, health: BackendHealth, waitUntil: (p: Promise<unknown>) => void): void {
  if (!health.hasReports) return;
  const reports = health.takeReports();
  waitUntil(
    shareHealthReports(services, reports).catch((error: unknown) => {
      health.giveBack(reports);
      services.log.warn("backend health not shared", { error: String(error) });
    }),
  );
}

/** One completion request as the proxy sees it: no router, as most of the gateway's traffic is these. */
export interface CompletionCall {
  request: Request;
  env: Env;
  ctx: Pick<ExecutionContext, "waitUntil">;
  services: Services;
  /** Echoed on the answer as `x-request-id`. */
  requestId: string;
}

/**
 * `POST /v1/chat/completions` and `/v1/completions`: authenticate (cached briefly), check the
 * grant and the token cover the model, reserve the worst case in the organization's quota
 * object (and in the token's own limits there, when it has them), send to a healthy backend (retrying others before the first byte), stream the answer
 * back through the usage meter, settle the quota to the actual usage and append a ledger row —
 * the last two after the response, also when the client hangs up.
 */
export async function proxyCompletion(
  call: CompletionCall,
  endpoint: Endpoint,
  proxyOptions: ProxyOptions = {},
): Promise<Response> {
  const timing: Timing = { startedAt: call.services.clock.now(), sentAt: undefined };
  try {
    return await complete(call, endpoint, proxyOptions, timing);
  } catch (error) {
    // Refusals and backend failures carry it too: every answer on these routes does.
    if (error instanceof AppError) error.headers[OVERHEAD_HEADER] = overheadOf(timing, call.services);
    throw error;
  }
}

const OVERHEAD_HEADER = "x-modelgate-overhead-ms";

/** When a completion arrived, and when it was handed to its first backend. */
interface Timing {
  startedAt: Date;
  sentAt: number | undefined;
}

/**
 * The gateway's own time on a request, in ms, backends excluded: from its arrival until it went
 * to a backend (or until now, if it never did). After the backend answers, the gateway waits only
 * for the answer's usage row to be stored, before the answer's end (not its headers) goes out.
 */
function overheadOf(timing: Timing, services: Services): string {
  return String((timing.sentAt ?? services.clock.now().getTime()) - timing.startedAt.getTime());
}

async function complete(
  call: CompletionCall,
  endpoint: Endpoint,
  proxyOptions: ProxyOptions,
  timing: Timing,
): Promise<Response> {
  const { request: incoming, env, ctx, services } = call;
  const options: Required<ProxyOptions> = {
    health: proxyHealth(proxyOptions),
    fetcher: proxyOptions.fetcher ?? ((input, init) => fetch(input, init)),
    random: proxyOptions.random ?? Math.random,
    checkpointEveryMs: proxyOptions.checkpointEveryMs ?? CHECKPOINT_EVERY_MS,
  };
  const { startedAt } = timing;
  const caller: InferenceCaller = await authenticateInference(
    services,
    bearerToken(incoming.headers.get("authorization")),
    (work) => ctx.waitUntil(work),
  );
  const raw = await readJson(incoming);
  const parsed = plainlyValid(raw, endpoint)
    ? { success: true as const, data: raw }
    : completionSchema(endpoint).safeParse(raw);
  if (!parsed.success) {
    const errors = fieldErrors(parsed.error);
    throw new AppError(
      "validation_failed",
      `Invalid request: ${errors.map((e) => `${e.field}: ${e.message}`).join("; ")}`,
      {
        errors,
        extensions: { param: errors[0]?.field },
      },
    );
  }
  const request = parsed.data as CompletionBody;
  const found = findModel(request.model);
  if (!found)
    throw new AppError("not_found", `The model \`${request.model}\` does not exist.`, {
      extensions: { param: "model" },
    });
  const coverage = modelCoverage(caller.principal, request.model);
  if (!coverage.covered) throw notCoveredProblem(coverage, "openai");
  const refusal = exportRefusal(services, {
    family: found.family,
    organizationId: caller.principal.organizationId,
    surface: "inference",
    request: incoming,
    waitUntil: (work) => ctx.waitUntil(work),
  });
  if (refusal) throw refusal;
  // The pools are in memory but for one read of the stored servers every few seconds.
  const pools =
    cachedBackendPools(services, options.health, (work) => ctx.waitUntil(work)) ??
    (await backendPools(services, options.health));
  const pool = pools.get(request.model) ?? [];
  if (pool.length === 0)
    throw new AppError("service_unavailable", `No inference servers are configured for ${request.model}.`);

  const bound = tokenBound(request, services.config.inference.defaultMaxTokens, chatTemplateAllowance(found.family.id));
  const usageId = services.ids.id("use");
  const waitUntil = (p: Promise<unknown>) => ctx.waitUntil(p);
  const organizationId = caller.principal.organizationId;
  const billingQueue = billingEnabled(services.config) ? env.USAGE_QUEUE : undefined;
  let stub: ReturnType<typeof quotaStub> | undefined;
  const quota: LeaseContext = {
    // Made only when this request talks to the quota object: most are admitted on a lease.
    get stub() {
      stub ??= quotaStub(env, organizationId);
      return stub;
    },
    limits: caller.limits,
    token: caller.tokenQuota,
    limitsAt: caller.limitsAt,
    now: () => services.clock.now().getTime(),
    newId: () => services.ids.id("lse"),
    waitUntil,
    fallback: (rows, error) => {
      services.log.warn("quota object unreachable; usage rows written directly", { error: String(error) });
      return recordUsage(services, rows, billingQueue);
    },
  };
  const reservation = await isolateLeases.admit(organizationId, bound.total, quota).catch((error: unknown) => {
    services.log.error("quota object unreachable; request refused", { organizationId, error: String(error) });
    throw new AppError("service_unavailable", "The quota service is unavailable; retry shortly.", {
      headers: { "retry-after": "1" },
    });
  });
  if (!reservation.ok) {
    const [organizationMessage, openaiCode] = REFUSALS[reservation.refusal];
    const message = reservation.limitedBy === "token" ? TOKEN_REFUSALS[reservation.refusal] : organizationMessage;
    const headers: Record<string, string> = {
      "retry-after": String(reservation.retryAfterSeconds),
      ...rateLimitHeaders(reservation.snapshot),
    };
    // OpenAI's clients retry a 429 by themselves, after a short wait of their own when Retry-After
    // is over a minute away; this header stops them where their retries could only be refused.
    if (!PASSING_REFUSALS.has(reservation.refusal)) headers["x-should-retry"] = "false";
    throw new AppError("rate_limited", message, { headers, extensions: { openaiCode } });
  }

  const stream = request.stream === true;
  const clientWantsUsage = request.stream_options?.include_usage === true;
  const clientWantsContinuousUsage =
    clientWantsUsage &&
    Object.hasOwn(request.stream_options ?? {}, "continuous_usage_stats") &&
    request.stream_options?.continuous_usage_stats === true;
  /** Whether the gateway asks `backend` for usage on every chunk: a vLLM server its operator marked. */
  const addsContinuousUsage = (backend: Backend) =>
    stream && backend.continuousUsage === true && !clientWantsContinuousUsage;
  // The backend is held to the completion limit that was reserved, under either name it honours.
  const forward: Record<string, unknown> = { ...request, max_tokens: bound.completionLimit };
  if (Object.hasOwn(request, "max_completion_tokens")) forward.max_completion_tokens = bound.completionLimit;
  if (stream) forward.stream_options = { ...(request.stream_options ?? {}), include_usage: true };
  const counter = requestTokenCounter(found.family.id, request);

  const ledgerBase = {
    id: usageId,
    organizationId: caller.principal.organizationId,
    grantId: caller.principal.grantId,
    tokenId: caller.principal.tokenId,
    model: request.model,
    endpoint: endpoint === "chat" ? "chat.completions" : "completions",
    stream,
    startedAt: startedAt.toISOString(),
  };
  type SettledUsage = Omit<UsageRecord, keyof typeof ledgerBase | "latencyMs">;
  const settled = (record: SettledUsage) => {
    const now = services.clock.now();
    const latencyMs = now.getTime() - startedAt.getTime();
    const row = { ...ledgerBase, ...record, latencyMs, createdAt: now.toISOString() };
    return { id: usageId, actual: record.totalTokens, entry: ledgerEntry(row), row };
  };
  /**
   * Settles the reservation to what was used. The ledger row goes with the settlement to the
   * quota object, in this isolate's next batch; the object stores it with the new counters and
   * writes it to D1 in its own next batch (or, unreachable, the row goes to D1 directly). Resolves
   * true once the row is stored, so that the answer's end can wait for it (false: not within
   * `STORE_WAIT_MS`, logged, and the answer goes out all the same: the row is still on its way).
   * A caller that does not wait for it hands it to `waitUntil`.
   */
  const settle = (record: SettledUsage): Promise<boolean> => {
    const request = settled(record);
    recordCompletion(env, request.row, request.row.latencyMs);
    const stored = isolateLeases.settle(organizationId, reservation, request, quota).then((ok) => {
      if (!ok) services.log.error("usage row not stored before the answer ended", { usageId, organizationId });
      return ok;
    });
    return stored;
  };

  // Backends differ only in the model name they serve and in whether they are asked for usage on
  // every chunk; most pools send one body.
  const bodies = new Map<string, string>();
  const bodyFor = (backend: Backend) => {
    const continuous = addsContinuousUsage(backend);
    const key = `${continuous ? "+" : "-"}${backend.servedModel}`;
    let body = bodies.get(key);
    if (body === undefined) {
      const sent: Record<string, unknown> = { ...forward, model: backend.servedModel };
      if (continuous) sent.stream_options = { ...(forward.stream_options as object), continuous_usage_stats: true };
      body = JSON.stringify(sent);
      bodies.set(key, body);
    }
    return body;
  };
  /** Settles a request that produced nothing billable. */
  const settleUnused = (backendUrl: string | null, outcome: "backend_error" | "partial" | "blocked", status: number) =>
    waitUntil(
      settle({
        backend: backendUrl,
        promptTokens: 0,
        completionTokens: 0,
        totalTokens: 0,
        usageReported: false,
        outcome,
        partial: outcome === "partial",
        status,
      }),
    );
  const path = endpoint === "chat" ? "chat/completions" : "completions";
  const guard: GuardCall = {
    services,
    env,
    principal: caller.principal,
    usageId,
    model: request.model,
    fetcher: options.fetcher,
    waitUntil,
  };
  const screening = await screenPrompt(guard, request);
  if (screening.refusal) {
    Object.assign(screening.refusal.headers, rateLimitHeaders(reservation.snapshot));
    settleUnused(null, "blocked", screening.refusal.status);
    throw screening.refusal;
  }
  timing.sentAt = services.clock.now().getTime();
  const attempt = await sendToBackends(services, pool, path, bodyFor, stream, options, waitUntil);
  if (!attempt.ok) {
    const status = attempt.failure === "timeout" ? 504 : attempt.failure === "none_usable" ? 503 : 502;
    settleUnused(null, "backend_error", status);
    const code = status === 504 ? "gateway_timeout" : status === 503 ? "service_unavailable" : "bad_gateway";
    const detail =
      status === 504
        ? "The inference servers did not answer in time."
        : status === 503
          ? "No inference server for this model is available right now."
          : "The inference servers failed to answer.";
    throw new AppError(code, detail, { headers: rateLimitHeaders(reservation.snapshot) });
  }

  const { backend, response } = attempt;
  const headers: Record<string, string> = {
    ...rateLimitHeaders(reservation.snapshot),
    [OVERHEAD_HEADER]: overheadOf(timing, services),
    "x-request-id": call.requestId,
  };
  // A new license version must be accepted by this date: inference stops then.
  if (caller.principal.reacceptBy) headers[REACCEPT_WARNING_HEADER] = caller.principal.reacceptBy;

  /** The whole answer; one that breaks off is a 502 for the client and nothing billable. */
  const readAnswer = async (): Promise<string> => {
    try {
      return await response.text();
    } catch {
      settleUnused(backend.url, "partial", 502);
      throw new AppError("bad_gateway", "The inference server broke off its answer.");
    } finally {
      attempt.deadline.clear();
    }
  };

  if (!response.ok) {
    // A 4xx from the backend is the client's problem (context too long, bad parameter): pass it
    // on, in OpenAI's error shape whatever the server's own (vLLM's and TGI's differ).
    const refusal = backendRefusal(response.status, await readAnswer());
    settleUnused(backend.url, "backend_error", response.status);
    if (refusal.status !== response.status)
      services.log.warn("inference backend refused the gateway", { backend: backend.url, status: response.status });
    headers["content-type"] = "application/json; charset=utf-8";
    return new Response(JSON.stringify(refusal.body), { status: refusal.status, headers });
  }

  if (!stream || !response.body) {
    const text = await readAnswer();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    const reported = readUsage(json);
    const answered = (usage: Usage) =>
      settle({
        backend: backend.url,
        ...usage,
        usageReported: reported !== undefined,
        outcome: "ok",
        partial: false,
        status: 200,
      });
    // Unreported usage is counted with the model's tokenizer: the bound would overbill. The answer
    // goes out once its row is stored, so that a crash cannot lose the usage of an answered request.
    await (reported
      ? answered(reported)
      : countedUsage(services, counter, bound, { texts: answerTexts(json), chunks: 0 }).then(answered));
    // The answer's tokens were generated and stay billed; its text is withheld.
    const answerRefusal = await screenAnswer(guard, screening, answerTexts(json));
    if (answerRefusal) {
      Object.assign(answerRefusal.headers, headers);
      throw answerRefusal;
    }
    headers["content-type"] = "application/json";
    return new Response(text, { status: 200, headers });
  }

  attempt.deadline.clear();
  /**
   * What the stream used, had it ended as `end`; for a checkpoint (`text` "at most"), what it
   * would be billed were it cut now, or more, never less.
   */
  const streamed = async (report: StreamProgress, end: StreamEnd, text?: GeneratedCount): Promise<SettledUsage> => {
    const usage = report.usage;
    let promptTokens: number;
    let completionTokens: number;
    if (usage) {
      // Also a cut stream's: a server asked for usage on every chunk reported it to the last one seen.
      promptTokens = usage.promptTokens;
      completionTokens = usage.completionTokens;
    } else {
      const seen = report.generated();
      const counted = await countedUsage(
        services,
        counter,
        bound,
        {
          texts: seen.text === undefined ? undefined : [seen.text],
          chunks: report.contentChunks,
          chunksBeyond: seen.chunksBeyond,
        },
        text,
      );
      promptTokens = counted.promptTokens;
      completionTokens = counted.completionTokens;
    }
    return {
      backend: backend.url,
      promptTokens,
      completionTokens,
      totalTokens: usage && end === "done" ? usage.totalTokens : promptTokens + completionTokens,
      usageReported: usage !== undefined,
      outcome: end === "done" ? "ok" : end === "client_closed" ? "client_closed" : "partial",
      partial: end !== "done",
      status: end === "done" ? 200 : 499,
    };
  };
  let running = true;
  /** Whether the answer's text goes to the guard model once the stream ended. */
  const screensAnswer = screening.policy?.screenResponses === true;
  const body = meterEventStream(response.body, {
    clientWantsUsage,
    continuousUsageAdded: addsContinuousUsage(backend),
    now: () => services.clock.now().getTime(),
    // The stream's end (`[DONE]`) waits for this: a stream that ended well is complete for its
    // client only once its row is stored.
    onEnd: (report) => {
      running = false;
      if (report.end === "client_closed") attempt.deadline.abort();
      const stored = streamed(report, report.end).then(settle);
      waitUntil(stored);
      if (screensAnswer) waitUntil(screenStreamedAnswer(guard, screening, report.generated().text));
      return stored;
    },
    keepAllText: screensAnswer,
    // A crash loses at most one interval of a long stream: the quota object bills the last
    // checkpoint (as a cut stream) if the stream's settlement never comes. A checkpoint bills the
    // prompt as counted once for the request and the text so far at most a token per byte, so
    // that it costs the same however long the stream has run; only the settlement tokenizes text.
    checkpoint: {
      everyMs: options.checkpointEveryMs,
      report: (progress) =>
        waitUntil(
          streamed(progress, "backend_cut", "at most").then((record) => {
            if (running) isolateLeases.checkpoint(organizationId, reservation, settled(record), quota);
          }),
        ),
    },
  });
  headers["content-type"] = "text/event-stream; charset=utf-8";
  headers["cache-control"] = "no-cache";
  return new Response(body, { status: 200, headers });
}

/** What was generated, as far as the gateway saw it, for counting usage no server reported. */
interface SeenGeneration {
  /** The generated texts (one per choice, or a stream's deltas); undefined when unreadable. */
  texts: readonly string[] | undefined;
  /** Chunks that carried generated text: each is at least one token. */
  chunks: number;
  /** Of those, the chunks whose text was not kept (past the meter's limit). */
  chunksBeyond?: number;
}

/**
 * How the text generated is counted: `counted` with the tokenizer, or `at most`, a figure never
 * below that count, without the tokenizer (`TokenCounter.generatedAtMost`).
 */
type GeneratedCount = "counted" | "at most";

/**
 * The usage of an answer whose server reported none, counted with the model's own tokenizer
 * after the answer went out: the prompt as the server renders it, the completion as the tokens of
 * the text generated (and, past the text kept, one token per chunk), or with `text` "at most", a
 * figure never below those tokens, which needs no tokenizing. Every count is held under
 * the bound that was reserved, and a completion is never less than its chunks, each of which is
 * a token at least. Should counting fail, the bound stands for the prompt and the chunks for the
 * completion (a plain answer's at its bound). A family without a tokenizer here (Llama 3.x, whose
 * tokenizer is not Llama 2's) is billed the reserved bound for its prompt, which its server
 * prefilled whole before the first token, and a floor it surely reached for its completion: a
 * token per chunk or per generated text.
 */
async function countedUsage(
  services: Services,
  counter: RequestTokenCounter | undefined,
  bound: TokenBound,
  seen: SeenGeneration,
  text: GeneratedCount = "counted",
): Promise<Usage> {
  let promptTokens = bound.prompt;
  let generated: number | undefined;
  try {
    if (counter) {
      promptTokens = Math.min(bound.prompt, (await counter.prompt()) ?? bound.prompt);
      if (seen.texts) {
        const tokens = text === "counted" ? await counter.generated(seen.texts) : counter.generatedAtMost(seen.texts);
        generated = tokens + (seen.chunksBeyond ?? 0);
      }
    }
  } catch (error) {
    services.log.warn("tokens not counted; the reservation's bound is billed", { error: String(error) });
  }
  const plain = counter ? bound.completion : (seen.texts?.length ?? 0);
  const fallback = seen.chunks > 0 || seen.chunksBeyond !== undefined ? seen.chunks : plain;
  const completionTokens = Math.min(bound.completion, Math.max(generated ?? fallback, seen.chunks));
  return { promptTokens, completionTokens, totalTokens: promptTokens + completionTokens };
}

/** The texts a plain answer generated: each choice's content, text, reasoning and tool-call arguments. */
function answerTexts(json: unknown): string[] | undefined {
  const choices = isObject(json) && Object.hasOwn(json, "choices") ? json.choices : undefined;
  if (!Array.isArray(choices)) return undefined;
  const texts: string[] = [];
  const add = (holder: unknown, key: string) => {
    if (!isObject(holder) || !Object.hasOwn(holder, key)) return;
    const value = holder[key];
    if (typeof value === "string" && value !== "") texts.push(value);
  };
  for (const choice of choices) {
    if (!isObject(choice)) continue;
    add(choice, "text");
    const message = Object.hasOwn(choice, "message") ? choice.message : undefined;
    add(message, "content");
    add(message, "reasoning_content");
    const calls = isObject(message) && Object.hasOwn(message, "tool_calls") ? message.tool_calls : undefined;
    if (Array.isArray(calls)) {
      for (const call of calls)
        add(isObject(call) && Object.hasOwn(call, "function") ? call.function : undefined, "arguments");
    }
  }
  return texts;
}
