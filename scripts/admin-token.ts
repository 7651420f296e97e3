/**
 * Mints a Cloudflare Access–style JWT for the local reviewer API, signed with the dev Access key
 * that `.dev.vars` tells the gateway to trust. The gateway verifies it with the same code that
 * verifies real Access tokens in production; only the signing key differs.
 *
 *   npm run admin:token -- --email ann@example.com --role approver [--ttl 8h] [--groups g1,g2]
 *
 * Prints only the token on stdout, so `TOKEN=$(npm run -s admin:token -- …)` works.
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { mintDevAccessToken, ADMIN_ROLE_NAMES as ROLES, type AdminRoleName as Role } from "./lib/dev-access-token";

export { wranglerVars } from "./lib/dev-access-token";

const ROOT = resolve(import.meta.dirname, "..");

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

  const extraGroups =
    values.groups
      ?.split(",")
      .map((g) => g.trim())
      .filter(Boolean) ?? [];
  let minted: Awaited<ReturnType<typeof mintDevAccessToken>>;
  try {
    minted = await mintDevAccessToken(ROOT, { email, role, ttlSeconds, groups: extraGroups });
  } catch (error) {
    usage((error as Error).message);
  }
  const { token, kid, vars } = minted;

  process.stdout.write(`${token}\n`);
  process.stderr.write(
    [
      `Access token for ${email} (${role}), valid for ${ttlSeconds}s, signed with dev key ${kid}.`,
      "Send it as the Cf-Access-Jwt-Assertion header, e.g.:",
      `  curl -H "Cf-Access-Jwt-Assertion: $TOKEN" ${vars.PUBLIC_BASE_URL ?? "http://127.0.0.1:8787"}/admin/api/me`,
      "If the dev server was running before the key was created, restart it so it reads .dev.vars.",
      "",
    ].join("\n"),
  );
}

await main();
