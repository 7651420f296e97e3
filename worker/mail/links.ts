/**
 * Links the gateway puts in mail. A message from the licensing sender is trusted by whoever gets
 * it, so every link in it must lead to the gateway itself; `GatewayLink` can only be made here,
 * and the templates take nothing else.
 */

declare const gatewayLinkBrand: unique symbol;

/** An absolute URL on the gateway's public origin. */
export type GatewayLink = string & { readonly [gatewayLinkBrand]: true };

/**
 * The gateway's URL for `pathAndQuery` (which starts with one `/`) under `publicBaseUrl`. Throws
 * when the result would lie on any other origin: that is a bug in the caller, never input to
 * answer.
 */
export function gatewayLink(publicBaseUrl: string, pathAndQuery: string): GatewayLink {
  if (!pathAndQuery.startsWith("/") || pathAndQuery.startsWith("//") || /[\\\s]/.test(pathAndQuery)) {
    throw new Error(`mail link path must be one absolute path on the gateway: ${JSON.stringify(pathAndQuery)}`);
  }
  const link = `${publicBaseUrl}${pathAndQuery}`;
  const origin = new URL(publicBaseUrl).origin;
  if (new URL(link).origin !== origin) {
    throw new Error(`mail link ${link} leaves the gateway's origin ${origin}`);
  }
  return link as GatewayLink;
}
