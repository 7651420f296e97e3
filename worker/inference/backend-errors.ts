/** OpenAI's error body, as its clients parse it. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** The longest backend message passed on, in characters. */
const MAX_MESSAGE = 2000;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** A property of decoded JSON, read as its own: an inherited one is not the server's. */
const own = (value: Record<string, unknown>, key: string): unknown =>
  Object.hasOwn(value, key) ? value[key] : undefined;
const ownString = (value: Record<string, unknown>, key: string): string | undefined => {
  const found = own(value, key);
  return typeof found === "string" && found !== "" ? found : undefined;
};

/**
 * The message, parameter and code of an inference server's error body, whichever server wrote it:
 * OpenAI's shape and vLLM's current one (`{error: {message, type, param, code}}`), vLLM's older
 * flat ones (`{object: "error", message, type, param, code}`, `{message, type, code}`, with the
 * HTTP status as a number for `code`), TGI's (`{error: "…", error_type: "validation"}`) and
 * FastAPI's validation errors (`{detail: [{msg, …}]}`).
 */
function readBackendError(text: string): { message?: string; param: string | null; code: string | null } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { param: null, code: null };
  }
  if (!isObject(body)) return { param: null, code: null };
  const nested = own(body, "error");
  const source = isObject(nested) ? nested : body;
  const detail = own(body, "detail");
  const message =
    ownString(source, "message") ??
    (typeof nested === "string" && nested !== "" ? nested : undefined) ??
    (typeof detail === "string" && detail !== "" ? detail : undefined) ??
    (Array.isArray(detail)
      ? detail
          .flatMap((d) => (isObject(d) && typeof own(d, "msg") === "string" ? [own(d, "msg") as string] : []))
          .join("; ") || undefined
      : undefined);
  // A numeric `code` is vLLM's copy of the HTTP status, not one of OpenAI's codes.
  return { message, param: ownString(source, "param") ?? null, code: ownString(source, "code") ?? null };
}

/**
 * The answer to a request an inference server refused with a 4xx: the same status (the request
 * was the client's problem: too long a context, a bad parameter) in OpenAI's error shape. A 401
 * or 403 refused the gateway's own credentials, not the client's, and is the gateway's failure.
 */
export function backendRefusal(status: number, text: string): { status: number; body: OpenAiErrorBody } {
  if (status === 401 || status === 403 || status === 407) {
    return {
      status: 502,
      body: {
        error: {
          message: "The inference server refused the gateway's credentials.",
          type: "server_error",
          param: null,
          code: "bad_gateway",
        },
      },
    };
  }
  const read = readBackendError(text);
  const message = read.message ?? `The inference server refused the request (HTTP ${status}).`;
  return {
    status,
    body: {
      error: {
        message: message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}…` : message,
        type: "invalid_request_error",
        param: read.param,
        code: read.code,
      },
    },
  };
}
