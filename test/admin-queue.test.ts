import { exports } from "cloudflare:workers";
import { beforeEach, describe, expect, it } from "vitest";
import { acceptances } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedApplication, seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

/** Tokens outlive the hours and days these tests move the clock by. */
const WEEK = 7 * 86_400;

interface QueuePage {
  items: { id: string; organization: string; approvals: { reviewer: string }[]; ageSeconds: number }[];
  nextCursor: string | null;
}

describe("GET /admin/api/applications", () => {
  let gateway: Gateway;
  let license: LicenseVersion;
  let token: string;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
    token = await adminToken({ role: "reviewer", ttlSeconds: WEEK });
  });

  async function list(query = ""): Promise<QueuePage> {
    const res = await gateway.request(`/admin/api/applications${query}`, { headers: accessHeaders(token) });
    expect(res.status).toBe(200);
    return (await res.json()) as QueuePage;
  }

  it("lists oldest first with age, and pages through with an opaque cursor", async () => {
    const ids: string[] = [];
    for (const name of ["First", "Second", "Third", "Fourth", "Fifth"]) {
      ids.push((await seedApplication(gateway.services, license, { organizationName: `${name} GmbH` })).id);
      gateway.clock.advance(3_600_000);
    }
    const whole = await list();
    expect(whole.items.map((i) => i.id)).toEqual(ids);
    expect(whole.items[0]?.ageSeconds).toBe(5 * 3600);

    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page: QueuePage = await list(`?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      seen.push(...page.items.map((i) => i.id));
      cursor = page.nextCursor;
      pages++;
    } while (cursor);
    expect(seen).toEqual(ids);
    expect(pages).toBe(3);
  });

  it("keeps order and completeness for cases created in the same instant", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) ids.push((await seedApplication(gateway.services, license)).id);
    const first = await list("?limit=2");
    const second = await list(`?limit=2&cursor=${first.nextCursor}`);
    expect([...first.items, ...second.items].map((i) => i.id)).toEqual([...ids].sort());
    expect(second.nextCursor).toBeNull();
  });

  it("filters by status and searches organization name or contact e-mail", async () => {
    await seedApplication(gateway.services, license, { organizationName: "Umbrella Corp" });
    await seedApplication(gateway.services, license, { organizationName: "Wayne 100% Enterprises" });
    await seedApplication(gateway.services, license, {
      organizationName: "Stark Industries",
      contactEmail: "pepper@stark.example",
      status: "info_requested",
    });
    expect((await list("?q=umbrella")).items.map((i) => i.organization)).toEqual(["Umbrella Corp"]);
    expect((await list("?q=STARK.EXAMPLE")).items.map((i) => i.organization)).toEqual(["Stark Industries"]);
    expect((await list("?q=100%25")).items.map((i) => i.organization)).toEqual(["Wayne 100% Enterprises"]);
    // A wildcard in the search box is a literal character, not "anything".
    expect((await list("?q=%25")).items.map((i) => i.organization)).toEqual(["Wayne 100% Enterprises"]);
    expect((await list("?status=info_requested")).items.map((i) => i.organization)).toEqual(["Stark Industries"]);
    expect((await list("?status=pending_review&q=stark")).items).toEqual([]);
  });

  it("shows who approved in the current round", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const approver = await adminToken({ email: "ann@example.com", role: "approver", ttlSeconds: WEEK });
    await gateway.request(`/admin/api/applications/${application.id}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "ok", visibleToApplicant: false }),
    });
    const [item] = (await list()).items;
    expect(item).toMatchObject({
      id: application.id,
      declaredMau: 900_000_000,
      requiredApprovals: 2,
      policyReasons: [{ code: "mau_over_threshold", outcome: "review" }],
      approvals: [{ reviewer: "ann@example.com" }],
    });
  });

  it("rejects a cursor it did not hand out", async () => {
    const res = await gateway.request("/admin/api/applications?cursor=bm90LWEtY3Vyc29y", {
      headers: accessHeaders(token),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "validation_failed", errors: [{ field: "cursor" }] });
  });

  it("rejects an unknown status", async () => {
    const res = await gateway.request("/admin/api/applications?status=lost", { headers: accessHeaders(token) });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "validation_failed" });
  });
});

describe("GET /admin/api/applications/{id}", () => {
  it("shows the whole case: submission, evidence, decisions, grant, earlier cases and audit trail", async () => {
    const gateway = testGateway();
    const license = await seedLicense(gateway.services);
    const { db } = gateway.services;
    const earlier = await seedApplication(gateway.services, license, {
      organizationName: "Hooli",
      status: "rejected",
      decidedAt: gateway.clock.now().toISOString(),
    });
    gateway.clock.advance(86_400_000);
    const application = await seedApplication(gateway.services, license, {
      organizationId: earlier.organizationId,
      organizationName: "Hooli",
      contactEmail: "gavin@hooli.example",
    });
    await db.insert(acceptances).values({
      id: "acc_1",
      applicationId: application.id,
      licenseVersionId: license.id,
      licenseSha256: license.licenseSha256,
      aupSha256: license.aupSha256,
      acceptedAt: application.createdAt,
      ip: "203.0.113.7",
      country: "US",
      userAgent: "Mozilla/5.0",
    });
    const approver = await adminToken({ email: "ann@example.com", role: "approver", ttlSeconds: WEEK });
    const decided = await gateway.request(`/admin/api/applications/${application.id}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "Clean case.", visibleToApplicant: false }),
    });
    const { grantId } = (await decided.json()) as { grantId: string };

    const res = await gateway.request(`/admin/api/applications/${application.id}`, {
      headers: accessHeaders(await adminToken({ role: "reviewer", ttlSeconds: WEEK })),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown> & { auditEvents: { action: string }[] };
    expect(body).toMatchObject({
      application: {
        id: application.id,
        organizationName: "Hooli",
        contactEmail: "gavin@hooli.example",
        intendedUse: application.intendedUse,
        models: ["llama-2-7b-chat"],
        status: "approved",
      },
      acceptances: [
        { id: "acc_1", licenseSha256: license.licenseSha256, aupSha256: license.aupSha256, ip: "203.0.113.7" },
      ],
      decisions: [{ decision: "approve", reviewerEmail: "ann@example.com", reason: "Clean case.", reviewRound: 1 }],
      grant: { id: grantId, status: "active" },
      earlierCases: [{ id: earlier.id, status: "rejected" }],
    });
    expect(body.auditEvents.map((e) => e.action)).toEqual(["application.decided", "grant.issued"]);
  });

  it("answers 404 for an unknown case", async () => {
    const gateway = testGateway();
    const res = await gateway.request("/admin/api/applications/app_missing", {
      headers: accessHeaders(await adminToken({ role: "reviewer" })),
    });
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ code: "not_found" });
  });
});

describe("the admin API in the OpenAPI document", () => {
  it("describes every admin route and its request bodies", async () => {
    const res = await exports.default.fetch("http://gw.test/openapi.json");
    expect(res.status).toBe(200);
    const doc = (await res.json()) as {
      paths: Record<string, Record<string, { requestBody?: unknown }>>;
      components: { schemas: Record<string, unknown> };
    };
    for (const path of [
      "/admin/api/me",
      "/admin/api/applications",
      "/admin/api/applications/{id}",
      "/admin/api/applications/{id}/decision",
      "/admin/api/grants",
      "/admin/api/grants/{id}/suspend",
      "/admin/api/grants/{id}/reinstate",
      "/admin/api/grants/{id}/revoke",
      "/admin/api/audit",
      "/admin/api/audit/verify",
    ]) {
      expect(doc.paths[path], path).toBeDefined();
    }
    expect(doc.paths["/admin/api/applications/{id}/decision"]?.post?.requestBody).toMatchObject({
      content: { "application/json": { schema: { $ref: "#/components/schemas/DecisionRequest" } } },
    });
    expect(doc.components.schemas).toHaveProperty("DecisionRequest");
    expect(doc.components.schemas).toHaveProperty("GrantChangeRequest");
  });
});
