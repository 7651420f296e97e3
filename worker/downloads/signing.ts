import { type CryptoKey, importJWK, type JWK, type JWTPayload, jwtVerify, SignJWT } from "jose";
import type { Config } from "../config";
import { AppError } from "../errors";
import { ownProperty } from "../platform/untrusted";

/** Audience of every download link: a link is good for nothing else. */
export const LINK_AUDIENCE = "modelgate:download";
const ALGORITHM = "EdDSA";

/** What a download link grants: one file of one revision, for one grant and token. */
export interface LinkClaims {
  jti: string;
  /** Grant id. */
  gnt: string;
  /** Access token id. */
  tok: string;
  /** Model id. */
  mdl: string;
  /** Revision id. */
  rev: string;
  /** File path within the revision. */
  pth: string;
  /** R2 etag of the object the link was made for. */
  etg: string;
  exp: number;
}

interface KeyRing {
  signing: { kid: string; key: CryptoKey };
  verifying: Map<string, CryptoKey>;
  publicJwks: { keys: JWK[] };
}

const rings = new WeakMap<object, Promise<KeyRing>>();

/** Imports the configured keys once per isolate. */
function keyRing(config: Config): Promise<KeyRing> {
  let ring = rings.get(config);
  if (!ring) {
    ring = (async () => {
      const jwks = config.downloads.signingKeys as JWK[];
      if (jwks.length === 0) throw new AppError("service_unavailable", "Downloads are not configured on this gateway.");
      const verifying = new Map<string, CryptoKey>();
      const publicKeys: JWK[] = [];
      for (const jwk of jwks) {
        if (!jwk.kid || jwk.crv !== "Ed25519")
          throw new Error("DOWNLOAD_SIGNING_KEYS: every key must be an Ed25519 JWK with a kid");
        verifying.set(jwk.kid, (await importJWK({ ...jwk, d: undefined }, ALGORITHM)) as CryptoKey);
        publicKeys.push({ kty: jwk.kty, crv: jwk.crv, x: jwk.x, kid: jwk.kid, alg: ALGORITHM, use: "sig" });
      }
      const first = jwks[0] as JWK & { kid: string };
      return {
        signing: { kid: first.kid, key: (await importJWK(first, ALGORITHM)) as CryptoKey },
        verifying,
        publicJwks: { keys: publicKeys },
      };
    })();
    ring.catch(() => rings.delete(config));
    rings.set(config, ring);
  }
  return ring;
}

/** The public keys that verify download links (`/.well-known/jwks.json`). */
export async function publicDownloadJwks(config: Config) {
  return (await keyRing(config)).publicJwks;
}

/** Signs a download link token (a compact JWS) with the newest key. */
export async function signLink(
  config: Config,
  claims: Omit<LinkClaims, "exp">,
  issuedAt: Date,
  expiresAt: Date,
): Promise<string> {
  const { signing } = await keyRing(config);
  return new SignJWT({ ...claims } as unknown as JWTPayload)
    .setProtectedHeader({ alg: ALGORITHM, kid: signing.kid, typ: "JWT" })
    .setIssuer(config.publicBaseUrl)
    .setAudience(LINK_AUDIENCE)
    .setIssuedAt(Math.floor(issuedAt.getTime() / 1000))
    .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
    .sign(signing.key);
}

/**
 * Verifies a link token: EdDSA only (no `none`, no HMAC with a public key), a known `kid`, our
 * issuer and audience, unexpired (30 s tolerance), and every claim present and well-typed.
 * Any failure is the same 403, so the answer says nothing about which check failed.
 */
export async function verifyLink(config: Config, token: string, now: Date): Promise<LinkClaims> {
  const { verifying } = await keyRing(config);
  const refuse = () =>
    new AppError("forbidden", "This download link is not valid. Request a fresh one from the manifest.");
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(
      token,
      async (header) => {
        const key = header.kid ? verifying.get(header.kid) : undefined;
        if (!key) throw new Error("unknown kid");
        return key;
      },
      {
        algorithms: [ALGORITHM],
        issuer: config.publicBaseUrl,
        audience: LINK_AUDIENCE,
        requiredClaims: ["exp", "iat", "jti", "aud", "iss"],
        clockTolerance: 30,
        currentDate: now,
      },
    ));
  } catch (error) {
    if ((error as { code?: string }).code === "ERR_JWT_EXPIRED") {
      throw new AppError("forbidden", "This download link has expired. Request a fresh one from the manifest.");
    }
    throw refuse();
  }
  for (const claim of ["jti", "gnt", "tok", "mdl", "rev", "pth", "etg"] as const) {
    const value = ownProperty(payload, claim);
    if (typeof value !== "string" || value.length === 0) throw refuse();
  }
  return payload as unknown as LinkClaims;
}
