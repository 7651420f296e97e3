/**
 * Access JWTs for tests, signed with the throwaway key the test config makes (its public half is
 * the `ACCESS_JWKS` the gateway trusts). Every claim can be overridden, so the security tests can
 * build exactly the bad token they mean.
 */
import { env } from "cloudflare:workers";
import { importJWK, type JWK, type JWTPayload, SignJWT, UnsecuredJWT } from "jose";
import type { AdminRole } from "../../worker/config";

/** The instant test tokens are issued at unless a test says otherwise. */
export const TOKEN_NOW = new Date("2026-03-02T09:00:00.000Z");

/** What a test token says. `role: null` mints a valid token for someone with no reviewer role. */
export interface AdminTokenOptions extends JWTPayload {
  email?: string;
  role?: AdminRole | null;
  /** Issue time; the token lives `ttlSeconds` from it. */
  issuedAt?: Date;
  ttlSeconds?: number;
}

/** The claims of a Cloudflare Access application token for a reviewer with `role`. */
export function accessClaims({
  email = "reviewer@example.com",
  role = "reviewer",
  issuedAt = TOKEN_NOW,
  ttlSeconds = 3600,
  ...overrides
}: AdminTokenOptions = {}): JWTPayload {
  const iat = Math.floor(issuedAt.getTime() / 1000);
  return {
    iss: env.ACCESS_TEAM_DOMAIN,
    aud: [env.ACCESS_AUD],
    sub: `user-${email}`,
    email,
    type: "app",
    // Group names follow the default ADMIN_ROLES of wrangler.toml: modelgate-reviewers, …
    groups: role ? [`modelgate-${role}s`] : [],
    iat,
    nbf: iat,
    exp: iat + ttlSeconds,
    ...overrides,
  };
}

/** Signs claims as Access would, with the test key unless another key (and algorithm) is given. */
export async function signAccessClaims(
  claims: JWTPayload,
  signer: { key?: CryptoKey | Uint8Array | JWK; alg?: string; kid?: string } = {},
): Promise<string> {
  const privateJwk = JSON.parse(env.TEST_ACCESS_PRIVATE_JWK) as JWK;
  const alg = signer.alg ?? "ES256";
  const key = signer.key ?? (await importJWK(privateJwk, alg));
  return new SignJWT(claims).setProtectedHeader({ alg, kid: signer.kid ?? privateJwk.kid, typ: "JWT" }).sign(key);
}

/** A valid Access token for a reviewer holding `role`, with any claim overridden. */
export async function adminToken(options: AdminTokenOptions = {}): Promise<string> {
  return signAccessClaims(accessClaims(options));
}

/** An `alg: none` token carrying otherwise valid claims. */
export function unsignedToken(options: AdminTokenOptions = {}): string {
  return new UnsecuredJWT(accessClaims(options)).encode();
}

/** Request headers that carry an Access token, plus a JSON content type for bodies. */
export function accessHeaders(token: string, extra: Record<string, string> = {}): Record<string, string> {
  return { "cf-access-jwt-assertion": token, "content-type": "application/json", ...extra };
}
