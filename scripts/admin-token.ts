/**
 * Mints a Cloudflare Access–style JWT for the local reviewer API, signed with the dev Access key
 * that `.dev.vars` tells the gateway to trust. The gateway verifies it with the same code that
 * verifies real Access tokens in production; only the signing key differs.
 *
 *   npm run admin:token -- --email ann@example.com --role approver [--ttl 8h] [--groups g1,g2]
 *
 * Prints only the token on stdout, so `TOKEN=$(npm run -s admin:token -- …)` works.
 */
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { importJWK, SignJWT } from "jose";
import { ensureDevAccessKey } from "./dev-access-key";

const ROLES = ["reviewer", "approver", "admin"] as const;
type Role = (typeof ROLES)[number];

const ROOT = resolve(import.meta.dirname, "..");

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

/** Parses `90s`, `30m`, `8h`, `7d` or plain seconds into seconds. */
export function parseTtl(text: string): number {
  const match = /^(\d+)\s*([smhd]?)$/.exec(text.trim());
  if (!match?.[1]) throw new Error(`--ttl must look like 90s, 30m, 8h or 7d, not "${text}"`);
  const unit = { "": 1, s: 1, m: 60, h: 3600, d: 86_400 }[match[2] ?? ""] ?? 1;
  const seconds = Number(match[1]) * unit;
  if (seconds <= 0) throw new Error("--ttl must be positive");
  return seconds;
}

function usage(message?: string): never {
  if (message) process.stderr.write(`admin-token: ${message}\n`);
  process.stderr.write(
    "usage: npm run admin:token -- --email you@example.com --role reviewer|approver|admin [--ttl 8h] [--groups g1,g2]\n",
  );
  process.exit(2);
}

async function main(): Promise<void> {
  let values: { email?: string; role?: string; ttl?: string; groups?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      options: {
        email: { type: "string" },
        role: { type: "string" },
        ttl: { type: "string", default: "8h" },
        groups: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (error) {
    usage((error as Error).message);
  }
  if (values.help) usage();
  const email = values.email?.trim();
  if (!email?.includes("@")) usage("--email is required");
  const role = values.role as Role | undefined;
  if (!role || !ROLES.includes(role)) usage(`--role must be one of ${ROLES.join(", ")}`);
  let ttlSeconds: number;
  try {
    ttlSeconds = parseTtl(values.ttl ?? "8h");
  } catch (error) {
    usage((error as Error).message);
  }

  const vars = wranglerVars(readFileSync(join(ROOT, "wrangler.toml"), "utf8"));
  const issuer = vars.ACCESS_TEAM_DOMAIN?.replace(/\/+$/, "");
  const audience = vars.ACCESS_AUD;
  if (!issuer || !audience) usage("wrangler.toml [vars] must set ACCESS_TEAM_DOMAIN and ACCESS_AUD");

  const key = await ensureDevAccessKey(ROOT);
  // The default ADMIN_ROLES of wrangler.toml grant roles by Access group: modelgate-reviewers, …
  const groups = [
    `modelgate-${role}s`,
    ...(values.groups
      ?.split(",")
      .map((g) => g.trim())
      .filter(Boolean) ?? []),
  ];
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ email, groups, type: "app" })
    .setProtectedHeader({ alg: "ES256", kid: key.kid, typ: "JWT" })
    .setIssuer(issuer)
    .setAudience([audience])
    .setSubject(`dev-${email.toLowerCase()}`)
    .setIssuedAt(now)
    .setNotBefore(now)
    .setExpirationTime(now + ttlSeconds)
    .sign(await importJWK(key.privateJwk, "ES256"));

  process.stdout.write(`${token}\n`);
  process.stderr.write(
    [
      `Access token for ${email} (${role}), valid for ${ttlSeconds}s, signed with dev key ${key.kid}.`,
      "Send it as the Cf-Access-Jwt-Assertion header, e.g.:",
      `  curl -H "Cf-Access-Jwt-Assertion: $TOKEN" ${vars.PUBLIC_BASE_URL ?? "http://127.0.0.1:8787"}/admin/api/me`,
      "If the dev server was running before the key was created, restart it so it reads .dev.vars.",
      "",
    ].join("\n"),
  );
}

await main();
