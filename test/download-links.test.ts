import { env } from "cloudflare:workers";
import { and, eq } from "drizzle-orm";
import { importJWK, type JWK, SignJWT } from "jose";
import { beforeEach, describe, expect, it } from "vitest";
import { createDatabase } from "../worker/db/client";
import {
  accessTokens,
  downloadBudgets,
  downloadLinks,
  downloadManifests,
  grants,
  modelFiles,
} from "../worker/db/schema";
import { PROBE_ALLOWANCE_BYTES } from "../worker/downloads/links";
import { LINK_AUDIENCE } from "../worker/downloads/signing";
import { fixedClock } from "../worker/platform/clock";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const SHARD = bytes(20_000, 11);
const PARAMS = JSON.stringify({ dim: 4096, n_layers: 32, n_heads: 32, vocab_size: 32000, multiple_of: 256 });
const db = () => createDatabase(env.DB);

let licenseSha256: string;
let revision: string;
beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
  revision = (await seedRevision("llama-2-7b", { "consolidated.00.pth": SHARD, "params.json": PARAMS })).revision;
});

interface Manifest {
  revision: string;
  expiresAt: string;
  downloadsAllowed: number;
  files: { path: string; size: number; url: string; maxBytes: number }[];
}

async function manifestFor(gw: ReturnType<typeof testGateway>, token: string, query = ""): Promise<Manifest> {
  const res = await gw.request(`/v1/models/llama-2-7b/manifest${query}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Manifest;
}

/** The path and query of a manifest entry's link. */
function linkOf(m: Manifest, path: string): string {
  const file = m.files.find((f) => f.path === path);
  if (!file) throw new Error(`no ${path} in manifest`);
  return new URL(file.url).pathname + new URL(file.url).search;
}

function sigOf(link: string): string {
  return new URL(`http://gw${link}`).searchParams.get("sig") as string;
}

/** A token's claims, unverified. */
function claimsOf(sig: string): Record<string, unknown> {
  return JSON.parse(atob((sig.split(".")[1] as string).replaceAll("-", "+").replaceAll("_", "/")));
}

const b64url = (value: unknown) =>
  btoa(JSON.stringify(value)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");

async function budgetOf(jti: string, path: string) {
  const [row] = await db()
    .select()
    .from(downloadBudgets)
    .where(and(eq(downloadBudgets.jti, jti), eq(downloadBudgets.path, path)));
  return row;
}

async function setup(gw = testGateway()) {
  const access = await approvedToken(gw, licenseSha256);
  const manifest = await manifestFor(gw, access.token);
  const sig = sigOf(linkOf(manifest, "params.json"));
  return { gw, ...access, manifest, sig, jti: claimsOf(sig).jti as string };
}

describe("a manifest's link", () => {
  it("is one signed token and one row for the whole revision, naming no file", async () => {
    const { manifest: m, sig, jti, grantId, tokenId } = await setup();
    expect(m.files).toHaveLength(2);
    for (const file of m.files) expect(sigOf(new URL(file.url).pathname + new URL(file.url).search)).toBe(sig);
    const claims = claimsOf(sig);
    expect(claims).toMatchObject({ jti, gnt: grantId, tok: tokenId, mdl: "llama-2-7b", rev: revision });
    expect(claims).not.toHaveProperty("pth");
    expect(claims).not.toHaveProperty("etg");
    expect(await db().select().from(downloadLinks)).toEqual([]);
    expect(await db().select().from(downloadManifests)).toEqual([
      expect.objectContaining({ jti, grantId, tokenId, model: "llama-2-7b", revisionId: revision, maxDownloads: 5 }),
    ]);
    // No budget exists until a byte is served; a HEAD serves none.
    expect((await testGateway().request(linkOf(m, "params.json"), { method: "HEAD" })).status).toBe(200);
    expect(await db().select().from(downloadBudgets)).toEqual([]);
  });

  it("keeps a budget per file: spending one file's leaves the other's whole", async () => {
    const { gw, manifest: m, jti } = await setup();
    const budget = 5 * PARAMS.length + PROBE_ALLOWANCE_BYTES;
    for (let i = 0; i < 5; i++) expect((await gw.request(linkOf(m, "params.json"))).status).toBe(200);
    const capped = await gw.request(linkOf(m, "params.json"));
    expect(capped.status).toBe(403);
    expect(await capped.json()).toMatchObject({
      detail: expect.stringContaining("as many downloads"),
      maxBytes: budget,
    });
    const shard = await gw.request(linkOf(m, "consolidated.00.pth"));
    expect(shard.status).toBe(200);
    expect(new Uint8Array(await shard.arrayBuffer())).toEqual(SHARD);
    expect(await budgetOf(jti, "params.json")).toMatchObject({ bytesServed: 5 * PARAMS.length, downloads: 5 });
    expect(await budgetOf(jti, "consolidated.00.pth")).toMatchObject({ bytesServed: SHARD.byteLength, downloads: 1 });
  });

  it("a fresh manifest has fresh budgets; an old one keeps what it spent", async () => {
    const { gw, manifest: m, token } = await setup();
    for (let i = 0; i < 5; i++) expect((await gw.request(linkOf(m, "params.json"))).status).toBe(200);
    expect((await gw.request(linkOf(m, "params.json"))).status).toBe(403);
    const fresh = await manifestFor(gw, token);
    expect(sigOf(linkOf(fresh, "params.json"))).not.toBe(sigOf(linkOf(m, "params.json")));
    expect((await gw.request(linkOf(fresh, "params.json"))).status).toBe(200);
    expect((await gw.request(linkOf(m, "params.json"))).status).toBe(403);
  });

  it("ranges and resumes of one file draw from that file's budget, within it however many run at once", async () => {
    const { gw, manifest: m, jti } = await setup();
    const link = linkOf(m, "consolidated.00.pth");
    const budget = 5 * SHARD.byteLength + PROBE_ALLOWANCE_BYTES;
    // The file's budget does not exist yet: the first answers race to make it.
    const chunk = 1000;
    const responses = await Promise.all(
      Array.from({ length: 150 }, (_, i) =>
        gw.request(link, { headers: { range: `bytes=${(i % 20) * chunk}-${(i % 20) * chunk + chunk - 1}` } }),
      ),
    );
    const served = responses.filter((r) => r.status === 206);
    expect(responses.filter((r) => r.status !== 206).every((r) => r.status === 403)).toBe(true);
    expect(served).toHaveLength(Math.floor(budget / chunk));
    const received = (await Promise.all(served.map(async (r) => (await r.arrayBuffer()).byteLength))).reduce(
      (a, b) => a + b,
      0,
    );
    expect(received).toBeLessThanOrEqual(budget);
    expect(await budgetOf(jti, "consolidated.00.pth")).toMatchObject({ bytesServed: received, downloads: 0 });
    // The other file's budget is untouched by all of that.
    expect(await budgetOf(jti, "params.json")).toBeUndefined();
    expect((await gw.request(linkOf(m, "params.json"))).status).toBe(200);
  }, 60_000);

  it("parallel whole downloads of two files each stop at their own file's budget", async () => {
    const { gw, manifest: m, jti } = await setup();
    await db().update(downloadManifests).set({ maxDownloads: 2 }).where(eq(downloadManifests.jti, jti));
    const paths = ["params.json", "consolidated.00.pth"];
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) => gw.request(linkOf(m, paths[i % 2] as string))),
    );
    for (const [index, path] of paths.entries()) {
      const statuses = responses.filter((_, i) => i % 2 === index).map((r) => r.status);
      expect(
        statuses.filter((s) => s === 200),
        path,
      ).toHaveLength(2);
      expect(
        statuses.filter((s) => s === 403),
        path,
      ).toHaveLength(8);
    }
    await Promise.all(responses.map((r) => r.arrayBuffer()));
    expect(await budgetOf(jti, "params.json")).toMatchObject({ downloads: 2, bytesServed: 2 * PARAMS.length });
  });
});

describe("a manifest's link refuses", () => {
  it("a file of another revision of the model, and its own file asked for under another revision", async () => {
    const { gw, manifest: m, sig } = await setup();
    // The same params.json (the test's objects are stored by model and path) and one more file.
    const other = (await seedRevision("llama-2-7b", { "params.json": PARAMS, "extra.bin": bytes(100, 2) })).revision;
    for (const path of [
      `/v1/download/llama-2-7b/${other}/params.json?sig=${sig}`,
      `/v1/download/llama-2-7b/${other}/extra.bin?sig=${sig}`,
      `/v1/download/llama-2-7b/${revision}/extra.bin?sig=${sig}`,
    ]) {
      const res = await gw.request(path);
      expect(res.status, path).toBe(403);
      expect(await res.json(), path).toMatchObject({ code: "forbidden" });
    }
    // The link of the revision it was made for still serves it.
    expect(await (await gw.request(linkOf(m, "params.json"))).text()).toBe(PARAMS);
  });

  it("a file of another model, even one with the same revision's paths", async () => {
    const { gw, sig } = await setup();
    const other = (await seedRevision("llama-2-13b", { "params.json": PARAMS })).revision;
    for (const path of [
      `/v1/download/llama-2-13b/${other}/params.json?sig=${sig}`,
      `/v1/download/llama-2-13b/${revision}/params.json?sig=${sig}`,
    ]) {
      expect((await gw.request(path)).status, path).toBe(403);
    }
  });

  it("claims changed under the signature, or a cut signature", async () => {
    const { gw, sig } = await setup();
    const [header, payload, signature] = sig.split(".") as [string, string, string];
    const claims = claimsOf(sig);
    const other = (await seedRevision("llama-2-7b", { "params.json": '{"dim":2}' })).revision;
    const tampered: [string, string, string][] = [
      ["revision", `${header}.${b64url({ ...claims, rev: other })}.${signature}`, other],
      ["model", `${header}.${b64url({ ...claims, mdl: "llama-2-13b" })}.${signature}`, revision],
      ["path added", `${header}.${b64url({ ...claims, pth: "params.json", etg: "x" })}.${signature}`, revision],
      ["expiry", `${header}.${b64url({ ...claims, exp: (claims.exp as number) + 86_400 })}.${signature}`, revision],
      ["cut signature", `${header}.${payload}.${signature.slice(0, -4)}`, revision],
      ["no signature", `${header}.${payload}.`, revision],
    ];
    for (const [name, forged, rev] of tampered) {
      const model = name === "model" ? "llama-2-13b" : "llama-2-7b";
      const res = await gw.request(`/v1/download/${model}/${rev}/params.json?sig=${forged}`);
      expect(res.status, name).toBe(403);
      expect(await res.json(), name).toMatchObject({ code: "forbidden", detail: expect.stringContaining("not valid") });
    }
  });

  it("every file at once when the token or the grant is revoked", async () => {
    const { gw, manifest: m, tokenId } = await setup();
    const paths = ["params.json", "consolidated.00.pth"];
    for (const path of paths) expect((await gw.request(linkOf(m, path))).status, path).toBe(200);
    await db().update(accessTokens).set({ revokedAt: new Date().toISOString() }).where(eq(accessTokens.id, tokenId));
    for (const path of paths) {
      const res = await gw.request(linkOf(m, path));
      expect(res.status, path).toBe(403);
      expect(await res.json(), path).toMatchObject({ detail: expect.stringContaining("no longer valid") });
    }
    // Another organization's link, whose grant is revoked.
    const theirs = await approvedToken(gw, licenseSha256, { organization: "Other Labs", email: "bo@other.example" });
    const their = await manifestFor(gw, theirs.token);
    for (const path of paths) expect((await gw.request(linkOf(their, path))).status, path).toBe(200);
    await db().update(grants).set({ status: "revoked" }).where(eq(grants.id, theirs.grantId));
    for (const path of paths) {
      const res = await gw.request(linkOf(their, path));
      expect(res.status, path).toBe(403);
      expect(await res.json(), path).toMatchObject({ detail: expect.stringContaining("suspended or revoked") });
    }
  });

  it("only its own organization's revocation stops it", async () => {
    const gw = testGateway();
    const { manifest: ours } = await setup(gw);
    const theirs = await approvedToken(gw, licenseSha256, { organization: "Other Labs", email: "bo@other.example" });
    const their = await manifestFor(gw, theirs.token);
    await db().update(grants).set({ status: "revoked" }).where(eq(grants.id, theirs.grantId));
    expect((await gw.request(linkOf(their, "params.json"))).status).toBe(403);
    expect((await gw.request(linkOf(ours, "params.json"))).status).toBe(200);
  });

  it("once expired, on every file, with the message it always had", async () => {
    const clock = fixedClock(new Date());
    const gw = testGateway({ clock });
    const { manifest: m } = await setup(gw);
    clock.advance(24 * 3_600_000 + 31_000);
    for (const path of ["params.json", "consolidated.00.pth"]) {
      const res = await gw.request(linkOf(m, path));
      expect(res.status, path).toBe(403);
      expect(await res.json(), path).toMatchObject({
        code: "forbidden",
        detail: "This download link has expired. Request a fresh one from the manifest.",
      });
    }
  });
});

describe("a one-file link issued before manifests had one link", () => {
  /** A link as the gateway issued them per file, and its `download_links` row. */
  async function fileLink(options: {
    grantId: string;
    tokenId: string;
    path: string;
    expiresInSeconds?: number;
    now?: Date;
  }) {
    const jwk = (JSON.parse(env.DOWNLOAD_SIGNING_KEYS) as { keys: JWK[] }).keys[0] as JWK;
    const [file] = await db()
      .select()
      .from(modelFiles)
      .where(and(eq(modelFiles.revisionId, revision), eq(modelFiles.path, options.path)));
    if (!file) throw new Error(`no ${options.path}`);
    const now = options.now ?? new Date();
    const expires = new Date(now.getTime() + (options.expiresInSeconds ?? 3600) * 1000);
    const jti = `dl_old_${options.path}`;
    await db().insert(downloadLinks).values({
      jti,
      grantId: options.grantId,
      tokenId: options.tokenId,
      model: "llama-2-7b",
      revisionId: revision,
      path: options.path,
      maxDownloads: 2,
      downloads: 0,
      expiresAt: expires.toISOString(),
      createdAt: now.toISOString(),
    });
    const sig = await new SignJWT({
      jti,
      gnt: options.grantId,
      tok: options.tokenId,
      mdl: "llama-2-7b",
      rev: revision,
      pth: options.path,
      etg: file.etag,
    })
      .setProtectedHeader({ alg: "EdDSA", kid: jwk.kid as string, typ: "JWT" })
      .setIssuer(env.PUBLIC_BASE_URL)
      .setAudience(LINK_AUDIENCE)
      .setIssuedAt(Math.floor(now.getTime() / 1000))
      .setExpirationTime(Math.floor(expires.getTime() / 1000))
      .sign(await importJWK(jwk, "EdDSA"));
    return { jti, sig, url: `/v1/download/llama-2-7b/${revision}/${options.path}?sig=${sig}` };
  }

  it("still serves its file, with ranges, against its own row's budget", async () => {
    const gw = testGateway();
    const { grantId, tokenId } = await approvedToken(gw, licenseSha256);
    const link = await fileLink({ grantId, tokenId, path: "consolidated.00.pth" });
    const whole = await gw.request(link.url);
    expect(whole.status).toBe(200);
    expect(whole.headers.get("etag")).toMatch(/^".+"$/);
    expect(new Uint8Array(await whole.arrayBuffer())).toEqual(SHARD);
    const part = await gw.request(link.url, { headers: { range: "bytes=0-199" } });
    expect(part.status).toBe(206);
    expect(new Uint8Array(await part.arrayBuffer())).toEqual(SHARD.slice(0, 200));
    expect((await gw.request(link.url, { headers: { range: "bytes=200-" } })).status).toBe(206);
    // Two downloads' worth spent (one whole, one in two ranges): the next whole one is refused.
    const capped = await gw.request(link.url);
    expect(capped.status).toBe(403);
    expect(await capped.json()).toMatchObject({ maxBytes: 2 * SHARD.byteLength + PROBE_ALLOWANCE_BYTES });
    // Judged from the row's own count now: the same refusal, and a probe within the allowance still fits.
    const again = await gw.request(link.url, { headers: { range: "bytes=0-" } });
    expect(again.status).toBe(403);
    expect(await again.json()).toMatchObject({ maxBytes: 2 * SHARD.byteLength + PROBE_ALLOWANCE_BYTES });
    expect((await gw.request(link.url, { headers: { range: "bytes=0-0" } })).status).toBe(206);
    const [row] = await db().select().from(downloadLinks).where(eq(downloadLinks.jti, link.jti));
    expect(row).toMatchObject({ bytesServed: 2 * SHARD.byteLength + 1, downloads: 1 });
    expect(await db().select().from(downloadBudgets)).toEqual([]);
  });

  it("opens no other file, and stops when its token is revoked or it expires", async () => {
    const clock = fixedClock(new Date());
    const gw = testGateway({ clock });
    const { grantId, tokenId } = await approvedToken(gw, licenseSha256);
    const link = await fileLink({ grantId, tokenId, path: "params.json", now: clock.now() });
    const other = await gw.request(`/v1/download/llama-2-7b/${revision}/consolidated.00.pth?sig=${link.sig}`);
    expect(other.status).toBe(403);
    expect(await other.json()).toMatchObject({ detail: expect.stringContaining("another file") });
    expect((await gw.request(link.url)).status).toBe(200);
    await db().update(accessTokens).set({ revokedAt: clock.now().toISOString() }).where(eq(accessTokens.id, tokenId));
    expect((await gw.request(link.url)).status).toBe(403);
    await db().update(accessTokens).set({ revokedAt: null }).where(eq(accessTokens.id, tokenId));
    clock.advance(3_600_000 + 31_000);
    const expired = await gw.request(link.url);
    expect(expired.status).toBe(403);
    expect(await expired.json()).toMatchObject({
      detail: "This download link has expired. Request a fresh one from the manifest.",
    });
  });

  it("is not a manifest's link: its id opens nothing in download_manifests", async () => {
    const gw = testGateway();
    const { grantId, tokenId } = await approvedToken(gw, licenseSha256);
    const link = await fileLink({ grantId, tokenId, path: "params.json" });
    await db().delete(downloadLinks).where(eq(downloadLinks.jti, link.jti));
    await db()
      .insert(downloadManifests)
      .values({
        jti: link.jti,
        grantId,
        tokenId,
        model: "llama-2-7b",
        revisionId: revision,
        maxDownloads: 5,
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        createdAt: new Date().toISOString(),
      });
    const res = await gw.request(link.url);
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ detail: expect.stringContaining("not valid") });
  });
});
