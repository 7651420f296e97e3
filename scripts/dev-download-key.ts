/**
 * The local key that signs download links. Production keeps its keys in the
 * `DOWNLOAD_SIGNING_KEYS` secret; locally `npm start` makes one Ed25519 key and writes it into
 * `.dev.vars` (never committed) the first time, and keeps it afterwards so that links it signed
 * stay valid across restarts.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { exportJWK, generateKeyPair } from "jose";
import { writeDevVar } from "./dev-access-key";

/** Makes sure `.dev.vars` has a download signing key; returns its kid. */
export async function ensureDevDownloadKey(root = process.cwd()): Promise<string> {
  const path = join(root, ".dev.vars");
  const current = existsSync(path)
    ? /^DOWNLOAD_SIGNING_KEYS='(.+)'$/m.exec(readFileSync(path, "utf8"))?.[1]
    : undefined;
  if (current) {
    const kid = (JSON.parse(current) as { keys: { kid?: string }[] }).keys[0]?.kid;
    if (kid) return kid;
  }
  const kid = `modelgate-dev-dl-${Date.now().toString(36)}`;
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: "EdDSA" };
  writeDevVar(root, "DOWNLOAD_SIGNING_KEYS", JSON.stringify({ keys: [jwk] }));
  return kid;
}
