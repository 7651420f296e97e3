/**
 * Who may read an organization's own data (`GET /v1/organization`, `GET /v1/usage`): a signed-in
 * member of it, or a personal access token of it. A token only reads, and only its own
 * organization: naming another one is refused rather than quietly answered with its own.
 */
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { tokenProblem } from "../tokens/middleware";
import { checkAccessToken, type TokenPrincipal } from "../tokens/service";
import { bearerToken } from "./bearer";
import { type MemberPrincipal, memberOf } from "./members";

/** The reader of a request and the organization it reads. */
export type OrganizationReader =
  | { kind: "member"; organizationId: string; member: MemberPrincipal }
  | { kind: "token"; organizationId: string; token: TokenPrincipal };

/**
 * The request's reader: a bearer token when the request sends `Authorization`, else the session's
 * member (of the organization named by `?organization=` or `x-modelgate-organization`, or the
 * only one). 401 without either, 403 for an organization the caller does not belong to.
 */
export async function organizationReader(c: Context<HonoEnv>): Promise<OrganizationReader> {
  const authorization = c.req.header("authorization");
  if (authorization === undefined) {
    const member = await memberOf(c, "viewer");
    return { kind: "member", organizationId: member.organizationId, member };
  }
  const services = c.get("services");
  const bearer = bearerToken(authorization);
  // Either scope reads: the organization's data is not what the scopes guard.
  let check = await checkAccessToken(services, bearer, "inference");
  if (!check.ok && check.refusal === "scope") check = await checkAccessToken(services, bearer, "download");
  if (!check.ok) throw tokenProblem(check.refusal, "inference");
  const wanted = c.req.query("organization") ?? c.req.header("x-modelgate-organization");
  if (wanted !== undefined && wanted !== check.principal.organizationId) {
    throw new AppError("forbidden", "An access token reads only its own organization.");
  }
  return { kind: "token", organizationId: check.principal.organizationId, token: check.principal };
}
