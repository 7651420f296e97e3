import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { verifyAuditChain } from "../worker/audit/log";
import { accessTokens, auditEvents, grants, memberships } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { sha256Hex } from "../worker/platform/hash";
import { checkAccessToken, MAX_LIVE_TOKENS_PER_MEMBER } from "../worker/tokens/service";
import { acmeApplication, applyAndConfirm } from "./helpers/apply";
import { heldWrites } from "./helpers/bindings";
import { json, seedLicense, testGateway } from "./helpers/gateway";
import { signedInMember } from "./helpers/members";
import { approvedToken, seedRevision } from "./helpers/weights";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
  await seedRevision("llama-2-7b", { "params.json": '{"dim":4096}' });
});

type Gateway = ReturnType<typeof testGateway>;
const DAY_MS = 86_400_000;

const manifest = (gw: Gateway, token: string) =>
  gw.request("/v1/models/llama-2-7b/manifest", { headers: { authorization: `Bearer ${token}` } });
const mint = (gw: Gateway, headers: Record<string, string>, body: unknown = { name: "laptop", scopes: ["download"] }) =>
  gw.request("/v1/tokens", json(body, headers));
const list = (gw: Gateway, headers: Record<string, string>, query = "") =>
  gw.request(`/v1/tokens${query}`, { headers });
const revoke = (gw: Gateway, headers: Record<string, string>, id: string) =>
  gw.request(`/v1/tokens/${id}`, { method: "DELETE", headers });

interface ListedToken {
  id: string;
  models: string[] | null;
  member: { id: string; email: string | null } | null;
  revokedAt: string | null;
}

/** A token from before members (minted through a status link, `userId` null), its secret `legacy`. */
async function insertLegacyToken(gw: Gateway, grantId: string, legacy: string) {
  await gw.db.insert(accessTokens).values({
    id: "tok_legacy",
    grantId,
    name: "old",
    secretHash: await sha256Hex(legacy),
    displayPrefix: legacy.slice(0, 9),
    scopes: ["download"],
    createdAt: new Date().toISOString(),
    userId: null,
  });
}

describe("per-developer tokens", () => {
  it("are shown once, stored hashed, listed without the secret, revocable, and audited with their member", async () => {
    const gw = testGateway();
    const { token, tokenId, member } = await approvedToken(gw, licenseSha256);
    expect(token).toMatch(/^mg_[\w-]{40,}$/);
    const [stored] = await gw.db.select().from(accessTokens).where(eq(accessTokens.id, tokenId));
    expect(stored?.secretHash).toMatch(/^[0-9a-f]{64}$/);
    expect(stored?.userId).toBe(member.user.id);
    expect(JSON.stringify(stored)).not.toContain(token);

    const listed = (await (await list(gw, member.headers)).json()) as { tokens: ListedToken[] };
    expect(listed.tokens).toHaveLength(1);
    expect(listed.tokens[0]).toMatchObject({ id: tokenId, scopes: ["download", "inference"], models: null });
    expect(JSON.stringify(listed)).not.toContain(token);

    expect((await manifest(gw, token)).status).toBe(200);
    const revoked = await revoke(gw, member.headers, tokenId);
    expect(revoked.status).toBe(200);
    expect(await revoked.json()).toMatchObject({ id: tokenId, revokedAt: expect.any(String) });
    expect((await manifest(gw, token)).status).toBe(401);
    const events = await gw.db.select().from(auditEvents);
    expect(events.find((e) => e.action === "token.issued")).toMatchObject({
      actor: `member:${member.user.email}`,
      subjectId: tokenId,
    });
    expect(events.find((e) => e.action === "token.revoked")).toMatchObject({
      actor: `member:${member.user.email}`,
      subjectId: tokenId,
    });
  });

  it("expire after 90 days unless asked otherwise, and never after more than 365", async () => {
    const gw = testGateway();
    const { member } = await approvedToken(gw, licenseSha256);
    const lifetime = async (body: Record<string, unknown>) => {
      const res = await mint(gw, member.headers, { name: "t", scopes: ["download"], ...body });
      expect(res.status).toBe(201);
      const made = (await res.json()) as { createdAt: string; expiresAt: string };
      return (Date.parse(made.expiresAt) - Date.parse(made.createdAt)) / DAY_MS;
    };
    expect(await lifetime({})).toBe(90);
    expect(await lifetime({ expiresInDays: 365 })).toBe(365);
    expect(await lifetime({ expiresInDays: 1 })).toBe(1);
    for (const expiresInDays of [366, 0, -1, 1.5, null, "30"]) {
      const res = await mint(gw, member.headers, { name: "t", scopes: ["download"], expiresInDays });
      expect(res.status, String(expiresInDays)).toBe(400);
      expect(await res.json()).toMatchObject({ code: "validation_failed" });
    }
  });

  it("carry the models asked for, a subset of the grant's, and the limits asked for", async () => {
    const gw = testGateway();
    const { member } = await approvedToken(gw, licenseSha256);
    const res = await mint(gw, member.headers, {
      name: "chat only",
      scopes: ["inference"],
      models: ["llama-2-7b-chat", "llama-2-7b-chat"],
      limits: { requestsPerMinute: 5, tokensPerMinute: 1_000 },
    });
    expect(res.status).toBe(201);
    const made = (await res.json()) as { id: string; token: string };
    expect(made).toMatchObject({
      models: ["llama-2-7b-chat"],
      limits: { requestsPerMinute: 5, tokensPerMinute: 1_000 },
      family: "llama-2",
      member: { id: member.user.id },
    });
    const [stored] = await gw.db.select().from(accessTokens).where(eq(accessTokens.id, made.id));
    expect(stored).toMatchObject({
      models: ["llama-2-7b-chat"],
      limits: { requestsPerMinute: 5, tokensPerMinute: 1_000 },
    });
  });

  it("need a member of developer role or above: viewers and anonymous callers mint nothing", async () => {
    const gw = testGateway();
    const { member } = await approvedToken(gw, licenseSha256);
    const viewer = await signedInMember(gw, { organizationId: member.organizationId, role: "viewer" });
    const asViewer = await mint(gw, viewer.headers);
    expect(asViewer.status).toBe(403);
    expect(await asViewer.json()).toMatchObject({ code: "forbidden" });
    const developer = await signedInMember(gw, { organizationId: member.organizationId, role: "developer" });
    expect((await mint(gw, developer.headers)).status).toBe(201);

    const anonymous = await mint(gw, {});
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("content-type")).toContain("application/problem+json");
    expect((await list(gw, {})).status).toBe(401);
    expect((await revoke(gw, {}, "tok_x")).status).toBe(401);
    // An access token is not a session: it cannot mint more tokens.
    const { token } = await approvedToken(gw, licenseSha256, { organization: "Globex", email: "hank@globex.example" });
    expect((await mint(gw, { authorization: `Bearer ${token}` })).status).toBe(401);
  });

  it("cannot be minted without an active grant", async () => {
    const gw = testGateway();
    const { member, applicationId } = await approvedToken(gw, licenseSha256);
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, applicationId));
    const res = await mint(gw, member.headers);
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ code: "invalid_state" });
    const lonely = await signedInMember(gw, { email: "solo@nogrant.example" });
    expect((await mint(gw, lonely.headers)).status).toBe(409);
  });
});

describe("status links no longer mint tokens", () => {
  it("answers 403 pointing to signing in, whatever the capability", async () => {
    const gw = testGateway();
    const { applicationId } = await approvedToken(gw, licenseSha256);
    const res = await gw.request(
      `/v1/applications/${applicationId}/tokens`,
      json({ name: "x", scopes: ["download"] }, { authorization: "Bearer mgs_whatever" }),
    );
    expect(res.status).toBe(403);
    const problem = (await res.json()) as { code: string; detail: string };
    expect(problem.code).toBe("forbidden");
    expect(problem.detail).toContain("POST /v1/auth/email-link");
    expect(problem.detail).toContain("/account");
    expect(await gw.db.select().from(accessTokens)).toHaveLength(1);
  });
});

describe("security: a status link's tokens from before members", () => {
  it("are out of reach of a removed owner's link, and another owner's lists and revokes them as its holder", async () => {
    const gw = testGateway();
    const application = (email: string) => acmeApplication(licenseSha256, { name: "Someone at Acme", email });
    const ada = await applyAndConfirm(gw, application("ada@acme.example"));
    expect(ada.status).toBe("approved");
    const id = ada.applicationId;
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, id));
    if (!grant) throw new Error("the case has no grant");
    const [adaMembership] = await gw.db
      .select()
      .from(memberships)
      .where(eq(memberships.organizationId, grant.organizationId));
    const grace = await signedInMember(gw, { organizationId: grant.organizationId, email: "grace@acme.example" });
    const graces = await applyAndConfirm(gw, application("grace@acme.example"));
    expect(graces).toMatchObject({ applicationId: id, duplicate: true });
    const legacy = "mg_legacy_token_from_the_status_link_days_000000";
    await insertLegacyToken(gw, grant.id, legacy);
    const listVia = (link: string) =>
      gw.request(`/v1/applications/${id}/tokens`, { headers: { authorization: `Bearer ${link}` } });
    const revokeVia = (link: string) =>
      gw.request(`/v1/applications/${id}/tokens/tok_legacy`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${link}` },
      });
    expect((await listVia(ada.capability)).status).toBe(200);

    const removed = await gw.request(`/v1/organization/members/${adaMembership?.id}`, {
      method: "DELETE",
      headers: grace.headers,
    });
    expect(removed.status).toBe(200);
    for (const res of [await listVia(ada.capability), await revokeVia(ada.capability)]) {
      expect(res.status).toBe(404);
      expect(await res.json()).toMatchObject({ code: "not_found", detail: "No such application." });
    }
    expect((await manifest(gw, legacy)).status).toBe(200);

    const listed = (await (await listVia(graces.capability)).json()) as { tokens: ListedToken[] };
    expect(listed.tokens.map((t) => t.id)).toEqual(["tok_legacy"]);
    expect((await revokeVia(graces.capability)).status).toBe(200);
    expect((await manifest(gw, legacy)).status).toBe(401);
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "token.revoked"));
    expect(event?.actor).toBe("applicant:grace@acme.example");
  });
});

describe("security: who may see and revoke tokens", () => {
  it("a developer revokes their own token but not another member's; an admin sees and revokes any", async () => {
    const gw = testGateway();
    const { member: owner, tokenId: ownersToken, token } = await approvedToken(gw, licenseSha256);
    const organizationId = owner.organizationId;
    const developer = await signedInMember(gw, { organizationId, role: "developer", email: "dev@acme.example" });
    const admin = await signedInMember(gw, { organizationId, role: "admin", email: "boss@acme.example" });
    const devToken = (await (await mint(gw, developer.headers)).json()) as { id: string };

    const devList = (await (await list(gw, developer.headers)).json()) as { tokens: ListedToken[] };
    expect(devList.tokens.map((t) => t.id)).toEqual([devToken.id]);
    expect((await list(gw, developer.headers, "?all=true")).status).toBe(403);

    const refused = await revoke(gw, developer.headers, ownersToken);
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ code: "forbidden" });
    expect((await manifest(gw, token)).status).toBe(200);

    const all = (await (await list(gw, admin.headers, "?all=true")).json()) as { tokens: ListedToken[] };
    expect(all.tokens.map((t) => [t.id, t.member?.email])).toEqual(
      expect.arrayContaining([
        [ownersToken, owner.user.email],
        [devToken.id, "dev@acme.example"],
      ]),
    );
    expect((await revoke(gw, admin.headers, ownersToken)).status).toBe(200);
    expect((await manifest(gw, token)).status).toBe(401);
    expect((await revoke(gw, developer.headers, devToken.id)).status).toBe(200);
  });

  it("a member of another organization can neither list nor revoke them", async () => {
    const gw = testGateway();
    const { member: owner, tokenId, token } = await approvedToken(gw, licenseSha256);
    const { member: stranger } = await approvedToken(gw, licenseSha256, {
      organization: "Globex",
      email: "hank@globex.example",
    });
    const theirs = (await (await list(gw, stranger.headers, "?all=true")).json()) as { tokens: ListedToken[] };
    expect(theirs.tokens.map((t) => t.id)).not.toContain(tokenId);
    // Naming the other organization does not make them a member of it.
    const named = { ...stranger.headers, "x-modelgate-organization": owner.organizationId };
    expect((await list(gw, named, "?all=true")).status).toBe(403);
    expect((await revoke(gw, named, tokenId)).status).toBe(403);
    const elsewhere = await revoke(gw, stranger.headers, tokenId);
    expect(elsewhere.status).toBe(404);
    expect(await elsewhere.json()).toMatchObject({ code: "not_found" });
    expect((await manifest(gw, token)).status).toBe(200);
  });

  it("refuses cross-site writes with a session cookie", async () => {
    const gw = testGateway();
    const { member, tokenId, token } = await approvedToken(gw, licenseSha256);
    const hostiles: Record<string, string>[] = [{ "sec-fetch-site": "cross-site" }, { origin: "https://evil.example" }];
    for (const hostile of hostiles) {
      const minted = await mint(gw, { ...member.headers, ...hostile });
      expect(minted.status).toBe(403);
      expect(await minted.json()).toMatchObject({ code: "cross_site_request" });
      const revoked = await revoke(gw, { ...member.headers, ...hostile }, tokenId);
      expect(revoked.status).toBe(403);
      expect(await revoked.json()).toMatchObject({ code: "cross_site_request" });
    }
    expect(await gw.db.select().from(accessTokens)).toHaveLength(1);
    expect((await manifest(gw, token)).status).toBe(200);
  });

  it("answers bad input with a 4xx problem and writes nothing", async () => {
    const gw = testGateway();
    const { member } = await approvedToken(gw, licenseSha256, { grantModels: ["llama-2-7b", "llama-2-7b-chat"] });
    const cases: [unknown, number, string, string?][] = [
      [{ name: "x", scopes: ["download"], models: ["llama-2-70b"] }, 400, "validation_failed", "models.0"],
      [{ name: "x", scopes: ["download"], models: [] }, 400, "validation_failed"],
      [{ name: "x", scopes: ["download"], models: ["gpt-4"] }, 400, "validation_failed", "models.0"],
      [{ name: "x", scopes: ["admin"] }, 400, "validation_failed"],
      [{ name: "x", scopes: [] }, 400, "validation_failed"],
      [{ name: "", scopes: ["download"] }, 400, "validation_failed"],
      [{ scopes: ["download"] }, 400, "validation_failed"],
      [{ name: "x", scopes: ["download"], extra: 1 }, 400, "validation_failed"],
      [{ name: "x", scopes: ["download"], family: "gpt" }, 400, "validation_failed", "family"],
      [
        { name: "x", scopes: ["inference"], limits: { tokensPerMinute: 10_000_000 } },
        400,
        "validation_failed",
        "limits.tokensPerMinute",
      ],
      [{ name: "x", scopes: ["inference"], limits: { requestsPerMinute: 0 } }, 400, "validation_failed"],
      [{ name: "x", scopes: ["inference"], limits: { requestsPerMinute: 2.5 } }, 400, "validation_failed"],
      [{ name: "x", scopes: ["inference"], limits: { burst: 3 } }, 400, "validation_failed"],
      [[], 400, "validation_failed"],
    ];
    for (const [body, status, code, field] of cases) {
      const res = await mint(gw, member.headers, body);
      expect(res.status, JSON.stringify(body)).toBe(status);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      const problem = (await res.json()) as { code: string; errors?: { field: string }[] };
      expect(problem.code, JSON.stringify(body)).toBe(code);
      if (field)
        expect(
          problem.errors?.map((e) => e.field),
          JSON.stringify(body),
        ).toContain(field);
    }
    const prototype = await gw.request("/v1/tokens", {
      method: "POST",
      headers: { ...member.headers, "content-type": "application/json" },
      body: '{"name":"x","scopes":["download"],"__proto__":{"models":["llama-2-70b"]}}',
    });
    expect(prototype.status).toBe(400);
    const notJson = await gw.request("/v1/tokens", {
      method: "POST",
      headers: { ...member.headers, "content-type": "application/json" },
      body: "{name",
    });
    expect(notJson.status).toBe(400);
    const text = await gw.request("/v1/tokens", {
      method: "POST",
      headers: { ...member.headers, "content-type": "text/plain" },
      body: "hello",
    });
    expect(text.status).toBeGreaterThanOrEqual(400);
    expect(text.status).toBeLessThan(500);
    expect((await list(gw, member.headers, "?all=maybe")).status).toBe(400);
    expect((await revoke(gw, member.headers, "x".repeat(65))).status).toBe(400);
    expect((await revoke(gw, member.headers, "tok_unknown")).status).toBe(404);
    expect(await gw.db.select().from(accessTokens)).toHaveLength(1);
  });
});

describe("security: a token lives only as long as its member", () => {
  it("stops at once when its member is removed from the organization, on every surface", async () => {
    const gw = testGateway();
    const { member, token } = await approvedToken(gw, licenseSha256);
    expect((await manifest(gw, token)).status).toBe(200);
    const link = (await (await manifest(gw, token)).json()) as { files: { url: string }[] };
    const url = new URL(link.files[0]?.url as string);
    await gw.db
      .update(memberships)
      .set({ removedAt: new Date().toISOString() })
      .where(eq(memberships.id, member.membership.id));

    const refused = await manifest(gw, token);
    expect(refused.status).toBe(401);
    expect(await refused.json()).toMatchObject({ code: "unauthorized" });
    const hub = await gw.request("/api/models/meta-llama/Llama-2-7b-hf", {
      headers: { authorization: `Bearer hf_${token}` },
    });
    expect(hub.status).toBe(401);
    expect(hub.headers.get("x-error-code")).toBe("GatedRepo");
    // A link signed before the removal dies with it.
    const download = await gw.request(url.pathname + url.search);
    expect(download.status).toBe(403);
    const inference = await gw.request("/v1/models", { headers: { authorization: `Bearer ${token}` } });
    expect(inference.status).toBe(401);
    expect(await inference.json()).toMatchObject({ error: { code: "invalid_api_key" } });
  });

  it("refuses a mint whose write lands after its member's removal, though it was admitted before", async () => {
    const gw = testGateway();
    const { member: owner } = await approvedToken(gw, licenseSha256);
    const email = "held@acme.example";
    for (let round = 0; round < 3; round++) {
      const developer = await signedInMember(gw, { organizationId: owner.organizationId, email, role: "developer" });
      const held = heldWrites(15);
      const minting = testGateway({ bindings: { DB: held.db } });
      const mints = Array.from({ length: 15 }, (_, i) =>
        mint(minting, { ...developer.headers, "cf-connecting-ip": `10.91.${round}.${i + 1}` }),
      );
      // Every mint has passed the door and planned its write on a live membership; the removal lands now.
      await held.poised;
      const removed = await gw.request(`/v1/organization/members/${developer.membership.id}`, {
        method: "DELETE",
        headers: owner.headers,
      });
      expect(removed.status).toBe(200);
      held.release();
      for (const answer of await Promise.all(mints)) {
        expect(answer.status).toBe(403);
        expect(await answer.json()).toMatchObject({ code: "forbidden" });
      }
    }
    const rejoined = await signedInMember(gw, { organizationId: owner.organizationId, email, role: "developer" });
    expect(await gw.db.select().from(accessTokens).where(eq(accessTokens.userId, rejoined.user.id))).toEqual([]);
  });

  it("leaves no token working after mints race their member's removal, even once the member rejoins", async () => {
    const gw = testGateway();
    const { member: owner } = await approvedToken(gw, licenseSha256);
    const email = "racer@acme.example";
    const minted: { id: string; token: string }[] = [];
    for (let round = 0; round < 4; round++) {
      const developer = await signedInMember(gw, { organizationId: owner.organizationId, email, role: "developer" });
      // Each mint from its own address, so the per-network brake lets all of them through.
      const mints = Array.from({ length: 15 }, (_, i) =>
        mint(gw, { ...developer.headers, "cf-connecting-ip": `10.92.${round}.${i + 1}` }),
      );
      const removal = gw.request(`/v1/organization/members/${developer.membership.id}`, {
        method: "DELETE",
        headers: owner.headers,
      });
      const [removed, ...answers] = await Promise.all([removal, ...mints]);
      expect(removed.status).toBe(200);
      for (const answer of answers) {
        if (answer.status === 201) {
          minted.push((await answer.json()) as { id: string; token: string });
        } else {
          expect(answer.status).toBe(403);
          expect(await answer.json()).toMatchObject({ code: "forbidden" });
        }
      }
    }

    const rejoined = await signedInMember(gw, { organizationId: owner.organizationId, email, role: "developer" });
    const stored = await gw.db.select().from(accessTokens).where(eq(accessTokens.userId, rejoined.user.id));
    expect(stored.map((t) => t.id).sort()).toEqual(minted.map((t) => t.id).sort());
    expect(stored.filter((t) => t.revokedAt === null).map((t) => t.id)).toEqual([]);
    for (const { token } of minted) {
      expect(await checkAccessToken(gw.services(), token, "download")).toEqual({ ok: false, refusal: "revoked" });
      expect((await manifest(gw, token)).status).toBe(401);
    }
    // Back in the organization, the member mints tokens that work, as any member's do.
    const fresh = await mint(gw, { ...rejoined.headers, "cf-connecting-ip": "10.92.9.1" });
    expect(fresh.status).toBe(201);
    expect((await manifest(gw, ((await fresh.json()) as { token: string }).token)).status).toBe(200);
  });

  it("stops when its member becomes a viewer; a token from before members lives on until it expires", async () => {
    const gw = testGateway();
    const { member, token, grantId } = await approvedToken(gw, licenseSha256);
    await gw.db.update(memberships).set({ role: "viewer" }).where(eq(memberships.id, member.membership.id));
    expect((await manifest(gw, token)).status).toBe(401);

    const legacy = "mg_legacy_token_from_the_status_link_days_000000";
    await gw.db.insert(accessTokens).values({
      id: "tok_legacy",
      grantId,
      name: "old",
      secretHash: await sha256Hex(legacy),
      displayPrefix: legacy.slice(0, 9),
      scopes: ["download"],
      createdAt: new Date().toISOString(),
      expiresAt: null,
      revokedAt: null,
      userId: null,
      models: null,
      limits: null,
    });
    expect((await manifest(gw, legacy)).status).toBe(200);
    // An owner sees it among the organization's tokens, without a member, and may revoke it.
    const owner = await signedInMember(gw, { organizationId: member.organizationId, email: "own@acme.example" });
    const all = (await (await list(gw, owner.headers, "?all=true")).json()) as { tokens: ListedToken[] };
    expect(all.tokens.find((t) => t.id === "tok_legacy")).toMatchObject({ member: null });
    expect((await revoke(gw, owner.headers, "tok_legacy")).status).toBe(200);
    expect((await manifest(gw, legacy)).status).toBe(401);
  });
});

describe("access tokens on every surface", () => {
  it("stop working at once when the grant is suspended, and refuse calls outside their scope", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { scopes: ["inference"] });
    const scoped = await manifest(gw, token);
    expect(scoped.status).toBe(403);
    expect(await scoped.json()).toMatchObject({ code: "forbidden", requiredScope: "download" });

    const { applicationId, token: downloadToken } = await approvedToken(gw, licenseSha256, {
      scopes: ["download"],
      organization: "Globex",
      email: "hank@globex.example",
    });
    expect((await manifest(gw, downloadToken)).status).toBe(200);
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, applicationId));
    expect((await manifest(gw, downloadToken)).status).toBe(403);
  });

  it("refuses missing, malformed and unknown tokens with 401", async () => {
    const gw = testGateway();
    for (const auth of [undefined, "Bearer ", "Bearer mg_unknown", "Basic Zm9vOmJhcg==", "Bearer hf_abc"]) {
      const res = await gw.request("/v1/models/llama-2-7b/manifest", auth ? { headers: { authorization: auth } } : {});
      expect(res.status, String(auth)).toBe(401);
      expect(await res.json()).toMatchObject({ code: "unauthorized" });
    }
  });
});

/** A fresh client address per request, so the per-network brake lets a burst of mints through. */
let lastIp = 0;
function freshIp(): string {
  lastIp += 1;
  return `10.94.${Math.floor(lastIp / 250) % 250}.${(lastIp % 250) + 1}`;
}

/**
 * `n` tokens of `userId` under `grantId`, written straight into D1 (a mint apiece would be a request
 * apiece), a second apart and oldest first, live unless `fields` say otherwise.
 */
async function seedTokens(
  gw: Gateway,
  grantId: string,
  userId: string | null,
  n: number,
  fields: Partial<typeof accessTokens.$inferInsert> = {},
): Promise<string[]> {
  const { ids } = gw.services();
  const start = Date.now() - n * 1000 - DAY_MS;
  const rows = Array.from({ length: n }, (_, i) => ({
    id: ids.id("tok"),
    grantId,
    name: `seeded ${i}`,
    secretHash: ids.secret(32),
    displayPrefix: "mg_seed",
    scopes: ["download" as const],
    userId,
    createdAt: new Date(start + i * 1000).toISOString(),
    expiresAt: new Date(Date.now() + 30 * DAY_MS).toISOString(),
    revokedAt: null,
    ...fields,
  }));
  // A few rows an insert: D1 binds at most 100 parameters in one statement.
  for (let i = 0; i < rows.length; i += 5) await gw.db.insert(accessTokens).values(rows.slice(i, i + 5));
  return rows.map((r) => r.id);
}

/** The member's live tokens (unrevoked, unexpired) as stored. */
async function liveTokensOf(gw: Gateway, userId: string) {
  const now = new Date().toISOString();
  return (await gw.db.select().from(accessTokens).where(eq(accessTokens.userId, userId))).filter(
    (t) => t.revokedAt === null && (t.expiresAt === null || t.expiresAt > now),
  );
}

async function expectTokenLimit(res: Response) {
  expect(res.status).toBe(409);
  expect(res.headers.get("content-type")).toContain("application/problem+json");
  const problem = (await res.json()) as { code: string; detail: string; limit: number };
  expect(problem).toMatchObject({ code: "token_limit", limit: MAX_LIVE_TOKENS_PER_MEMBER });
  expect(problem.detail).toContain("revoke one");
}

/** Acme approved, its owner, its grant, and a developer of its who mints tokens. */
async function withDeveloper(gw: Gateway) {
  const { member: owner, grantId } = await approvedToken(gw, licenseSha256);
  const developer = await signedInMember(gw, {
    organizationId: owner.organizationId,
    role: "developer",
    email: "dev@acme.example",
  });
  return { owner, grantId, developer };
}

describe("security: a member's live tokens are capped", () => {
  it("refuses the mint past the cap with 409 token_limit, writing nothing; revoked, expired and other organizations' tokens do not count", async () => {
    const gw = testGateway();
    const { owner, grantId, developer } = await withDeveloper(gw);
    const { member: elsewhere, grantId: otherGrant } = await approvedToken(gw, licenseSha256, {
      organization: "Globex",
      email: "hank@globex.example",
    });
    // Tokens that are not live, or not this organization's, take no room.
    await seedTokens(gw, grantId, developer.user.id, 5, { revokedAt: new Date().toISOString() });
    await seedTokens(gw, grantId, developer.user.id, 5, { expiresAt: new Date(Date.now() - 1000).toISOString() });
    await seedTokens(gw, otherGrant, developer.user.id, 5);
    const seeded = await seedTokens(gw, grantId, developer.user.id, MAX_LIVE_TOKENS_PER_MEMBER - 1);
    const headers = () => ({ ...developer.headers, "cf-connecting-ip": freshIp() });

    expect((await mint(gw, headers())).status).toBe(201);
    const issued = async () =>
      (await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "token.issued"))).length;
    const before = { tokens: (await gw.db.select().from(accessTokens)).length, issued: await issued() };
    await expectTokenLimit(await mint(gw, headers()));
    await expectTokenLimit(await mint(gw, headers(), { name: "another", scopes: ["inference"], expiresInDays: 1 }));
    expect((await gw.db.select().from(accessTokens)).length).toBe(before.tokens);
    expect(await issued()).toBe(before.issued);
    expect(await liveTokensOf(gw, developer.user.id)).toHaveLength(MAX_LIVE_TOKENS_PER_MEMBER + 5);

    // The cap is the member's: the owner and the other organization's member mint on.
    expect((await mint(gw, { ...owner.headers, "cf-connecting-ip": freshIp() })).status).toBe(201);
    expect((await mint(gw, { ...elsewhere.headers, "cf-connecting-ip": freshIp() })).status).toBe(201);
    // Revoking one makes room for one.
    expect((await revoke(gw, developer.headers, seeded[0] as string)).status).toBe(200);
    expect((await mint(gw, headers())).status).toBe(201);
    await expectTokenLimit(await mint(gw, headers()));
    expect(await verifyAuditChain(gw.db)).toMatchObject({ ok: true });
  });

  it("a thousand concurrent mints of one member land no more than the cap", async () => {
    const gw = testGateway();
    const { grantId, developer } = await withDeveloper(gw);
    const held = MAX_LIVE_TOKENS_PER_MEMBER - 10;
    await seedTokens(gw, grantId, developer.user.id, held);
    const answers = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        mint(gw, { ...developer.headers, "cf-connecting-ip": freshIp() }, { name: `burst ${i}`, scopes: ["download"] }),
      ),
    );
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(10);
    expect(statuses.filter((s) => s !== 201 && s !== 409)).toEqual([]);
    for (const answer of answers.filter((a) => a.status === 409).slice(0, 20)) await expectTokenLimit(answer);
    expect(await liveTokensOf(gw, developer.user.id)).toHaveLength(MAX_LIVE_TOKENS_PER_MEMBER);
    const issued = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "token.issued"));
    expect(issued.filter((e) => (e.data as { userId?: string }).userId === developer.user.id)).toHaveLength(10);
    expect(await verifyAuditChain(gw.db)).toMatchObject({ ok: true });
  }, 120_000);

  it("mints all planned under the cap, their writes held and released together, land no more than it", async () => {
    const gw = testGateway();
    const { grantId, developer } = await withDeveloper(gw);
    await seedTokens(gw, grantId, developer.user.id, MAX_LIVE_TOKENS_PER_MEMBER - 1);
    const held = heldWrites(30);
    const minting = testGateway({ bindings: { DB: held.db } });
    const mints = Array.from({ length: 30 }, () =>
      mint(minting, { ...developer.headers, "cf-connecting-ip": freshIp() }),
    );
    // Every one has planned its write with room for one more token.
    await held.poised;
    held.release();
    const statuses = (await Promise.all(mints)).map((a) => a.status).sort();
    expect(statuses).toEqual([201, ...Array.from({ length: 29 }, () => 409)]);
    expect(await liveTokensOf(gw, developer.user.id)).toHaveLength(MAX_LIVE_TOKENS_PER_MEMBER);
  });

  it("counts in the insert itself: a token written meanwhile by anything else fills the last place, and the mint fails whole", async () => {
    const gw = testGateway();
    const { owner, grantId, developer } = await withDeveloper(gw);
    await seedTokens(gw, grantId, developer.user.id, MAX_LIVE_TOKENS_PER_MEMBER - 1);
    const held = heldWrites(1);
    const minting = testGateway({ bindings: { DB: held.db } });
    const minted = mint(minting, { ...developer.headers, "cf-connecting-ip": freshIp() });
    await held.poised;
    // A row no audited write made (the audit chain does not move), after the mint read what it decided on.
    await seedTokens(gw, grantId, developer.user.id, 1);
    held.release();
    await expectTokenLimit(await minted);
    expect(await liveTokensOf(gw, developer.user.id)).toHaveLength(MAX_LIVE_TOKENS_PER_MEMBER);
    // Neither the token nor its `token.issued` event: the batch failed whole.
    const issued = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "token.issued"));
    expect(issued.map((e) => (e.data as { userId?: string }).userId)).toEqual([owner.user.id]);
  });
});

interface TokenPage {
  tokens: (ListedToken & { createdAt: string })[];
  nextCursor: string | null;
}

describe("security: token lists are paged", () => {
  it("pages every member's tokens, revoked ones too, newest first, one organization's only", async () => {
    const gw = testGateway();
    const { member: owner, grantId, tokenId } = await approvedToken(gw, licenseSha256);
    const developer = await signedInMember(gw, {
      organizationId: owner.organizationId,
      role: "developer",
      email: "dev@acme.example",
    });
    const revoked = await seedTokens(gw, grantId, developer.user.id, 20, { revokedAt: new Date().toISOString() });
    const live = await seedTokens(gw, grantId, developer.user.id, 40);
    const { member: stranger, grantId: otherGrant } = await approvedToken(gw, licenseSha256, {
      organization: "Globex",
      email: "hank@globex.example",
    });
    const theirs = await seedTokens(gw, otherGrant, stranger.user.id, 30);

    const walk = async (headers: Record<string, string>, query: string) => {
      const pages: TokenPage[] = [];
      let cursor: string | null = null;
      do {
        const res = await list(gw, headers, `${query}${cursor ? `&cursor=${cursor}` : ""}`);
        expect(res.status).toBe(200);
        const page = (await res.json()) as TokenPage;
        pages.push(page);
        cursor = page.nextCursor;
      } while (cursor && pages.length < 10);
      return pages;
    };
    const pages = await walk(owner.headers, "?all=true&limit=25");
    expect(pages.map((p) => p.tokens.length)).toEqual([25, 25, 11]);
    const listed = pages.flatMap((p) => p.tokens);
    const stored = await gw.db.select().from(accessTokens).where(eq(accessTokens.grantId, grantId));
    const newestFirst = stored.toSorted((x, y) => y.createdAt.localeCompare(x.createdAt) || y.id.localeCompare(x.id));
    expect(newestFirst.map((t) => t.id).sort()).toEqual([tokenId, ...live, ...revoked].sort());
    expect(listed.map((t) => t.id)).toEqual(newestFirst.map((t) => t.id));
    expect(listed.filter((t) => t.revokedAt !== null)).toHaveLength(20);

    // The default page is the shared one's, with the cursor of the next.
    const first = (await (await list(gw, owner.headers, "?all=true")).json()) as TokenPage;
    expect(first.tokens).toHaveLength(25);
    expect(first.nextCursor).toEqual(expect.any(String));
    // A developer pages their own only.
    const own = await walk(developer.headers, "?limit=50");
    expect(own.map((p) => p.tokens.length)).toEqual([50, 10]);
    expect(own.flatMap((p) => p.tokens).every((t) => t.member?.id === developer.user.id)).toBe(true);

    // A cursor is a position, never a door: Acme's cursor read by Globex's owner lists Globex's alone.
    const elsewhere = await walk(stranger.headers, `?all=true&cursor=${first.nextCursor}`);
    const ids = elsewhere.flatMap((p) => p.tokens.map((t) => t.id));
    expect(ids.every((id) => theirs.includes(id))).toBe(true);
    const forOther = await list(
      gw,
      { ...stranger.headers, "x-modelgate-organization": owner.organizationId },
      "?all=true",
    );
    expect(forOther.status).toBe(403);

    for (const query of ["?limit=51", "?limit=0", "?limit=-1", "?cursor=garbage", `?cursor=${"A".repeat(501)}`]) {
      const res = await list(gw, owner.headers, query);
      expect(res.status, query).toBe(400);
      expect(await res.json()).toMatchObject({ code: "validation_failed" });
    }
  });
});

describe("security: a revoke lands only while its member may make it", () => {
  for (const change of ["demoted", "removed"] as const) {
    it(`refuses an admin's revoke of another member's token when the admin was ${change} before it landed`, async () => {
      const gw = testGateway();
      const { member: owner } = await approvedToken(gw, licenseSha256);
      const admin = await signedInMember(gw, {
        organizationId: owner.organizationId,
        role: "admin",
        email: "boss@acme.example",
      });
      const developer = await signedInMember(gw, {
        organizationId: owner.organizationId,
        role: "developer",
        email: "dev@acme.example",
      });
      const devToken = (await (await mint(gw, { ...developer.headers, "cf-connecting-ip": freshIp() })).json()) as {
        id: string;
        token: string;
      };
      const held = heldWrites(1);
      const revoking = revoke(testGateway({ bindings: { DB: held.db } }), admin.headers, devToken.id);
      // The revoke has passed the door and planned on the admin role...
      await held.poised;
      // ...when the owner makes the admin a developer, or removes them.
      const path = `/v1/organization/members/${admin.membership.id}`;
      const changed =
        change === "demoted"
          ? await gw.request(path, { ...json({ role: "developer" }, owner.headers), method: "PATCH" })
          : await gw.request(path, { method: "DELETE", headers: owner.headers });
      expect(changed.status).toBe(200);
      held.release();
      const res = await revoking;
      expect(res.status).toBe(403);
      expect(await res.json()).toMatchObject({ code: "forbidden" });
      const [stored] = await gw.db.select().from(accessTokens).where(eq(accessTokens.id, devToken.id));
      expect(stored?.revokedAt).toBeNull();
      expect(await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "token.revoked"))).toEqual([]);
      expect((await manifest(gw, devToken.token)).status).toBe(200);
    });
  }

  it("refuses a status link's revoke when its holder stopped owning the organization before it landed", async () => {
    const gw = testGateway();
    const application = (email: string) => acmeApplication(licenseSha256, { name: "Someone at Acme", email });
    const ada = await applyAndConfirm(gw, application("ada@acme.example"));
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, ada.applicationId));
    if (!grant) throw new Error("the case has no grant");
    const [adaMembership] = await gw.db
      .select()
      .from(memberships)
      .where(eq(memberships.organizationId, grant.organizationId));
    const grace = await signedInMember(gw, { organizationId: grant.organizationId, email: "grace@acme.example" });
    const legacy = "mg_legacy_token_from_the_status_link_days_000001";
    await insertLegacyToken(gw, grant.id, legacy);
    const held = heldWrites(1);
    const revoking = testGateway({ bindings: { DB: held.db } }).request(
      `/v1/applications/${ada.applicationId}/tokens/tok_legacy`,
      { method: "DELETE", headers: { authorization: `Bearer ${ada.capability}` } },
    );
    await held.poised;
    const removed = await gw.request(`/v1/organization/members/${adaMembership?.id}`, {
      method: "DELETE",
      headers: grace.headers,
    });
    expect(removed.status).toBe(200);
    held.release();
    const res = await revoking;
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ code: "not_found", detail: "No such application." });
    const [stored] = await gw.db.select().from(accessTokens).where(eq(accessTokens.id, "tok_legacy"));
    expect(stored?.revokedAt).toBeNull();
    expect((await manifest(gw, legacy)).status).toBe(200);
  });
});
