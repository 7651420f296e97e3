import { env } from "cloudflare:workers";
import { generateKeyPair } from "jose";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { rolesFor, verifyAccessToken } from "../worker/auth/access";
import { readConfig } from "../worker/config";
import { applications, auditEvents, decisions, mailOutbox } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { fixedClock } from "../worker/platform/clock";
import { accessClaims, accessHeaders, adminToken, signAccessClaims, TOKEN_NOW, unsignedToken } from "./helpers/access";
import { seedApplication, seedLicense, testGateway } from "./helpers/fixtures";

async function me(gateway: ReturnType<typeof testGateway>, token?: string) {
  return gateway.request("/admin/api/me", token ? { headers: { "cf-access-jwt-assertion": token } } : {});
}

async function expectProblem(res: Response, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/problem+json");
  expect(await res.json()).toMatchObject({ status, code });
}

describe("Access JWT authentication", () => {
  let gateway: ReturnType<typeof testGateway>;
  beforeEach(() => {
    gateway = testGateway();
  });

  it("admits a valid token and reports the reviewer's roles", async () => {
    const res = await me(gateway, await adminToken({ email: "Rita@Example.com", role: "reviewer" }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ email: "rita@example.com", roles: ["reviewer"] });
  });

  it("gives higher roles every lower one", async () => {
    const res = await me(gateway, await adminToken({ email: "boss@example.com", role: "admin" }));
    expect(await res.json()).toEqual({ email: "boss@example.com", roles: ["reviewer", "approver", "admin"] });
  });

  it("answers 401 without a token", async () => {
    await expectProblem(await me(gateway), 401, "unauthorized");
  });

  it("answers 401 on admin paths no route claims, before revealing they do not exist", async () => {
    await expectProblem(await gateway.request("/admin/api/nothing-here"), 401, "unauthorized");
  });

  it("refuses a token signed by another key with the trusted kid", async () => {
    const { privateKey } = await generateKeyPair("ES256");
    const token = await signAccessClaims(accessClaims({ role: "admin" }), { key: privateKey });
    await expectProblem(await me(gateway, token), 401, "unauthorized");
  });

  it("refuses a token for another application (audience)", async () => {
    await expectProblem(
      await me(gateway, await adminToken({ role: "admin", aud: ["someone-else"] })),
      401,
      "unauthorized",
    );
  });

  it("refuses a token from another Access team (issuer)", async () => {
    const token = await adminToken({ role: "admin", iss: "https://evil.cloudflareaccess.com" });
    await expectProblem(await me(gateway, token), 401, "unauthorized");
  });

  it("refuses an expired token by the injected clock, with 30 seconds of tolerance", async () => {
    const token = await adminToken({ role: "reviewer", ttlSeconds: 600 });
    gateway.clock.set(new Date(TOKEN_NOW.getTime() + 600_000 + 20_000));
    expect((await me(gateway, token)).status).toBe(200);
    gateway.clock.set(new Date(TOKEN_NOW.getTime() + 600_000 + 31_000));
    await expectProblem(await me(gateway, token), 401, "unauthorized");
  });

  it("refuses a token issued for the future (nbf)", async () => {
    gateway.clock.set(new Date(TOKEN_NOW.getTime() - 5 * 60_000));
    await expectProblem(await me(gateway, await adminToken({ role: "reviewer" })), 401, "unauthorized");
  });

  it("refuses an unsigned token (alg: none)", async () => {
    await expectProblem(await me(gateway, unsignedToken({ role: "admin" })), 401, "unauthorized");
  });

  it("refuses an HMAC token, even one keyed with the public key's text", async () => {
    const publicJwk = JSON.parse(env.ACCESS_JWKS).keys[0];
    const secret = new TextEncoder().encode(JSON.stringify(publicJwk));
    const token = await signAccessClaims(accessClaims({ role: "admin" }), { key: secret, alg: "HS256" });
    await expectProblem(await me(gateway, token), 401, "unauthorized");
  });

  it("refuses a token without an e-mail", async () => {
    const claims = accessClaims({ role: "admin" });
    delete claims.email;
    await expectProblem(await me(gateway, await signAccessClaims(claims)), 401, "unauthorized");
  });

  it("refuses garbage in the header", async () => {
    await expectProblem(await me(gateway, "not.a.jwt"), 401, "unauthorized");
  });

  it("answers 403 to a valid token that holds no role", async () => {
    await expectProblem(
      await me(gateway, await adminToken({ email: "visitor@example.com", role: null })),
      403,
      "forbidden",
    );
  });

  it("reads groups from Access's custom claims too", async () => {
    const token = await adminToken({ role: null, custom: { groups: [{ id: "g1", name: "modelgate-approvers" }] } });
    const res = await me(gateway, token);
    expect(await res.json()).toMatchObject({ roles: ["reviewer", "approver"] });
  });

  it("matches exact e-mails and whole domains from ADMIN_ROLES", async () => {
    const configured = {
      ...env,
      ADMIN_ROLES: JSON.stringify({ reviewer: ["*@acme.example"], admin: ["chief@acme.example"] }),
    };
    const ask = async (email: string) =>
      gateway.app.request(
        "http://gw.test/admin/api/me",
        { headers: { "cf-access-jwt-assertion": await adminToken({ email, role: null }) } },
        configured,
      );
    expect(await (await ask("intern@acme.example")).json()).toMatchObject({ roles: ["reviewer"] });
    expect(await (await ask("chief@acme.example")).json()).toMatchObject({ roles: ["reviewer", "approver", "admin"] });
    expect((await ask("intern@notacme.example")).status).toBe(403);
    expect((await ask("intern@sub.acme.example")).status).toBe(403);
  });
});

describe("security: an admin door without an issuer or an audience", () => {
  // Wrangler environments inherit no vars: an [env.production.vars] without ACCESS_AUD gives
  // env.ACCESS_AUD === undefined, and jose checks no audience it is not given.
  const gaps: [string, Record<string, string | undefined>, string][] = [
    ["ACCESS_AUD missing", { ACCESS_AUD: undefined }, "ACCESS_AUD"],
    ["ACCESS_AUD blank", { ACCESS_AUD: "  " }, "ACCESS_AUD"],
    ["ACCESS_TEAM_DOMAIN missing", { ACCESS_TEAM_DOMAIN: undefined }, "ACCESS_TEAM_DOMAIN"],
    ["ACCESS_TEAM_DOMAIN blank", { ACCESS_TEAM_DOMAIN: "" }, "ACCESS_TEAM_DOMAIN"],
  ];

  it.each(gaps)(
    "stays shut with %s: every token 401, the reason logged, the public side serving",
    async (_, gap, name) => {
      const gateway = testGateway(undefined, gap as unknown as Partial<Env>);
      const errors = vi.spyOn(console, "error").mockImplementation(() => {});
      try {
        for (const token of [
          await adminToken({ role: "admin", aud: ["another-access-application-of-the-team"] }),
          await adminToken({ role: "admin", iss: "https://evil.cloudflareaccess.com" }),
          // Even a token that names this deployment's own issuer and audience.
          await adminToken({ role: "admin" }),
        ]) {
          await expectProblem(await me(gateway, token), 401, "unauthorized");
        }
        const logged = errors.mock.calls.map(([line]) => JSON.parse(String(line)) as Record<string, unknown>);
        expect(logged).toContainEqual(expect.objectContaining({ level: "error", missing: [name] }));
      } finally {
        errors.mockRestore();
      }
      // The local sign-in page signs no one in either.
      const devLogin = await gateway.request("/admin/dev-login", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "same-origin" },
        body: new URLSearchParams({ token: await adminToken({ role: "admin" }) }).toString(),
      });
      expect(devLogin.status).toBe(401);
      expect(devLogin.headers.get("set-cookie")).toBeNull();
      // Applicants, licensees and their tokens do not depend on Access: the Worker still starts and serves.
      expect((await gateway.request("/health")).status).toBe(200);
    },
  );

  it("verifyAccessToken refuses every token, whatever its audience, for a configuration without one", async () => {
    const config = readConfig({ ...env, ACCESS_AUD: undefined } as unknown as Env);
    expect(config.access.audience).toBeUndefined();
    const logged: unknown[] = [];
    const log = { error: (message: string, fields?: Record<string, unknown>) => logged.push({ message, ...fields }) };
    for (const aud of [["someone-else"], [env.ACCESS_AUD], []]) {
      const token = await adminToken({ role: "admin", aud });
      await expect(verifyAccessToken(token, { config, clock: fixedClock(TOKEN_NOW), log })).rejects.toMatchObject({
        code: "unauthorized",
      });
    }
    expect(logged).toHaveLength(3);
    expect(logged[0]).toMatchObject({ missing: ["ACCESS_AUD"] });
  });

  it("is open with the local defaults of wrangler.toml, which `npm start` runs on", async () => {
    const { access } = readConfig(env);
    expect(access).toMatchObject({ teamDomain: env.ACCESS_TEAM_DOMAIN, audience: env.ACCESS_AUD, devLogin: true });
    expect((await me(testGateway(), await adminToken({ role: "reviewer" }))).status).toBe(200);
  });
});

describe("rolesFor", () => {
  it("does not let a group name stand in for an e-mail or a domain", () => {
    const roles = { reviewer: ["group:ops"], admin: ["*@corp.example"] };
    expect(rolesFor({ email: "a@else.example", groups: ["*@corp.example"] }, roles)).toEqual([]);
    expect(rolesFor({ email: "a@else.example", groups: ["ops"] }, roles)).toEqual(["reviewer"]);
    expect(rolesFor({ email: "A@Corp.Example" }, roles)).toEqual(["reviewer", "approver", "admin"]);
  });
});

describe("protection of state-changing calls", () => {
  let gateway: ReturnType<typeof testGateway>;
  let license: LicenseVersion;
  let applicationId: string;
  const decision = { decision: "approve", reason: "Fits the license.", visibleToApplicant: false };

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
    applicationId = (await seedApplication(gateway.services, license)).id;
  });

  async function nothingWritten() {
    const { db } = gateway.services;
    expect(await db.select().from(decisions)).toEqual([]);
    expect(await db.select().from(auditEvents)).toEqual([]);
    expect(await db.select().from(mailOutbox)).toEqual([]);
    const [row] = await db.select().from(applications);
    expect(row).toMatchObject({ status: "pending_review", decidedAt: null });
  }

  it("a reviewer may read but not decide", async () => {
    const token = await adminToken({ email: "rita@example.com", role: "reviewer" });
    const read = await gateway.request(`/admin/api/applications/${applicationId}`, { headers: accessHeaders(token) });
    expect(read.status).toBe(200);
    const res = await gateway.request(`/admin/api/applications/${applicationId}/decision`, {
      method: "POST",
      headers: accessHeaders(token),
      body: JSON.stringify(decision),
    });
    await expectProblem(res, 403, "forbidden");
    await nothingWritten();
  });

  it("refuses a cross-site post even with a valid approver's token", async () => {
    const token = await adminToken({ email: "ann@example.com", role: "approver" });
    const crossSite: Record<string, string>[] = [
      { "sec-fetch-site": "cross-site" },
      { origin: "https://evil.example" },
    ];
    for (const headers of crossSite) {
      const res = await gateway.request(`/admin/api/applications/${applicationId}/decision`, {
        method: "POST",
        headers: accessHeaders(token, headers),
        body: JSON.stringify(decision),
      });
      await expectProblem(res, 403, "cross_site_request");
    }
    await nothingWritten();
  });

  it("refuses a form-encoded post (what a cross-site HTML form can send) with 415", async () => {
    const token = await adminToken({ email: "ann@example.com", role: "approver" });
    const res = await gateway.request(`/admin/api/applications/${applicationId}/decision`, {
      method: "POST",
      headers: accessHeaders(token, { "content-type": "application/x-www-form-urlencoded" }),
      body: new URLSearchParams({ decision: "approve", reason: "x", visibleToApplicant: "false" }).toString(),
    });
    await expectProblem(res, 415, "unsupported_media_type");
    await nothingWritten();
  });

  it("accepts the same post from this site", async () => {
    const token = await adminToken({ email: "ann@example.com", role: "approver" });
    const res = await gateway.request(`/admin/api/applications/${applicationId}/decision`, {
      method: "POST",
      headers: accessHeaders(token, { "sec-fetch-site": "same-origin", origin: "http://gw.test" }),
      body: JSON.stringify(decision),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "approved" });
  });
});

describe("keys from the team's certs endpoint", () => {
  it("answers 503, not 401, when Access's keys cannot be fetched", async () => {
    const gateway = testGateway();
    // No inline JWKS: the gateway must fetch the team's certs, here from a port nobody listens on.
    const unreachable = { ...env, ACCESS_JWKS: "", ACCESS_TEAM_DOMAIN: "http://127.0.0.1:9" };
    const token = await adminToken({ role: "admin", iss: "http://127.0.0.1:9" });
    const res = await gateway.app.request(
      "http://gw.test/admin/api/me",
      { headers: { "cf-access-jwt-assertion": token } },
      unreachable,
    );
    await expectProblem(res, 503, "service_unavailable");
  });
});
