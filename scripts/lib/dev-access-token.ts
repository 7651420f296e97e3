/**
 * Mints Cloudflare Access–style JWTs with the local dev Access key, which `.dev.vars` tells the
 * gateway to trust. Used by `npm run admin:token` and by the browser tests, so both sign exactly
 * what the gateway's production verification expects.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { importJWK, SignJWT } from "jose";
import { ensureDevAccessKey } from "../dev-access-key";

export const ADMIN_ROLE_NAMES = ["reviewer", "approver", "admin"] as const;
export type AdminRoleName = (typeof ADMIN_ROLE_NAMES)[number];

/** Reads `KEY = "value"` (or single-quoted) lines of `[vars]` in wrangler.toml. */
export function wranglerVars(tomlText: string): Record<string, string> {
  const vars: Record<string, string> = {};
  let inVars = false;
  for (const line of tomlText.split(/\r?\n/)) {
    const table = /^\s*\[+\s*([^\]]+?)\s*\]+\s*$/.exec(line);
    if (table) {
      inVars = table[1] === "vars";
      continue;
    }
    if (!inVars) continue;
    const pair = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(?:#.*)?$/.exec(line);
    if (!pair?.[1]) continue;
    // Basic strings may carry escapes; literal strings (single quotes) are taken as written.
    vars[pair[1]] = pair[2] !== undefined ? (JSON.parse(`"${pair[2]}"`) as string) : (pair[3] ?? "");
  }
  return vars;
}

/** What a dev token says. */
export interface DevAccessTokenOptions {
  email: string;
  role: AdminRoleName;
  ttlSeconds: number;
  /** Extra Access groups beyond the role's own. */
  groups?: string[];
}

/** A dev Access JWT for `email` holding `role`, and the key id it was signed with. */
export async function mintDevAccessToken(
  root: string,
  options: DevAccessTokenOptions,
): Promise<{ token: string; kid: string; vars: Record<string, string> }> {
  const vars = wranglerVars(readFileSync(join(root, "wrangler.toml"), "utf8"));
  const issuer = vars.ACCESS_TEAM_DOMAIN?.replace(/\/+$/, "");
  const audience = vars.ACCESS_AUD;
  if (!issuer || !audience) throw new Error("wrangler.toml [vars] must set ACCESS_TEAM_DOMAIN and ACCESS_AUD");
  const key = await ensureDevAccessKey(root);
  // The default ADMIN_ROLES of wrangler.toml grant roles by Access group: modelgate-reviewers, …
  const groups = [`modelgate-${options.role}s`, ...(options.groups ?? [])];
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ email: options.email, groups, type: "app" })
    .setProtectedHeader({ alg: "ES256", kid: key.kid, typ: "JWT" })
    .setIssuer(issuer)
    .setAudience([audience])
    .setSubject(`dev-${options.email.toLowerCase()}`)
    .setIssuedAt(now)
    .setNotBefore(now)
    .setExpirationTime(now + options.ttlSeconds)
    .sign(await importJWK(key.privateJwk, "ES256"));
  return { token, kid: key.kid, vars };
}
