import type { MiddlewareHandler } from "hono";
import { bearerToken } from "../auth/bearer";
import type { TokenScope } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { reacceptanceProblem } from "../licenses/reacceptance";
import { checkAccessToken, type TokenRefusal } from "./service";

const MESSAGES: Record<TokenRefusal, [401 | 403, string]> = {
  missing: [401, "Send a personal access token as `Authorization: Bearer mg_…`."],
  invalid: [401, "The access token is not valid."],
  expired: [401, "The access token has expired."],
  revoked: [401, "The access token was revoked."],
  member_removed: [
    401,
    "The access token's member no longer belongs to the organization, so the token stopped working.",
  ],
  grant_inactive: [403, "Your organization's access to this model family is suspended or revoked."],
  scope: [403, "The access token lacks the scope this call needs."],
  reacceptance_required: [403, "A new version of the license must be accepted before access resumes."],
};

/**
 * The problem for a refused token; `baseUrl` makes the link in a re-acceptance refusal absolute.
 */
export function tokenProblem(refusal: TokenRefusal, scope: TokenScope, baseUrl = ""): AppError {
  if (refusal === "reacceptance_required") return reacceptanceProblem(baseUrl);
  const [status, detail] = MESSAGES[refusal];
  return new AppError(status === 401 ? "unauthorized" : "forbidden", detail, {
    extensions: refusal === "scope" ? { requiredScope: scope } : {},
    headers: status === 401 ? { "www-authenticate": 'Bearer realm="modelgate"' } : {},
  });
}

/** Requires a live personal access token with `scope`; puts its principal on the context. */
export function requireAccessToken(scope: TokenScope): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    const check = await checkAccessToken(c.get("services"), bearerToken(c.req.header("authorization")), scope);
    if (!check.ok) throw tokenProblem(check.refusal, scope, c.get("services").config.publicBaseUrl);
    c.set("principal", check.principal);
    await next();
  };
}
