import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { accessTokens, auditEvents, grants, memberships } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { sha256Hex } from "../worker/platform/hash";
import { checkAccessToken } from "../worker/tokens/service";
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
    await gw.db.insert(accessTokens).values({
      id: "tok_legacy",
      grantId: grant.id,
      name: "old",
      secretHash: await sha256Hex(legacy),
      displayPrefix: legacy.slice(0, 9),
      scopes: ["download"],
      createdAt: new Date().toISOString(),
      userId: null,
    });
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
