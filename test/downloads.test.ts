import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { and, eq } from "drizzle-orm";
import { importJWK, type JWK, SignJWT } from "jose";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { createDatabase } from "../worker/db/client";
import {
  accessTokens,
  downloadBudgets,
  downloadEvents,
  downloadHours,
  downloadManifests,
  grants,
  modelFiles,
} from "../worker/db/schema";
import { PROBE_ALLOWANCE_BYTES } from "../worker/downloads/links";
import { LINK_AUDIENCE } from "../worker/downloads/signing";
import { fixedClock } from "../worker/platform/clock";
import { sha256Hex } from "../worker/platform/hash";
import { carryLedgerRows } from "../worker/usage/carry";
import type { DownloadRow } from "../worker/usage/hours";
import { boundMember } from "./helpers/bindings";
import { seedLicense, testGateway } from "./helpers/gateway";
import { downloadRows } from "./helpers/ledger";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const SHARD = bytes(300_000, 7);
const PARAMS = '{"dim":4096,"n_layers":32}';

let licenseSha256: string;
let revision: string;
beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
  revision = (
    await seedRevision("llama-2-7b", {
      "consolidated.00.pth": SHARD,
      "params.json": PARAMS,
      "sub/dir/tokenizer.model": bytes(1000, 3),
    })
  ).revision;
});

interface Manifest {
  revision: string;
  expiresAt: string;
  files: { path: string; size: number; sha256: string; url: string }[];
  notice: string;
}

async function manifest(gw: ReturnType<typeof testGateway>, token: string, query = ""): Promise<Manifest> {
  const res = await gw.request(`/v1/models/llama-2-7b/manifest${query}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Manifest;
}

function linkOf(m: Manifest, path: string): string {
  const file = m.files.find((f) => f.path === path);
  if (!file) throw new Error(`no ${path} in manifest`);
  return new URL(file.url).pathname + new URL(file.url).search;
}

/** The claims of a link's token (not verified: for reading the jti in tests). */
function claimsOf(link: string): Record<string, unknown> {
  const sig = new URL(`http://gw${link}`).searchParams.get("sig") as string;
  return JSON.parse(atob((sig.split(".")[1] as string).replaceAll("-", "+").replaceAll("_", "/")));
}

/** The organization a grant belongs to. */
async function organizationOf(grantId: string): Promise<string> {
  const [grant] = await createDatabase(env.DB).select().from(grants).where(eq(grants.id, grantId));
  if (!grant) throw new Error(`no grant ${grantId}`);
  return grant.organizationId;
}

/** Sets how many downloads of each file the link of `link`'s manifest allows. */
async function allowDownloads(link: string, maxDownloads: number): Promise<void> {
  await createDatabase(env.DB)
    .update(downloadManifests)
    .set({ maxDownloads })
    .where(eq(downloadManifests.jti, claimsOf(link).jti as string));
}

/** What `link`'s manifest has served of `path`, once its first byte was served. */
async function budgetOf(link: string, path: string) {
  const [row] = await createDatabase(env.DB)
    .select()
    .from(downloadBudgets)
    .where(and(eq(downloadBudgets.jti, claimsOf(link).jti as string), eq(downloadBudgets.path, path)));
  return row;
}

async function setup(gw = testGateway()) {
  const access = await approvedToken(gw, licenseSha256);
  return { gw, ...access, manifest: await manifest(gw, access.token) };
}

describe("manifest", () => {
  it("lists every file with size, sha256 and a signed link, and the notice", async () => {
    const { manifest: m } = await setup();
    expect(m.revision).toBe(revision);
    expect(m.files.map((f) => f.path)).toEqual(["consolidated.00.pth", "params.json", "sub/dir/tokenizer.model"]);
    expect(m.files[0]).toMatchObject({ size: SHARD.byteLength, sha256: await sha256Hex(SHARD) });
    expect(m.notice).toContain("Llama 2 is licensed under the LLAMA 2 Community License");
    expect(new Date(m.expiresAt).getTime() - Date.now()).toBeGreaterThan(86_000_000);
  });

  it("answers an unknown model and revision with 404", async () => {
    const { gw, token } = await setup();
    const auth = { headers: { authorization: `Bearer ${token}` } };
    expect((await gw.request("/v1/models/llama-9/manifest", auth)).status).toBe(404);
    expect((await gw.request("/v1/models/llama-2-7b/manifest?revision=deadbeef", auth)).status).toBe(404);
    expect((await gw.request(`/v1/models/llama-2-7b/manifest?revision=${revision}`, auth)).status).toBe(200);
  });
});

describe("download", () => {
  it("serves the whole file with its validators, and it matches the manifest's sha256", async () => {
    const { gw, manifest: m } = await setup();
    const res = await gw.request(linkOf(m, "consolidated.00.pth"));
    expect(res.status).toBe(200);
    expect(res.headers.get("accept-ranges")).toBe("bytes");
    expect(res.headers.get("content-length")).toBe(String(SHARD.byteLength));
    expect(res.headers.get("etag")).toMatch(/^".+"$/);
    expect(res.headers.get("content-disposition")).toBe(
      "attachment; filename=\"consolidated.00.pth\"; filename*=UTF-8''consolidated.00.pth",
    );
    const body = new Uint8Array(await res.arrayBuffer());
    expect(await sha256Hex(body)).toBe(m.files[0]?.sha256);
    const nested = await gw.request(linkOf(m, "sub/dir/tokenizer.model"));
    expect(nested.status).toBe(200);
    expect((await nested.arrayBuffer()).byteLength).toBe(1000);
  });

  it.each([
    ["bytes=0-99", 0, 99],
    ["bytes=1000-", 1000, SHARD.byteLength - 1],
    ["bytes=-500", SHARD.byteLength - 500, SHARD.byteLength - 1],
    ["bytes=299990-400000", 299_990, SHARD.byteLength - 1],
    ["bytes=-999999", 0, SHARD.byteLength - 1],
  ])("answers %s with 206 and the right bytes", async (range, start, end) => {
    const { gw, manifest: m } = await setup();
    const res = await gw.request(linkOf(m, "consolidated.00.pth"), { headers: { range } });
    expect(res.status).toBe(206);
    expect(res.headers.get("content-range")).toBe(`bytes ${start}-${end}/${SHARD.byteLength}`);
    expect(res.headers.get("content-length")).toBe(String(end - start + 1));
    expect(new Uint8Array(await res.arrayBuffer())).toEqual(SHARD.slice(start, end + 1));
  });

  it("answers an unsatisfiable range with 416 and the size, never a 500", async () => {
    const { gw, manifest: m } = await setup();
    for (const range of [`bytes=${SHARD.byteLength}-`, "bytes=999999-1000000", "bytes=-0"]) {
      const res = await gw.request(linkOf(m, "consolidated.00.pth"), { headers: { range } });
      expect(res.status, range).toBe(416);
      expect(res.headers.get("content-range")).toBe(`bytes */${SHARD.byteLength}`);
      expect(await res.json()).toMatchObject({ code: "range_not_satisfiable" });
    }
  });

  it("answers several ranges, a stale If-Range and a syntactically invalid range with the whole file", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    // Every answer here starts at byte 0, so each counts as a download: lift this link's cap.
    await allowDownloads(link, 100);
    const etag = (await gw.request(link, { method: "HEAD" })).headers.get("etag") as string;
    const cases: Record<string, string>[] = [
      { range: "bytes=0-9,20-29" },
      { range: "bytes=0-9", "if-range": '"stale-etag"' },
      { range: "bytes=0-9", "if-range": "Wed, 21 Oct 2015 07:28:00 GMT" },
      { range: "bytes=50-10" },
      { range: "items=0-9" },
    ];
    for (const headers of cases) {
      const res = await gw.request(link, { headers });
      expect(res.status, JSON.stringify(headers)).toBe(200);
      expect((await res.arrayBuffer()).byteLength).toBe(SHARD.byteLength);
    }
    const fresh = await gw.request(link, { headers: { range: "bytes=0-9", "if-range": etag } });
    expect(fresh.status).toBe(206);
  });

  it("answers HEAD with the headers and no body", async () => {
    const { gw, manifest: m } = await setup();
    const res = await gw.request(linkOf(m, "params.json"), { method: "HEAD" });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-length")).toBe(String(PARAMS.length));
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(await res.text()).toBe("");
  });

  it("answers 412 when the object was replaced since the link was made, never mixed bytes", async () => {
    const { gw, manifest: m } = await setup();
    await env.WEIGHTS.put("models/llama-2-7b/test/consolidated.00.pth", bytes(300_000, 99));
    for (const init of [{}, { headers: { range: "bytes=100-" } }, { method: "HEAD" }]) {
      const res = await gw.request(linkOf(m, "consolidated.00.pth"), init);
      expect(res.status, JSON.stringify(init)).toBe(412);
    }
  });

  it("records what was served, off the hot path", async () => {
    const { gw, manifest: m, grantId, tokenId } = await setup();
    await (await gw.request(linkOf(m, "consolidated.00.pth"), { headers: { range: "bytes=100-199" } })).arrayBuffer();
    await (await gw.request(linkOf(m, "params.json"))).arrayBuffer();
    const rows = await downloadRows();
    expect(rows).toHaveLength(2);
    expect(rows).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          organizationId: await organizationOf(grantId),
          grantId,
          tokenId,
          path: "consolidated.00.pth",
          status: 206,
          rangeStart: 100,
          rangeEnd: 199,
          bytesServed: 100,
          complete: true,
        }),
        expect.objectContaining({ path: "params.json", status: 200, bytesServed: PARAMS.length, complete: true }),
      ]),
    );
    // The quota object took them: nothing was written row by row to D1.
    expect(await gw.db.select().from(downloadEvents)).toEqual([]);
  });
});

describe("download links refuse", () => {
  async function signingKey() {
    const jwk = (JSON.parse(env.DOWNLOAD_SIGNING_KEYS) as { keys: JWK[] }).keys[0] as JWK;
    return { jwk, key: await importJWK(jwk, "EdDSA") };
  }

  function withSig(link: string, sig: string): string {
    const url = new URL(`http://gw${link}`);
    url.searchParams.set("sig", sig);
    return url.pathname + url.search;
  }

  async function forge(claims: Record<string, unknown>, header: Record<string, unknown> = {}) {
    const { jwk, key } = await signingKey();
    return new SignJWT(claims).setProtectedHeader({ alg: "EdDSA", kid: jwk.kid, ...header }).sign(key);
  }

  it("forged and tampered tokens", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    const claims = claimsOf(link);
    const b64 = (v: unknown) => btoa(JSON.stringify(v)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
    const [header, , signature] = (new URL(`http://gw${link}`).searchParams.get("sig") as string).split(".");
    const publicJwk = (JSON.parse(env.DOWNLOAD_SIGNING_KEYS) as { keys: JWK[] }).keys[0] as JWK;
    const hmacKey = await crypto.subtle.importKey(
      "raw",
      new TextEncoder().encode(publicJwk.x),
      { name: "HMAC", hash: "SHA-256" },
      false,
      ["sign"],
    );
    const hsHeader = b64({ alg: "HS256", kid: publicJwk.kid });
    const hsPayload = b64(claims);
    const hsSig = btoa(
      String.fromCharCode(
        ...new Uint8Array(
          await crypto.subtle.sign("HMAC", hmacKey, new TextEncoder().encode(`${hsHeader}.${hsPayload}`)),
        ),
      ),
    )
      .replaceAll("+", "-")
      .replaceAll("/", "_")
      .replace(/=+$/, "");
    const without = (name: string) => Object.fromEntries(Object.entries(claims).filter(([k]) => k !== name));
    const forged: [string, string][] = [
      ["alg none", `${b64({ alg: "none", kid: publicJwk.kid })}.${b64(claims)}.`],
      ["HS256 with the public key", `${hsHeader}.${hsPayload}.${hsSig}`],
      ["tampered path claim", `${header}.${b64({ ...claims, pth: "consolidated.00.pth" })}.${signature}`],
      ["missing exp", await forge(without("exp"))],
      ["missing jti", await forge(without("jti"))],
      ["missing aud", await forge(without("aud"))],
      ["wrong aud", await forge({ ...claims, aud: "somewhere-else" })],
      ["unknown kid", await forge(claims, { kid: "nope" })],
      ["unknown jti", await forge({ ...claims, jti: "dl_forged" })],
      ["garbage", "not.a.token"],
    ];
    for (const [name, sig] of forged) {
      const res = await gw.request(withSig(link, sig));
      expect(res.status, name).toBe(403);
      expect(await res.json(), name).toMatchObject({ code: "forbidden" });
    }
    expect((await gw.request(link.replace(/\?sig=.*$/, ""))).status).toBe(401);
    expect((await gw.request(link)).status).toBe(200);
  });

  it("a link used for another model, or for a path that is no file of its revision", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    const sig = new URL(`http://gw${link}`).searchParams.get("sig") as string;
    for (const path of [
      `/v1/download/llama-2-13b/${revision}/params.json?sig=${sig}`,
      `/v1/download/llama-2-7b/${revision}/params.jso?sig=${sig}`,
      `/v1/download/llama-2-7b/${revision}/sub/dir?sig=${sig}`,
    ]) {
      const res = await gw.request(path);
      expect(res.status, path).toBe(403);
      expect(await res.json(), path).toMatchObject({
        code: "forbidden",
        detail: expect.stringContaining("another file"),
      });
    }
  });

  it("an expired link, with a clear message", async () => {
    const clock = fixedClock(new Date());
    const gw = testGateway({ clock });
    const { manifest: m } = await setup(gw);
    clock.advance(24 * 3_600_000 + 31_000);
    const res = await gw.request(linkOf(m, "params.json"));
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ detail: expect.stringContaining("expired") });
  });

  it("a link whose grant or token was revoked, at once and for good", async () => {
    const { gw, manifest: m, tokenId } = await setup();
    const link = linkOf(m, "params.json");
    expect((await gw.request(link)).status).toBe(200);
    await gw.db.update(accessTokens).set({ revokedAt: new Date().toISOString() }).where(eq(accessTokens.id, tokenId));
    expect((await gw.request(link)).status).toBe(403);
    // Revocation is final: the isolate refuses the link again without asking D1, whatever its row says.
    await gw.db.update(accessTokens).set({ revokedAt: null }).where(eq(accessTokens.id, tokenId));
    expect((await gw.request(link)).status).toBe(403);
    // A suspended grant is not: its links come back with it. A revoked grant's do not.
    const other = await approvedToken(gw, licenseSha256, { organization: "Other Labs", email: "bo@other.example" });
    const otherLink = linkOf(await manifest(gw, other.token), "params.json");
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, other.applicationId));
    expect((await gw.request(otherLink)).status).toBe(403);
    await gw.db.update(grants).set({ status: "active" }).where(eq(grants.applicationId, other.applicationId));
    expect((await gw.request(otherLink)).status).toBe(200);
    await gw.db.update(grants).set({ status: "revoked" }).where(eq(grants.applicationId, other.applicationId));
    expect((await gw.request(otherLink)).status).toBe(403);
  });

  it("downloads past the link's cap, counting resumed ranges by the bytes they serve", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    await allowDownloads(link, 2);
    expect((await gw.request(link)).status).toBe(200);
    // A probe, then the second download in two resumed halves: exactly the budget's second copy.
    for (const range of ["bytes=0-0", "bytes=0-999", "bytes=1000-"]) {
      expect((await gw.request(link, { headers: { range } })).status, range).toBe(206);
    }
    expect((await gw.request(link, { headers: { range: "bytes=0-0" } })).status).toBe(206);
    const capped = await gw.request(link);
    expect(capped.status).toBe(403);
    expect(capped.headers.get("content-type")).toMatch(/^application\/problem\+json/);
    expect(await capped.json()).toMatchObject({
      code: "forbidden",
      detail: expect.stringContaining("as many downloads"),
      maxBytes: 2 * SHARD.byteLength + PROBE_ALLOWANCE_BYTES,
    });
    expect((await gw.request(link, { headers: { range: "bytes=5000-" } })).status).toBe(403);
    expect((await gw.request(link, { headers: { range: "bytes=-100" } })).status).toBe(403);
    expect((await budgetOf(link, "consolidated.00.pth"))?.bytesServed).toBe(2 * SHARD.byteLength + 2);
  });

  it("concurrent downloads beyond the cap", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    await allowDownloads(link, 3);
    const responses = await Promise.all(Array.from({ length: 12 }, () => gw.request(link)));
    const statuses = responses.map((r) => r.status);
    await Promise.all(responses.map((r) => r.arrayBuffer()));
    expect(statuses.filter((s) => s === 200)).toHaveLength(3);
    expect(statuses.filter((s) => s === 403)).toHaveLength(9);
    expect((await budgetOf(link, "params.json"))?.downloads).toBe(3);
  });
});

describe("JWKS", () => {
  it("publishes the public keys that verify links, without private parts", async () => {
    const res = await testGateway().request("/.well-known/jwks.json");
    expect(res.status).toBe(200);
    const jwks = (await res.json()) as { keys: Record<string, unknown>[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kty: "OKP", crv: "Ed25519", kid: "test-download-key", alg: "EdDSA" });
    expect(jwks.keys[0]).not.toHaveProperty("d");
    expect(LINK_AUDIENCE).toBe("modelgate:download");
  });
});

describe("security: a link's cap counts the bytes it serves", () => {
  /** Bytes of a response body, read to the end. */
  async function received(res: Response): Promise<number> {
    return (await res.arrayBuffer()).byteLength;
  }

  it("a probe and a range from byte 1 do not make another copy once the cap is spent", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    let total = 0;
    for (let i = 0; i < 5; i++) {
      const res = await gw.request(link);
      expect(res.status).toBe(200);
      total += await received(res);
    }
    const sixth = await gw.request(link);
    expect(sixth.status).toBe(403);
    expect(await sixth.json()).toMatchObject({ code: "forbidden" });
    // The attack: `bytes=0-0` then `bytes=1-`, ten times over, each pair a whole copy.
    let copies = 0;
    for (let i = 0; i < 10; i++) {
      const head = await gw.request(link, { headers: { range: "bytes=0-0" } });
      const rest = await gw.request(link, { headers: { range: "bytes=1-" } });
      if (head.status === 206) total += await received(head);
      if (rest.status === 206) total += await received(rest);
      else expect(await rest.json()).toMatchObject({ code: "forbidden" });
      if (head.status === 206 && rest.status === 206) copies++;
    }
    expect(copies).toBe(0);
    expect(total).toBeLessThanOrEqual(5 * SHARD.byteLength + PROBE_ALLOWANCE_BYTES);
  });

  it("a thousand concurrent ranged requests together stay within the budget", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    await allowDownloads(link, 3);
    const budget = 3 * PARAMS.length + PROBE_ALLOWANCE_BYTES;
    const responses = await Promise.all(
      Array.from({ length: 1000 }, () => gw.request(link, { headers: { range: "bytes=0-9" } })),
    );
    const served = responses.filter((r) => r.status === 206);
    expect(responses.filter((r) => r.status !== 206).every((r) => r.status === 403)).toBe(true);
    expect(served).toHaveLength(Math.floor(budget / 10));
    const bytesReceived = (await Promise.all(served.map(received))).reduce((a, b) => a + b, 0);
    expect(bytesReceived).toBeLessThanOrEqual(budget);
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(bytesReceived);
  }, 60_000);

  it("a client that hangs up keeps what its range reserved: the resume draws again", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    await allowDownloads(link, 1);
    const ctx = createExecutionContext();
    const res = await gw.app.request(`http://gw${link}`, {}, gw.env, ctx);
    expect(res.status).toBe(200);
    await res.body?.cancel();
    await waitOnExecutionContext(ctx);
    expect((await gw.request(link, { headers: { range: "bytes=1000-" } })).status).toBe(403);
    expect((await budgetOf(link, "consolidated.00.pth"))?.bytesServed).toBe(SHARD.byteLength);
  });

  it("the manifest states each link's expiry and byte budget", async () => {
    const { manifest: m } = await setup();
    const withBudget = m as Manifest & { downloadsAllowed: number; files: { maxBytes: number }[] };
    expect(withBudget.downloadsAllowed).toBe(5);
    for (const file of withBudget.files) expect(file.maxBytes).toBe(5 * file.size + PROBE_ALLOWANCE_BYTES);
    expect(new Date(m.expiresAt).getTime() - Date.now()).toBeLessThanOrEqual(86_400_000);
  });

  it("link lifetimes are at most a day, whatever the query or the configuration asks", async () => {
    const { gw, token } = await setup();
    const auth = { headers: { authorization: `Bearer ${token}` } };
    for (const path of ["manifest", "download.sh"]) {
      const res = await gw.request(`/v1/models/llama-2-7b/${path}?ttl=604800`, auth);
      expect(res.status, path).toBe(400);
      expect(await res.json(), path).toMatchObject({ code: "validation_failed" });
    }
    expect((await gw.request("/v1/models/llama-2-7b/manifest?ttl=86400", auth)).status).toBe(200);
    const configured = testGateway({ bindings: { DOWNLOAD_LINK_TTL_SECONDS: "604800" } });
    const m = await manifest(configured, token);
    expect(new Date(m.expiresAt).getTime() - Date.now()).toBeLessThanOrEqual(86_400_000);
  });
});

describe("a file served before: the link's check, its bytes and the read go out together", () => {
  /** What the gateway asked of D1 and R2, in the order it began and finished. */
  type Step = `${"d1" | "r2"} ${"begins" | "ends"}`;

  /** D1 and R2 bindings that note when each call begins and ends, in `steps`. */
  function watchedBindings(steps: Step[]): Partial<Env> {
    const watch =
      <T>(kind: "d1" | "r2", call: () => Promise<T>) =>
      async (): Promise<T> => {
        steps.push(`${kind} begins`);
        try {
          return await call();
        } finally {
          steps.push(`${kind} ends`);
        }
      };
    const statement = (real: D1PreparedStatement): D1PreparedStatement =>
      new Proxy(real, {
        get(target, key) {
          if (key === "bind") return (...values: unknown[]) => statement(target.bind(...values));
          if (key === "all" || key === "raw" || key === "run" || key === "first") {
            return (...args: unknown[]) =>
              watch("d1", () => (target[key] as (...a: unknown[]) => Promise<unknown>).apply(target, args))();
          }
          return boundMember(target, key);
        },
      });
    const db = new Proxy(env.DB, {
      get(target, key) {
        if (key === "prepare") return (query: string) => statement(target.prepare(query));
        return boundMember(target, key);
      },
    });
    const weights = new Proxy(env.WEIGHTS, {
      get(target, key) {
        if (key === "get") return (...args: Parameters<R2Bucket["get"]>) => watch("r2", () => target.get(...args))();
        return boundMember(target, key);
      },
    });
    return { DB: db, WEIGHTS: weights };
  }

  /** How many D1 and R2 calls `steps` began. */
  const callsIn = (steps: Step[]) => ({
    d1: steps.filter((step) => step === "d1 begins").length,
    r2: steps.filter((step) => step === "r2 begins").length,
  });

  /** Whether the link was looked up first, and the reservation and the read then began together. */
  const lookupFirst = (steps: Step[]) =>
    steps.length === 6 &&
    steps.slice(0, 2).join() === "d1 begins,d1 ends" &&
    [...steps.slice(2, 4)].sort().join() === "d1 begins,r2 begins";

  /** The steps of an answer whose file R2 last refused: the lookup, the read, then the reservation. */
  const readBeforeReserve: Step[] = ["d1 begins", "d1 ends", "r2 begins", "r2 ends", "d1 begins", "d1 ends"];

  /** Whether the lookup, the reservation and the read all began before any of them ended. */
  const begunTogether = (steps: Step[]) =>
    [...steps.slice(0, 3)].sort().join() === ["d1 begins", "d1 begins", "r2 begins"].join();

  it("the first answer waits twice, the lookup first; the next waits once, on three calls begun at once", async () => {
    const steps: Step[] = [];
    // Bindings of their own: a database this isolate has read no file of.
    const { gw, manifest: m } = await setup(testGateway({ bindings: watchedBindings(steps) }));
    const link = linkOf(m, "consolidated.00.pth");
    steps.length = 0;
    const first = await gw.request(link, { headers: { range: "bytes=0-0" } });
    expect(first.status).toBe(206);
    // The lookup, then the reservation and the read together.
    expect(lookupFirst(steps)).toBe(true);
    steps.length = 0;
    const next = await gw.request(link, { headers: { range: "bytes=1-99" } });
    expect(next.status).toBe(206);
    expect(new Uint8Array(await next.arrayBuffer())).toEqual(SHARD.slice(1, 100));
    // The lookup, the reservation and the read all begin before any of them ends.
    expect(begunTogether(steps)).toBe(true);
    expect(steps.filter((step) => step.endsWith("begins"))).toHaveLength(3);
    expect((await budgetOf(link, "consolidated.00.pth"))?.bytesServed).toBe(100);
  });

  it("an answer refused after its bytes were taken gives them back; a revoked link takes none, then costs no call", async () => {
    const steps: Step[] = [];
    const { gw, manifest: m, tokenId } = await setup(testGateway({ bindings: watchedBindings(steps) }));
    const link = linkOf(m, "consolidated.00.pth");
    expect((await gw.request(link, { headers: { range: "bytes=0-9" } })).status).toBe(206);
    let spent = (await budgetOf(link, "consolidated.00.pth"))?.bytesServed;
    expect(spent).toBe(10);
    /** Asks once; the answer is `status`, the budget as it was, after `calls` D1 and R2 calls (its steps). */
    const refusedWith = async (status: number, calls: { d1: number; r2: number }, init?: RequestInit) => {
      steps.length = 0;
      const res = await gw.request(link, init ?? { headers: { range: "bytes=10-" } });
      expect(res.status).toBe(status);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(res.headers.get("content-range")).toBeNull();
      expect((await budgetOf(link, "consolidated.00.pth"))?.bytesServed).toBe(spent);
      expect(callsIn(steps)).toEqual(calls);
      return [...steps];
    };
    /** Asks for `range` and gets it, after the steps `served` says (the file was doubted); the doubt is lifted. */
    const servedAfterDoubt = async (range: string, size: number, served: (steps: Step[]) => boolean) => {
      steps.length = 0;
      const res = await gw.request(link, { headers: { range } });
      expect(res.status).toBe(206);
      expect((await res.arrayBuffer()).byteLength).toBe(size);
      expect(served([...steps]), steps.join()).toBe(true);
      spent = (spent ?? 0) + size;
    };
    // The token narrowed to another model: judged from the lookup after the bytes were taken, which
    // a third call gives back.
    await gw.db
      .update(accessTokens)
      .set({ models: ["llama-2-13b"] })
      .where(eq(accessTokens.id, tokenId));
    await refusedWith(403, { d1: 3, r2: 1 });
    // The file is doubted now: a range or a whole download looks the link up first, and stops there.
    await refusedWith(403, { d1: 1, r2: 0 }, {});
    await refusedWith(403, { d1: 1, r2: 0 });
    await gw.db.update(accessTokens).set({ models: null }).where(eq(accessTokens.id, tokenId));
    await servedAfterDoubt("bytes=10-19", 10, lookupFirst);
    // The object replaced under the link: R2 refuses the read, and the bytes go back. After that the
    // link is looked up, then read, and nothing is taken while R2 refuses.
    await env.WEIGHTS.put("models/llama-2-7b/test/consolidated.00.pth", bytes(300_000, 99));
    await refusedWith(412, { d1: 3, r2: 1 });
    expect(await refusedWith(412, { d1: 1, r2: 1 })).toEqual(readBeforeReserve.slice(0, 4));
    expect(await refusedWith(412, { d1: 1, r2: 1 }, {})).toEqual(readBeforeReserve.slice(0, 4));
    await env.WEIGHTS.put("models/llama-2-7b/test/consolidated.00.pth", SHARD);
    await servedAfterDoubt("bytes=20-29", 10, (seen) => seen.join() === readBeforeReserve.join());
    // Revoked: the reservation's own condition takes nothing, so there is nothing to give back.
    await gw.db.update(accessTokens).set({ revokedAt: new Date().toISOString() }).where(eq(accessTokens.id, tokenId));
    await refusedWith(403, { d1: 2, r2: 1 });
    // From then on the isolate refuses the link by itself, an unsatisfiable range included: a
    // dead link learns nothing, not even the size.
    await refusedWith(403, { d1: 0, r2: 0 });
    await refusedWith(403, { d1: 0, r2: 0 }, { headers: { range: "bytes=999999999-" } });
  });

  it("a link refused for a reason that may pass costs no R2 read after the first, until it is served again", async () => {
    const steps: Step[] = [];
    const { gw, manifest: m, grantId } = await setup(testGateway({ bindings: watchedBindings(steps) }));
    const link = linkOf(m, "params.json");
    await allowDownloads(link, 1);
    /** Asks for `range`; the answer's status, and the D1 and R2 calls it made. */
    const ask = async (range?: string) => {
      steps.length = 0;
      const res = await gw.request(link, range ? { headers: { range } } : {});
      await res.arrayBuffer();
      return { status: res.status, calls: callsIn(steps), steps: [...steps] };
    };
    expect((await ask()).status).toBe(200);
    // What is left of the budget is the probe allowance: the whole file again does not fit. The
    // first refusal read R2 while the bytes were being refused; the next ones are refused by the
    // lookup, which sees the bytes served, and ask nothing of the budget or R2.
    expect((await ask("bytes=0-")).calls).toEqual({ d1: 2, r2: 1 });
    expect(await ask("bytes=0-")).toMatchObject({ status: 403, calls: { d1: 1, r2: 0 } });
    expect(await ask()).toMatchObject({ status: 403, calls: { d1: 1, r2: 0 } });
    // A probe fits: served after the lookup, which lifts the doubt.
    expect(lookupFirst((await ask("bytes=0-0")).steps)).toBe(true);
    expect(begunTogether((await ask("bytes=1-1")).steps)).toBe(true);
    // A suspended grant: the reservation takes nothing, and after the first refusal the lookup alone
    // answers.
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.id, grantId));
    expect(await ask("bytes=2-2")).toMatchObject({ status: 403, calls: { d1: 2, r2: 1 } });
    for (let i = 0; i < 3; i++) expect(await ask("bytes=2-2")).toMatchObject({ status: 403, calls: { d1: 1, r2: 0 } });
    // Reinstated: the link comes back at once, after its lookup, then as before.
    await gw.db.update(grants).set({ status: "active" }).where(eq(grants.id, grantId));
    expect(lookupFirst((await ask("bytes=2-2")).steps)).toBe(true);
    expect(begunTogether((await ask("bytes=3-3")).steps)).toBe(true);
    // What is left, 12 bytes, exactly: one byte more is refused, and the lookup lets the 12 through.
    const left = PARAMS.length + PROBE_ALLOWANCE_BYTES - (PARAMS.length + 4);
    expect((await ask(`bytes=0-${left}`)).status).toBe(403);
    expect(await ask(`bytes=0-${left}`)).toMatchObject({ status: 403, calls: { d1: 1, r2: 0 } });
    expect(lookupFirst((await ask(`bytes=0-${left - 1}`)).steps)).toBe(true);
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(PARAMS.length + PROBE_ALLOWANCE_BYTES);
  });

  it("a range from a restricted country is refused by the lookup alone, and leaves the link as it was", async () => {
    const steps: Step[] = [];
    const { gw, manifest: m } = await setup(testGateway({ bindings: watchedBindings(steps) }));
    const link = linkOf(m, "params.json");
    await allowDownloads(link, 1);
    expect((await gw.request(link, { headers: { range: "bytes=0-9" } })).status).toBe(206);
    // What is left of the budget: the probe allowance and the file but its first 10 bytes.
    const fromIran = { headers: { range: "bytes=10-" }, cf: { country: "IR" } } as RequestInit;
    // The first also notes the country for reviewers (D1 writes of its own, after the answer).
    steps.length = 0;
    expect((await gw.request(link, fromIran)).status).toBe(403);
    expect(callsIn(steps).r2).toBe(0);
    for (let i = 0; i < 3; i++) {
      steps.length = 0;
      const refused = await gw.request(link, fromIran);
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ code: "export_restricted", country: "IR" });
      expect(callsIn(steps)).toEqual({ d1: 1, r2: 0 });
    }
    // The same range from elsewhere finds its bytes untouched and goes out as the link's others do.
    steps.length = 0;
    const served = await gw.request(link, { headers: { range: "bytes=10-" }, cf: { country: "DE" } } as RequestInit);
    expect(served.status).toBe(206);
    expect(await served.text()).toBe(PARAMS.slice(10));
    expect(begunTogether(steps)).toBe(true);
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(PARAMS.length);
  });

  it("a thousand concurrent ranges of a file R2 last refused read first, and together take no more than the budget", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    await allowDownloads(link, 1);
    expect((await gw.request(link, { headers: { range: "bytes=0-0" } })).status).toBe(206);
    // Replaced, then put back: the file is doubted for its object, so each range below looks the
    // link up, reads, and only then reserves.
    await env.WEIGHTS.put("models/llama-2-7b/test/params.json", "{}");
    expect((await gw.request(link, { headers: { range: "bytes=0-9" } })).status).toBe(412);
    await env.WEIGHTS.put("models/llama-2-7b/test/params.json", PARAMS);
    const responses = await Promise.all(
      Array.from({ length: 1000 }, () => gw.request(link, { headers: { range: "bytes=0-9" } })),
    );
    const served = responses.filter((r) => r.status === 206);
    // 41 bytes were left (the file and the probe allowance, but the first byte): four ranges of 10.
    expect(served).toHaveLength(4);
    expect(responses.filter((r) => r.status === 403)).toHaveLength(996);
    for (const res of served) expect(await res.text()).toBe(PARAMS.slice(0, 10));
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(41);
  }, 60_000);

  it("a file whose row changed under the isolate is served from D1's row, and its bytes taken once", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    expect((await gw.request(link, { headers: { range: "bytes=0-0" } })).status).toBe(206);
    // A database rebuilt under a running isolate: the file now lives elsewhere, the old object is gone.
    const moved = "models/llama-2-7b/test/moved/params.json";
    await env.WEIGHTS.put(moved, PARAMS);
    await gw.db
      .update(modelFiles)
      .set({ r2Key: moved })
      .where(and(eq(modelFiles.revisionId, revision), eq(modelFiles.path, "params.json")));
    await env.WEIGHTS.delete("models/llama-2-7b/test/params.json");
    const res = await gw.request(link, { headers: { range: "bytes=1-4" } });
    expect(res.status).toBe(206);
    expect(await res.text()).toBe(PARAMS.slice(1, 5));
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(5);
  });

  it("a thousand concurrent ranges of a link refused after the bytes were taken leave its budget as it was", async () => {
    const { gw, manifest: m, tokenId } = await setup();
    const link = linkOf(m, "params.json");
    expect((await gw.request(link, { headers: { range: "bytes=0-0" } })).status).toBe(206);
    await gw.db
      .update(accessTokens)
      .set({ models: ["llama-2-13b"] })
      .where(eq(accessTokens.id, tokenId));
    const responses = await Promise.all(
      Array.from({ length: 1000 }, () => gw.request(link, { headers: { range: "bytes=1-9" } })),
    );
    expect(responses.every((r) => r.status === 403)).toBe(true);
    expect((await budgetOf(link, "params.json"))?.bytesServed).toBe(1);
    await gw.db.update(accessTokens).set({ models: null }).where(eq(accessTokens.id, tokenId));
    expect((await gw.request(link)).status).toBe(200);
  }, 60_000);
});

describe("security: hostile paths on the download route", () => {
  it("answers a control character, Unicode, `..` or an overlong part with a 4xx problem, never a 5xx", async () => {
    const { gw, manifest: m } = await setup();
    const link = linkOf(m, "params.json");
    const sig = new URL(`http://gw${link}`).search;
    const paths = [
      `/v1/download/llama-2-7b/${revision}/params.json%0D%0AX-Injected:%201${sig}`,
      `/v1/download/llama-2-7b/${revision}/params.json%00${sig}`,
      `/v1/download/llama-2-7b/${revision}/%E6%A8%A1%E5%9E%8B.json${sig}`,
      `/v1/download/llama-2-7b/${revision}/sub%2F..%2Fparams.json${sig}`,
      `/v1/download/llama-2-7b/${revision}/${"p".repeat(5000)}${sig}`,
      `/v1/download/llama-2-7b%0D%0A/${revision}/params.json${sig}`,
      `/v1/download/llama-2-7b/${revision}%00/params.json${sig}`,
      `/v1/download/${"m".repeat(5000)}/${revision}/params.json${sig}`,
      `/v1/download/llama-2-7b/${revision}/params.json%0D%0A`,
    ];
    for (const path of paths) {
      for (const method of ["GET", "HEAD"]) {
        const res = await gw.request(path, { method });
        const label = `${method} ${path.slice(0, 120)}`;
        expect(res.status, label).toBeGreaterThanOrEqual(400);
        expect(res.status, label).toBeLessThan(500);
        expect(res.headers.get("content-type"), label).toMatch(/^application\/problem\+json/);
        expect(res.headers.get("x-injected"), label).toBeNull();
      }
    }
    expect((await gw.request(link)).status).toBe(200);
  });
});

describe("download usage", () => {
  /** `download_hours` of a grant summed over its hours and parts, as a usage view reads it. */
  async function hourTotals(grantId: string) {
    const parts = await env.DB.prepare(
      `select count(*) as parts, coalesce(sum(requests), 0) as requests,
         coalesce(sum(complete_requests), 0) as complete, coalesce(sum(bytes_served), 0) as bytes
       from download_hours where grant_id = ?`,
    )
      .bind(grantId)
      .first<{ parts: number; requests: number; complete: number; bytes: number }>();
    return parts ?? { parts: 0, requests: 0, complete: 0, bytes: 0 };
  }

  /** The same counts taken from raw rows. */
  function rowTotals(rows: DownloadRow[]) {
    return {
      requests: rows.length,
      complete: rows.filter((r) => r.complete).length,
      bytes: rows.reduce((sum, r) => sum + r.bytesServed, 0),
    };
  }

  /** A quota namespace whose objects cannot be reached. */
  const unreachableQuota = {
    idFromName: (name: string) => env.QUOTA.idFromName(name),
    get: () => ({ recordDownloads: () => Promise.reject(new Error("Durable Object is overloaded")) }),
  } as unknown as Env["QUOTA"];

  /**
   * D1 whose writes to `download_events` fail `failures` times (every time by default); every
   * other statement goes to the real database.
   */
  function failingEventWrites(failures = Number.POSITIVE_INFINITY) {
    let left = failures;
    const attempts = { count: 0 };
    const db = new Proxy(env.DB, {
      get(target, property) {
        if (property === "prepare") {
          return (query: string) => {
            if (/insert into "download_events"/i.test(query)) {
              attempts.count++;
              if (left > 0) {
                left--;
                throw new Error("D1_ERROR: database is locked");
              }
            }
            return target.prepare(query);
          };
        }
        return boundMember(target, property);
      },
    });
    return { db, attempts };
  }

  it("a download reaches download_hours with the requests, completions and bytes of its raw rows", async () => {
    const { gw, manifest: m, grantId } = await setup();
    await gw.request(linkOf(m, "consolidated.00.pth"));
    await gw.request(linkOf(m, "consolidated.00.pth"), { headers: { range: "bytes=0-999" } });
    await gw.request(linkOf(m, "params.json"));
    const rows = await downloadRows();
    expect(rowTotals(rows)).toEqual({ requests: 3, complete: 3, bytes: SHARD.byteLength + 1000 + PARAMS.length });
    const hours = await hourTotals(grantId);
    expect(hours).toMatchObject(rowTotals(rows));
    const [hour] = await gw.db.select().from(downloadHours).where(eq(downloadHours.grantId, grantId));
    expect(hour).toMatchObject({ organizationId: await organizationOf(grantId), hour: rows[0]?.at.slice(0, 13) });
    expect(hour?.part).not.toBe("ledger");
  });

  it("a client that hangs up is recorded with 0 bytes and not complete", async () => {
    const { gw, manifest: m, grantId } = await setup();
    const ctx = createExecutionContext();
    const res = await gw.app.request(`http://gw${linkOf(m, "consolidated.00.pth")}`, {}, gw.env, ctx);
    expect(res.status).toBe(200);
    await res.body?.cancel();
    await waitOnExecutionContext(ctx);
    const rows = await downloadRows();
    expect(rows).toEqual([expect.objectContaining({ status: 200, bytesServed: 0, complete: false })]);
    expect(await hourTotals(grantId)).toMatchObject({ requests: 1, complete: 0, bytes: 0 });
  });

  it("50 concurrent range requests record 50 rows, and the hour's bytes are their sum", async () => {
    const { gw, manifest: m, grantId } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        gw.request(link, { headers: { range: `bytes=${i * 1000}-${i * 1000 + 10 + i}` } }),
      ),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(50).fill(206));
    const rows = await downloadRows();
    expect(rows).toHaveLength(50);
    expect(new Set(rows.map((r) => r.rangeStart))).toEqual(new Set(Array.from({ length: 50 }, (_, i) => i * 1000)));
    const bytes = Array.from({ length: 50 }, (_, i) => 11 + i).reduce((a, b) => a + b, 0);
    expect(rowTotals(rows)).toEqual({ requests: 50, complete: 50, bytes });
    expect(await hourTotals(grantId)).toMatchObject({ requests: 50, complete: 50, bytes });
  });

  it("with the quota object unreachable the row goes to download_events, and the cron carries it once", async () => {
    const { manifest: m, grantId, tokenId } = await setup();
    const gw = testGateway({ bindings: { QUOTA: unreachableQuota } });
    const res = await gw.request(linkOf(m, "params.json"));
    expect(res.status).toBe(200);
    expect(await downloadRows()).toEqual([]);
    const events = await gw.db.select().from(downloadEvents);
    expect(events).toEqual([
      expect.objectContaining({ grantId, tokenId, path: "params.json", bytesServed: PARAMS.length, complete: true }),
    ]);
    expect(await carryLedgerRows(env.DB, new Date())).toMatchObject({ downloads: 1 });
    expect(await carryLedgerRows(env.DB, new Date())).toMatchObject({ downloads: 0 });
    const hours = await gw.db.select().from(downloadHours).where(eq(downloadHours.grantId, grantId));
    expect(hours).toEqual([
      expect.objectContaining({
        organizationId: await organizationOf(grantId),
        hour: events[0]?.at.slice(0, 13),
        part: "ledger",
        requests: 1,
        completeRequests: 1,
        bytesServed: PARAMS.length,
      }),
    ]);
  });

  it("a direct write that fails is tried again and stored once", async () => {
    const { manifest: m, grantId } = await setup();
    const { db, attempts } = failingEventWrites(2);
    const gw = testGateway({ bindings: { QUOTA: unreachableQuota, DB: db } });
    expect((await gw.request(linkOf(m, "params.json"))).status).toBe(200);
    expect(attempts.count).toBe(3);
    expect(await gw.db.select().from(downloadEvents).where(eq(downloadEvents.grantId, grantId))).toHaveLength(1);
  });

  it("a row neither the quota object nor D1 takes is logged whole at error level", async () => {
    const { manifest: m, grantId } = await setup();
    const { db, attempts } = failingEventWrites();
    const gw = testGateway({ bindings: { QUOTA: unreachableQuota, DB: db } });
    const errors = vi.spyOn(console, "error").mockImplementation(() => {});
    try {
      expect((await gw.request(linkOf(m, "params.json"), { headers: { range: "bytes=2-5" } })).status).toBe(206);
      const logged = errors.mock.calls.map(([line]) => JSON.parse(String(line)) as Record<string, unknown>);
      expect(logged).toEqual([
        expect.objectContaining({
          level: "error",
          message: "download not recorded",
          row: expect.objectContaining({
            organizationId: await organizationOf(grantId),
            grantId,
            path: "params.json",
            status: 206,
            rangeStart: 2,
            rangeEnd: 5,
            bytesServed: 4,
            complete: true,
          }),
        }),
      ]);
    } finally {
      errors.mockRestore();
    }
    expect(attempts.count).toBeGreaterThan(1);
    expect(await gw.db.select().from(downloadEvents)).toEqual([]);
  });
});
