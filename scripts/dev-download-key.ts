/**
 * The local Ed25519 keys that sign download links and audit checkpoints. Production keeps them in
 * the `DOWNLOAD_SIGNING_KEYS` and `AUDIT_SIGNING_KEYS` secrets; locally `npm start` makes one key
 * for each and writes it into `.dev.vars` (never committed) the first time, and keeps it
 * afterwards so that what it signed (links, checkpoints in local R2) stays valid across restarts.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { exportJWK, generateKeyPair } from "jose";
import { writeDevVar } from "./dev-access-key";

/** Makes sure `.dev.vars` sets `name` to a `{"keys":[…]}` holding an Ed25519 private JWK; returns its kid. */
async function ensureDevSigningKey(root: string, name: string, kidPrefix: string): Promise<string> {
  const path = join(root, ".dev.vars");
  const current = existsSync(path)
    ? new RegExp(`^${name}='(.+)'$`, "m").exec(readFileSync(path, "utf8"))?.[1]
    : undefined;
  if (current) {
    const kid = (JSON.parse(current) as { keys: { kid?: string }[] }).keys[0]?.kid;
    if (kid) return kid;
  }
  const kid = `${kidPrefix}-${Date.now().toString(36)}`;
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: "EdDSA" };
  writeDevVar(root, name, JSON.stringify({ keys: [jwk] }));
  return kid;
}

/** Makes sure `.dev.vars` has a download signing key; returns its kid. */
export function ensureDevDownloadKey(root = process.cwd()): Promise<string> {
  return ensureDevSigningKey(root, "DOWNLOAD_SIGNING_KEYS", "modelgate-dev-dl");
}

/** Makes sure `.dev.vars` has a key that signs audit checkpoints; returns its kid. */
export function ensureDevAuditKey(root = process.cwd()): Promise<string> {
  return ensureDevSigningKey(root, "AUDIT_SIGNING_KEYS", "modelgate-dev-audit");
}
