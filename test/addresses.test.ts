import { beforeEach, describe, expect, it } from "vitest";
import { checkBackendUrl } from "../worker/inference/backends";
import { canonicalHost, clientNetwork, isPrivateHost } from "../worker/platform/addresses";
import { seedLicense, testGateway } from "./helpers/gateway";

/** Every host below, each reached through a URL the way the gateway reads it. */
const PRIVATE_URLS: [string, string][] = [
  // IPv6 forms of loopback, metadata and private IPv4 addresses.
  ["http://[::ffff:127.0.0.1]", "IPv4-mapped loopback"],
  ["http://[::ffff:7f00:1]:8000", "IPv4-mapped loopback, hex"],
  ["http://[::ffff:169.254.169.254]/latest", "IPv4-mapped metadata"],
  ["http://[::ffff:10.0.0.1]", "IPv4-mapped private"],
  ["http://[0:0:0:0:0:ffff:c0a8:0101]", "IPv4-mapped private, long form"],
  ["http://[::127.0.0.1]", "IPv4-compatible loopback"],
  ["http://[::8.8.8.8]", "IPv4-compatible, even of a public address"],
  ["http://[64:ff9b::7f00:1]", "NAT64 of loopback"],
  ["http://[64:ff9b::808:808]", "NAT64, even of a public address"],
  ["http://[64:ff9b:1::a00:1]", "local-use NAT64"],
  ["http://[2002:7f00:1::]", "6to4 of loopback"],
  ["http://[2002:808:808::1]", "6to4, even of a public address"],
  ["http://[2001:0:4136:e378:8000:63bf:80ff:fffe]", "Teredo of client 127.0.0.1"],
  ["http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]", "Teredo, even of a public client"],
  ["http://[::ffff:0:7f00:1]", "IPv4-translated"],
  // IPv6 ranges that are not public unicast.
  ["http://[::1]", "loopback"],
  ["http://[::]", "unspecified"],
  ["http://[ff02::1]", "multicast"],
  ["http://[fec0::1]", "site-local"],
  ["http://[fc00::1]", "unique-local fc00::/8"],
  ["http://[fd12:3456::1]", "unique-local fd00::/8"],
  ["http://[fe80::1]", "link-local"],
  ["http://[febf::1]", "link-local, top of fe80::/10"],
  ["http://[fd00:ec2::254]", "AWS metadata over IPv6"],
  ["http://[2001:db8::1]", "documentation"],
  ["http://[100::1]", "discard"],
  ["http://[4000::1]", "outside 2000::/3"],
  // IPv4 spellings the URL parser normalises.
  ["http://2130706433/", "decimal loopback"],
  ["http://0x7f000001/", "hex loopback"],
  ["http://0177.0.0.1/", "octal loopback"],
  ["http://127.1/", "short loopback"],
  ["http://0x7f.1/", "short hex loopback"],
  ["http://127.0.0.1./", "loopback with a trailing dot"],
  ["http://0xa9fea9fe/", "hex metadata"],
  ["http://%31%32%37.0.0.1/", "percent-encoded loopback"],
  ["http://１２７.０.０.１/", "full-width loopback"],
  // IPv4 ranges that are not public unicast.
  ["http://127.0.0.1", "loopback"],
  ["http://0.0.0.0", "unspecified"],
  ["http://255.255.255.255", "broadcast"],
  ["http://224.0.0.1", "multicast"],
  ["http://100.64.0.1", "CGNAT"],
  ["http://100.127.255.254", "CGNAT, top"],
  ["http://169.254.169.254", "link-local metadata"],
  ["http://10.0.0.1", "private"],
  ["http://172.16.0.1", "private"],
  ["http://192.168.0.1", "private"],
  ["http://192.0.0.1", "IETF protocol assignments"],
  ["http://198.18.0.1", "benchmarking"],
  ["http://240.0.0.1", "reserved"],
  // Names.
  ["http://localhost:8000", "localhost"],
  ["http://LOCALHOST./", "localhost, upper case with a trailing dot"],
  ["http://gpu.localhost", "*.localhost"],
  ["http://gpu.local", "*.local"],
  ["http://metadata.google.internal/computeMetadata/v1", "*.internal"],
  ["http://metadata/", "metadata"],
];

const PUBLIC_URLS = [
  "http://8.8.8.8",
  "https://1.1.1.1:8443/v1",
  "http://172.32.0.1",
  "http://[2606:4700::1111]",
  "http://[2001:4860:4860::8888]:8000",
  "http://[::ffff:8.8.8.8]",
  "https://gpu-1.example.com",
  "https://gpu.local.example.com",
  "https://internal.example.com",
];

describe("security: inference server hosts", () => {
  it.each(PRIVATE_URLS)("refuses %s (%s)", (url) => {
    expect(checkBackendUrl(url, [])).toBe("private_address");
    expect(isPrivateHost(new URL(url).hostname)).toBe(true);
  });

  it.each(PUBLIC_URLS)("accepts %s", (url) => {
    expect(checkBackendUrl(url, [])).toBeUndefined();
  });

  it("judges hosts the URL parser has not normalised as the address they name", () => {
    for (const host of ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "::ffff:127.0.0.1", "[::127.0.0.1]"]) {
      expect([host, isPrivateHost(host)]).toEqual([host, true]);
    }
  });

  it("checks the URL as requests are sent to it, after its /v1 and slashes are cut", () => {
    expect(checkBackendUrl("http://[::ffff:127.0.0.1]/v1/", [])).toBe("private_address");
    expect(checkBackendUrl("http://0x7f000001/v1", [])).toBe("private_address");
  });

  it("lets an operator allow a private host however the entry is written", () => {
    expect(checkBackendUrl("http://127.0.0.1:8000", ["127.0.0.1"])).toBeUndefined();
    expect(checkBackendUrl("http://0x7f000001:8000", ["127.0.0.1"])).toBeUndefined();
    expect(checkBackendUrl("http://[::1]:8000", ["::1"])).toBeUndefined();
    expect(checkBackendUrl("http://[::1]:8000", ["[::1]"])).toBeUndefined();
    expect(checkBackendUrl("http://gpu.internal", ["gpu.internal"])).toBeUndefined();
    // An allowed address is not every spelling of a range: the mapped form is another host.
    expect(checkBackendUrl("http://[::ffff:127.0.0.1]", ["127.0.0.1"])).toBe("private_address");
    expect(checkBackendUrl("http://127.0.0.2", ["127.0.0.1"])).toBe("private_address");
    // Entries that are not a host alone never match.
    expect(checkBackendUrl("http://127.0.0.1:8000", ["127.0.0.1:8000"])).toBe("private_address");
    expect(canonicalHost("127.0.0.1:8000")).toBeUndefined();
    expect(canonicalHost("10.0.0.1/8")).toBeUndefined();
    expect(canonicalHost("user@10.0.0.1")).toBeUndefined();
    expect(canonicalHost("0X7F000001")).toBe("127.0.0.1");
    expect(canonicalHost("::1")).toBe("[::1]");
  });
});

describe("security: the abuse brake's client network", () => {
  it("is an IPv4 address itself, and an IPv4-mapped IPv6 address as that IPv4 address", () => {
    expect(clientNetwork("198.51.100.7")).toBe("198.51.100.7");
    expect(clientNetwork("::ffff:198.51.100.7")).toBe("198.51.100.7");
    expect(clientNetwork("::ffff:c633:6407")).toBe("198.51.100.7");
    expect(clientNetwork(" 198.51.100.7 ")).toBe("198.51.100.7");
  });

  it("is an IPv6 address's /64, however the address is spelled", () => {
    const network = "2001:db8:1:2::/64";
    expect(clientNetwork("2001:db8:1:2::1")).toBe(network);
    expect(clientNetwork("2001:db8:1:2:ffff:ffff:ffff:ffff")).toBe(network);
    expect(clientNetwork("2001:0DB8:0001:0002:abcd:0:0:9")).toBe(network);
    expect(clientNetwork("2001:db8:1:3::1")).toBe("2001:db8:1:3::/64");
  });

  it("is one fixed key for a missing or malformed address, never an error", () => {
    for (const bad of [null, undefined, "", "unknown", "not an ip", "1.2.3.4.5", "2001:db8::1::2", ":::", "[::1]x"]) {
      expect([bad, clientNetwork(bad)]).toEqual([bad, "unknown"]);
    }
    expect(clientNetwork("x".repeat(10_000))).toBe("unknown");
  });
});

describe("security: the abuse brake", () => {
  beforeEach(async () => {
    await seedLicense();
  });

  /** The public form's page from `ip`, as the edge would say it saw it. */
  const formFrom = (gw: ReturnType<typeof testGateway>, ip: string) =>
    gw.request("/apply/llama-2", { headers: { "cf-connecting-ip": ip } });

  it("counts every address of one IPv6 /64 together, and another /64 apart", async () => {
    const gw = testGateway();
    const statuses: number[] = [];
    // 20 requests from each of two addresses: under the limit of 30 each, over it together.
    for (let i = 0; i < 20; i++) {
      statuses.push((await formFrom(gw, `2001:db8:77:1::${(2 * i).toString(16)}`)).status);
      statuses.push((await formFrom(gw, `2001:db8:77:1:${(2 * i + 1).toString(16)}::1`)).status);
    }
    expect(statuses).toContain(429);
    expect((await formFrom(gw, "2001:db8:77:1:ffff:ffff:ffff:fffe")).status).toBe(429);
    expect((await formFrom(gw, "2001:db8:77:2::1")).status).toBe(200);
  });

  it("counts an IPv4-mapped address as the IPv4 address it is", async () => {
    const gw = testGateway();
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      statuses.push((await formFrom(gw, "198.51.100.77")).status);
      statuses.push((await formFrom(gw, "::ffff:198.51.100.77")).status);
    }
    expect(statuses).toContain(429);
    expect((await formFrom(gw, "198.51.100.78")).status).toBe(200);
  });

  it("answers a malformed client address without an error", async () => {
    const gw = testGateway();
    for (const ip of ["not an ip", "2001:db8::1::2", "1.2.3.4.5", "x".repeat(4096)]) {
      const res = await formFrom(gw, ip);
      expect([ip.slice(0, 20), res.status < 500]).toEqual([ip.slice(0, 20), true]);
    }
  });
});
