/**
 * The applicant's portal at `/account` and `GET /v1/organization`: what a signed-in member of an
 * organization sees of it, what a token reads, and that nobody reaches another organization's.
 */
import { runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { accessTokens, downloadHours, grants, invitations, organizationDomains, usageHours } from "../worker/db/schema";
import { ledgerBatch, ledgerEntry } from "../worker/inference/ledger";
import { sha256Hex } from "../worker/platform/hash";
import { quotaStub } from "../worker/quota/org-quota";
import { seedGrant, seedLicense, testGateway } from "./helpers/fixtures";
import { ledgerRow } from "./helpers/ledger";
import { signedInMember } from "./helpers/members";

const NOW = "2026-06-20T12:00:00.000Z";

type Gateway = ReturnType<typeof testGateway>;

/** An approved organization with an owner, a developer, a token of the developer's and usage. */
async function organization(gw: Gateway, name: string, domain: string) {
  const license = await seedLicense(gw.services);
  const { application, grant } = await seedGrant(gw.services, license, { organizationName: name });
  await gw.db
    .update(grants)
    .set({ models: ["llama-2-7b-chat", "llama-2-13b-chat"] })
    .where(eq(grants.id, grant.id));
  const organizationId = application.organizationId;
  const owner = await signedInMember(gw, { organizationId, email: `owner@${domain}`, role: "owner" });
  const developer = await signedInMember(gw, { organizationId, email: `dev@${domain}`, role: "developer" });
  await gw.db
    .insert(organizationDomains)
    .values({ domain, organizationId, verifiedByUserId: owner.user.id, verifiedAt: NOW });
  const secret = `mg_${gw.services.ids.secret(32)}`;
  const tokenId = gw.services.ids.id("tok");
  await gw.db.insert(accessTokens).values({
    id: tokenId,
    grantId: grant.id,
    name: `${name} ci`,
    secretHash: await sha256Hex(secret),
    displayPrefix: secret.slice(0, 9),
    scopes: ["inference"],
    userId: developer.user.id,
    models: ["llama-2-7b-chat"],
    limits: null,
    createdAt: NOW,
    expiresAt: "2026-09-18T12:00:00.000Z",
    revokedAt: null,
  });
  await gw.db.insert(invitations).values({
    id: gw.services.ids.id("inv"),
    organizationId,
    email: `newcomer@${domain}`,
    role: "developer",
    secretHash: await sha256Hex(gw.services.ids.secret(32)),
    invitedByUserId: owner.user.id,
    createdAt: NOW,
    expiresAt: "2026-06-27T12:00:00.000Z",
  });
  // D1's hourly totals as the quota object writes them: one call of 42 tokens, and two downloads
  // of one hour in two parts (one read to the end).
  await gw.db.insert(usageHours).values({
    organizationId,
    hour: "2026-06-19T08",
    model: "llama-2-7b-chat",
    grantId: grant.id,
    tokenId,
    part: "0lqhv1bk0",
    requests: 1,
    promptTokens: 2,
    completionTokens: 40,
    totalTokens: 42,
    errorRequests: 0,
    partialRequests: 0,
    latencyMsSum: 3,
    lastAt: "2026-06-19T08:00:00.000Z",
    updatedAt: "2026-06-19T08:00:00.000Z",
  });
  for (const [i, complete] of [true, false].entries()) {
    await gw.db.insert(downloadHours).values({
      organizationId,
      hour: "2026-06-18T10",
      grantId: grant.id,
      tokenId,
      model: "llama-2-7b",
      part: `0lqhv1bk${i}`,
      requests: 1,
      completeRequests: complete ? 1 : 0,
      errorRequests: 0,
      bytesServed: complete ? 3 * 1024 * 1024 : 0,
      lastAt: "2026-06-18T10:00:00.000Z",
      updatedAt: "2026-06-18T10:00:00.000Z",
    });
  }
  return { name, organizationId, application, grant, owner, developer, token: { id: tokenId, secret } };
}

type Org = Awaited<ReturnType<typeof organization>>;

interface Overview {
  organization: { id: string; name: string; verifiedDomains: string[] };
  caller: { kind: string; email?: string; role?: string; tokenId?: string };
  applications: { id: string; status: string; models: string[] }[];
  grants: { family: string; models: string[]; status: string }[];
  members: { email: string; role: string }[];
  invitations: { email: string; role: string; expiresAt: string }[] | null;
  quota: { source: string; monthlyTokenBudget: number; monthTokensRemaining: number; plan: string };
  billing: { enabled: boolean; usage: { requests: number; totalTokens: number } };
}

let gw: Gateway;
let acme: Org;

beforeEach(async () => {
  gw = testGateway(NOW);
  acme = await organization(gw, "Acme Robotics", "acme.example");
});

const get = (path: string, headers: Record<string, string> = {}) => gw.request(path, { headers });

describe("GET /v1/organization", () => {
  it("answers an owner with the organization, its cases, grant, members, invitations, quota and billing", async () => {
    const res = await get("/v1/organization", acme.owner.headers);
    expect(res.status).toBe(200);
    const body = (await res.json()) as Overview;
    expect(body.organization).toMatchObject({
      id: acme.organizationId,
      name: "Acme Robotics",
      verifiedDomains: ["acme.example"],
    });
    expect(body.caller).toMatchObject({ kind: "member", email: "owner@acme.example", role: "owner" });
    expect(body.applications).toEqual([
      expect.objectContaining({ id: acme.application.id, status: "approved", models: ["llama-2-7b-chat"] }),
    ]);
    expect(body.grants).toEqual([
      expect.objectContaining({ family: "llama-2", models: ["llama-2-7b-chat", "llama-2-13b-chat"], status: "active" }),
    ]);
    expect(body.members.map((m) => [m.email, m.role]).sort()).toEqual([
      ["dev@acme.example", "developer"],
      ["owner@acme.example", "owner"],
    ]);
    expect(body.invitations).toEqual([
      expect.objectContaining({
        email: "newcomer@acme.example",
        role: "developer",
        expiresAt: "2026-06-27T12:00:00.000Z",
      }),
    ]);
    expect(body.quota).toMatchObject({ source: "quota", plan: "default" });
    expect(body.quota.monthTokensRemaining).toBeLessThanOrEqual(body.quota.monthlyTokenBudget);
    expect(body.billing.usage.totalTokens).toBe(42);
  });

  it("hides pending invitations from a developer", async () => {
    const body = (await (await get("/v1/organization", acme.developer.headers)).json()) as Overview;
    expect(body.caller).toMatchObject({ role: "developer" });
    expect(body.invitations).toBeNull();
    expect(body.members).toHaveLength(2);
  });

  it("answers a token with its own organization, read-only, without invitations", async () => {
    const res = await get("/v1/organization", { authorization: `Bearer ${acme.token.secret}` });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Overview;
    expect(body.organization.id).toBe(acme.organizationId);
    expect(body.caller).toEqual({ kind: "token", tokenId: acme.token.id, scopes: ["inference"] });
    expect(body.invitations).toBeNull();
  });

  it("is in the OpenAPI document under Organization", async () => {
    const doc = (await (await get("/openapi.json")).json()) as {
      paths: Record<string, Record<string, { tags: string[] }>>;
    };
    expect(doc.paths["/v1/organization"]?.get?.tags).toEqual(["Organization"]);
  });
});

describe("security: one organization reaches nothing of another", () => {
  let initech: Org;
  beforeEach(async () => {
    initech = await organization(gw, "Initech", "initech.example");
  });

  it("a member of another organization is refused this one by name, and sees their own without one", async () => {
    for (const path of [`/v1/organization?organization=${acme.organizationId}`, "/v1/organization"]) {
      const headers: Record<string, string> =
        path === "/v1/organization"
          ? { cookie: initech.owner.cookie, "x-modelgate-organization": acme.organizationId }
          : { cookie: initech.owner.cookie };
      const res = await get(path, headers);
      expect(res.status).toBe(403);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(await res.text()).not.toContain("Acme");
    }
    const own = (await (await get("/v1/organization", { cookie: initech.owner.cookie })).json()) as Overview;
    expect(own.organization.name).toBe("Initech");
    expect(JSON.stringify(own)).not.toContain("Acme");
    expect(JSON.stringify(own)).not.toContain(acme.organizationId);
  });

  it("a token of another organization cannot name this one", async () => {
    const res = await get(`/v1/organization?organization=${acme.organizationId}`, {
      authorization: `Bearer ${initech.token.secret}`,
    });
    expect(res.status).toBe(403);
  });

  it("the portal of another organization's member shows none of this one", async () => {
    const named = await get(`/account?organization=${acme.organizationId}`, { cookie: initech.owner.cookie });
    expect(named.status).toBe(403);
    const page = await named.text();
    expect(page).not.toContain("Acme");
    expect(page).not.toContain("acme.example");
    const own = await (await get("/account", { cookie: initech.owner.cookie })).text();
    expect(own).toContain("Initech");
    expect(own).not.toContain("Acme");
  });

  it("without a session the API answers 401 and the portal the sign-in form", async () => {
    const api = await get("/v1/organization");
    expect(api.status).toBe(401);
    expect(await api.json()).toMatchObject({ code: "unauthorized" });
    const forged = await get("/v1/organization", { cookie: "__Host-mg_session=mgsess_forged" });
    expect(forged.status).toBe(401);
    const page = await get("/account", { cookie: "__Host-mg_session=mgsess_forged" });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('action="/v1/auth/email-link"');
    expect(html).not.toContain("Acme");
  });
});

describe("security: the portal's form posts from a no-referrer page", () => {
  // Applicant pages send `Referrer-Policy: no-referrer`, so Chromium's same-origin form posts from
  // them carry `Origin: null` beside `Sec-Fetch-Site: same-origin`: they are this site's own.
  it("admits Origin: null when the browser says same-origin, refuses it otherwise", async () => {
    const post = (headers: Record<string, string>) =>
      gw.request("/v1/auth/sign-out-everywhere", {
        method: "POST",
        headers: { cookie: acme.owner.cookie, accept: "application/json", ...headers },
      });
    const hostiles: Record<string, string>[] = [{ origin: "null" }, { origin: "null", "sec-fetch-site": "cross-site" }];
    for (const hostile of hostiles) {
      const refused = await post(hostile);
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ code: "cross_site_request" });
    }
    const own = await post({ origin: "null", "sec-fetch-site": "same-origin" });
    expect(own.status).toBe(200);
    expect((await get("/v1/organization", { cookie: acme.owner.cookie })).status).toBe(401);
  });
});

describe("the portal at /account", () => {
  it("shows an owner the organization's cases, grant, members, invitations, tokens, usage, quota and sessions", async () => {
    const res = await get("/account", { cookie: acme.owner.cookie });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/html/);
    expect(res.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await res.text();
    expect(html).toContain("<h1>Acme Robotics</h1>");
    expect(html).toContain(acme.application.id);
    expect(html).toContain("llama-2-7b-chat, llama-2-13b-chat");
    expect(html).toContain("dev@acme.example");
    expect(html).toContain("newcomer@acme.example");
    expect(html).toContain('data-api="/v1/organization/invitations"');
    // Every member's token, for an owner, with its member and its models.
    expect(html).toContain("Acme Robotics ci");
    expect(html).toContain(`data-revoke-token="${acme.token.id}"`);
    expect(html).toContain('data-api="/v1/tokens"');
    expect(html).toMatch(/<svg class="chart"/);
    expect(html).toContain('data-usage-key="llama-2-7b-chat"');
    expect(html).toContain("/v1/usage?groupBy=member&amp;from=2026-05-22&amp;to=2026-06-20&amp;format=csv");
    expect(html).toContain('action="/v1/auth/sign-out-everywhere"');
    expect(html).toContain("(this one)");
    // No inline script: the CSP would refuse it.
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)[^>]*>/);
    expect(html).toContain('<script src="/assets/portal.js"');
  });

  it("shows the organization's downloads per day and model, and no other organization's", async () => {
    const initech = await organization(gw, "Initech", "initech.example");
    await gw.db.update(downloadHours).set({ model: "llama-2-70b" }).where(eq(downloadHours.grantId, initech.grant.id));
    const html = await (await get("/account", { cookie: acme.owner.cookie })).text();
    const table = html.slice(
      html.indexOf('<table id="downloads">'),
      html.indexOf("</table>", html.indexOf('<table id="downloads">')),
    );
    expect(table).toContain("<td>2026-06-18</td><td>llama-2-7b</td><td>2</td><td>1</td><td>3.0 MiB</td>");
    expect(table).not.toContain("llama-2-70b");
  });

  it("shows a call and a download once the quota object holds them, before D1 has their hour", async () => {
    // Today's clock: the hour stays open in the quota object, which writes it to D1 only later.
    const live = testGateway(new Date(Date.now()));
    const org = await organization(live, "Live Labs", "live.example");
    const at = live.clock.now();
    const stub = quotaStub(env, org.organizationId);
    const call = ledgerRow("use_live", 30, {
      organizationId: org.organizationId,
      grantId: org.grant.id,
      tokenId: org.token.id,
      model: "llama-2-13b-chat",
      startedAt: at.toISOString(),
      createdAt: at.toISOString(),
    });
    const limits = { requestsPerMinute: 100, tokensPerMinute: 100_000, monthlyTokenBudget: 1_000_000 };
    await stub.commit({ rows: ledgerBatch([ledgerEntry(call)]) }, limits, at.getTime());
    await stub.recordDownloads([
      {
        id: "dle_live",
        organizationId: org.organizationId,
        jti: "jti_live",
        grantId: org.grant.id,
        tokenId: org.token.id,
        model: "llama-2-13b",
        revisionId: "rev_1",
        path: "consolidated.00.pth",
        status: 200,
        rangeStart: null,
        rangeEnd: null,
        bytesServed: 5 * 1024 * 1024,
        complete: true,
        at: at.toISOString(),
      },
    ]);
    // The object folds what it was given into its hour within LEDGER_FLUSH_MS.
    await runDurableObjectAlarm(stub);
    const hour = at.toISOString().slice(0, 13);
    expect(await live.db.select().from(usageHours).where(eq(usageHours.hour, hour))).toEqual([]);
    expect(await live.db.select().from(downloadHours).where(eq(downloadHours.hour, hour))).toEqual([]);

    const html = await (await live.request("/account", { headers: { cookie: org.owner.cookie } })).text();
    expect(html).toMatch(/<tr data-usage-key="llama-2-13b-chat"><th scope="row">llama-2-13b-chat<\/th><td>1<\/td>/);
    const table = html.slice(
      html.indexOf('<table id="downloads">'),
      html.indexOf("</table>", html.indexOf('<table id="downloads">')),
    );
    expect(table).toContain(`<td>${hour.slice(0, 10)}</td><td>llama-2-13b</td><td>1</td><td>1</td><td>5.0 MiB</td>`);
    // The month's usage in the overview counts it too.
    const overview = (await (
      await live.request("/v1/organization", { headers: { cookie: org.owner.cookie } })
    ).json()) as Overview;
    expect(overview.billing.usage).toMatchObject({ requests: 1, totalTokens: 30 });
  });

  it("lets a member of several organizations switch between them", async () => {
    const initech = await organization(gw, "Initech", "initech.example");
    // The oldest membership is the one shown first.
    gw.clock.advance(60_000);
    const both = await signedInMember(gw, {
      organizationId: initech.organizationId,
      email: "owner@acme.example",
      role: "viewer",
    });
    const first = await (await get("/account", { cookie: both.cookie })).text();
    expect(first).toContain("<h1>Acme Robotics</h1>");
    expect(first).toContain(`href="/account?organization=${initech.organizationId}"`);
    const second = await (await get(`/account?organization=${initech.organizationId}`, { cookie: both.cookie })).text();
    expect(second).toContain("<h1>Initech</h1>");
    expect(second).toContain("Signed in as <strong>owner@acme.example</strong>, viewer.");
    expect(second).not.toContain('id="mint-token"');
    // The API asks which one when none is named.
    expect((await get("/v1/organization", { cookie: both.cookie })).status).toBe(403);
  });

  it("groups the usage by member and by token on request", async () => {
    const byMember = await (await get("/account?usage=member", { cookie: acme.owner.cookie })).text();
    expect(byMember).toContain(`data-usage-key="${acme.developer.user.id}"`);
    expect(byMember).toMatch(/<th scope="row">dev@acme.example<\/th>/);
    const byToken = await (await get("/account?usage=token", { cookie: acme.owner.cookie })).text();
    expect(byToken).toContain(`data-usage-key="${acme.token.id}"`);
  });

  it("shows a developer their own tokens and no invitations", async () => {
    const html = await (await get("/account", { cookie: acme.developer.cookie })).text();
    expect(html).not.toContain("newcomer@acme.example");
    expect(html).not.toContain('data-api="/v1/organization/invitations"');
    expect(html).toContain("Acme Robotics ci");
    expect(html).toContain('id="mint-token"');
    expect(html).toContain('value="llama-2-13b-chat"');
  });

  it("security: shows a page of tokens at a time, however many a member made", async () => {
    const older = Array.from({ length: 60 }, (_, i) => ({
      id: `tok_old_${String(i).padStart(2, "0")}`,
      grantId: acme.grant.id,
      name: `old ${i}`,
      secretHash: `hash-old-${i}`,
      displayPrefix: "mg_old",
      scopes: ["inference" as const],
      userId: acme.developer.user.id,
      createdAt: new Date(Date.parse(NOW) - (i + 1) * 60_000).toISOString(),
      // Most of them revoked: revoked tokens stay listed, a page at a time.
      revokedAt: i < 10 ? null : NOW,
    }));
    for (let i = 0; i < older.length; i += 5) await gw.db.insert(accessTokens).values(older.slice(i, i + 5));
    const rows = (html: string) => [...html.matchAll(/data-token-row="([^"]+)"/g)].map((m) => m[1]);

    const first = await (await get("/account", { cookie: acme.owner.cookie })).text();
    expect(rows(first)).toEqual([acme.token.id, ...older.slice(0, 49).map((t) => t.id)]);
    const next = first.match(/<a href="([^"]*tokens=[^"]+)">Older tokens<\/a>/)?.[1]?.replaceAll("&amp;", "&");
    expect(next).toBeDefined();
    const second = await (await get(next ?? "", { cookie: acme.owner.cookie })).text();
    expect(rows(second)).toEqual(older.slice(49).map((t) => t.id));
    expect(second).toContain(">Newest tokens</a>");
    expect(second).not.toContain(">Older tokens</a>");
    // A developer's page holds their own, a page at a time too.
    const own = await (await get("/account", { cookie: acme.developer.cookie })).text();
    expect(rows(own)).toHaveLength(50);
    expect(own).toContain(">Older tokens</a>");
    // A cursor that is not one the portal made is refused, not guessed at.
    expect((await get("/account?tokens=garbage", { cookie: acme.owner.cookie })).status).toBe(400);
  });

  it("security: writes names from users as text, never as markup", async () => {
    await gw.db
      .update(accessTokens)
      .set({ name: '<img src=x onerror="alert(1)">' })
      .where(eq(accessTokens.id, acme.token.id));
    const html = await (await get("/account?usage=token", { cookie: acme.owner.cookie })).text();
    expect(html).not.toContain("<img src=x");
    expect(html).toContain("&lt;img src=x");
  });

  it("serves its script as JavaScript", async () => {
    const res = await get("/assets/portal.js");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect(await res.text()).toContain("x-modelgate-organization");
  });
});
