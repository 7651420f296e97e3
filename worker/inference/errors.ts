import type { AppError, ProblemCode } from "../errors";

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
    pathname === "/v1/completions" ||
    pathname === "/v1/usage"
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
