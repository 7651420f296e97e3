import type { Clock } from "./clock";

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** Makes identifiers and secrets. Injected so tests can predict them. */
export interface IdGenerator {
  /** A new time-ordered identifier with a type prefix, e.g. `app_01J…`. */
  id(prefix: string): string;
  /** A new unguessable secret: `bytes` random bytes, base64url. */
  secret(bytes?: number): string;
}

function encodeTime(ms: number): string {
  // Ids made under load share their millisecond: the last one's encoding serves them all.
  if (ms === lastTime) return lastEncoded;
  lastTime = ms;
  lastEncoded = encodedTime(ms);
  return lastEncoded;
}
let lastTime = Number.NaN;
let lastEncoded = "";

function encodedTime(ms: number): string {
  let out = "";
  let rest = ms;
  for (let i = 0; i < 10; i++) {
    out = CROCKFORD[rest % 32] + out;
    rest = Math.floor(rest / 32);
  }
  return out;
}

/** Base64url without padding. */
export function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** The bytes of base64url text (padded or not); throws on text that is not base64. */
export function fromBase64url(text: string): Uint8Array {
  const binary = atob(text.replaceAll("-", "+").replaceAll("_", "/"));
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

/**
 * Random bytes for identifiers, drawn from the CSPRNG a few kilobytes at a time: a call for every
 * id costs more than making the id. Secrets never come from here.
 */
const idBytes = new Uint8Array(4096);
let idBytesUsed = idBytes.length;

/** Sixteen random characters of Crockford base32 (80 bits). */
function randomTail(): string {
  if (idBytesUsed + 16 > idBytes.length) {
    crypto.getRandomValues(idBytes);
    idBytesUsed = 0;
  }
  let tail = "";
  for (let i = idBytesUsed; i < idBytesUsed + 16; i++) tail += CROCKFORD[(idBytes[i] as number) % 32];
  idBytesUsed += 16;
  return tail;
}

/** A ULID-style identifier of `now` with a type prefix. */
export function newId(prefix: string, now: number): string {
  return `${prefix}_${encodeTime(now)}${randomTail()}`;
}

/**
 * ULID-style identifiers (48-bit time, 80 random bits, Crockford base32) so that ids sort by
 * creation time, and secrets from the platform's CSPRNG.
 */
export function randomIds(clock: Clock): IdGenerator {
  return {
    id: (prefix) => newId(prefix, clock.now().getTime()),
    secret(bytes = 32) {
      return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
    },
  };
}
