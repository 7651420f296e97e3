import { z } from "zod";

export const ADMIN_ROLES = ["reviewer", "approver", "admin"] as const;
export type AdminRole = (typeof ADMIN_ROLES)[number];

const roleMatchers = z.partialRecord(z.enum(ADMIN_ROLES), z.array(z.string().min(1)));

/** Deployment settings read from the Worker's vars and secrets, checked once per isolate. */
export interface Config {
  publicBaseUrl: string;
  mailFrom: string;
  access: {
    teamDomain: string;
    audience: string;
    /** Inline JWKS (local development); when absent, the team's certs endpoint is used. */
    jwks: { keys: Record<string, unknown>[] } | undefined;
  };
  /** Role → matchers: an e-mail, `*@domain`, or `group:NAME` from the token's groups. */
  adminRoles: Partial<Record<AdminRole, string[]>>;
}

const cache = new WeakMap<object, Config>();

/** Reads the configuration from bindings. Throws on a malformed deployment setting. */
export function readConfig(env: Env): Config {
  const hit = cache.get(env);
  if (hit) return hit;
  const jwksText = env.ACCESS_JWKS?.trim();
  const config: Config = {
    publicBaseUrl: env.PUBLIC_BASE_URL.replace(/\/+$/, ""),
    mailFrom: env.MAIL_FROM,
    access: {
      teamDomain: env.ACCESS_TEAM_DOMAIN.replace(/\/+$/, ""),
      audience: env.ACCESS_AUD,
      jwks: jwksText ? (JSON.parse(jwksText) as { keys: Record<string, unknown>[] }) : undefined,
    },
    adminRoles: roleMatchers.parse(JSON.parse(env.ADMIN_ROLES || "{}")),
  };
  cache.set(env, config);
  return config;
}
