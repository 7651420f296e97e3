import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { accessTokens, auditEvents, grants } from "../worker/db/schema";
import { json, seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, seedRevision } from "./helpers/weights";

let licenseSha256: string;
beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
  await seedRevision("llama-2-7b", { "params.json": '{"dim":4096}' });
});

describe("personal access tokens", () => {
  it("are shown once, stored hashed, listed without the secret, and revocable", async () => {
    const gw = testGateway();
    const { applicationId, capability, token, tokenId } = await approvedToken(gw, licenseSha256);
    expect(token).toMatch(/^mg_[\w-]{40,}$/);
    const [stored] = await gw.db.select().from(accessTokens).where(eq(accessTokens.id, tokenId));
    expect(stored?.secretHash).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.stringify(stored)).not.toContain(token);

    const auth = { authorization: `Bearer ${capability}` };
    const list = (await (await gw.request(`/v1/applications/${applicationId}/tokens`, { headers: auth })).json()) as {
      tokens: Record<string, unknown>[];
    };
    expect(list.tokens).toHaveLength(1);
    expect(list.tokens[0]).toMatchObject({ id: tokenId, scopes: ["download", "inference"], revokedAt: null });
    expect(JSON.stringify(list)).not.toContain(token);

    const manifest = () =>
      gw.request("/v1/models/llama-2-7b/manifest", { headers: { authorization: `Bearer ${token}` } });
    expect((await manifest()).status).toBe(200);
    const revoked = await gw.request(`/v1/applications/${applicationId}/tokens/${tokenId}`, {
      method: "DELETE",
      headers: auth,
    });
    expect(revoked.status).toBe(200);
    expect((await manifest()).status).toBe(401);
    const actions = (await gw.db.select().from(auditEvents)).map((e) => e.action);
    expect(actions).toEqual(expect.arrayContaining(["token.issued", "token.revoked"]));
  });

  it("cannot be minted without the status capability or before approval", async () => {
    const gw = testGateway();
    const { applicationId } = await approvedToken(gw, licenseSha256);
    const noCap = await gw.request(
      `/v1/applications/${applicationId}/tokens`,
      json({ name: "x", scopes: ["download"] }),
    );
    expect(noCap.status).toBe(404);

    const pending = (await (
      await gw.request(
        "/v1/applications",
        json({
          family: "llama-2",
          organization: { name: "Big Co", country: "US" },
          contact: { name: "B", email: "b@big.example" },
          intendedUse: "Search assistant for everyone.",
          declaredMau: 900_000_000,
          licenseSha256,
          acceptLicense: true,
          acceptAup: true,
        }),
      )
    ).json()) as { id: string; statusUrl: string };
    const cap = new URL(pending.statusUrl).searchParams.get("token");
    const early = await gw.request(
      `/v1/applications/${pending.id}/tokens`,
      json({ name: "x", scopes: ["download"] }, { authorization: `Bearer ${cap}` }),
    );
    expect(early.status).toBe(409);
    expect(await early.json()).toMatchObject({ code: "invalid_state" });
  });

  it("stop working at once when the grant is suspended, and refuse calls outside their scope", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { scopes: ["inference"] });
    const call = () => gw.request("/v1/models/llama-2-7b/manifest", { headers: { authorization: `Bearer ${token}` } });
    const scoped = await call();
    expect(scoped.status).toBe(403);
    expect(await scoped.json()).toMatchObject({ code: "forbidden", requiredScope: "download" });

    const { applicationId, token: downloadToken } = await approvedToken(gw, licenseSha256, {
      scopes: ["download"],
      organization: "Globex",
      email: "hank@globex.example",
    });
    const ok = await gw.request("/v1/models/llama-2-7b/manifest", {
      headers: { authorization: `Bearer ${downloadToken}` },
    });
    expect(ok.status).toBe(200);
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, applicationId));
    const suspended = await gw.request("/v1/models/llama-2-7b/manifest", {
      headers: { authorization: `Bearer ${downloadToken}` },
    });
    expect(suspended.status).toBe(403);
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
