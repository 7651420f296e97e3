/**
 * Reviewer authentication: a Cloudflare Access JWT in `Cf-Access-Jwt-Assertion` is the only way
 * into the admin API. Access signs it after the reviewer logged in with the team's identity
 * provider; we verify signature, issuer, audience and expiry ourselves (never trusting the mere
 * presence of the header) and map the identity onto roles from configuration.
 */
import type { Context, MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  type JWTPayload,
  type JWTVerifyGetKey,
  errors as joseErrors,
  jwtVerify,
} from "jose";
import { ADMIN_ROLES, type AdminRole, type Config } from "../config";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import type { Clock } from "../platform/clock";
import { jsonLogger, type Logger } from "../platform/logger";
import { ownProperty } from "../platform/untrusted";

/** The header Cloudflare Access puts the signed identity in. */
export const ACCESS_JWT_HEADER = "cf-access-jwt-assertion";

/**
 * The cookie the local sign-in page (`/admin/dev-login`) keeps a pasted dev token in.
 *
 * Why a cookie of our own, read only in dev mode, rather than Access's `CF_Authorization`: in
 * production Access already puts the JWT in `Cf-Access-Jwt-Assertion` on every request it lets
 * through to `/admin`, so the gateway never needs a cookie there, and keeping the production path
 * header-only means there is exactly one way in to audit. Locally there is no Access in front of
 * the browser, so the pasted token has to travel somehow; it goes through the very same
 * `verifyAccessToken` (signature against the configured JWKS, issuer, audience, expiry). The
 * cookie is honoured only with `DEV_LOGIN=1` on a loopback origin, which production never has.
 * `__Host-` pins it to this origin and path `/`; HttpOnly keeps it from scripts; SameSite=Strict
 * keeps other sites' requests from carrying it at all.
 */
export const DEV_ACCESS_COOKIE = "__Host-modelgate-dev-access";

/**
 * Whether the local sign-in page and its cookie exist: only with an explicit `DEV_LOGIN=1` on a
 * loopback origin (see `readConfig`); trusting an inline JWKS alone no longer opens it.
 */
export function devSignInEnabled(config: Pick<Config, "access">): boolean {
  return config.access.devLogin;
}

/** Algorithms Cloudflare Access signs with; anything else (`none`, HMAC) is refused. */
export const ACCESS_ALGORITHMS = ["RS256", "ES256"] as const;

/** Tolerated clock skew between Access and this Worker. */
const CLOCK_TOLERANCE_SECONDS = 30;

/** A verified reviewer. */
export interface AdminIdentity {
  email: string;
  /** Access's stable user id (`sub`). */
  subject: string;
  /** Every role the reviewer holds, lower roles implied by higher ones, lowest first. */
  roles: AdminRole[];
}

/** Rank of each role: a role includes every role of lower rank (admin ⊃ approver ⊃ reviewer). */
function rank(role: AdminRole): number {
  return ADMIN_ROLES.indexOf(role);
}

/** Whether an identity holds `required` or a role above it. */
export function holdsRole(identity: Pick<AdminIdentity, "roles">, required: AdminRole): boolean {
  return identity.roles.some((role) => rank(role) >= rank(required));
}

/**
 * The group names a token carries, from `groups` or Access's `custom.groups` (names or
 * `{id, name}`). Every claim is read as the token's own property: an inherited `custom` or
 * `groups` would be whatever some request managed to put on `Object.prototype`.
 */
function tokenGroups(payload: JWTPayload): string[] {
  const out: string[] = [];
  for (const source of [ownProperty(payload, "groups"), ownProperty(ownProperty(payload, "custom"), "groups")]) {
    if (!Array.isArray(source)) continue;
    for (const group of source) {
      if (typeof group === "string") out.push(group);
      else {
        const name = ownProperty(group, "name");
        const id = ownProperty(group, "id");
        if (typeof name === "string") out.push(name);
        if (typeof id === "string") out.push(id);
      }
    }
  }
  return out;
}

function matches(matcher: string, email: string, groups: readonly string[]): boolean {
  if (matcher.startsWith("group:")) return groups.includes(matcher.slice("group:".length));
  const wanted = matcher.toLowerCase();
  if (wanted.startsWith("*@")) return email.endsWith(wanted.slice(1));
  return email === wanted;
}

/**
 * The roles configuration gives a verified token: each role whose matchers (exact e-mail,
 * `*@domain`, `group:NAME`) match, plus every role below the highest one matched.
 */
export function rolesFor(payload: JWTPayload & { email: string }, adminRoles: Config["adminRoles"]): AdminRole[] {
  const email = payload.email.toLowerCase();
  const groups = tokenGroups(payload);
  let highest = -1;
  for (const role of ADMIN_ROLES) {
    if ((adminRoles[role] ?? []).some((matcher) => matches(matcher, email, groups))) {
      highest = Math.max(highest, rank(role));
    }
  }
  return ADMIN_ROLES.filter((role) => rank(role) <= highest);
}

const localKeySets = new WeakMap<object, JWTVerifyGetKey>();
const remoteKeySets = new Map<string, JWTVerifyGetKey>();

/**
 * The keys Access tokens are checked against: the inline JWKS when configured (local development
 * and tests), otherwise the team's certs endpoint, fetched and cached once per isolate so that
 * key rotation is picked up without a request paying for a fetch every time.
 */
function accessKeys(jwks: Config["access"]["jwks"], teamDomain: string): JWTVerifyGetKey {
  if (jwks) {
    let keys = localKeySets.get(jwks);
    if (!keys) {
      keys = createLocalJWKSet(jwks as Parameters<typeof createLocalJWKSet>[0]);
      localKeySets.set(jwks, keys);
    }
    return keys;
  }
  let keys = remoteKeySets.get(teamDomain);
  if (!keys) {
    keys = createRemoteJWKSet(new URL(`${teamDomain}/cdn-cgi/access/certs`));
    remoteKeySets.set(teamDomain, keys);
  }
  return keys;
}

/**
 * Verifies an Access JWT and resolves the reviewer it names. Throws `unauthorized` for any token
 * that is not a valid, current Access token for this application, and `service_unavailable` when
 * the team's keys cannot be fetched (so an outage at Access does not read as "bad token").
 *
 * Without an issuer and an audience configured, every token is refused and the reason logged
 * (`deps.log`, else a plain JSON logger): jose checks `iss` and `aud` only when it is given them,
 * so verifying without them would admit a token of any other Access application of the team —
 * same team key, same signature — and hold its user to nothing but `ADMIN_ROLES`.
 */
export async function verifyAccessToken(
  token: string,
  deps: { config: Pick<Config, "access" | "adminRoles">; clock: Clock; log?: Pick<Logger, "error"> },
): Promise<AdminIdentity> {
  const { access } = deps.config;
  const { teamDomain: issuer, audience } = access;
  if (!issuer || !audience) {
    const missing = [...(issuer ? [] : ["ACCESS_TEAM_DOMAIN"]), ...(audience ? [] : ["ACCESS_AUD"])];
    (deps.log ?? jsonLogger()).error("Access token refused: the admin door has no issuer or audience to check", {
      missing,
    });
    throw new AppError("unauthorized", "Sign-in through Cloudflare Access is not configured on this gateway.");
  }
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, accessKeys(access.jwks, issuer), {
      algorithms: [...ACCESS_ALGORITHMS],
      issuer,
      audience,
      requiredClaims: ["exp", "iat", "sub", "email"],
      clockTolerance: CLOCK_TOLERANCE_SECONDS,
      currentDate: deps.clock.now(),
    }));
  } catch (error) {
    if (error instanceof joseErrors.JWKSTimeout || !(error instanceof joseErrors.JOSEError)) {
      throw new AppError("service_unavailable", "The Access signing keys could not be loaded.", { cause: error });
    }
    throw new AppError("unauthorized", "The Access token is not valid.", { cause: error });
  }
  const email = ownProperty(payload, "email");
  const subject = ownProperty(payload, "sub");
  if (typeof email !== "string" || !email.includes("@") || typeof subject !== "string") {
    throw new AppError("unauthorized", "The Access token names no user.");
  }
  const identity = { email: email.toLowerCase(), subject };
  return { ...identity, roles: rolesFor({ ...payload, email: identity.email }, deps.config.adminRoles) };
}

/** The verified reviewer of this request, verifying the Access token on first use. */
export async function adminIdentity(c: Context<HonoEnv>): Promise<AdminIdentity> {
  const known = c.get("admin");
  if (known) return known;
  const { config, clock, log } = c.get("services");
  const token =
    c.req.header(ACCESS_JWT_HEADER)?.trim() ||
    (devSignInEnabled(config) ? getCookie(c, DEV_ACCESS_COOKIE)?.trim() : undefined);
  if (!token) throw new AppError("unauthorized", "Sign in through Cloudflare Access.");
  const identity = await verifyAccessToken(token, { config, clock, log });
  if (identity.roles.length === 0) {
    throw new AppError("forbidden", "Your account holds no reviewer role.");
  }
  c.set("admin", identity);
  return identity;
}

/**
 * Admits requests from a reviewer holding `role` or a higher one: 401 without a valid Access
 * token, 403 when the reviewer's roles fall short.
 */
export function requireRole(role: AdminRole): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    const identity = await adminIdentity(c);
    if (!holdsRole(identity, role)) {
      throw new AppError("forbidden", `This needs the ${role} role.`);
    }
    await next();
  };
}

/** The reviewer of a request that passed `requireRole`. */
export function currentAdmin(c: Context<HonoEnv>): AdminIdentity {
  const identity = c.get("admin");
  if (!identity) throw new Error("currentAdmin() used on a route without requireRole()");
  return identity;
}
