/**
 * The local stand-in for Cloudflare Access's signing key. Cloudflare Access signs the JWTs it puts
 * in `Cf-Access-Jwt-Assertion`; locally we hold the private key ourselves (in `.wrangler/`, never
 * committed) and tell the gateway to trust its public half through `ACCESS_JWKS` in `.dev.vars`.
 * The gateway verifies these tokens with exactly the code it uses in production.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { exportJWK, generateKeyPair, type JWK } from "jose";

export interface DevAccessKey {
  kid: string;
  privateJwk: JWK;
  publicJwks: { keys: JWK[] };
}

export const DEV_KEY_FILE = join(".wrangler", "dev-access-key.json");

/** Reads the dev key, creating it on first use, and makes sure `.dev.vars` trusts it. */
export async function ensureDevAccessKey(root = process.cwd()): Promise<DevAccessKey> {
  const keyPath = join(root, DEV_KEY_FILE);
  let key: DevAccessKey;
  if (existsSync(keyPath)) {
    key = JSON.parse(readFileSync(keyPath, "utf8")) as DevAccessKey;
  } else {
    const kid = `modelgate-dev-${Date.now().toString(36)}`;
    const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
    key = {
      kid,
      privateJwk: { ...(await exportJWK(privateKey)), kid, alg: "ES256" },
      publicJwks: { keys: [{ ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" }] },
    };
    mkdirSync(join(root, ".wrangler"), { recursive: true });
    writeFileSync(keyPath, `${JSON.stringify(key, null, 2)}\n`, { mode: 0o600 });
  }
  writeDevVar(root, "ACCESS_JWKS", JSON.stringify(key.publicJwks));
  // The local console is signed into with that key through /admin/dev-login (loopback origins only).
  writeDevVar(root, "DEV_LOGIN", "1");
  return key;
}

/** Sets one variable in `.dev.vars` (created from `.dev.vars.example` when missing). */
export function writeDevVar(root: string, name: string, value: string): void {
  const path = join(root, ".dev.vars");
  const example = join(root, ".dev.vars.example");
  const text = existsSync(path) ? readFileSync(path, "utf8") : existsSync(example) ? readFileSync(example, "utf8") : "";
  // Single quotes: dotenv takes their content literally, so JSON survives unescaped.
  const line = `${name}='${value}'`;
  const pattern = new RegExp(`^${name}=.*$`, "m");
  const next = pattern.test(text) ? text.replace(pattern, line) : `${text.replace(/\n?$/, "\n")}${line}\n`;
  if (next !== text) writeFileSync(path, next);
}

/**
 * Makes sure `.dev.vars` holds a value for the secret `name`, writing 32 random bytes (base64url)
 * the first time and keeping it afterwards, so that what it sealed stays readable across restarts.
 */
export function ensureDevSecret(root: string, name: string): void {
  const path = join(root, ".dev.vars");
  const current = existsSync(path)
    ? new RegExp(`^${name}='?([^'\\n]+)'?$`, "m").exec(readFileSync(path, "utf8"))?.[1]
    : undefined;
  if (current?.trim()) return;
  writeDevVar(root, name, randomBytes(32).toString("base64url"));
}
