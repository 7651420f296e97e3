import { env } from "cloudflare:workers";
import { and, count, eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { purgeUnconfirmedDrafts } from "../worker/applications/submit";
import {
  acceptances,
  applicationDrafts,
  applications,
  auditEvents,
  emailLinks,
  grants,
  licenseVersions,
  mailOutbox,
  memberships,
  organizations,
  statusLinks,
} from "../worker/db/schema";
import { fixedClock } from "../worker/platform/clock";
import { sha256Hex } from "../worker/platform/hash";
import { accessHeaders, adminToken } from "./helpers/access";
import { applyAndConfirm, confirmationToken, confirmPageForm, confirmRequest, mailedTexts } from "./helpers/apply";
import { json, seedLicense, testGateway } from "./helpers/gateway";
import { signedInMember } from "./helpers/members";

let licenseSha256: string;

beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
});

function applicationBody(overrides: Record<string, unknown> = {}) {
  return {
    family: "llama-2",
    organization: { name: "Acme Robotics GmbH", website: "https://acme.example", country: "DE" },
    contact: { name: "Ada Lovelace", email: "Ada@Acme.example" },
    intendedUse: "Customer support assistant for our robot vacuum owners.",
    declaredMau: 120_000,
    models: ["llama-2-7b-chat"],
    licenseSha256,
    acceptLicense: true,
    acceptAup: true,
    ...overrides,
  };
}

async function rowCounts(gw: ReturnType<typeof testGateway>) {
  const tables = { applications, organizations, acceptances, grants, statusLinks, auditEvents, mailOutbox };
  const out: Record<string, number> = {};
  for (const [name, table] of Object.entries(tables)) {
    const [row] = await gw.db.select({ n: count() }).from(table);
    out[name] = row?.n ?? -1;
  }
  return out;
}

const EMPTY = {
  applications: 0,
  organizations: 0,
  acceptances: 0,
  grants: 0,
  statusLinks: 0,
  auditEvents: 0,
  mailOutbox: 0,
};

describe("POST /v1/applications", () => {
  it("records the application as awaiting_verification and mails only a confirmation link", async () => {
    const gw = testGateway();
    const res = await gw.request("/v1/applications", json(applicationBody()));
    expect(res.status).toBe(201);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ status: "awaiting_verification" });
    expect(body).not.toHaveProperty("statusUrl");
    expect(await rowCounts(gw)).toMatchObject({ applications: 0, grants: 0, statusLinks: 0, auditEvents: 0 });
    expect(gw.mailer.sent).toHaveLength(1);
    const mail = gw.mailer.sent[0];
    expect(mail?.to).toBe("ada@acme.example");
    expect(mail?.text).toMatch(/\/applications\/confirm\?token=mge_/);
    expect(mail?.text).not.toContain("Acme");
    expect(mail?.text).not.toContain("Ada Lovelace");
    expect(mail?.text).not.toContain("vacuum");
    // The status API says it waits, to anyone with the id, and nothing else.
    const status = await gw.request(`/v1/applications/${body.id}`);
    expect(status.status).toBe(200);
    expect(await status.json()).toMatchObject({ id: body.id, status: "awaiting_verification" });
  });

  it("approves at or under the threshold once the contact confirms, with evidence, grant, mail and audit in one write", async () => {
    const gw = testGateway();
    const confirmed = await applyAndConfirm(gw, applicationBody({ declaredMau: 700_000_000 }), {
      "cf-connecting-ip": "203.0.113.9",
      "user-agent": "test-agent/1",
    });
    expect(confirmed).toMatchObject({ status: "approved", duplicate: false });
    expect(confirmed.statusUrl).toMatch(new RegExp(`/applications/${confirmed.applicationId}\\?token=mgs_`));
    expect(confirmed.cookie).toMatch(/^__Host-mg_session=mgsess_/);

    const [app] = await gw.db.select().from(applications).where(eq(applications.id, confirmed.applicationId));
    expect(app).toMatchObject({
      status: "approved",
      contactEmail: "ada@acme.example",
      declaredMau: 700_000_000,
      requiredApprovals: 1,
    });
    expect(app?.contactUserId).toMatch(/^usr_/);
    const [evidence] = await gw.db
      .select()
      .from(acceptances)
      .where(eq(acceptances.applicationId, confirmed.applicationId));
    expect(evidence).toMatchObject({
      licenseSha256,
      ip: "203.0.113.9",
      userAgent: "test-agent/1",
      confirmedIp: "203.0.113.9",
      confirmedUserAgent: "test-agent/1",
      confirmedByUserId: app?.contactUserId,
    });
    expect(evidence?.aupSha256).toMatch(/^[0-9a-f]{64}$/);
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, confirmed.applicationId));
    expect(grant).toMatchObject({
      status: "active",
      family: "llama-2",
      organizationId: app?.organizationId,
      models: ["llama-2-7b-chat"],
    });
    const events = await gw.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(events.map((e) => e.action)).toEqual(["organization.created", "application.submitted", "grant.issued"]);
    expect(gw.mailer.sent).toHaveLength(2);
    expect(gw.mailer.sent[1]).toMatchObject({ to: "ada@acme.example" });
    expect(gw.mailer.sent[1]?.text).toContain(confirmed.statusUrl);
  });

  it("sends 700,000,001 to review with two required approvals and no grant", async () => {
    const gw = testGateway();
    const confirmed = await applyAndConfirm(gw, applicationBody({ declaredMau: 700_000_001 }));
    expect(confirmed.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, confirmed.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["mau_over_threshold"]);
    expect(app?.requiredApprovals).toBe(2);
    expect(await gw.db.select().from(grants)).toEqual([]);
  });

  it("rejects an embargoed country and sets the cool-down", async () => {
    const gw = testGateway({ clock: fixedClock("2026-01-10T12:00:00Z") });
    const confirmed = await applyAndConfirm(gw, applicationBody({ organization: { name: "X", country: "KP" } }));
    expect(confirmed.status).toBe("rejected");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, confirmed.applicationId));
    expect(app?.reapplyAfter).toBe("2026-02-09T12:00:00.000Z");
  });

  // Bodies are built lazily: the license hash is only known once beforeEach has seeded it.
  const invalid: [string, () => unknown, string][] = [
    ["license not accepted", () => applicationBody({ acceptLicense: false }), "acceptLicense"],
    ["AUP acceptance missing", () => ({ ...applicationBody(), acceptAup: undefined }), "acceptAup"],
    ["bad e-mail", () => applicationBody({ contact: { name: "A", email: "not-an-email" } }), "contact.email"],
    ["unknown country", () => applicationBody({ organization: { name: "A", country: "XX" } }), "organization.country"],
    ["fractional MAU", () => applicationBody({ declaredMau: 1.5 }), "declaredMau"],
    ["negative MAU", () => applicationBody({ declaredMau: -1 }), "declaredMau"],
    ["MAU as a string", () => applicationBody({ declaredMau: "1000" }), "declaredMau"],
    ["missing MAU", () => ({ ...applicationBody(), declaredMau: undefined }), "declaredMau"],
    ["oversized intended use", () => applicationBody({ intendedUse: "x".repeat(4001) }), "intendedUse"],
    [
      "oversized organization name",
      () => applicationBody({ organization: { name: "n".repeat(201), country: "DE" } }),
      "organization.name",
    ],
    [
      "javascript: website",
      () => applicationBody({ organization: { name: "A", country: "DE", website: "javascript:alert(1)" } }),
      "organization.website",
    ],
    ["unknown field", () => applicationBody({ isAdmin: true }), "(body)"],
    ["unknown model", () => applicationBody({ models: ["gpt-4"] }), "models"],
    ["unknown family", () => applicationBody({ family: "llama-9" }), "family"],
    ["malformed license hash", () => applicationBody({ licenseSha256: "abc" }), "licenseSha256"],
  ];
  it.each(invalid)("refuses %s with 400 problem+json and writes nothing", async (_name, body, field) => {
    const gw = testGateway();
    const res = await gw.request("/v1/applications", json(body()));
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    const problem = (await res.json()) as { code: string; errors: { field: string }[] };
    expect(problem.code).toBe("validation_failed");
    expect(problem.errors.map((e) => e.field)).toContain(field);
    expect(await rowCounts(gw)).toEqual(EMPTY);
  });

  it("refuses malformed JSON, other content types and oversized bodies, writing nothing", async () => {
    const gw = testGateway();
    const malformed = await gw.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{",
    });
    expect(malformed.status).toBe(400);
    expect(await malformed.json()).toMatchObject({ code: "malformed_body" });
    const text = await gw.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: "hi",
    });
    expect(text.status).toBe(415);
    expect(await text.json()).toMatchObject({ code: "unsupported_media_type" });
    const huge = await gw.request("/v1/applications", json(applicationBody({ intendedUse: "y".repeat(70_000) })));
    expect(huge.status).toBe(413);
    expect(await huge.json()).toMatchObject({ code: "payload_too_large" });
    expect(await rowCounts(gw)).toEqual(EMPTY);
  });

  it("answers a stale license hash with 409 and the current hashes", async () => {
    const gw = testGateway();
    const stale = licenseSha256;
    const next = await seedLicense("LICENSE v2", "AUP v2");
    const res = await gw.request("/v1/applications", json(applicationBody({ licenseSha256: stale })));
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({
      code: "stale_license",
      currentLicenseSha256: next.licenseSha256,
      currentAupSha256: next.aupSha256,
    });
    expect((await rowCounts(gw)).applications).toBe(0);
  });

  it("answers an Acceptable Use Policy changed alone with 409, unless the one accepted is named and current", async () => {
    const gw = testGateway();
    // The same license text, a new policy: the license's hash alone no longer says which was read.
    const next = await seedLicense(undefined, "ACCEPTABLE USE POLICY (test text)\nNo impersonation.");
    expect(next.licenseSha256).toBe(licenseSha256);
    const unnamed = await gw.request("/v1/applications", json(applicationBody()));
    expect(unnamed.status).toBe(409);
    expect(await unnamed.json()).toMatchObject({ code: "stale_license", currentAupSha256: next.aupSha256 });
    const older = await gw.request("/v1/applications", json(applicationBody({ aupSha256: "0".repeat(64) })));
    expect(older.status).toBe(409);
    expect((await rowCounts(gw)).applications).toBe(0);
    const named = await gw.request("/v1/applications", json(applicationBody({ aupSha256: next.aupSha256 })));
    expect(named.status).toBe(201);
    // The form names the policy it shows.
    const form = await (await gw.request("/apply/llama-2")).text();
    expect(form).toContain(`name="aupSha256" value="${next.aupSha256}"`);
  });

  it("shows a repeat applicant of the organization its open case; each owner holds one link of their own", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, applicationBody({ declaredMau: 900_000_000 }));
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, first.applicationId));
    await signedInMember(gw, { organizationId: app?.organizationId, email: "grace@acme.example" });
    const graces = await applyAndConfirm(
      gw,
      applicationBody({ contact: { name: "Grace Hopper", email: "grace@acme.example" } }),
    );
    const again = await applyAndConfirm(gw, applicationBody({ declaredMau: 50_000 }));
    expect(graces).toMatchObject({ applicationId: first.applicationId, status: "pending_review", duplicate: true });
    expect(again).toMatchObject({ applicationId: first.applicationId, status: "pending_review", duplicate: true });
    expect(await rowCounts(gw)).toMatchObject({ applications: 1, organizations: 1 });
    const status = async (capability: string) =>
      (
        await gw.request(`/v1/applications/${first.applicationId}`, {
          headers: { authorization: `Bearer ${capability}` },
        })
      ).status;
    // Ada's new link replaces her first; Grace's, beside them, is untouched.
    expect(await status(first.capability)).toBe(404);
    expect(await status(again.capability)).toBe(200);
    expect(await status(graces.capability)).toBe(200);
  });

  it("confirms each link once, however often it is replayed, and never on a GET", async () => {
    const gw = testGateway();
    await gw.request("/v1/applications", json(applicationBody()));
    const token = confirmationToken(gw, "ada@acme.example");
    const page = await gw.request(`/applications/confirm?token=${encodeURIComponent(token)}`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('method="post"');
    expect((await rowCounts(gw)).applications).toBe(0);
    const responses = await Promise.all(Array.from({ length: 6 }, () => confirmRequest(gw, token)));
    expect(responses.map((r) => r.status).sort()).toEqual([200, 401, 401, 401, 401, 401]);
    expect((await rowCounts(gw)).applications).toBe(1);
    const unknown = await confirmRequest(gw, "mge_not-a-real-link");
    expect(unknown.status).toBe(401);
    expect(await unknown.json()).toMatchObject({ code: "unauthorized" });
  });

  it("security: refuses a link posted from another site, which would sign its visitor in as the link's owner", async () => {
    const gw = testGateway();
    await gw.request("/v1/applications", json(applicationBody()));
    const token = confirmationToken(gw, "ada@acme.example");
    const crossSite: Record<string, string>[] = [
      { origin: "https://evil.example", "sec-fetch-site": "cross-site" },
      { origin: "https://evil.example" },
      { "sec-fetch-site": "same-site" },
    ];
    for (const headers of crossSite) {
      const res = await gw.request("/v1/applications/confirm", {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
        body: new URLSearchParams({ token }),
      });
      expect(res.status, JSON.stringify(headers)).toBe(403);
      expect(await res.json()).toMatchObject({ code: "cross_site_request" });
      expect(res.headers.get("set-cookie")).toBeNull();
    }
    expect((await rowCounts(gw)).applications).toBe(0);
    // The link is not spent: its owner confirms it from a client that is not a browser.
    expect((await confirmRequest(gw, token)).status).toBe(200);
  });

  it("lets a confirmation link expire after 24 hours", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    await gw.request("/v1/applications", json(applicationBody()));
    clock.advance(24 * 3_600_000 + 1000);
    const late = await confirmRequest(gw, confirmationToken(gw, "ada@acme.example"));
    expect(late.status).toBe(401);
    expect((await rowCounts(gw)).applications).toBe(0);
  });

  it("deletes unconfirmed applications and their links a week after the link expired, keeping confirmed ones", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    await gw.request("/v1/applications", json(applicationBody()));
    await applyAndConfirm(gw, applicationBody({ contact: { name: "B", email: "b@other.example" } }));
    clock.advance(24 * 3_600_000 + 6 * 86_400_000);
    expect(await purgeUnconfirmedDrafts(gw.services())).toBe(0);
    clock.advance(2 * 86_400_000);
    expect(await purgeUnconfirmedDrafts(gw.services())).toBe(1);
    const drafts = await gw.db.select().from(applicationDrafts);
    expect(drafts.map((d) => d.contactEmail)).toEqual(["b@other.example"]);
    const links = await gw.db.select().from(emailLinks);
    expect(links.map((l) => l.email)).toEqual(["b@other.example"]);
  });

  it("lets a rejected organization apply again only after the cool-down", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    const body = applicationBody({ organization: { name: "Northwind", country: "IR" } });
    expect((await applyAndConfirm(gw, body)).status).toBe("rejected");
    clock.advance(29 * 86_400_000);
    await gw.request("/v1/applications", json(body));
    const early = await confirmRequest(gw, confirmationToken(gw, "ada@acme.example"));
    expect(early.status).toBe(409);
    expect(await early.json()).toMatchObject({ code: "reapply_cooldown", reapplyAfter: "2026-03-31T00:00:00.000Z" });
    clock.advance(2 * 86_400_000);
    // Decided again after it; the country on record is the organization's, whatever is declared now.
    const later = await applyAndConfirm(gw, { ...body, organization: { name: "Northwind", country: "DE" } });
    expect(later.status).toBe("rejected");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, later.applicationId));
    expect(app?.policyReasons.map((r) => r.code).sort()).toEqual([
      "country_differs_from_record",
      "embargoed_country",
      "prior_rejection",
    ]);
  });

  it("leaves a confirmation link usable when the cool-down refuses it, so it works once the cool-down ends", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    const body = applicationBody({ organization: { name: "Northwind", country: "IR" } });
    expect((await applyAndConfirm(gw, body)).status).toBe("rejected");
    clock.advance(29 * 86_400_000 + 12 * 3_600_000);
    await gw.request("/v1/applications", json(body));
    const token = confirmationToken(gw, "ada@acme.example");
    const early = await confirmRequest(gw, token);
    expect(early.status).toBe(409);
    expect(early.headers.get("set-cookie")).toBeNull();
    clock.advance(13 * 3_600_000);
    const later = await confirmRequest(gw, token);
    expect(later.status, await later.clone().text()).toBe(200);
    expect(((await later.json()) as { status: string }).status).toBe("rejected");
    expect((await confirmRequest(gw, token)).status).toBe(401);
  });

  it("security: sends a case the licensor refused back to two approvers, whatever figure is declared for the same month after", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    const refused = await applyAndConfirm(gw, applicationBody({ declaredMau: 900_000_000 }));
    expect(refused.status).toBe("pending_review");
    await gw.db
      .update(applications)
      .set({ status: "rejected", reapplyAfter: "2026-03-31T00:00:00.000Z", decidedAt: "2026-03-01T00:00:00.000Z" })
      .where(eq(applications.id, refused.applicationId));
    clock.advance(31 * 86_400_000);
    const lower = await applyAndConfirm(gw, applicationBody({ declaredMau: 600_000_000 }));
    expect(lower.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, lower.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["prior_rejection"]);
    expect(app?.requiredApprovals).toBe(2);
    expect(await gw.db.select().from(grants).where(eq(grants.applicationId, lower.applicationId))).toEqual([]);
  });

  it("sends an organization whose grant was revoked to review when it applies again", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, applicationBody());
    await gw.db.update(grants).set({ status: "revoked" }).where(eq(grants.applicationId, first.applicationId));
    const again = await applyAndConfirm(gw, applicationBody());
    expect(again.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["prior_revocation"]);
  });
});

describe("security: confirming is the contact's acceptance of the license", () => {
  /** A third party's application naming someone else's address, from an address and browser of its own. */
  async function submittedByThirdParty(gw: ReturnType<typeof testGateway>) {
    const submitted = await gw.request(
      "/v1/applications",
      json(applicationBody({ contact: { name: "Victim", email: "cfo@victim.example" } }), {
        "cf-connecting-ip": "203.0.113.66",
        "user-agent": "third-party",
      }),
    );
    expect(submitted.status).toBe(201);
    return confirmationToken(gw, "cfo@victim.example");
  }

  it("shows the contact the organization, the family, the license version and its hashes, and the button accepts them", async () => {
    const gw = testGateway();
    const token = await submittedByThirdParty(gw);
    const [license] = await gw.db.select().from(licenseVersions);
    // The mail already says what confirming accepts, with the gateway's words and hashes only.
    const mail = gw.mailer.sent[0]?.text ?? "";
    expect(mail).toContain(`version ${license?.version} of the`);
    expect(mail).toContain(`(sha256 ${license?.licenseSha256})`);
    expect(mail).toContain(`(sha256 ${license?.aupSha256})`);
    expect(mailedTexts(gw, token)).toEqual({ licenseSha256: license?.licenseSha256, aupSha256: license?.aupSha256 });

    const page = await gw.request(`/applications/confirm?token=${encodeURIComponent(token)}`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("Acme Robotics GmbH, a new organization you will own");
    expect(html).toContain("Llama 2");
    expect(html).toContain(`version ${license?.version}`);
    expect(html).toContain(license?.licenseSha256);
    expect(html).toContain(license?.aupSha256);
    expect(html).toContain(`/v1/licenses/llama-2/versions/${license?.version}/text`);
    expect(html).toContain(`/v1/licenses/llama-2/versions/${license?.version}/aup`);
    expect(html).toContain("LLAMA 2 COMMUNITY LICENSE (test text)");
    expect(html).toMatch(/By pressing the button you accept version \d+ of the .+ on behalf of Acme Robotics GmbH/);
    expect(html).toContain(">Accept the license and confirm</button>");
    expect(Object.fromEntries(await confirmPageForm(gw, token))).toEqual({
      token,
      licenseSha256: license?.licenseSha256,
      aupSha256: license?.aupSha256,
    });
    // Reading the page uses nothing up; a used or unknown link's page says it no longer works.
    expect((await rowCounts(gw)).applications).toBe(0);
    expect((await confirmRequest(gw, token)).status).toBe(200);
    const used = await gw.request(`/applications/confirm?token=${encodeURIComponent(token)}`);
    expect(used.status).toBe(401);
    expect(await used.text()).not.toContain("<button");
  });

  it("names the organization the contact owns as the one accepting, beside the name the application gives", async () => {
    const gw = testGateway();
    await applyAndConfirm(gw, applicationBody());
    await gw.request("/v1/applications", json(applicationBody({ organization: { name: "Acme Inc", country: "DE" } })));
    const token = confirmationToken(gw, "ada@acme.example");
    const html = await (await gw.request(`/applications/confirm?token=${encodeURIComponent(token)}`)).text();
    expect(html).toContain("Acme Robotics GmbH, the organization you own (the application names “Acme Inc”)");
    expect(html).toMatch(/on behalf of Acme Robotics GmbH, and confirm/);
  });

  it("refuses a confirmation that states no acceptance, and leaves the link usable", async () => {
    const gw = testGateway();
    const token = await submittedByThirdParty(gw);
    const texts = mailedTexts(gw, token);
    const refusals = [
      await confirmRequest(gw, token, {}, {}),
      await confirmRequest(gw, token, {}, { licenseSha256: texts?.licenseSha256 }),
      await confirmRequest(gw, token, {}, { aupSha256: texts?.aupSha256 }),
    ];
    for (const res of refusals) {
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ code: "validation_failed" });
      expect(res.headers.get("set-cookie")).toBeNull();
    }
    // The page's form without the hashes: the page again, saying what to do, and no session.
    const bare = await gw.request("/applications/confirm", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: new URLSearchParams({ token }),
      redirect: "manual",
    });
    expect(bare.status).toBe(400);
    expect(bare.headers.get("set-cookie")).toBeNull();
    expect(await bare.text()).toContain(">Accept the license and confirm</button>");
    expect(await rowCounts(gw)).toMatchObject({ applications: 0, acceptances: 0, grants: 0, auditEvents: 0 });
    const confirmed = await confirmRequest(gw, token);
    expect(confirmed.status, await confirmed.clone().text()).toBe(200);
  });

  it("refuses the hashes of another license version, or of another policy, and leaves the link usable", async () => {
    const gw = testGateway();
    const token = await submittedByThirdParty(gw);
    const applied = mailedTexts(gw, token) as { licenseSha256: string; aupSha256: string };
    // A newer version loaded since: the application still names the one it was submitted under.
    const newer = await seedLicense("LLAMA 2 COMMUNITY LICENSE v2 (test text)", "ACCEPTABLE USE POLICY v2 (test text)");
    const others = [
      { licenseSha256: newer.licenseSha256, aupSha256: newer.aupSha256 },
      { licenseSha256: applied.licenseSha256, aupSha256: newer.aupSha256 },
      { licenseSha256: newer.licenseSha256, aupSha256: applied.aupSha256 },
    ];
    for (const accepted of others) {
      const res = await confirmRequest(gw, token, {}, accepted);
      expect(res.status).toBe(409);
      expect(await res.json()).toMatchObject({
        code: "stale_license",
        licenseSha256: applied.licenseSha256,
        aupSha256: applied.aupSha256,
      });
      expect(res.headers.get("set-cookie")).toBeNull();
    }
    // A page's form with a hash changed: the page again, naming the application's texts.
    const form = await confirmPageForm(gw, token);
    form.set("licenseSha256", newer.licenseSha256);
    const tampered = await gw.request("/applications/confirm", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: form,
      redirect: "manual",
    });
    expect(tampered.status).toBe(409);
    expect(tampered.headers.get("set-cookie")).toBeNull();
    expect(await tampered.text()).toContain(`value="${applied.licenseSha256}"`);
    expect(await rowCounts(gw)).toMatchObject({ applications: 0, acceptances: 0, grants: 0, auditEvents: 0 });

    const confirmed = await confirmRequest(gw, token, {}, applied);
    expect(confirmed.status, await confirmed.clone().text()).toBe(200);
    const [acceptance] = await gw.db.select().from(acceptances);
    expect(acceptance).toMatchObject(applied);
  });

  it("records the submission and the confirmation apart: each address, country, agent and time, and the proven user", async () => {
    const clock = fixedClock("2026-03-01T09:00:00Z");
    const gw = testGateway({ clock });
    const submitted = await gw.request("/v1/applications", {
      ...json(applicationBody({ contact: { name: "Victim", email: "cfo@victim.example" } }), {
        "cf-connecting-ip": "203.0.113.66",
        "user-agent": "third-party",
      }),
      cf: { country: "NL" },
    } as RequestInit);
    expect(submitted.status).toBe(201);
    const token = confirmationToken(gw, "cfo@victim.example");
    clock.advance(3 * 3_600_000);
    const confirmed = await gw.request("/v1/applications/confirm", {
      ...json(
        { token, ...mailedTexts(gw, token) },
        { "cf-connecting-ip": "198.51.100.9", "user-agent": "victim-browser" },
      ),
      cf: { country: "DE" },
    } as RequestInit);
    expect(confirmed.status, await confirmed.clone().text()).toBe(200);
    const { applicationId } = (await confirmed.json()) as { applicationId: string };
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
    const [acceptance] = await gw.db.select().from(acceptances).where(eq(acceptances.applicationId, applicationId));
    expect(app?.contactUserId).toMatch(/^usr_/);
    expect(acceptance).toMatchObject({
      acceptedAt: "2026-03-01T09:00:00.000Z",
      ip: "203.0.113.66",
      country: "NL",
      userAgent: "third-party",
      confirmedAt: "2026-03-01T12:00:00.000Z",
      confirmedIp: "198.51.100.9",
      confirmedCountry: "DE",
      confirmedUserAgent: "victim-browser",
      confirmedByUserId: app?.contactUserId,
    });
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "application.submitted"));
    expect(event?.actor).toBe("applicant:cfo@victim.example");
    expect(event?.data).toMatchObject({
      contactUserId: app?.contactUserId,
      submittedAt: "2026-03-01T09:00:00.000Z",
      submittedIp: "203.0.113.66",
      submittedCountry: "NL",
      confirmedAt: "2026-03-01T12:00:00.000Z",
      confirmedIp: "198.51.100.9",
      confirmedCountry: "DE",
    });
    // No unlabelled address that a reader could take for the acceptor's.
    expect(event?.data).not.toHaveProperty("ip");

    // The reviewer's case file shows both steps, and who the link proved.
    const file = await gw.request(`/admin/api/applications/${applicationId}`, {
      headers: accessHeaders(await adminToken({ role: "reviewer", issuedAt: clock.now() })),
    });
    expect(file.status).toBe(200);
    expect(((await file.json()) as { acceptances: unknown[] }).acceptances).toEqual([
      expect.objectContaining({
        ip: "203.0.113.66",
        userAgent: "third-party",
        confirmedIp: "198.51.100.9",
        confirmedUserAgent: "victim-browser",
        confirmedByUserId: app?.contactUserId,
        confirmedByEmail: "cfo@victim.example",
      }),
    ]);
  });

  it("security: a third party's application naming someone's address is decided on the acceptance of the person who proved it", async () => {
    const gw = testGateway();
    const token = await submittedByThirdParty(gw);
    // The owner of the address opens the mailed link, reads what it accepts, and presses the button.
    const confirmed = await gw.request("/applications/confirm", {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        accept: "text/html",
        "cf-connecting-ip": "198.51.100.9",
        "user-agent": "victim-browser",
      },
      body: await confirmPageForm(gw, token),
      redirect: "manual",
    });
    expect(confirmed.status).toBe(303);
    const [app] = await gw.db.select().from(applications);
    const [acceptance] = await gw.db.select().from(acceptances);
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "application.submitted"));
    expect(app?.contactEmail).toBe("cfo@victim.example");
    expect(acceptance).toMatchObject({
      confirmedIp: "198.51.100.9",
      confirmedUserAgent: "victim-browser",
      confirmedByUserId: app?.contactUserId,
      ip: "203.0.113.66",
      userAgent: "third-party",
    });
    expect(event?.data).toMatchObject({ confirmedIp: "198.51.100.9", submittedIp: "203.0.113.66" });
  });

  it("security: a thousand concurrent confirmations of one link write one application, one acceptance and one grant", async () => {
    const gw = testGateway();
    const token = await submittedByThirdParty(gw);
    const texts = mailedTexts(gw, token);
    // Each from an address of its own, so that the abuse brake is not what holds them back.
    const responses = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        confirmRequest(gw, token, { "cf-connecting-ip": `10.77.${Math.floor(i / 250)}.${(i % 250) + 1}` }, texts),
      ),
    );
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s === 401)).toHaveLength(999);
    expect(responses.filter((r) => r.headers.get("set-cookie") !== null)).toHaveLength(1);
    expect(await rowCounts(gw)).toMatchObject({ applications: 1, organizations: 1, acceptances: 1, grants: 1 });
    const [acceptance] = await gw.db.select().from(acceptances);
    const winner = statuses.indexOf(200);
    expect(acceptance?.confirmedIp).toBe(`10.77.${Math.floor(winner / 250)}.${(winner % 250) + 1}`);
    const events = await gw.db.select({ action: auditEvents.action }).from(auditEvents);
    expect(events.filter((e) => e.action === "application.submitted")).toHaveLength(1);
    expect(events.filter((e) => e.action === "grant.issued")).toHaveLength(1);
  }, 120_000);
});

describe("the status capability", () => {
  async function submitted(gw: ReturnType<typeof testGateway>, overrides: Record<string, unknown> = {}) {
    const confirmed = await applyAndConfirm(gw, applicationBody(overrides));
    return { id: confirmed.applicationId, token: confirmed.capability };
  }

  it("opens the case by Bearer header or query and says what happens next", async () => {
    const gw = testGateway();
    const { id, token } = await submitted(gw, { declaredMau: 800_000_000 });
    const byHeader = await gw.request(`/v1/applications/${id}`, { headers: { authorization: `Bearer ${token}` } });
    expect(byHeader.status).toBe(200);
    expect(byHeader.headers.get("cache-control")).toBe("no-store");
    const view = (await byHeader.json()) as Record<string, unknown>;
    expect(view).toMatchObject({ id, status: "pending_review", grant: null, message: null });
    expect(view.next).toMatch(/two approvers/);
    const byQuery = await gw.request(`/v1/applications/${id}?token=${encodeURIComponent(token)}`);
    expect(byQuery.status).toBe(200);
  });

  it("answers 404 alike for no secret, a wrong secret and another case's secret", async () => {
    const gw = testGateway();
    const a = await submitted(gw);
    const b = await submitted(gw, {
      organization: { name: "Other Co", country: "DE" },
      contact: { name: "B", email: "b@other.example" },
    });
    for (const [id, token] of [
      [a.id, undefined],
      [a.id, "mgs_wrong"],
      [a.id, b.token],
      ["app_unknown", a.token],
    ] as const) {
      const res = await gw.request(
        `/v1/applications/${id}`,
        token ? { headers: { authorization: `Bearer ${token}` } } : {},
      );
      expect(res.status).toBe(404);
      expect(await res.json()).toMatchObject({ code: "not_found" });
    }
  });

  it("expires 30 days after it was issued", async () => {
    const clock = fixedClock("2026-03-01T00:00:00Z");
    const gw = testGateway({ clock });
    const { id, token } = await submitted(gw, { declaredMau: 800_000_000 });
    clock.advance(29 * 86_400_000);
    expect((await gw.request(`/v1/applications/${id}?token=${token}`)).status).toBe(200);
    clock.advance(2 * 86_400_000);
    expect((await gw.request(`/v1/applications/${id}?token=${token}`)).status).toBe(404);
  });

  it("takes the applicant's answer to a request for information and starts a new review round", async () => {
    const gw = testGateway();
    const { id, token } = await submitted(gw, { declaredMau: 800_000_000 });
    const auth = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    const tooEarly = await gw.request(`/v1/applications/${id}/response`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ message: "hi" }),
    });
    expect(tooEarly.status).toBe(409);
    await gw.db
      .update(applications)
      .set({ status: "info_requested", applicantMessage: "Which affiliates?" })
      .where(eq(applications.id, id));
    const res = await gw.request(`/v1/applications/${id}/response`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ message: "No affiliates; 800M is the group total." }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "pending_review" });
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, id));
    expect(app).toMatchObject({ reviewRound: 2, applicantResponse: "No affiliates; 800M is the group total." });
  });
});

describe("a status link's holder", () => {
  type Gateway = ReturnType<typeof testGateway>;

  /** Ada's case, in review, and its organization's second owner, Grace, with a link of her own. */
  async function twoOwners(gw: Gateway) {
    const ada = await applyAndConfirm(gw, applicationBody({ declaredMau: 800_000_000 }));
    const id = ada.applicationId;
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, id));
    if (!app?.contactUserId) throw new Error("the case has no contact user");
    const [adaMembership] = await gw.db
      .select()
      .from(memberships)
      .where(and(eq(memberships.organizationId, app.organizationId), eq(memberships.userId, app.contactUserId)));
    if (!adaMembership) throw new Error("Ada owns no organization");
    const grace = await signedInMember(gw, { organizationId: app.organizationId, email: "grace@acme.example" });
    const graces = await applyAndConfirm(
      gw,
      applicationBody({ contact: { name: "Grace Hopper", email: "grace@acme.example" } }),
    );
    expect(graces).toMatchObject({ applicationId: id, duplicate: true });
    return { id, app, adaLink: ada.capability, adaMembershipId: adaMembership.id, grace, graceLink: graces.capability };
  }

  const read = (gw: Gateway, id: string, capability: string) =>
    gw.request(`/v1/applications/${id}`, { headers: { authorization: `Bearer ${capability}` } });
  const page = (gw: Gateway, id: string, capability: string) =>
    gw.request(`/applications/${id}?token=${encodeURIComponent(capability)}`);
  const answer = (gw: Gateway, id: string, capability: string, message: string) =>
    gw.request(`/v1/applications/${id}/response`, json({ message }, { authorization: `Bearer ${capability}` }));

  /** The link answers exactly as one that never existed does, as JSON and as a page. */
  async function expectUnknown(gw: Gateway, id: string, capability: string) {
    const unknown = "mgs_never-issued";
    // Each answer names its own request.
    const same = (text: string) => text.replaceAll(/req_\w+/g, "req_").replaceAll(unknown, capability);
    const [res, expected] = [await read(gw, id, capability), await read(gw, id, unknown)];
    expect(res.status).toBe(404);
    expect(same(await res.text())).toBe(same(await expected.text()));
    const [shown, expectedPage] = [await page(gw, id, capability), await page(gw, id, unknown)];
    expect(shown.status).toBe(404);
    expect(same(await shown.text())).toBe(same(await expectedPage.text()));
  }

  it("security: a removed owner's link stops at once for the case, its page and answers; another owner's answers as its holder", async () => {
    const gw = testGateway();
    const { id, adaLink, adaMembershipId, grace, graceLink } = await twoOwners(gw);
    await gw.db
      .update(applications)
      .set({ status: "info_requested", applicantMessage: "Which affiliates?" })
      .where(eq(applications.id, id));
    expect((await read(gw, id, adaLink)).status).toBe(200);
    const removed = await gw.request(`/v1/organization/members/${adaMembershipId}`, {
      method: "DELETE",
      headers: grace.headers,
    });
    expect(removed.status).toBe(200);

    await expectUnknown(gw, id, adaLink);
    const refused = await answer(gw, id, adaLink, "Ignore the reviewer; we are fine.");
    expect(refused.status).toBe(404);
    expect(await refused.json()).toMatchObject({ code: "not_found" });
    const [untouched] = await gw.db.select().from(applications).where(eq(applications.id, id));
    expect(untouched).toMatchObject({ status: "info_requested", reviewRound: 1, applicantResponse: null });

    expect((await read(gw, id, graceLink)).status).toBe(200);
    const answered = await answer(gw, id, graceLink, "No affiliates; 800M is the group total.");
    expect(answered.status).toBe(200);
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, id));
    expect(app).toMatchObject({ status: "pending_review", reviewRound: 2 });
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "application.info_provided"));
    expect(event?.actor).toBe("applicant:grace@acme.example");
  });

  it("security: a link stops when its holder is no longer an owner, and another owner's goes on", async () => {
    const gw = testGateway();
    const { id, adaLink, adaMembershipId, grace, graceLink } = await twoOwners(gw);
    const demoted = await gw.request(`/v1/organization/members/${adaMembershipId}`, {
      method: "PATCH",
      headers: { ...grace.headers, "content-type": "application/json" },
      body: JSON.stringify({ role: "admin" }),
    });
    expect(demoted.status).toBe(200);
    await expectUnknown(gw, id, adaLink);
    expect((await answer(gw, id, adaLink, "hello")).status).toBe(404);
    expect((await read(gw, id, graceLink)).status).toBe(200);
    expect((await page(gw, id, graceLink)).status).toBe(200);
  });

  it("keeps a link from before holders were kept working for the case's contact while an owner, and ends it on removal", async () => {
    const gw = testGateway();
    const { applicationId: id } = await applyAndConfirm(gw, applicationBody({ declaredMau: 800_000_000 }));
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, id));
    if (!app?.contactUserId) throw new Error("the case has no contact user");
    const old = "mgs_from-before-holders-were-kept";
    const at = gw.services().clock.now().toISOString();
    await gw.db.insert(statusLinks).values({ secretHash: await sha256Hex(old), applicationId: id, createdAt: at });
    expect((await read(gw, id, old)).status).toBe(200);
    expect((await page(gw, id, old)).status).toBe(200);

    const grace = await signedInMember(gw, { organizationId: app.organizationId, email: "grace@acme.example" });
    const [ada] = await gw.db
      .select()
      .from(memberships)
      .where(and(eq(memberships.organizationId, app.organizationId), eq(memberships.userId, app.contactUserId)));
    const removed = await gw.request(`/v1/organization/members/${ada?.id}`, {
      method: "DELETE",
      headers: grace.headers,
    });
    expect(removed.status).toBe(200);
    await expectUnknown(gw, id, old);
  });

  it("lets another owner's new link leave a link from before holders were kept, and the contact's own replace it", async () => {
    const gw = testGateway();
    const { id, app } = await twoOwners(gw);
    const old = "mgs_from-before-holders-were-kept";
    const at = gw.services().clock.now().toISOString();
    await gw.db.insert(statusLinks).values({ secretHash: await sha256Hex(old), applicationId: id, createdAt: at });
    await applyAndConfirm(gw, applicationBody({ contact: { name: "Grace Hopper", email: "grace@acme.example" } }));
    expect((await read(gw, id, old)).status).toBe(200);
    const again = await applyAndConfirm(gw, applicationBody({ contact: { name: "Ada", email: app.contactEmail } }));
    expect((await read(gw, id, old)).status).toBe(404);
    expect((await read(gw, id, again.capability)).status).toBe(200);
  });
});

describe("the HTML form", () => {
  it("shows the license, the AUP and what MAU to count", async () => {
    const gw = testGateway();
    const res = await gw.request("/apply/llama-2");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/html");
    const html = await res.text();
    expect(html).toContain("LLAMA 2 COMMUNITY LICENSE (test text)");
    expect(html).toContain("ACCEPTABLE USE POLICY (test text)");
    expect(html).toContain(`value="${licenseSha256}"`);
    expect(html).toContain("June 2023");
    expect(html).toContain("affiliates");
  });

  it("posts form-encoded, redirects to the status page, and that page shows the case", async () => {
    const gw = testGateway();
    const form = new URLSearchParams({
      family: "llama-2",
      licenseSha256,
      "organization.name": "Globex",
      "organization.website": "",
      "organization.country": "us",
      "contact.name": "Hank",
      "contact.email": "hank@globex.example",
      intendedUse: "Internal code review assistant.",
      declaredMau: "1,200,000,000",
      acceptLicense: "true",
      acceptAup: "true",
    });
    form.append("models", "llama-2-70b-chat");
    form.append("models", "llama-2-70b");
    const res = await gw.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: form,
      redirect: "manual",
    });
    expect(res.status).toBe(201);
    expect(await res.text()).toContain("Check your e-mail");
    const token = confirmationToken(gw, "hank@globex.example");
    // The link's page posts the token with the hashes of the texts it shows, which its button accepts.
    const confirmed = await gw.request("/applications/confirm", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: await confirmPageForm(gw, token),
      redirect: "manual",
    });
    expect(confirmed.status).toBe(303);
    expect(confirmed.headers.get("set-cookie")).toMatch(
      /__Host-mg_session=mgsess_.*HttpOnly.*Secure|__Host-mg_session=mgsess_.*Secure.*HttpOnly/,
    );
    const location = confirmed.headers.get("location") as string;
    expect(location).toMatch(/^\/applications\/app_\w+\?token=mgs_/);
    const [app] = await gw.db.select().from(applications);
    expect(app).toMatchObject({
      declaredMau: 1_200_000_000,
      country: "US",
      models: ["llama-2-70b-chat", "llama-2-70b"],
    });
    const page = await gw.request(location);
    expect(page.status).toBe(200);
    expect(page.headers.get("referrer-policy")).toBe("no-referrer");
    const html = await page.text();
    expect(html).toContain("Pending review");
    expect(html).toContain("Globex");
  });

  it("shows the form again with the errors and the input kept, writing nothing", async () => {
    const gw = testGateway();
    const form = new URLSearchParams({
      family: "llama-2",
      licenseSha256,
      "organization.name": "Initech <b>",
      "organization.country": "DE",
      "contact.name": "Peter",
      "contact.email": "not-an-email",
      intendedUse: "TPS report summarisation.",
      declaredMau: "12",
      acceptLicense: "true",
    });
    const res = await gw.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", accept: "text/html" },
      body: form,
    });
    expect(res.status).toBe(400);
    const html = await res.text();
    expect(html).toContain('value="Initech &lt;b&gt;"');
    expect(html).toContain("TPS report summarisation.");
    expect(html).toContain("Must be an e-mail address.");
    expect(html).toContain("You must accept the Acceptable Use Policy.");
    expect(await rowCounts(gw)).toEqual(EMPTY);
  });

  it("answers the same form post from an API client with problem+json", async () => {
    const gw = testGateway();
    const res = await gw.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ family: "llama-2" }),
    });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
  });
});

describe("abuse brake", () => {
  it("slows one address down without affecting others", async () => {
    const gw = testGateway();
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      statuses.push((await gw.request("/apply/llama-2", { headers: { "cf-connecting-ip": "198.51.100.7" } })).status);
    }
    expect(statuses).toContain(429);
    const limited = await gw.request("/apply/llama-2", { headers: { "cf-connecting-ip": "198.51.100.7" } });
    expect(limited.headers.get("retry-after")).toBe("60");
    expect(await limited.json()).toMatchObject({ code: "rate_limited" });
    expect((await gw.request("/apply/llama-2", { headers: { "cf-connecting-ip": "198.51.100.8" } })).status).toBe(200);
  });
});

describe("env", () => {
  it("has the bindings the gateway needs", () => {
    expect(env.DB).toBeDefined();
    expect(env.PUBLIC_LIMITER).toBeDefined();
  });
});

describe("OpenAPI", () => {
  it("documents the application body for JSON and form posts", async () => {
    const doc = (await (await testGateway().request("/openapi.json")).json()) as {
      components: { schemas: Record<string, { properties?: Record<string, unknown> }> };
      paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>>;
    };
    expect(Object.keys(doc.components.schemas.ApplicationInput?.properties ?? {})).toContain("declaredMau");
    expect(Object.keys(doc.paths["/v1/applications"]?.post?.requestBody?.content ?? {}).sort()).toEqual([
      "application/json",
      "application/x-www-form-urlencoded",
    ]);
  });
});
