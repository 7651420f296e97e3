/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): a secret is `whsec_` and the
 * base64 of random bytes; a delivery carries `webhook-id`, `webhook-timestamp` (seconds) and
 * `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
 * one per secret the endpoint holds, so a receiver moving to a new secret verifies either.
 */

/** The prefix of a signing secret. */
export const SECRET_PREFIX = "whsec_";

/** Random bytes in a new secret: within the 24–64 the specification asks for. */
const SECRET_BYTES = 32;

function base64(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** A new signing secret, `whsec_<base64>`. */
export function newSigningSecret(random: (bytes: Uint8Array) => Uint8Array = (b) => crypto.getRandomValues(b)): string {
  return SECRET_PREFIX + base64(random(new Uint8Array(SECRET_BYTES)));
}

/** The key bytes of a `whsec_` secret. */
function secretKey(secret: string): Uint8Array {
  const encoded = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret;
  return Uint8Array.from(atob(encoded), (ch) => ch.charCodeAt(0));
}

/** `v1,<signature>` of one message under one secret. */
async function signatureOf(secret: string, content: Uint8Array): Promise<string> {
  const key = await crypto.subtle.importKey("raw", secretKey(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
  return `v1,${base64(new Uint8Array(await crypto.subtle.sign("HMAC", key, content)))}`;
}

/**
 * The three headers of a delivery of `body` as message `id` at `timestamp` (seconds since the
 * epoch), signed with every secret in `secrets` (newest first).
 */
export async function signedHeaders(
  id: string,
  timestamp: number,
  body: string,
  secrets: readonly string[],
): Promise<Record<"webhook-id" | "webhook-timestamp" | "webhook-signature", string>> {
  const content = new TextEncoder().encode(`${id}.${timestamp}.${body}`);
  const signatures = await Promise.all(secrets.map((secret) => signatureOf(secret, content)));
  return {
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": signatures.join(" "),
  };
}
