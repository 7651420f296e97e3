import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import type { HonoEnv } from "../env";
import { AppError, type ProblemCode, problemResponse } from "../errors";
import type { Logger } from "../platform/logger";
import { isOpenAiNamespace, isOpenAiPath, openAiErrorResponse, unknownOpenAiUrl } from "./openai-errors";

const STATUS_CODES: Record<number, ProblemCode> = {
  400: "malformed_body",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  413: "payload_too_large",
  415: "unsupported_media_type",
  429: "rate_limited",
};

/**
 * The error handler, in three tiers: our own `AppError` as its problem document; Hono's
 * `HTTPException` (body limits, malformed input caught by Hono) mapped onto the closed code set;
 * anything else is a bug, logged with its stack and answered as a generic 500.
 */
export function handleError(error: Error, c: Context<HonoEnv>): Response {
  return errorResponse(error, new URL(c.req.url).pathname, c.get("requestId"), c.get("services")?.log);
}

/** `handleError` for a request at `path` that no Hono context carries (the completions fast path). */
export function errorResponse(error: unknown, path: string, requestId?: string, log?: Logger): Response {
  // The OpenAI-compatible routes answer in OpenAI's error shape, which their clients parse.
  const render = (e: AppError) =>
    isOpenAiPath(path) ? openAiErrorResponse(e, requestId) : problemResponse(e, path, requestId);
  if (error instanceof AppError) return render(error);
  if (error instanceof HTTPException && error.status < 500) {
    const code = STATUS_CODES[error.status] ?? "malformed_body";
    return render(new AppError(code, error.message || "The request was refused."));
  }
  const fields = {
    requestId,
    path,
    error: error instanceof Error ? error.message : String(error),
    stack: error instanceof Error ? error.stack : undefined,
  };
  if (log) log.error("unhandled error", fields);
  else console.error(JSON.stringify({ level: "error", message: "unhandled error", ...fields }));
  return render(new AppError("internal_error", "Something went wrong on our side."));
}

/** 404 for every path no route claims; in OpenAI's namespace (`/v1/embeddings`, …), in OpenAI's shape. */
export function handleNotFound(c: Context<HonoEnv>): Response {
  const path = new URL(c.req.url).pathname;
  if (isOpenAiNamespace(path)) return unknownOpenAiUrl(c.req.method, path, c.get("requestId"));
  return problemResponse(new AppError("not_found", `No resource at ${path}.`), path, c.get("requestId"));
}
