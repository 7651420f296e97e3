/**
 * IP addresses as the gateway judges them: which hosts it may send requests to (inference
 * servers), and which network a client calls from (the abuse brake). Addresses are parsed by
 * ipaddr.js, whose range tables follow the IANA special-purpose registries, rather than by
 * patterns of our own: every spelling of an address (`::ffff:7f00:1` is `127.0.0.1`) is one value.
 */
import ipaddr from "ipaddr.js";

type Address = ipaddr.IPv4 | ipaddr.IPv6;

/** Names that only ever mean this machine or the provider's internal network (cloud metadata). */
const LOCAL_NAMES: ReadonlySet<string> = new Set(["localhost", "metadata"]);
const LOCAL_NAME_SUFFIXES = [".localhost", ".local", ".internal"] as const;

/** The address a host names when it is an IP literal (IPv6 with or without brackets). */
function ipLiteral(host: string): Address | undefined {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  try {
    if (bare.includes(":")) return ipaddr.IPv6.parse(bare);
    // Also the decimal, hex, octal and short spellings (`2130706433`, `0x7f000001`, `127.1`), so a
    // host not yet normalised by the URL parser is judged as the address it names all the same.
    return ipaddr.IPv4.isValid(bare) ? ipaddr.IPv4.parse(bare) : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `address` is any IPv6 address of ::/8, which holds ::ffff:0:0/96 and ::/96. */
function inZeroPrefix(address: ipaddr.IPv6): boolean {
  return ((address.parts[0] ?? 0) & 0xff00) === 0;
}

const GLOBAL_UNICAST_V6 = ipaddr.IPv6.parseCIDR("2000::/3");

/**
 * Whether `address` is an ordinary public unicast address. IPv4: ipaddr.js's `unicast` range, so
 * not loopback, private, CGNAT, link-local (cloud metadata), multicast, broadcast, reserved or
 * unspecified. IPv6: `unicast` and inside 2000::/3, the only global unicast space IANA allocates.
 *
 * IPv6 forms that carry an IPv4 address:
 * - IPv4-mapped (::ffff:0:0/96) is that IPv4 address on a dual-stack socket: judged as it.
 * - IPv4-compatible (::/96, deprecated) and the rest of ::/8: refused.
 * - NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and Teredo (2001::/32): refused
 *   outright, whatever IPv4 address they embed. Each hands the packet to a translator or relay
 *   that reaches the embedded IPv4 address from its own network, which may be ours (a NAT64 in
 *   the operator's network reaches its private space), and a network-specific NAT64 prefix cannot
 *   be recognised at all; a GPU server has a native address, and an operator who truly needs such
 *   a path lists the host in `INFERENCE_ALLOWED_HOSTS`.
 */
export function isPublicAddress(address: Address): boolean {
  if (address instanceof ipaddr.IPv4) return address.range() === "unicast";
  if (address.isIPv4MappedAddress()) return isPublicAddress(address.toIPv4Address());
  if (inZeroPrefix(address)) return false;
  return address.range() === "unicast" && address.match(GLOBAL_UNICAST_V6);
}

/**
 * Whether a URL's host is loopback, private, link-local, metadata or otherwise not a public
 * address: `localhost`, `*.localhost`, `*.local`, `*.internal`, and every IP literal
 * `isPublicAddress` refuses. Give it `URL.hostname` (IPv6 in brackets, IPv4 normalised).
 */
export function isPrivateHost(hostname: string): boolean {
  // A trailing dot names the same host ("localhost." is localhost).
  const host = hostname.toLowerCase().replace(/\.+$/, "");
  const address = ipLiteral(host);
  if (address) return !isPublicAddress(address);
  return LOCAL_NAMES.has(host) || LOCAL_NAME_SUFFIXES.some((suffix) => host.endsWith(suffix));
}

/**
 * The host of an `INFERENCE_ALLOWED_HOSTS` entry as `URL.hostname` gives it, so an entry matches
 * however it was written (`::1` and `[::1]`, `0x7f000001` and `127.0.0.1`); undefined for an
 * entry that is no host (one with a port, say).
 */
export function canonicalHost(entry: string): string | undefined {
  const host = entry.trim().toLowerCase();
  const literal = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  try {
    const url = new URL(`http://${literal}/`);
    const onlyHost = url.href === `http://${url.hostname}/`;
    return onlyHost ? url.hostname : undefined;
  } catch {
    return undefined;
  }
}

/** Bits of an IPv6 client address that name its network: a site or host gets a /64 at least. */
const IPV6_CLIENT_PREFIX = 64;

/**
 * The network a client calls from, as the abuse brake counts it: an IPv4 address itself (an
 * IPv4-mapped IPv6 address as that IPv4 address), an IPv6 address's /64, since one host holds a
 * whole /64 and could otherwise take a fresh key for each of its 2^64 addresses. Anything else,
 * a missing or malformed address included, is `unknown`: one shared key, never an error.
 */
export function clientNetwork(ip: string | null | undefined): string {
  const address = ip ? ipLiteral(ip.trim()) : undefined;
  if (!address) return "unknown";
  const client = address instanceof ipaddr.IPv6 && address.isIPv4MappedAddress() ? address.toIPv4Address() : address;
  if (client instanceof ipaddr.IPv4) return client.toString();
  const network = client.parts.map((part, i) => (i < IPV6_CLIENT_PREFIX / 16 ? part : 0));
  return `${new ipaddr.IPv6(network).toString()}/${IPV6_CLIENT_PREFIX}`;
}
