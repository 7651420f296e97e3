/**
 * Bearer credentials, parsed in one place: every surface that takes a personal access token
 * (weights, Hub, inference, billing) reads `Authorization` through here, so they all accept and
 * refuse the same spellings.
 */

/** Every personal access token starts with this, so leaks are easy to scan for. */
export const TOKEN_PREFIX = "mg_";

/**
 * Hugging Face Hub clients refuse tokens that do not start with `hf_`; they may send
 * `hf_mg_…`, which is the same token.
 */
export const HUB_TOKEN_PREFIX = "hf_";

/** The bearer value of an `Authorization: Bearer …` header; undefined for no header or another scheme. */
export function bearerToken(authorization: string | null | undefined): string | undefined {
  if (!authorization) return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
  return match?.[1];
}

/** A bearer value as the personal access token it names: `hf_mg_…` is `mg_…`; anything else as sent. */
export function accessTokenSecret(bearer: string): string {
  return bearer.startsWith(HUB_TOKEN_PREFIX + TOKEN_PREFIX) ? bearer.slice(HUB_TOKEN_PREFIX.length) : bearer;
}
