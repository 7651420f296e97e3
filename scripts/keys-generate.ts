/**
 * `npm run keys:generate [-- --env production]`: makes the secrets a deployed environment needs
 * and prints them with the commands that store them, then the Cloudflare Access settings that
 * protect the console and the admin API. Nothing is written to disk or sent anywhere: the keys
 * exist only in this output, which belongs in a password manager and the `wrangler secret put`
 * prompts, not in a file under version control.
 *
 * - `DOWNLOAD_SIGNING_KEYS`: an Ed25519 private JWK that signs download links.
 * - `AUDIT_SIGNING_KEYS`: an Ed25519 private JWK that signs checkpoints of the audit chain's head.
 * - `INFERENCE_KEYS_SECRET`: seals the API keys of inference servers added in the console.
 *
 * Rotating: prepend the new key to the existing `{"keys":[…]}` (newest signs) and keep the old one
 * until what it signed has expired (links: a day; audit keys: forever, without their `d`).
 */
import { randomBytes } from "node:crypto";
import { parseArgs } from "node:util";
import { exportJWK, generateKeyPair } from "jose";
import { readEnvironment } from "./lib/deploy-config";
import { ROOT } from "./lib/local-state";

const { values } = parseArgs({ options: { env: { type: "string", default: "production" } } });
const env = values.env;

/** A `{"keys":[…]}` with one fresh Ed25519 private JWK whose kid says what and when. */
async function signingKeys(purpose: string, day: string): Promise<string> {
  const kid = `modelgate-${purpose}-${day}-${randomBytes(3).toString("hex")}`;
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  return JSON.stringify({ keys: [{ ...(await exportJWK(privateKey)), kid, alg: "EdDSA", use: "sig" }] });
}

const day = new Date().toISOString().slice(0, 10).replaceAll("-", "");
const secrets: [string, string][] = [
  ["DOWNLOAD_SIGNING_KEYS", await signingKeys("dl", day)],
  ["AUDIT_SIGNING_KEYS", await signingKeys("audit", day)],
  ["INFERENCE_KEYS_SECRET", randomBytes(32).toString("base64url")],
];
const deployed = readEnvironment(ROOT, env);
const origin = String(deployed.vars.PUBLIC_BASE_URL ?? "https://modelgate.example.com");
const host = new URL(origin).host;

const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;
// Values are pasted at wrangler's prompt rather than put on a command line, which would keep
// them in the shell's history.
console.log(`# Secrets of [env.${env}]: run each command and paste the line under it at its prompt.`);
console.log("# The values are kept nowhere else: store them in your password manager too.\n");
for (const [name, value] of secrets) console.log(`npx wrangler secret put ${name} --env ${env}\n${value}\n`);
console.log(`# Stripe, when billing is on (keys from the Stripe dashboard, not generated here):
#   npx wrangler secret put STRIPE_SECRET_KEY --env ${env}
#   npx wrangler secret put STRIPE_WEBHOOK_SECRETS --env ${env}
# Never set ACCESS_JWKS or DEV_LOGIN in a deployed environment (npm run deploy:check refuses them).

# Cloudflare Access (Zero Trust → Access → Applications → Add → Self-hosted):
#   Application domain:  ${host}/admin          (covers /admin/* and /admin/api/*)
#   Policies:            Allow — the people or IdP groups who review (e.g. groups
#                        modelgate-reviewers, modelgate-approvers, modelgate-admins)
#   Settings → Additional settings: include the groups claim in the token when roles are by group.
# Then copy two values into [env.${env}.vars] of wrangler.toml:
#   ACCESS_TEAM_DOMAIN = "https://<your-team>.cloudflareaccess.com"   (Zero Trust → Settings → Team domain)
#   ACCESS_AUD = "<Application Audience (AUD) Tag>"                    (the application's Overview tab)
#   ADMIN_ROLES maps roles to e-mails, *@domain or group:NAME; today:
#   ADMIN_ROLES = ${quote(String(deployed.vars.ADMIN_ROLES ?? "{}"))}
# Check before deploying: npm run deploy:check -- --strict --env ${env}`);
