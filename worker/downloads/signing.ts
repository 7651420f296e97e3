import { type CryptoKey, importJWK, type JWK, type JWTPayload, jwtVerify, SignJWT } from "jose";
import type { Config } from "../config";
import { AppError } from "../errors";
import { ownProperty } from "../platform/untrusted";

/** Audience of every download link: a link is good for nothing else. */
export const LINK_AUDIENCE = "modelgate:download";
const ALGORITHM = "EdDSA";

/** What a download link grants: every file of one revision, for one grant and token. */
export interface LinkClaims {
  /** The manifest's id (`download_manifests`). */
  jti: string;
  /** Grant id. */
  gnt: string;
  /** Access token id. */
  tok: string;
  /** Model id. */
  mdl: string;
  /** Revision id. */
  rev: string;
  exp: number;
}

/**
 * A link issued before manifests were signed once (`download_links`): one file, bound to its
 * path and the object's R2 etag. Still served until it expires; no longer issued.
 */
export interface FileLinkClaims extends LinkClaims {
  /** File path within the revision. */
  pth: string;
  /** R2 etag of the object the link was made for. */
  etg: string;
}

/** A verified link: a manifest's, good for every file of its revision, or an older one-file link. */
export type VerifiedLink = ({ kind: "manifest" } & LinkClaims) | ({ kind: "file" } & FileLinkClaims);

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
 * issuer and audience, unexpired (30 s tolerance), and every claim present and well-typed. A
 * token with a path claim is an older one-file link, whose etag claim must be there too.
 * Any failure is the same 403, so the answer says nothing about which check failed.
 */
export async function verifyLink(config: Config, token: string, now: Date): Promise<VerifiedLink> {
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
  const oneFile = ownProperty(payload, "pth") !== undefined;
  const required = oneFile ? FILE_LINK_CLAIMS : MANIFEST_LINK_CLAIMS;
  for (const claim of required) {
    const value = ownProperty(payload, claim);
    if (typeof value !== "string" || value.length === 0) throw refuse();
  }
  const claims = Object.fromEntries(required.map((claim) => [claim, ownProperty(payload, claim) as string]));
  const exp = payload.exp as number;
  return oneFile
    ? { kind: "file", ...(claims as Omit<FileLinkClaims, "exp">), exp }
    : { kind: "manifest", ...(claims as Omit<LinkClaims, "exp">), exp };
}

const MANIFEST_LINK_CLAIMS = ["jti", "gnt", "tok", "mdl", "rev"] as const;
const FILE_LINK_CLAIMS = [...MANIFEST_LINK_CLAIMS, "pth", "etg"] as const;
