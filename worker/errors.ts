import type { ContentfulStatusCode } from "hono/utils/http-status";

/**
 * The closed set of problem codes the gateway answers with. Clients and tests match on these,
 * never on the prose in `detail`. Each code has exactly one HTTP status.
 */
export const PROBLEM_CODES = {
  validation_failed: 400,
  malformed_body: 400,
  invalid_signature: 400,
  unauthorized: 401,
  payment_required: 402,
  forbidden: 403,
  cross_site_request: 403,
  conflict_of_interest: 403,
  export_restricted: 403,
  license_reacceptance_required: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  stale_license: 409,
  invalid_state: 409,
  reapply_cooldown: 409,
  token_limit: 409,
  precondition_failed: 412,
  payload_too_large: 413,
  unsupported_media_type: 415,
  range_not_satisfiable: 416,
  rate_limited: 429,
  internal_error: 500,
  bad_gateway: 502,
  service_unavailable: 503,
  gateway_timeout: 504,
} as const satisfies Record<string, ContentfulStatusCode>;

export type ProblemCode = keyof typeof PROBLEM_CODES;

const TITLES: Record<ProblemCode, string> = {
  validation_failed: "The request failed validation",
  malformed_body: "The request body could not be parsed",
  invalid_signature: "The signature does not verify",
  unauthorized: "Authentication is required",
  payment_required: "Payment is required",
  forbidden: "Not allowed",
  cross_site_request: "Cross-site request refused",
  conflict_of_interest: "You may not decide a case you are party to",
  export_restricted: "Not available from your country",
  license_reacceptance_required: "A new license version must be accepted",
  not_found: "Not found",
  method_not_allowed: "Method not allowed",
  conflict: "Conflict with the current state",
  stale_license: "The license version you accepted is no longer current",
  invalid_state: "Not possible in the current state",
  reapply_cooldown: "Too soon to apply again",
  token_limit: "Too many live access tokens",
  precondition_failed: "The resource changed",
  payload_too_large: "The request body is too large",
  unsupported_media_type: "Unsupported content type",
  range_not_satisfiable: "Range not satisfiable",
  rate_limited: "Too many requests",
  internal_error: "Internal error",
  bad_gateway: "The upstream server failed",
  service_unavailable: "Temporarily unavailable",
  gateway_timeout: "The upstream server did not answer in time",
};

/** One field-level validation failure, as reported in `errors` of a problem document. */
export interface FieldError {
  /** JSON pointer-like dotted path of the offending field, e.g. `organization.country`. */
  field: string;
  message: string;
}

/** Body of an RFC 9457 problem document as this gateway writes it. */
export interface ProblemDocument {
  type: string;
  title: string;
  status: number;
  code: ProblemCode;
  detail: string;
  instance?: string;
  requestId?: string;
  errors?: FieldError[];
  [extension: string]: unknown;
}

/**
 * An error the gateway means to answer with. Anything thrown that is not an `AppError` is a bug
 * and is answered as a generic 500 after its stack is logged.
 */
export class AppError extends Error {
  readonly code: ProblemCode;
  readonly status: ContentfulStatusCode;
  readonly errors: FieldError[] | undefined;
  readonly extensions: Record<string, unknown>;
  readonly headers: Record<string, string>;

  constructor(
    code: ProblemCode,
    detail: string,
    options: {
      errors?: FieldError[];
      extensions?: Record<string, unknown>;
      headers?: Record<string, string>;
      cause?: unknown;
    } = {},
  ) {
    super(detail, { cause: options.cause });
    this.name = "AppError";
    this.code = code;
    this.status = PROBLEM_CODES[code];
    this.errors = options.errors;
    this.extensions = options.extensions ?? {};
    this.headers = options.headers ?? {};
  }

  /** Renders the RFC 9457 document for this error. */
  toProblem(instance?: string, requestId?: string): ProblemDocument {
    return {
      type: `https://modelgate.dev/problems/${this.code.replaceAll("_", "-")}`,
      title: TITLES[this.code],
      status: this.status,
      code: this.code,
      detail: this.message,
      ...(instance ? { instance } : {}),
      ...(requestId ? { requestId } : {}),
      ...(this.errors ? { errors: this.errors } : {}),
      ...this.extensions,
    };
  }
}

/** Builds the `application/problem+json` response for an error. */
export function problemResponse(error: AppError, instance?: string, requestId?: string): Response {
  const headers = new Headers(error.headers);
  headers.set("content-type", "application/problem+json; charset=utf-8");
  if (requestId) headers.set("x-request-id", requestId);
  return new Response(JSON.stringify(error.toProblem(instance, requestId)), {
    status: error.status,
    headers,
  });
}
