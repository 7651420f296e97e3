/**
 * Which URLs the gateway sends events to. An organization names the URL, so it must not turn the
 * gateway into a way into networks behind it: the same address rules as inference servers
 * (`isPrivateHost`), and https only. Hosts an operator lists in `WEBHOOK_ALLOWED_HOSTS` (a local
 * receiver in development and tests) may be private and plain http.
 */
import { canonicalHost, isPrivateHost } from "../platform/addresses";

/** Why an endpoint URL was refused. */
export type EndpointUrlProblem = "not_a_url" | "too_long" | "scheme" | "credentials" | "private_address";

/** What each refusal means, for the organization. */
export const ENDPOINT_URL_PROBLEMS: Record<EndpointUrlProblem, string> = {
  not_a_url: "is not an absolute URL",
  too_long: "is longer than 2000 characters",
  scheme: "must be https",
  credentials: "must not carry a user name or password",
  private_address: "is a private, loopback, link-local or metadata address",
};

/** The longest URL an endpoint may have. */
export const MAX_ENDPOINT_URL_LENGTH = 2000;

/**
 * Checks an endpoint URL as deliveries will be sent to it: https, no credentials, and a host that
 * is no private, loopback, link-local or metadata address in any spelling the URL parser accepts
 * (`0x7f000001`, `[::ffff:127.0.0.1]`, `[fd00::1]`), unless listed in `allowedHosts`. Checked when an
 * endpoint is saved and again before every attempt. (Names that resolve to private addresses
 * cannot be caught here: Workers have no DNS lookup; the edge's own egress rules cover that.)
 */
export function checkEndpointUrl(raw: string, allowedHosts: readonly string[]): EndpointUrlProblem | undefined {
  if (raw.length > MAX_ENDPOINT_URL_LENGTH) return "too_long";
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    return "not_a_url";
  }
  const host = url.hostname.toLowerCase();
  const allowed = allowedHosts.some((entry) => canonicalHost(entry) === host);
  if (url.protocol !== "https:" && !(url.protocol === "http:" && allowed)) return "scheme";
  if (url.username || url.password) return "credentials";
  if (isPrivateHost(host) && !allowed) return "private_address";
  return undefined;
}
