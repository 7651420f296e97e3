/**
 * An owner asks for more models: the policy decides on the organization's approved case, and an
 * approval widens the organization's one grant of the family — never a second grant, never past a
 * suspension, never back from a revocation.
 */
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { applications, auditEvents, decisions, grants } from "../worker/db/schema";
import { fixedClock } from "../worker/platform/clock";
import { adminToken, TOKEN_NOW } from "./helpers/access";
import { applyAndConfirm } from "./helpers/apply";
import { json, seedLicense, testGateway } from "./helpers/gateway";
import { signedInMember } from "./helpers/members";

let licenseSha256: string;

beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
});

function application(country: string, models: string[]) {
  return {
    family: "llama-2",
    organization: { name: "Seven Only", country },
    contact: { name: "Owner", email: "owner@seven.example" },
    intendedUse: "Customer support assistant.",
    declaredMau: 1_000,
    models,
    licenseSha256,
    acceptLicense: true,
    acceptAup: true,
  };
}

async function requestModels(
  gw: ReturnType<typeof testGateway>,
  cookie: string,
  body: unknown,
  headers: Record<string, string> = {},
) {
  return gw.request("/v1/organization/model-requests", json(body, { cookie, ...headers }));
}

async function grantOf(gw: ReturnType<typeof testGateway>, applicationId: string) {
  const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, applicationId));
  return grant;
}

/** An approver of the licensor's approving a case, as the console does: `decide(id)`. */
async function approvesAsAnn(gw: ReturnType<typeof testGateway>, reason = "Export review done.") {
  const approver = {
    "cf-access-jwt-assertion": await adminToken({ email: "ann@licensor.example", role: "approver" }),
  };
  return (id: string) =>
    gw.request(
      `/admin/api/applications/${id}/decision`,
      json({ decision: "approve", reason, visibleToApplicant: false }, approver),
    );
}

describe("POST /v1/organization/model-requests", () => {
  it("widens the organization's grant at once where the policy approves", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    const res = await requestModels(gw, first.cookie, { models: ["llama-2-70b", "llama-2-7b"] });
    expect(res.status, await res.clone().text()).toBe(201);
    expect(await res.json()).toMatchObject({ status: "approved", models: ["llama-2-70b"] });
    const grant = await grantOf(gw, first.applicationId);
    expect(grant?.models).toEqual(["llama-2-7b", "llama-2-70b"]);
    expect(await gw.db.select().from(grants)).toHaveLength(1);
    const events = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "grant.models_added"));
    expect(events.map((e) => e.data)).toEqual([expect.objectContaining({ added: ["llama-2-70b"] })]);
  });

  it("sends the request to reviewers where the policy says so, and their approval widens the same grant", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const first = await applyAndConfirm(gw, application("CN", ["llama-2-7b"]));
    expect(first.status).toBe("pending_review");
    const decide = await approvesAsAnn(gw);
    expect((await decide(first.applicationId)).status).toBe(200);
    const res = await requestModels(gw, first.cookie, { models: ["llama-2-13b"] });
    const asked = (await res.json()) as { applicationId: string; status: string };
    expect(asked.status).toBe("pending_review");
    expect((await grantOf(gw, first.applicationId))?.models).toEqual(["llama-2-7b"]);
    expect((await decide(asked.applicationId)).status).toBe(200);
    expect((await grantOf(gw, first.applicationId))?.models).toEqual(["llama-2-7b", "llama-2-13b"]);
    expect(await gw.db.select().from(grants)).toHaveLength(1);
  });

  it("security: sends a request to two approvers when two decided the organization's case, whatever its figure", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    // The case was the licensor's (an earlier refusal of the organization over the threshold, say):
    // two approvers decided it, though its own figure is under the threshold.
    await gw.db.update(applications).set({ requiredApprovals: 2 }).where(eq(applications.id, first.applicationId));
    const res = await requestModels(gw, first.cookie, { models: ["llama-2-70b"] });
    expect(res.status, await res.clone().text()).toBe(201);
    const asked = (await res.json()) as { applicationId: string; status: string; reasons: { code: string }[] };
    expect(asked).toMatchObject({ status: "pending_review", reasons: [{ code: "licensor_case" }] });
    const [row] = await gw.db.select().from(applications).where(eq(applications.id, asked.applicationId));
    expect(row?.requiredApprovals).toBe(2);
    expect((await grantOf(gw, first.applicationId))?.models).toEqual(["llama-2-7b"]);
  });

  it("security: decides a request on the organization's record: its country on record and an earlier rejection", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    const [base] = await gw.db.select().from(applications).where(eq(applications.id, first.applicationId));
    // An earlier case of the family, rejected, and a base case declared from elsewhere than the record.
    await gw.db.insert(applications).values({
      ...(base as NonNullable<typeof base>),
      id: "app_rejected_before",
      status: "rejected",
      createdAt: "2025-01-01T00:00:00.000Z",
      updatedAt: "2025-01-01T00:00:00.000Z",
    });
    await gw.db.update(applications).set({ country: "US" }).where(eq(applications.id, first.applicationId));
    const res = await requestModels(gw, first.cookie, { models: ["llama-2-70b"] });
    expect(res.status, await res.clone().text()).toBe(201);
    const asked = (await res.json()) as { status: string; reasons: { code: string }[] };
    expect(asked.status).toBe("pending_review");
    expect(asked.reasons.map((r) => r.code).sort()).toEqual(["country_differs_from_record", "prior_rejection"]);
  });

  it("files one request however many copies arrive at once", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => requestModels(gw, first.cookie, { models: ["llama-2-70b"] })),
    );
    const statuses = answers.map((r) => r.status).sort();
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.every((s) => s === 201 || (s >= 400 && s < 500))).toBe(true);
    expect((await grantOf(gw, first.applicationId))?.models).toEqual(["llama-2-7b", "llama-2-70b"]);
    expect(await gw.db.select().from(grants)).toHaveLength(1);
  });

  it("opens one case for review however many copies arrive at once", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const first = await applyAndConfirm(gw, application("CN", ["llama-2-7b"]));
    await (await approvesAsAnn(gw))(first.applicationId);
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => requestModels(gw, first.cookie, { models: ["llama-2-13b"] })),
    );
    const statuses = answers.map((r) => r.status);
    expect(statuses.filter((s) => s === 201)).toHaveLength(1);
    expect(statuses.every((s) => s === 201 || s === 409)).toBe(true);
  });

  it("keeps a suspended grant suspended while widening it", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, first.applicationId));
    const res = await requestModels(gw, first.cookie, { models: ["llama-2-70b"] });
    // No active grant: nothing to widen, and certainly no fresh grant around the suspension.
    expect(res.status).toBe(409);
    expect(await gw.db.select().from(grants)).toEqual([expect.objectContaining({ status: "suspended" })]);
  });

  it("security: revoking the grant closes a request still in review; approving it then brings nothing back", async () => {
    const clock = fixedClock(TOKEN_NOW);
    const gw = testGateway({ clock });
    const first = await applyAndConfirm(gw, application("CN", ["llama-2-7b"]));
    const decide = await approvesAsAnn(gw);
    expect((await decide(first.applicationId)).status).toBe(200);
    const asked = (await (await requestModels(gw, first.cookie, { models: ["llama-2-13b"] })).json()) as {
      applicationId: string;
      status: string;
    };
    expect(asked.status).toBe("pending_review");
    const grant = await grantOf(gw, first.applicationId);
    if (!grant) throw new Error("no grant");

    const admin = { "cf-access-jwt-assertion": await adminToken({ email: "root@licensor.example", role: "admin" }) };
    const revoked = await gw.request(
      `/admin/api/grants/${grant.id}/revoke`,
      json({ reason: "Licensor terminated the agreement." }, admin),
    );
    expect(revoked.status).toBe(200);
    const [closed] = await gw.db.select().from(applications).where(eq(applications.id, asked.applicationId));
    expect(closed).toMatchObject({
      status: "rejected",
      decidedAt: TOKEN_NOW.toISOString(),
      applicantMessage: expect.stringContaining("was revoked"),
    });
    const closings = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "application.closed"));
    expect(closings).toEqual([
      expect.objectContaining({
        actor: "reviewer:root@licensor.example",
        subjectId: asked.applicationId,
        data: expect.objectContaining({ reason: "grant_revoked", grantId: grant.id, from: "pending_review" }),
      }),
    ]);

    const approved = await decide(asked.applicationId);
    expect(approved.status).toBe(409);
    expect(approved.headers.get("content-type")).toContain("application/problem+json");
    expect(await approved.json()).toMatchObject({ code: "invalid_state" });
    expect(await gw.db.select().from(grants)).toEqual([expect.objectContaining({ id: grant.id, status: "revoked" })]);
    const minted = await gw.request(
      "/v1/tokens",
      json(
        { name: "ci", scopes: ["download"] },
        { cookie: first.cookie, "x-modelgate-organization": grant.organizationId },
      ),
    );
    expect(minted.status).toBe(409);
  });

  it("security: an approval of a case that outlived its grant's revocation is refused, and writes nothing", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const first = await applyAndConfirm(gw, application("CN", ["llama-2-7b"]));
    const decide = await approvesAsAnn(gw);
    expect((await decide(first.applicationId)).status).toBe(200);
    const asked = (await (await requestModels(gw, first.cookie, { models: ["llama-2-13b"] })).json()) as {
      applicationId: string;
    };
    // Revoked while the request stayed open, as a revocation from before cases closed with it left it.
    await gw.db.update(grants).set({ status: "revoked" }).where(eq(grants.applicationId, first.applicationId));

    const refused = await decide(asked.applicationId);
    expect(refused.status).toBe(409);
    expect(refused.headers.get("content-type")).toContain("application/problem+json");
    expect(await refused.json()).toMatchObject({ code: "invalid_state" });
    expect(await gw.db.select().from(grants)).toEqual([expect.objectContaining({ status: "revoked" })]);
    const [still] = await gw.db.select().from(applications).where(eq(applications.id, asked.applicationId));
    expect(still?.status).toBe("pending_review");
    expect(await gw.db.select().from(decisions).where(eq(decisions.applicationId, asked.applicationId))).toEqual([]);
  });

  it("after a revocation, a new application goes to review with prior_revocation and its approval grants again", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    const grant = await grantOf(gw, first.applicationId);
    if (!grant) throw new Error("no grant");
    const admin = { "cf-access-jwt-assertion": await adminToken({ email: "root@licensor.example", role: "admin" }) };
    const revoked = await gw.request(`/admin/api/grants/${grant.id}/revoke`, json({ reason: "Breach." }, admin));
    expect(revoked.status).toBe(200);

    const again = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    expect(again.status).toBe("pending_review");
    const [fresh] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
    expect(fresh?.policyReasons.map((r) => r.code)).toContain("prior_revocation");
    const approved = await (await approvesAsAnn(gw, "Breach remedied."))(again.applicationId);
    expect(approved.status).toBe(200);
    expect(await grantOf(gw, again.applicationId)).toMatchObject({ status: "active", models: ["llama-2-7b"] });
    expect(await grantOf(gw, first.applicationId)).toMatchObject({ status: "revoked" });
  });

  it("refuses other roles, other organizations, cross-site posts and bad input with 4xx problems", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application("DE", ["llama-2-7b"]));
    const organizationId = (await grantOf(gw, first.applicationId))?.organizationId ?? "";
    const developer = await signedInMember(gw, { organizationId, email: "dev@seven.example", role: "developer" });
    expect((await requestModels(gw, developer.cookie, { models: ["llama-2-70b"] })).status).toBe(403);
    const stranger = await signedInMember(gw, { email: "owner@other.example", role: "owner" });
    expect((await requestModels(gw, stranger.cookie, { models: ["llama-2-70b"] })).status).toBe(409);
    expect((await requestModels(gw, "", { models: ["llama-2-70b"] })).status).toBe(401);
    const crossSite = await requestModels(
      gw,
      first.cookie,
      { models: ["llama-2-70b"] },
      { origin: "https://evil.example", "sec-fetch-site": "cross-site" },
    );
    expect(crossSite.status).toBe(403);
    expect(await crossSite.json()).toMatchObject({ code: "cross_site_request" });
    for (const body of [
      { models: [] },
      { models: ["gpt-4"] },
      { models: ["llama-2-7b"] },
      { family: "llama-9", models: ["x"] },
      { models: "llama-2-70b" },
      { models: ["llama-2-70b"], extra: true },
    ]) {
      const res = await requestModels(gw, first.cookie, body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
    }
    expect((await grantOf(gw, first.applicationId))?.models).toEqual(["llama-2-7b"]);
  });
});
