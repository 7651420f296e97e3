import { beforeEach, describe, expect, it } from "vitest";
import { downloadEvents } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedApplication, seedGrant, seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

describe("review comments API", () => {
  let gateway: Gateway;
  let license: LicenseVersion;
  let reviewer: string;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
    reviewer = await adminToken({ role: "reviewer", email: "rita@example.com" });
  });

  it("lets a reviewer comment, lists comments oldest first, and audits each one", async () => {
    const app = await seedApplication(gateway.services, license);
    for (const body of ["Checked the website.", "MAU figure matches their filing."]) {
      const res = await gateway.request(`/admin/api/applications/${app.id}/comments`, {
        method: "POST",
        headers: accessHeaders(reviewer),
        body: JSON.stringify({ body }),
      });
      expect(res.status).toBe(201);
      gateway.clock.advance(60_000);
    }
    const list = await gateway.request(`/admin/api/applications/${app.id}/comments`, {
      headers: accessHeaders(reviewer),
    });
    const { items } = (await list.json()) as { items: { reviewer: string; body: string }[] };
    expect(items.map((i) => i.body)).toEqual(["Checked the website.", "MAU figure matches their filing."]);
    expect(items[0]?.reviewer).toBe("rita@example.com");

    const audit = await gateway.request("/admin/api/audit?action=application.commented", {
      headers: accessHeaders(reviewer),
    });
    const events = (await audit.json()) as { items: { actor: string; subjectId: string; data: { length: number } }[] };
    expect(events.items).toHaveLength(2);
    expect(events.items[0]).toMatchObject({ actor: "reviewer:rita@example.com", subjectId: app.id });
    expect(events.items[0]?.data.length).toBe("MAU figure matches their filing.".length);
  });

  it("refuses strangers, cross-site posts, empty comments and unknown cases", async () => {
    const app = await seedApplication(gateway.services, license);
    const path = `/admin/api/applications/${app.id}/comments`;
    const anonymous = await gateway.request(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ body: "hi" }),
    });
    expect(anonymous.status).toBe(401);
    const crossSite = await gateway.request(path, {
      method: "POST",
      headers: accessHeaders(reviewer, { "sec-fetch-site": "cross-site", origin: "https://evil.example" }),
      body: JSON.stringify({ body: "hi" }),
    });
    expect(crossSite.status).toBe(403);
    expect(((await crossSite.json()) as { code: string }).code).toBe("cross_site_request");
    const empty = await gateway.request(path, {
      method: "POST",
      headers: accessHeaders(reviewer),
      body: JSON.stringify({ body: "  " }),
    });
    expect(empty.status).toBe(400);
    const unknown = await gateway.request("/admin/api/applications/app_nope/comments", {
      method: "POST",
      headers: accessHeaders(reviewer),
      body: JSON.stringify({ body: "hi" }),
    });
    expect(unknown.status).toBe(404);
    const list = await gateway.request(path, { headers: accessHeaders(reviewer) });
    expect(((await list.json()) as { items: unknown[] }).items).toEqual([]);
  });
});

describe("reviewer console pages", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  async function page(path: string, token?: string): Promise<{ status: number; html: string; headers: Headers }> {
    const res = await gateway.request(path, { headers: token ? { "cf-access-jwt-assertion": token } : {} });
    return { status: res.status, html: await res.text(), headers: res.headers };
  }

  it("asks strangers to sign in, and offers the local sign-in only in dev mode", async () => {
    const res = await page("/admin");
    expect(res.status).toBe(401);
    expect(res.html).toContain("Sign in to the review console");
    expect(res.html).toContain('href="/admin/dev-login"');
    expect(res.headers.get("content-security-policy")).toContain("script-src 'self'");
  });

  it("shows the queue with MAU, flags and who approved, oldest first", async () => {
    const older = await seedApplication(gateway.services, license, {
      organizationName: "Older Corp",
      requiredApprovals: 2,
    });
    gateway.clock.advance(3_600_000);
    await seedApplication(gateway.services, license, { organizationName: "Newer Ltd" });
    const approver = await adminToken({ role: "approver", email: "ann@example.com" });
    const decided = await gateway.request(`/admin/api/applications/${older.id}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "Fine.", visibleToApplicant: false }),
    });
    expect(decided.status).toBe(200);
    const { status, html } = await page("/admin", approver);
    expect(status).toBe(200);
    expect(html.indexOf("Older Corp")).toBeLessThan(html.indexOf("Newer Ltd"));
    expect(html).toContain("900,000,000");
    expect(html).toContain("mau over threshold");
    expect(html).toContain("1 of 2");
    expect(html).toContain("ann@example.com (you)");
  });

  it("offers the decision form to approvers only, without approve for one who approved already", async () => {
    const app = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const reviewer = await adminToken({ role: "reviewer" });
    const ann = await adminToken({ role: "approver", email: "ann@example.com" });
    const ben = await adminToken({ role: "approver", email: "ben@example.com" });

    const asReviewer = await page(`/admin/applications/${app.id}`, reviewer);
    expect(asReviewer.status).toBe(200);
    expect(asReviewer.html).toContain("Deciding needs the approver role");
    expect(asReviewer.html).not.toContain('id="decision"');

    const before = await page(`/admin/applications/${app.id}`, ann);
    expect(before.html).toContain('value="approve"');

    await gateway.request(`/admin/api/applications/${app.id}/decision`, {
      method: "POST",
      headers: accessHeaders(ann),
      body: JSON.stringify({ decision: "approve", reason: "Fine.", visibleToApplicant: false }),
    });
    const after = await page(`/admin/applications/${app.id}`, ann);
    expect(after.html).toContain("You approved this case");
    expect(after.html).not.toContain('value="approve"');
    const other = await page(`/admin/applications/${app.id}`, ben);
    expect(other.html).toContain('value="approve"');
    expect(other.html).toContain("ann@example.com");
  });

  it("shows grant controls by role: suspend for approvers, revoke for admins only", async () => {
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Granted Inc" });
    const approver = await page(`/admin/grants/${grant.id}`, await adminToken({ role: "approver" }));
    expect(approver.html).toContain("Suspend access");
    expect(approver.html).not.toContain("Revoke for good");
    const admin = await page(`/admin/grants/${grant.id}`, await adminToken({ role: "admin" }));
    expect(admin.html).toContain("Revoke for good");
    const list = await page("/admin/grants", await adminToken({ role: "reviewer" }));
    expect(list.html).toContain("Granted Inc");
  });

  it("shows the audit chain's verification", async () => {
    await seedApplication(gateway.services, license);
    const audit = await page("/admin/audit", await adminToken({ role: "reviewer" }));
    expect(audit.html).toContain("Chain verified.");
  });

  it("charts downloads per day from download events, and says so when there are none", async () => {
    const token = await adminToken({ role: "reviewer" });
    const empty = await page("/admin/usage", token);
    expect(empty.status).toBe(200);
    expect(empty.html).not.toContain("<svg");
    expect(empty.html).toContain("nothing in this period");

    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Downloader AG" });
    const at = gateway.clock.now().toISOString();
    await gateway.services.db.insert(downloadEvents).values(
      [1, 2].map((n) => ({
        id: `dl_${n}`,
        jti: `jti_${n}`,
        grantId: grant.id,
        tokenId: "tok_x",
        model: "llama-2-7b",
        revisionId: "rev_1",
        path: `model-0000${n}-of-00002.safetensors`,
        status: 200,
        bytesServed: 1024 * 1024,
        complete: true,
        at,
      })),
    );
    const usage = await page("/admin/usage", token);
    expect(usage.html).toContain("<svg");
    expect(usage.html).toContain(`<title>${at.slice(0, 10)}: 2</title>`);
    expect(usage.html).toContain("Downloader AG");
    expect(usage.html).toContain("2.0 MiB");
  });
});

describe("local sign-in", () => {
  it("keeps a valid token in a __Host- cookie that then authenticates the API", async () => {
    const gateway = testGateway();
    const token = await adminToken({ role: "approver", email: "ann@example.com" });
    const res = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "same-origin" },
      body: new URLSearchParams({ token }).toString(),
    });
    expect(res.status).toBe(303);
    const cookie = res.headers.get("set-cookie") ?? "";
    expect(cookie).toMatch(/^__Host-modelgate-dev-access=/);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("Secure");
    expect(cookie).toContain("SameSite=Strict");
    expect(cookie).toContain("Path=/");
    const me = await gateway.request("/admin/api/me", { headers: { cookie: cookie.split(";")[0] ?? "" } });
    expect(me.status).toBe(200);
    expect(((await me.json()) as { email: string }).email).toBe("ann@example.com");
  });

  it("refuses bad tokens and cross-site sign-ins", async () => {
    const gateway = testGateway();
    const bad = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "token=not-a-jwt",
    });
    expect(bad.status).toBe(401);
    expect(bad.headers.get("set-cookie")).toBeNull();
    const crossSite = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "cross-site" },
      body: new URLSearchParams({ token: await adminToken({ role: "admin" }) }).toString(),
    });
    expect(crossSite.status).toBe(403);
    expect(crossSite.headers.get("set-cookie")).toBeNull();
  });
});
