import { AppError, type ProblemCode } from "../errors";

/** OpenAI's error `type` and `code` for each of our problem codes, as OpenAI clients expect them. */
const OPENAI: Partial<Record<ProblemCode, { type: string; code: string }>> = {
  unauthorized: { type: "invalid_request_error", code: "invalid_api_key" },
  forbidden: { type: "invalid_request_error", code: "permission_denied" },
  not_found: { type: "invalid_request_error", code: "model_not_found" },
  validation_failed: { type: "invalid_request_error", code: "invalid_request" },
  malformed_body: { type: "invalid_request_error", code: "invalid_json" },
  unsupported_media_type: { type: "invalid_request_error", code: "unsupported_media_type" },
  payload_too_large: { type: "invalid_request_error", code: "request_too_large" },
  rate_limited: { type: "requests", code: "rate_limit_exceeded" },
  payment_required: { type: "insufficient_quota", code: "billing_suspended" },
  bad_gateway: { type: "server_error", code: "bad_gateway" },
  service_unavailable: { type: "server_error", code: "service_unavailable" },
  gateway_timeout: { type: "server_error", code: "timeout" },
  internal_error: { type: "server_error", code: "internal_error" },
};

/** Paths that speak OpenAI's API, whose errors take OpenAI's shape instead of problem+json. */
export function isOpenAiPath(pathname: string): boolean {
  return (
    pathname === "/v1/models" ||
    /^\/v1\/models\/[^/]+$/.test(pathname) ||
    pathname === "/v1/chat/completions" ||
    pathname === "/v1/completions"
  );
}

/**
 * The gateway's own surfaces under `/v1` (applications, tokens, …), and its own routes below
 * `/v1/models/{id}`: everything else under `/v1` is OpenAI's namespace. A test walks the app's
 * routes so that a new surface cannot be missing here.
 */
export const GATEWAY_V1_SURFACES: ReadonlySet<string> = new Set([
  "applications",
  "auth",
  "billing",
  "download",
  "licenses",
  "organization",
  "tokens",
  "usage",
]);
/** The gateway's routes below `/v1/models/{id}` (OpenAI has none there). */
export const GATEWAY_MODEL_ROUTES: ReadonlySet<string> = new Set(["manifest", "download.sh"]);

/**
 * Whether `pathname` lies in OpenAI's API namespace (`/v1/embeddings`, `/v1/responses`,
 * `/v1/chat/completions`, …) rather than on one of the gateway's own `/v1` surfaces. A request
 * there that no route serves gets OpenAI's answer to an unknown URL, which its clients parse.
 */
export function isOpenAiNamespace(pathname: string): boolean {
  if (!pathname.startsWith("/v1/")) return false;
  const [, , surface = "", model, below] = pathname.split("/");
  if (GATEWAY_V1_SURFACES.has(surface)) return false;
  return !(surface === "models" && model !== undefined && below !== undefined && GATEWAY_MODEL_ROUTES.has(below));
}

/** OpenAI's answer to a URL it does not serve: 404, `invalid_request_error`, code `unknown_url`. */
export function unknownOpenAiUrl(method: string, pathname: string, requestId?: string): Response {
  const shown = pathname.length > 200 ? `${pathname.slice(0, 200)}…` : pathname;
  return openAiErrorResponse(
    new AppError(
      "not_found",
      `Unknown request URL: ${method} ${shown}. This gateway serves POST /v1/chat/completions, POST /v1/completions and GET /v1/models.`,
      { extensions: { openaiCode: "unknown_url" } },
    ),
    requestId,
  );
}

/** Renders an error as `{error: {message, type, param, code}}` with the same status and headers. */
export function openAiErrorResponse(error: AppError, requestId?: string): Response {
  const mapped = OPENAI[error.code] ?? { type: "invalid_request_error", code: error.code };
  const code = typeof error.extensions.openaiCode === "string" ? error.extensions.openaiCode : mapped.code;
  const headers = new Headers(error.headers);
  headers.set("content-type", "application/json; charset=utf-8");
  if (requestId) headers.set("x-request-id", requestId);
  const param = typeof error.extensions.param === "string" ? error.extensions.param : null;
  return new Response(JSON.stringify({ error: { message: error.message, type: mapped.type, param, code } }), {
    status: error.status,
    headers,
  });
}
