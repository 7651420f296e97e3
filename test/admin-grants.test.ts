import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import type { AdminRole } from "../worker/config";
import { applications, auditEvents, type Grant, grants, mailOutbox, webhookEvents } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedApplication, seedGrant, seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

describe("grant suspension, reinstatement and revocation", () => {
  let gateway: Gateway;
  let license: LicenseVersion;
  let grant: Grant;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
    ({ grant } = await seedGrant(gateway.services, license, { organizationName: "Initech" }));
  });

  async function act(action: string, role: AdminRole, reason = "Usage outside the AUP was reported.") {
    const token = await adminToken({ email: `${role}@example.com`, role });
    return gateway.request(`/admin/api/grants/${grant.id}/${action}`, {
      method: "POST",
      headers: accessHeaders(token),
      body: JSON.stringify({ reason }),
    });
  }

  async function storedGrant() {
    const [row] = await gateway.services.db.select().from(grants).where(eq(grants.id, grant.id));
    return row;
  }

  it("suspends, reinstates and revokes, each audited and mailed to the contact", async () => {
    const suspended = await act("suspend", "approver", "Abuse report #41.");
    expect(suspended.status).toBe(200);
    expect(await suspended.json()).toEqual({ id: grant.id, status: "suspended", previousStatus: "active" });
    expect(await storedGrant()).toMatchObject({ status: "suspended", statusReason: "Abuse report #41." });

    const reinstated = await act("reinstate", "approver", "Report was unfounded.");
    expect(await reinstated.json()).toMatchObject({ status: "active", previousStatus: "suspended" });

    const revoked = await act("revoke", "admin", "Licensor terminated the agreement.");
    expect(await revoked.json()).toMatchObject({ status: "revoked", previousStatus: "active" });
    expect(await storedGrant()).toMatchObject({
      status: "revoked",
      statusReason: "Licensor terminated the agreement.",
    });

    const events = await gateway.services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(events.map((e) => [e.action, e.subjectId, e.actor, e.data.reason])).toEqual([
      ["grant.suspended", grant.id, "reviewer:approver@example.com", "Abuse report #41."],
      ["grant.reinstated", grant.id, "reviewer:approver@example.com", "Report was unfounded."],
      ["grant.revoked", grant.id, "reviewer:admin@example.com", "Licensor terminated the agreement."],
    ]);
    expect(gateway.mailer.sent.map((m) => [m.to, m.subject])).toEqual([
      ["ada@acme.example", "Llama 2 access suspended"],
      ["ada@acme.example", "Llama 2 access reinstated"],
      ["ada@acme.example", "Llama 2 access revoked"],
    ]);
    expect(gateway.mailer.sent[2]?.text).toContain("delete the materials");
  });

  it("treats revocation as final", async () => {
    expect((await act("revoke", "admin")).status).toBe(200);
    for (const [action, role] of [
      ["reinstate", "admin"],
      ["suspend", "admin"],
      ["revoke", "admin"],
    ] as const) {
      const res = await act(action, role);
      expect(res.status).toBe(409);
      expect(await res.json()).toMatchObject({ code: "invalid_state" });
    }
    expect(await storedGrant()).toMatchObject({ status: "revoked" });
    expect(await gateway.services.db.select().from(auditEvents)).toHaveLength(1);
    expect(await gateway.services.db.select().from(mailOutbox)).toHaveLength(1);
  });

  it("security: revocation closes the organization's open cases of the family, each audited; suspension closes none", async () => {
    const { services } = gateway;
    const inReview = await seedApplication(services, license, {
      organizationId: grant.organizationId,
      contactEmail: "bo@acme.example",
    });
    const askedForInfo = await seedApplication(services, license, {
      organizationId: grant.organizationId,
      contactEmail: "cy@acme.example",
      status: "info_requested",
    });
    const otherFamily = await seedApplication(services, license, {
      organizationId: grant.organizationId,
      family: "llama-3",
    });
    const otherOrganization = await seedApplication(services, license);
    const statusOf = async (id: string) =>
      (await services.db.select().from(applications).where(eq(applications.id, id)))[0]?.status;

    expect((await act("suspend", "approver")).status).toBe(200);
    expect(await statusOf(inReview.id)).toBe("pending_review");

    expect((await act("revoke", "admin", "Licensor terminated the agreement.")).status).toBe(200);
    expect(await statusOf(inReview.id)).toBe("rejected");
    expect(await statusOf(askedForInfo.id)).toBe("rejected");
    expect(await statusOf(otherFamily.id)).toBe("pending_review");
    expect(await statusOf(otherOrganization.id)).toBe("pending_review");
    const events = await services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(events.map((e) => [e.action, e.subjectId])).toEqual([
      ["grant.suspended", grant.id],
      ["grant.revoked", grant.id],
      ["application.closed", inReview.id],
      ["application.closed", askedForInfo.id],
    ]);
    expect(events[3]?.data).toMatchObject({ reason: "grant_revoked", grantId: grant.id, from: "info_requested" });
    const changes = await services.db
      .select()
      .from(webhookEvents)
      .where(eq(webhookEvents.type, "application.status_changed"));
    expect(changes.map((e) => e.data).sort((a, b) => String(a.from).localeCompare(String(b.from)))).toEqual([
      expect.objectContaining({ applicationId: askedForInfo.id, from: "info_requested", to: "rejected" }),
      expect.objectContaining({ applicationId: inReview.id, from: "pending_review", to: "rejected" }),
    ]);
  });

  it("security: refuses a party to the case, who may not decide it, changing its grant", async () => {
    await gateway.services.db.update(grants).set({ status: "suspended" }).where(eq(grants.id, grant.id));
    for (const [action, reviewer, role] of [
      ["reinstate", "ada@acme.example", "approver"],
      ["reinstate", "carl@acme.example", "approver"],
      ["revoke", "ada+ops@acme.example", "admin"],
    ] as const) {
      const token = await adminToken({ email: reviewer, role });
      const res = await gateway.request(`/admin/api/grants/${grant.id}/${action}`, {
        method: "POST",
        headers: accessHeaders(token),
        body: JSON.stringify({ reason: "Looks fine to me." }),
      });
      expect(res.status, `${action} by ${reviewer}`).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest" });
    }
    expect(await storedGrant()).toMatchObject({ status: "suspended" });
    expect(await gateway.services.db.select().from(mailOutbox)).toEqual([]);
    const refused = await gateway.services.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "grant.change_refused"));
    expect(refused.map((e) => [e.actor, e.data.action])).toEqual([
      ["reviewer:ada@acme.example", "reinstate"],
      ["reviewer:carl@acme.example", "reinstate"],
      ["reviewer:ada+ops@acme.example", "revoke"],
    ]);
    // An approver from outside reinstates it.
    expect((await act("reinstate", "approver")).status).toBe(200);
  });

  it("cannot reinstate a grant that is not suspended", async () => {
    const res = await act("reinstate", "approver");
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ code: "invalid_state" });
  });

  it("needs an approver to suspend and an admin to revoke", async () => {
    const cases: [string, AdminRole][] = [
      ["suspend", "reviewer"],
      ["reinstate", "reviewer"],
      ["revoke", "reviewer"],
      ["revoke", "approver"],
    ];
    for (const [action, role] of cases) {
      const res = await act(action, role);
      expect(res.status, `${role} ${action}`).toBe(403);
      expect(await res.json()).toMatchObject({ code: "forbidden" });
    }
    expect(await storedGrant()).toMatchObject({ status: "active", statusReason: null });
    expect(await gateway.services.db.select().from(auditEvents)).toEqual([]);
    expect(await gateway.services.db.select().from(mailOutbox)).toEqual([]);
  });

  it("requires a reason", async () => {
    const res = await act("suspend", "approver", "");
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "validation_failed", errors: [{ field: "reason" }] });
    expect(await storedGrant()).toMatchObject({ status: "active" });
  });

  it("answers 404 for an unknown grant", async () => {
    const token = await adminToken({ role: "admin" });
    const res = await gateway.request("/admin/api/grants/grt_missing/revoke", {
      method: "POST",
      headers: accessHeaders(token),
      body: JSON.stringify({ reason: "x" }),
    });
    expect(res.status).toBe(404);
  });

  it("refuses a cross-site revocation", async () => {
    const token = await adminToken({ role: "admin" });
    const res = await gateway.request(`/admin/api/grants/${grant.id}/revoke`, {
      method: "POST",
      headers: accessHeaders(token, { "sec-fetch-site": "cross-site" }),
      body: JSON.stringify({ reason: "forged" }),
    });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "cross_site_request" });
    expect(await storedGrant()).toMatchObject({ status: "active" });
  });
});

describe("GET /admin/api/grants", () => {
  it("lists newest first, filters by status and organization, and pages with a cursor", async () => {
    const gateway = testGateway();
    const license = await seedLicense(gateway.services);
    const seeded: Grant[] = [];
    for (const [name, status] of [
      ["Initech", "active"],
      ["Globex", "suspended"],
      ["Initrode", "active"],
    ] as const) {
      seeded.push((await seedGrant(gateway.services, license, { organizationName: name, grantStatus: status })).grant);
      gateway.clock.advance(1000);
    }
    const token = await adminToken({ role: "reviewer" });
    const list = async (query: string) => {
      const res = await gateway.request(`/admin/api/grants${query}`, { headers: accessHeaders(token) });
      expect(res.status).toBe(200);
      return (await res.json()) as { items: { id: string; organizationName: string }[]; nextCursor: string | null };
    };

    const all = await list("");
    expect(all.items.map((g) => g.organizationName)).toEqual(["Initrode", "Globex", "Initech"]);
    expect(all.nextCursor).toBeNull();

    expect((await list("?status=suspended")).items.map((g) => g.organizationName)).toEqual(["Globex"]);
    expect((await list("?organization=init")).items.map((g) => g.organizationName)).toEqual(["Initrode", "Initech"]);
    const byId = await list(`?organization=${seeded[1]?.organizationId}`);
    expect(byId.items.map((g) => g.id)).toEqual([seeded[1]?.id]);

    const first = await list("?limit=2");
    expect(first.items.map((g) => g.organizationName)).toEqual(["Initrode", "Globex"]);
    expect(first.nextCursor).toEqual(expect.any(String));
    const second = await list(`?limit=2&cursor=${first.nextCursor}`);
    expect(second.items.map((g) => g.organizationName)).toEqual(["Initech"]);
    expect(second.nextCursor).toBeNull();
  });

  it("is closed to callers without a role", async () => {
    const gateway = testGateway();
    const res = await gateway.request("/admin/api/grants", {
      headers: accessHeaders(await adminToken({ role: null })),
    });
    expect(res.status).toBe(403);
  });
});
