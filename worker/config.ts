import { z } from "zod";
import { type BackendPools, parseBackendPools } from "./inference/backends";

export const ADMIN_ROLES = ["reviewer", "approver", "admin"] as const;
export type AdminRole = (typeof ADMIN_ROLES)[number];

const roleMatchers = z.partialRecord(z.enum(ADMIN_ROLES), z.array(z.string().min(1)));

/** Deployment settings read from the Worker's vars and secrets, checked once per isolate. */
export interface Config {
  publicBaseUrl: string;
  mailFrom: string;
  access: {
    /**
     * The issuer every Access token must name (`ACCESS_TEAM_DOMAIN`, no trailing slash), whose
     * certs endpoint holds the keys. Undefined when the var is missing or blank: then no token is
     * accepted (`verifyAccessToken`), since jose checks an issuer only when it is told one.
     */
    teamDomain: string | undefined;
    /**
     * The Access application's audience tag (`ACCESS_AUD`). Undefined when missing or blank: then
     * no token is accepted, since without it a token of any other Access application of the
     * same team (a wiki, a dashboard anyone in the company may open) would pass for ours.
     */
    audience: string | undefined;
    /** Inline JWKS (local development); when absent, the team's certs endpoint is used. */
    jwks: { keys: Record<string, unknown>[] } | undefined;
    /** The local sign-in page (`/admin/dev-login`): only with `DEV_LOGIN=1` on a loopback origin. */
    devLogin: boolean;
  };
  /** Role → matchers: an e-mail, `*@domain`, or `group:NAME` from the token's groups. */
  adminRoles: Partial<Record<AdminRole, string[]>>;
  downloads: {
    /** Default lifetime of a signed link, in seconds; never more than `MAX_LINK_TTL_SECONDS`. */
    linkTtlSeconds: number;
    /** Whole downloads a link allows, counted in bytes: ranges and resumes draw on the same budget. */
    maxDownloadsPerLink: number;
    /** Ed25519 private JWKs, newest (the signing one) first. Empty when downloads are not set up. */
    signingKeys: Record<string, unknown>[];
  };
  inference: {
    /** The pools of `INFERENCE_BACKENDS`; admins add more in the console (`backend-store.ts`). */
    backends: BackendPools;
    /** Private or loopback hosts an operator allowed as backends. */
    allowedHosts: string[];
    /** Seals the API keys of backends added in the console; without it they cannot have keys. */
    keysSecret: string | undefined;
    defaultLimits: { requestsPerMinute: number; tokensPerMinute: number; monthlyTokenBudget: number };
    defaultMaxTokens: number;
  };
  billing: BillingConfig;
  audit: {
    /**
     * Ed25519 private JWKs that sign checkpoints of the audit chain's head, newest (the signing one)
     * first; a retired key may stay listed without its private part so its checkpoints still verify.
     * Empty: anchoring is off and verification checks the hash chain alone.
     */
    signingKeys: Record<string, unknown>[];
    /** Audited events between the checkpoints writers leave (the cron also anchors each minute). */
    checkpointEvery: number;
  };
  usage: {
    /** Hours a quota object keeps raw usage rows after archiving them to `USAGE_ARCHIVE`. */
    rawRetentionHours: number;
    /** Milliseconds between writes of an open hour's totals to D1. */
    syncMs: number;
    /** Minutes of usage one billing interval (one meter event per dimension) carries; divides 60. */
    intervalMinutes: number;
  };
}

/** Whether this gateway bills through Stripe: without a secret key, usage is only metered. */
export function billingEnabled(config: Pick<Config, "billing">): boolean {
  return config.billing.secretKey !== undefined;
}

/** Stripe settings; `secretKey` undefined means billing is off (the gateway still meters usage). */
export interface BillingConfig {
  secretKey: string | undefined;
  /** Where the Stripe API is (a stand-in locally and in tests); undefined: api.stripe.com. */
  api: { host: string; port: number; protocol: "http" | "https" } | undefined;
  /** Webhook signing secrets; several during a rotation. */
  webhookSecrets: string[];
  /** Per family: the plan, its Stripe prices, and the quota limits it grants. */
  plans: Record<string, { plan: string; prices: string[]; limits?: z.infer<typeof Limits> }>;
  meters: { prompt: string; completion: string };
  /** Days an organization whose payment failed keeps inference before it is suspended. */
  graceDays: number;
}

function stripeApi(base: string | undefined): BillingConfig["api"] {
  if (!base?.trim()) return undefined;
  const url = new URL(base);
  const protocol = url.protocol === "http:" ? "http" : "https";
  return { host: url.hostname, port: Number(url.port || (protocol === "http" ? 80 : 443)), protocol };
}

const Limits = z.object({
  requestsPerMinute: z.number().int().positive(),
  tokensPerMinute: z.number().int().positive(),
  monthlyTokenBudget: z.number().int().positive(),
});

/**
 * Signed links never live longer than a day: manifests and `download.sh` are fetched by scripts
 * and end up in logs and shell histories, so a leaked link should die soon. A longer download
 * asks for a fresh manifest; `download.sh` resumes where it stopped.
 */
export const MAX_LINK_TTL_SECONDS = 86_400;

/** `USAGE_INTERVAL_MINUTES`: a divisor of 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60); 60 when unset. */
function intervalMinutes(value: string | undefined): number {
  const minutes = positiveInt(value, 60, "USAGE_INTERVAL_MINUTES");
  if (60 % minutes !== 0) throw new Error(`USAGE_INTERVAL_MINUTES must divide 60, not ${minutes}`);
  return minutes;
}

function positiveInt(value: string | undefined, fallback: number, name: string): number {
  if (value === undefined || value.trim() === "") return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer`);
  return n;
}

/**
 * Whether the local sign-in page is on. It lets anyone holding a token for the configured JWKS in
 * through a form, so it needs an explicit `DEV_LOGIN=1`, and a deployment that sets it on a
 * public origin is refused outright rather than quietly opened.
 */
function devLogin(setting: string | undefined, publicBaseUrl: string): boolean {
  const value = setting?.trim() ?? "";
  if (value === "" || value === "0") return false;
  if (value !== "1") throw new Error("DEV_LOGIN must be 1 or empty");
  const host = new URL(publicBaseUrl).hostname;
  const loopback = host === "localhost" || host === "[::1]" || /^127(\.\d{1,3}){3}$/.test(host);
  if (!loopback) throw new Error(`DEV_LOGIN=1 is refused: PUBLIC_BASE_URL (${publicBaseUrl}) is not a loopback origin`);
  return true;
}

/**
 * The vars a deployed environment must set itself (Wrangler environments inherit none from the
 * top level): without the first two the gateway's links and mail go nowhere, and without the
 * last three its admin door stays shut — no Access token is verified without an issuer and an
 * audience, and no one holds a role without `ADMIN_ROLES`. Every other var has a default in
 * `readConfig`. `npm run deploy:check` refuses an environment that lacks one of these.
 */
export const REQUIRED_VARS = [
  "PUBLIC_BASE_URL",
  "MAIL_FROM",
  "ACCESS_TEAM_DOMAIN",
  "ACCESS_AUD",
  "ADMIN_ROLES",
] as const;

/** A var's value, or undefined when it is missing or only whitespace. */
function nonBlank(value: string | undefined): string | undefined {
  return value?.trim() || undefined;
}

const cache = new WeakMap<object, Config>();

/**
 * Reads the configuration from bindings. Throws on a malformed deployment setting. A missing
 * `ACCESS_TEAM_DOMAIN` or `ACCESS_AUD` is not thrown on: the gateway's public side (applications,
 * downloads, inference) does not depend on them, so it keeps serving while the admin door stays
 * shut and says why in the logs (`verifyAccessToken`); `deploy:check` catches it before a deploy.
 */
export function readConfig(env: Env): Config {
  const hit = cache.get(env);
  if (hit) return hit;
  const jwksText = env.ACCESS_JWKS?.trim();
  const allowedHosts = (env.INFERENCE_ALLOWED_HOSTS ?? "")
    .split(",")
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  const config: Config = {
    publicBaseUrl: env.PUBLIC_BASE_URL.replace(/\/+$/, ""),
    mailFrom: env.MAIL_FROM,
    access: {
      teamDomain: nonBlank(env.ACCESS_TEAM_DOMAIN)?.replace(/\/+$/, "") || undefined,
      audience: nonBlank(env.ACCESS_AUD),
      jwks: jwksText ? (JSON.parse(jwksText) as { keys: Record<string, unknown>[] }) : undefined,
      devLogin: devLogin(env.DEV_LOGIN, env.PUBLIC_BASE_URL),
    },
    adminRoles: roleMatchers.parse(JSON.parse(env.ADMIN_ROLES || "{}")),
    downloads: {
      linkTtlSeconds: Math.min(
        MAX_LINK_TTL_SECONDS,
        positiveInt(env.DOWNLOAD_LINK_TTL_SECONDS, 86_400, "DOWNLOAD_LINK_TTL_SECONDS"),
      ),
      maxDownloadsPerLink: positiveInt(env.DOWNLOAD_LINK_MAX_DOWNLOADS, 5, "DOWNLOAD_LINK_MAX_DOWNLOADS"),
      signingKeys: env.DOWNLOAD_SIGNING_KEYS?.trim()
        ? ((JSON.parse(env.DOWNLOAD_SIGNING_KEYS) as { keys: Record<string, unknown>[] }).keys ?? [])
        : [],
    },
    inference: {
      backends: parseBackendPools(env.INFERENCE_BACKENDS, allowedHosts),
      allowedHosts,
      keysSecret: env.INFERENCE_KEYS_SECRET?.trim() || undefined,
      defaultLimits: Limits.parse(
        JSON.parse(
          env.INFERENCE_DEFAULT_LIMITS ||
            '{"requestsPerMinute":60,"tokensPerMinute":100000,"monthlyTokenBudget":10000000}',
        ),
      ),
      defaultMaxTokens: positiveInt(env.INFERENCE_DEFAULT_MAX_TOKENS, 512, "INFERENCE_DEFAULT_MAX_TOKENS"),
    },
    billing: {
      secretKey: env.STRIPE_SECRET_KEY?.trim() || undefined,
      api: stripeApi(env.STRIPE_API_BASE),
      webhookSecrets: (env.STRIPE_WEBHOOK_SECRETS ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
      plans: z
        .record(
          z.string(),
          z.object({ plan: z.string(), prices: z.array(z.string()).default([]), limits: Limits.optional() }),
        )
        .parse(JSON.parse(env.BILLING_PLANS || "{}")),
      meters: {
        prompt: env.STRIPE_METER_PROMPT || "modelgate_prompt_tokens",
        completion: env.STRIPE_METER_COMPLETION || "modelgate_completion_tokens",
      },
      graceDays: positiveInt(env.BILLING_GRACE_DAYS, 7, "BILLING_GRACE_DAYS"),
    },
    audit: {
      signingKeys: env.AUDIT_SIGNING_KEYS?.trim()
        ? ((JSON.parse(env.AUDIT_SIGNING_KEYS) as { keys: Record<string, unknown>[] }).keys ?? [])
        : [],
      checkpointEvery: positiveInt(env.AUDIT_CHECKPOINT_EVERY, 100, "AUDIT_CHECKPOINT_EVERY"),
    },
    usage: {
      rawRetentionHours: positiveInt(env.USAGE_RAW_RETENTION_HOURS, 168, "USAGE_RAW_RETENTION_HOURS"),
      syncMs: positiveInt(env.USAGE_SYNC_SECONDS, 300, "USAGE_SYNC_SECONDS") * 1000,
      intervalMinutes: intervalMinutes(env.USAGE_INTERVAL_MINUTES),
    },
  };
  cache.set(env, config);
  return config;
}
