import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { decideApplication } from "../worker/admin/decisions";
import { applyDecision } from "../worker/applications/review";
import { verifyAuditChain } from "../worker/audit/log";
import {
  type Application,
  applications,
  auditEvents,
  decisions,
  grants,
  invitations,
  mailOutbox,
  organizationDomains,
  reviewComments,
} from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken, TOKEN_NOW } from "./helpers/access";
import { heldWrites } from "./helpers/bindings";
import { seedApplication, seedLicense, testGateway } from "./helpers/fixtures";
import { joinByInvitation, signedInMember } from "./helpers/members";

type Gateway = ReturnType<typeof testGateway>;

const ANN = "ann@example.com";
const BOB = "bob@example.com";

async function decide(
  gateway: Gateway,
  applicationId: string,
  reviewer: string,
  body: { decision: string; reason?: string; visibleToApplicant?: boolean },
) {
  const token = await adminToken({ email: reviewer, role: "approver" });
  return gateway.request(`/admin/api/applications/${applicationId}/decision`, {
    method: "POST",
    headers: accessHeaders(token),
    body: JSON.stringify({ reason: "Checked against the license.", visibleToApplicant: false, ...body }),
  });
}

async function stored(gateway: Gateway, id: string): Promise<Application> {
  const [row] = await gateway.services.db.select().from(applications).where(eq(applications.id, id));
  if (!row) throw new Error(`application ${id} not stored`);
  return row;
}

describe("POST /admin/api/applications/{id}/decision", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  it("needs two distinct approvers for an over-threshold case, then issues one grant", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const { db } = gateway.services;

    const first = await decide(gateway, application.id, ANN, { decision: "approve" });
    expect(first.status).toBe(200);
    expect(await first.json()).toEqual({
      applicationId: application.id,
      status: "pending_review",
      previousStatus: "pending_review",
      approvals: 1,
      requiredApprovals: 2,
      grantId: null,
    });
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review", decidedAt: null });
    expect(await db.select().from(grants)).toEqual([]);
    expect(await db.select().from(mailOutbox)).toEqual([]);

    const again = await decide(gateway, application.id, ANN.toUpperCase(), { decision: "approve" });
    expect(again.status).toBe(409);
    expect(await again.json()).toMatchObject({ code: "conflict" });
    expect(await db.select().from(decisions)).toHaveLength(1);

    gateway.clock.advance(60_000);
    const second = await decide(gateway, application.id, BOB, { decision: "approve" });
    expect(second.status).toBe(200);
    const outcome = (await second.json()) as { status: string; approvals: number; grantId: string };
    expect(outcome).toMatchObject({ status: "approved", approvals: 2 });

    const issued = await db.select().from(grants);
    expect(issued).toEqual([
      expect.objectContaining({
        id: outcome.grantId,
        applicationId: application.id,
        organizationId: application.organizationId,
        family: "llama-2",
        licenseVersionId: license.id,
        status: "active",
      }),
    ]);
    const after = await stored(gateway, application.id);
    expect(after).toMatchObject({ status: "approved", decidedAt: gateway.clock.now().toISOString() });

    const mail = await db.select().from(mailOutbox);
    expect(mail).toHaveLength(1);
    expect(mail[0]).toMatchObject({ to: "ada@acme.example", status: "sent" });
    expect(mail[0]?.subject).toContain("approved");
    expect(gateway.mailer.sent.map((m) => m.to)).toEqual(["ada@acme.example"]);
    expect(gateway.mailer.sent[0]?.text).toContain(`http://127.0.0.1:8787/applications/${application.id}`);

    const events = await db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(events.map((e) => [e.seq, e.action, e.actor])).toEqual([
      [1, "application.decided", `reviewer:${ANN}`],
      [2, "application.decided", `reviewer:${BOB}`],
      [3, "grant.issued", `reviewer:${BOB}`],
    ]);
    expect(events[1]?.data).toMatchObject({
      decision: "approve",
      round: 1,
      approvals: 2,
      reviewer: BOB,
      to: "approved",
    });
    expect(events[2]).toMatchObject({ subjectType: "grant", subjectId: outcome.grantId });
    expect(await verifyAuditChain(db)).toMatchObject({ ok: true, checked: 3 });
  });

  it("approves a one-approval case at once", async () => {
    const application = await seedApplication(gateway.services, license);
    const res = await decide(gateway, application.id, ANN, { decision: "approve" });
    const body = (await res.json()) as { status: string; grantId: string };
    expect(body).toMatchObject({ status: "approved", approvals: 1, requiredApprovals: 1 });
    expect(body.grantId).toMatch(/^grt_/);
    const [grant] = await gateway.services.db.select().from(grants).where(eq(grants.applicationId, application.id));
    expect(grant).toMatchObject({ id: body.grantId, status: "active" });
  });

  it("rejects with a visible reason: the applicant sees it and may reapply after the cool-down", async () => {
    const application = await seedApplication(gateway.services, license);
    const reason = "Your intended use falls under AUP §2.a (weapons).";
    const res = await decide(gateway, application.id, ANN, { decision: "reject", reason, visibleToApplicant: true });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "rejected", grantId: null });
    expect(await stored(gateway, application.id)).toMatchObject({
      status: "rejected",
      applicantMessage: reason,
      decidedAt: TOKEN_NOW.toISOString(),
      // Llama 2's family data sets a 30-day cool-down.
      reapplyAfter: new Date(TOKEN_NOW.getTime() + 30 * 86_400_000).toISOString(),
    });
    expect(await gateway.services.db.select().from(grants)).toEqual([]);
    expect(gateway.mailer.sent).toHaveLength(1);
    expect(gateway.mailer.sent[0]?.text).toContain(reason);
  });

  it("keeps a hidden reason from the applicant", async () => {
    const application = await seedApplication(gateway.services, license);
    const reason = "Internal: sanctions list hit on the parent company.";
    await decide(gateway, application.id, ANN, { decision: "reject", reason, visibleToApplicant: false });
    expect(await stored(gateway, application.id)).toMatchObject({ status: "rejected", applicantMessage: null });
    expect(gateway.mailer.sent).toHaveLength(1);
    expect(gateway.mailer.sent[0]?.text).not.toContain("sanctions");
    const [decision] = await gateway.services.db.select().from(decisions);
    expect(decision).toMatchObject({ reason, visibleToApplicant: false, reviewerEmail: ANN });
  });

  it("asks for information, after which the case cannot be approved", async () => {
    const application = await seedApplication(gateway.services, license);
    const ask = await decide(gateway, application.id, ANN, {
      decision: "request_info",
      reason: "Which products will use the model?",
      visibleToApplicant: true,
    });
    expect(await ask.json()).toMatchObject({ status: "info_requested" });
    expect(await stored(gateway, application.id)).toMatchObject({
      status: "info_requested",
      // The round ends when the applicant answers (the public status page starts the next one).
      reviewRound: 1,
      applicantMessage: "Which products will use the model?",
      decidedAt: null,
    });
    expect(gateway.mailer.sent[0]?.subject).toContain("info requested");

    const approve = await decide(gateway, application.id, BOB, { decision: "approve" });
    expect(approve.status).toBe(409);
    expect(await approve.json()).toMatchObject({ code: "invalid_state" });
    expect(await stored(gateway, application.id)).toMatchObject({ status: "info_requested" });
    expect(await gateway.services.db.select().from(grants)).toEqual([]);
    expect(await gateway.services.db.select().from(decisions)).toHaveLength(1);
  });

  it("voids approvals of a round ended by a request for information", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    await decide(gateway, application.id, ANN, { decision: "approve" });
    await decide(gateway, application.id, BOB, { decision: "request_info" });
    // The applicant answers: the public status page puts the case back in the queue, in a new round.
    await gateway.services.db
      .update(applications)
      .set({ status: "pending_review", applicantResponse: "Only our help desk.", reviewRound: 2 })
      .where(eq(applications.id, application.id));
    const res = await decide(gateway, application.id, ANN, { decision: "approve" });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "pending_review", approvals: 1, grantId: null });
  });

  it("refuses to decide a case that is already decided", async () => {
    const application = await seedApplication(gateway.services, license);
    await decide(gateway, application.id, ANN, { decision: "reject" });
    const res = await decide(gateway, application.id, BOB, { decision: "reject" });
    expect(res.status).toBe(409);
    expect(await res.json()).toMatchObject({ code: "invalid_state" });
    expect(await gateway.services.db.select().from(decisions)).toHaveLength(1);
  });

  it("answers 404 for an unknown case and writes nothing", async () => {
    const res = await decide(gateway, "app_missing", ANN, { decision: "approve" });
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ code: "not_found" });
    expect(await gateway.services.db.select().from(auditEvents)).toEqual([]);
  });

  it("validates the body with field errors", async () => {
    const application = await seedApplication(gateway.services, license);
    const res = await decide(gateway, application.id, ANN, { decision: "maybe", reason: "" });
    expect(res.status).toBe(400);
    const body = (await res.json()) as { code: string; errors: { field: string }[] };
    expect(body.code).toBe("validation_failed");
    expect(body.errors.map((e) => e.field).sort()).toEqual(["decision", "reason"]);

    const token = await adminToken({ email: ANN, role: "approver" });
    const malformed = await gateway.request(`/admin/api/applications/${application.id}/decision`, {
      method: "POST",
      headers: accessHeaders(token),
      body: "{not json",
    });
    expect(await malformed.json()).toMatchObject({ status: 400, code: "malformed_body" });
    expect(await gateway.services.db.select().from(decisions)).toEqual([]);
  });

  it("issues exactly one grant when two approvers approve at the same moment", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const request = { decision: "approve" as const, reason: "Fine.", visibleToApplicant: false };
    const outcomes = await Promise.all([
      decideApplication(gateway.services, { email: ANN }, application.id, request),
      decideApplication(gateway.services, { email: BOB }, application.id, request),
    ]);
    expect(outcomes.map((o) => o.approvals).sort()).toEqual([1, 2]);
    expect(outcomes.filter((o) => o.grantId !== null)).toHaveLength(1);
    expect(await gateway.services.db.select().from(grants)).toHaveLength(1);
    expect(await stored(gateway, application.id)).toMatchObject({ status: "approved" });
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 3 });
  });

  it("lets the same approver race themself only once", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const request = { decision: "approve" as const, reason: "Fine.", visibleToApplicant: false };
    const results = await Promise.allSettled([
      decideApplication(gateway.services, { email: ANN }, application.id, request),
      decideApplication(gateway.services, { email: ANN }, application.id, request),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual(["fulfilled", "rejected"]);
    const failure = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(failure.reason).toMatchObject({ code: "conflict" });
    expect(await gateway.services.db.select().from(decisions)).toHaveLength(1);
  });
});

describe("security: a reviewer party to the case cannot decide it", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  async function refusals() {
    return gateway.services.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "application.decision_refused"))
      .orderBy(auditEvents.seq);
  }

  async function caseFileFor(applicationId: string, reviewer: string) {
    const token = await adminToken({ email: reviewer, role: "reviewer" });
    const res = await gateway.request(`/admin/api/applications/${applicationId}`, { headers: accessHeaders(token) });
    expect(res.status).toBe(200);
    return (await res.json()) as { conflictOfInterest: boolean };
  }

  it.each([
    ["their own contact e-mail, in another case", "ADA@Acme.Example", "applicant_email", {}],
    ["the contact's company domain", "carl@acme.example", "contact_domain", {}],
    ["a subdomain of the contact's domain", "carl@eu.acme.example", "contact_domain", {}],
    [
      "the organization's website domain",
      "dan@globex.example",
      "website_domain",
      { contactEmail: "ada@gmail.com", website: "https://www.globex.example/about" },
    ],
  ])("refuses and audits an approver with %s", async (_, reviewer, conflict, seed) => {
    const application = await seedApplication(gateway.services, license, seed);
    for (const decision of ["approve", "reject", "request_info"]) {
      const res = await decide(gateway, application.id, reviewer, { decision });
      expect(res.status).toBe(403);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict });
    }
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review", decidedAt: null });
    expect(await gateway.services.db.select().from(decisions)).toEqual([]);
    expect(await gateway.services.db.select().from(grants)).toEqual([]);
    expect(await gateway.services.db.select().from(mailOutbox)).toEqual([]);

    const refused = await refusals();
    // Access identities are lower-cased, so the audit log names the reviewer in lower case.
    const actor = `reviewer:${reviewer.toLowerCase()}`;
    expect(refused.map((e) => [e.actor, e.subjectId, e.data.decision])).toEqual([
      [actor, application.id, "approve"],
      [actor, application.id, "reject"],
      [actor, application.id, "request_info"],
    ]);
    expect(refused[0]?.data).toMatchObject({ code: "conflict_of_interest", conflict, round: 1 });
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 3 });

    expect(await caseFileFor(application.id, reviewer)).toMatchObject({ conflictOfInterest: true });
    expect(await caseFileFor(application.id, ANN)).toMatchObject({ conflictOfInterest: false });
  });

  it("refuses the second approval of a two-approver case from a colleague of the applicant", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    expect((await decide(gateway, application.id, ANN, { decision: "approve" })).status).toBe(200);

    const colleague = await decide(gateway, application.id, "carl@acme.example", { decision: "approve" });
    expect(colleague.status).toBe(403);
    expect(await colleague.json()).toMatchObject({ code: "conflict_of_interest" });
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review" });
    expect(await gateway.services.db.select().from(grants)).toEqual([]);
    expect(await gateway.services.db.select().from(decisions)).toHaveLength(1);
    expect((await refusals()).map((e) => e.actor)).toEqual(["reviewer:carl@acme.example"]);

    // An approver from outside still completes the four eyes.
    const second = await decide(gateway, application.id, BOB, { decision: "approve" });
    expect(second.status).toBe(200);
    expect(await second.json()).toMatchObject({ status: "approved", approvals: 2 });
    expect(await gateway.services.db.select().from(grants)).toHaveLength(1);
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 4 });
  });

  it("refuses a member of the applicant organization, and one invited to it, as the second pair of eyes", async () => {
    const insider = await signedInMember(gateway, { email: "rita@review.example", role: "owner" });
    const at = new Date().toISOString();
    await gateway.services.db.insert(invitations).values({
      id: "inv_ivy",
      organizationId: insider.organizationId,
      email: "ivy@review.example",
      role: "developer",
      secretHash: "not-a-real-link",
      invitedByUserId: insider.user.id,
      createdAt: at,
      expiresAt: "2099-01-01T00:00:00.000Z",
    });
    const application = await seedApplication(gateway.services, license, {
      organizationId: insider.organizationId,
      requiredApprovals: 2,
    });
    expect((await decide(gateway, application.id, ANN, { decision: "approve" })).status).toBe(200);
    for (const reviewer of ["rita@review.example", "Rita+cases@review.example", "ivy@review.example"]) {
      const res = await decide(gateway, application.id, reviewer, { decision: "approve" });
      expect(res.status, reviewer).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
      expect(await caseFileFor(application.id, reviewer)).toMatchObject({ conflictOfInterest: true });
    }
    expect(await gateway.services.db.select().from(grants)).toEqual([]);
    expect((await refusals()).map((e) => e.data.conflict)).toEqual([
      "organization_member",
      "organization_member",
      "organization_member",
    ]);
    expect((await decide(gateway, application.id, BOB, { decision: "approve" })).status).toBe(200);
    expect(await gateway.services.db.select().from(grants)).toHaveLength(1);
  });

  it("refuses a reviewer at a domain the applicant organization verified", async () => {
    const insider = await signedInMember(gateway, { email: "ops@initech.example", role: "owner" });
    await gateway.services.db.insert(organizationDomains).values({
      domain: "initech.example",
      organizationId: insider.organizationId,
      verifiedByUserId: insider.user.id,
      verifiedAt: new Date().toISOString(),
    });
    const application = await seedApplication(gateway.services, license, {
      organizationId: insider.organizationId,
      contactEmail: "founder@gmail.com",
      website: null,
    });
    const res = await decide(gateway, application.id, "peter@eu.initech.example", { decision: "reject" });
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_domain" });
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review" });
  });

  it("refuses the applicant's own free-mail address however it is spelt", async () => {
    const application = await seedApplication(gateway.services, license, {
      contactEmail: "ann.smith+llama@gmail.com",
      website: null,
    });
    for (const reviewer of ["annsmith@gmail.com", "Ann.Smith@googlemail.com", "a.n.n.smith+x@gmail.com"]) {
      const res = await decide(gateway, application.id, reviewer, { decision: "approve" });
      expect(res.status, reviewer).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "applicant_email" });
    }
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review" });
    // Another Gmail user is no party to it.
    expect((await decide(gateway, application.id, "annsmith2@gmail.com", { decision: "approve" })).status).toBe(200);
  });

  it("counts one approver however their address is spelt", () => {
    const state = {
      status: "pending_review",
      requiredApprovals: 2,
      approvalsThisRound: ["ann.smith@gmail.com"],
    } as const;
    expect(applyDecision(state, "annsmith+second@googlemail.com", "approve")).toMatchObject({
      ok: false,
      code: "conflict",
    });
    expect(applyDecision(state, "bob@example.com", "approve")).toMatchObject({ ok: true, issueGrant: true });
  });

  it("refuses a colleague of the contact, or of the website, of another of the organization's cases", async () => {
    const earlier = await seedApplication(gateway.services, license, {
      status: "rejected",
      contactEmail: "ada@acme.example",
      website: "https://www.globex.example",
    });
    const application = await seedApplication(gateway.services, license, {
      organizationId: earlier.organizationId,
      contactEmail: "founder@gmail.com",
      website: null,
    });
    for (const [reviewer, conflict] of [
      ["carl@acme.example", "contact_domain"],
      ["dan@eu.globex.example", "website_domain"],
    ] as const) {
      const res = await decide(gateway, application.id, reviewer, { decision: "approve" });
      expect(res.status, reviewer).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict });
      expect(await caseFileFor(application.id, reviewer)).toMatchObject({ conflictOfInterest: true });
    }
    expect(await stored(gateway, application.id)).toMatchObject({ status: "pending_review" });
    expect((await decide(gateway, application.id, ANN, { decision: "approve" })).status).toBe(200);
  });

  it("lets a reviewer who only shares a free-mail provider with the applicant decide", async () => {
    const application = await seedApplication(gateway.services, license, {
      contactEmail: "ada@gmail.com",
      website: "https://mail.google.com",
    });
    expect(await caseFileFor(application.id, "ann@googlemail.com")).toMatchObject({ conflictOfInterest: false });
    const res = await decide(gateway, application.id, "ann@gmail.com", { decision: "approve" });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ status: "approved" });
    expect(await refusals()).toEqual([]);
  });
});

describe("security: a reviewer party to the case cannot comment on it", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  async function comment(gw: Gateway, applicationId: string, reviewer: string, body = "Checked, all fine.") {
    return gw.request(`/admin/api/applications/${applicationId}/comments`, {
      method: "POST",
      headers: accessHeaders(await adminToken({ email: reviewer, role: "reviewer" })),
      body: JSON.stringify({ body }),
    });
  }

  it("refuses, audited, a member of the applicant organization and a colleague of its contact; reading stays open", async () => {
    // The case's contact is ada@acme.example.
    const application = await seedApplication(gateway.services, license);
    await signedInMember(gateway, {
      organizationId: application.organizationId,
      email: "insider@ops.example",
      role: "viewer",
    });
    for (const [reviewer, conflict] of [
      ["insider@ops.example", "organization_member"],
      ["carl@acme.example", "contact_domain"],
    ] as const) {
      const res = await comment(gateway, application.id, reviewer);
      expect(res.status, reviewer).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict });
      const thread = await gateway.request(`/admin/api/applications/${application.id}/comments`, {
        headers: accessHeaders(await adminToken({ email: reviewer, role: "reviewer" })),
      });
      expect(thread.status).toBe(200);
    }
    expect(await gateway.services.db.select().from(reviewComments)).toEqual([]);
    const refused = await gateway.services.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "application.comment_refused"))
      .orderBy(auditEvents.seq);
    expect(refused.map((e) => [e.actor, e.subjectId, e.data.conflict])).toEqual([
      ["reviewer:insider@ops.example", application.id, "organization_member"],
      ["reviewer:carl@acme.example", application.id, "contact_domain"],
    ]);
    // The attempt is recorded by the text's hash, never the text.
    expect(JSON.stringify(refused)).not.toContain("all fine");

    // A reviewer who is a member of another organization is no party to this case.
    await signedInMember(gateway, { email: "elsewhere@ops.example", role: "owner" });
    expect((await comment(gateway, application.id, "elsewhere@ops.example")).status).toBe(201);
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 3 });
  });

  it("refuses a reviewer who joins the applicant organization while their comment is on its way", async () => {
    const application = await seedApplication(gateway.services, license);
    const owner = await signedInMember(gateway, {
      organizationId: application.organizationId,
      email: "owner@acme.example",
      role: "owner",
    });
    // The comment has passed the door and planned while its reviewer was no party to the case...
    const held = heldWrites(1);
    const acting = testGateway(gateway.clock.now(), { DB: held.db });
    const pending = comment(acting, application.id, "joiner@ops.example");
    await held.poised;
    // ...when they join the organization.
    await joinByInvitation(gateway, owner, "joiner@ops.example");
    held.release();
    const res = await pending;
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
    expect(await gateway.services.db.select().from(reviewComments)).toEqual([]);
  });
});
