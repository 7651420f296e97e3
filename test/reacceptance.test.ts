import { and, eq, like } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import {
  applications,
  grants,
  licenseReacceptances,
  mailOutbox,
  statusLinks,
  webhookEvents,
} from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { lineDiff } from "../worker/licenses/diff";
import { reacceptDeadline } from "../worker/licenses/reacceptance";
import { fixedClock } from "../worker/platform/clock";
import { sha256Hex } from "../worker/platform/hash";
import { accessHeaders, adminToken } from "./helpers/access";
import { applyAndConfirm, confirmationToken, confirmRequest } from "./helpers/apply";
import { scopedBackend } from "./helpers/backends";
import { json, seedLicense, testGateway } from "./helpers/gateway";
import { signedInMember } from "./helpers/members";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const MODEL = "llama-2-7b-chat";
const NOW = "2026-03-02T09:00:00.000Z";
const DEADLINE = "2026-03-09T09:00:00.000Z";
const V1_LICENSE = "LLAMA 2 COMMUNITY LICENSE\n1. Grant of rights.\n2. Additional commercial terms.\n3. Disclaimer.\n";
const V2_LICENSE =
  "LLAMA 2 COMMUNITY LICENSE\n1. Grant of rights.\n2. Additional commercial terms, revised.\n2a. Attribution.\n3. Disclaimer.\n";
const V1_AUP = "ACCEPTABLE USE POLICY\nNo unlawful use.\n";
const V2_AUP = "ACCEPTABLE USE POLICY\nNo unlawful use.\nNo impersonation.\n";
const V3_LICENSE = `${V2_LICENSE}4. Governing law.\n`;
const LATER_DEADLINE = "2026-06-30";
const LATER_DEADLINE_AT = "2026-07-01T00:00:00.000Z";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense(V1_LICENSE, V1_AUP)).licenseSha256;
  await seedRevision(MODEL, { "consolidated.00.pth": bytes(4096, 5), "params.json": "{}" });
});

async function setup() {
  const clock = fixedClock(NOW);
  const gw = testGateway({
    clock,
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: scopedBackend(0).url, timeoutMs: 10_000 }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
  const organization = async () => {
    const unique = crypto.randomUUID();
    return approvedToken(gw, licenseSha256, { organization: `Org ${unique}`, email: `${unique}@example.com` });
  };
  const loadVersion = async (body: Record<string, unknown>) => {
    const token = await adminToken({ role: "admin", issuedAt: clock.now() });
    return gw.request("/admin/api/licenses/llama-2/versions", {
      method: "POST",
      headers: accessHeaders(token),
      body: JSON.stringify(body),
    });
  };
  return { gw, clock, organization, loadVersion };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function chat(token: string) {
  return {
    method: "POST",
    headers: { ...bearer(token), "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 3 }),
  };
}

type Gateway = ReturnType<typeof testGateway>;

const manifest = (gw: Gateway, token: string) => gw.request(`/v1/models/${MODEL}/manifest`, { headers: bearer(token) });
const hubResolve = (gw: Gateway, token: string) =>
  gw.request("/meta-llama/Llama-2-7b-chat-hf/resolve/main/params.json", { headers: bearer(`hf_${token}`) });

function linkPath(body: { files: { path: string; url: string }[] }, path: string): string {
  const url = new URL(body.files.find((f) => f.path === path)?.url ?? "");
  return url.pathname + url.search;
}

async function changesOf(gw: Gateway, headers: Record<string, string>) {
  const res = await gw.request("/v1/organization/license-changes", { headers });
  expect(res.status).toBe(200);
  return (
    (await res.json()) as {
      changes: {
        id: string;
        acceptBy: string;
        overdue: boolean;
        accepted: { version: number };
        current: { version: number; licenseSha256: string; aupSha256: string };
        diff: { license: { kind: string; text: string }[]; aup: { kind: string; text: string }[] };
      }[];
    }
  ).changes;
}

describe("license versions over time", () => {
  it("diffs lines by longest common subsequence", () => {
    expect(lineDiff("a\nb\nc\n", "a\nx\nc\nd\n")).toEqual([
      { kind: "same", text: "a" },
      { kind: "removed", text: "b" },
      { kind: "added", text: "x" },
      { kind: "same", text: "c" },
      { kind: "added", text: "d" },
    ]);
    expect(lineDiff("same", "same")).toEqual([{ kind: "same", text: "same" }]);
    expect(reacceptDeadline("2027-01-31", new Date(NOW))).toBe("2027-02-01T00:00:00.000Z");
    expect(reacceptDeadline("2020-01-31", new Date(NOW))).toBeUndefined();
    expect(reacceptDeadline("soon", new Date(NOW))).toBeUndefined();
  });

  it("a version loaded without re-acceptance changes nothing for grants: downloads carry the accepted texts", async () => {
    const { gw, organization, loadVersion } = await setup();
    const org = await organization();
    const loaded = await loadVersion({ license: V2_LICENSE, aup: V2_AUP });
    expect(loaded.status).toBe(200);
    expect(await loaded.json()).toMatchObject({ version: 2, created: true, grantsToReaccept: 0, reacceptBy: null });

    const script = await gw.request(`/v1/models/${MODEL}/download.sh`, { headers: bearer(org.token) });
    expect(script.status).toBe(200);
    const text = await script.text();
    expect(text).toContain("2. Additional commercial terms.\n");
    expect(text).not.toContain("revised");
    expect(text).toContain("No unlawful use.");
    expect(text).not.toContain("No impersonation.");
    expect(text).toContain("Llama 2 is licensed under the LLAMA 2 Community License");

    const m = await manifest(gw, org.token);
    const body = (await m.json()) as { license: { version: number; sha256: string; url: string } };
    expect(body.license).toMatchObject({ version: 1, sha256: licenseSha256 });
    const served = await gw.request(new URL(body.license.url).pathname);
    expect(await served.text()).toBe(V1_LICENSE);
    // The current text is version 2.
    expect(await (await gw.request("/v1/licenses/llama-2/text")).text()).toBe(V2_LICENSE);
    expect(await changesOf(gw, org.member.headers)).toEqual([]);
  });

  it("refuses a deadline in the past or a malformed one", async () => {
    const { loadVersion } = await setup();
    const res = await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: "2026-01-01" });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "validation_failed", errors: [{ field: "reacceptBy" }] });
  });

  it("requires re-acceptance by the deadline: warned before, refused after everywhere, served again once accepted", async () => {
    const { gw, clock, organization, loadVersion } = await setup();
    const org = await organization();
    const other = await organization();

    const loaded = await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE });
    expect(await loaded.json()).toMatchObject({ version: 2, created: true, grantsToReaccept: 2, reacceptBy: DEADLINE });
    const events = await gw.db
      .select()
      .from(webhookEvents)
      .where(eq(webhookEvents.type, "license.reacceptance_required"));
    expect(events.map((e) => e.organizationId).sort()).toEqual(
      [org.member.organizationId, other.member.organizationId].sort(),
    );
    expect(events.find((e) => e.organizationId === org.member.organizationId)?.data).toMatchObject({
      grantId: org.grantId,
      family: "llama-2",
      acceptBy: DEADLINE,
    });
    const mails = await gw.db.select().from(mailOutbox).where(like(mailOutbox.subject, "%accept version 2%"));
    expect(mails.map((m) => m.to).sort()).toEqual([org.member.user.email, other.member.user.email].sort());
    expect(mails[0]?.text).toContain(`${gw.services().config.publicBaseUrl}/account/license`);

    // Before the deadline: served, with a warning.
    const before = await manifest(gw, org.token);
    expect(before.status).toBe(200);
    expect(before.headers.get("x-license-reaccept-by")).toBe(DEADLINE);
    expect((await hubResolve(gw, org.token)).status).toBe(302);
    const warnedChat = await gw.request("/v1/chat/completions", chat(org.token));
    expect(warnedChat.status).toBe(200);
    expect(warnedChat.headers.get("x-license-reaccept-by")).toBe(DEADLINE);

    // A link made a minute before the deadline stops with it.
    clock.advance(Date.parse(DEADLINE) - clock.now().getTime() - 60_000);
    const lastManifest = (await (await manifest(gw, org.token)).json()) as { files: { path: string; url: string }[] };
    const link = linkPath(lastManifest, "params.json");
    expect((await gw.request(link)).status).toBe(200);
    clock.advance(120_000);
    clearCallerCache();

    const refusedLink = await gw.request(link);
    expect(refusedLink.status).toBe(403);
    expect(await refusedLink.json()).toMatchObject({
      code: "license_reacceptance_required",
      reacceptUrl: `${gw.services().config.publicBaseUrl}/account/license`,
    });
    const refusedManifest = await manifest(gw, org.token);
    expect(refusedManifest.status).toBe(403);
    expect(refusedManifest.headers.get("content-type")).toContain("application/problem+json");
    expect(await refusedManifest.json()).toMatchObject({ code: "license_reacceptance_required" });
    expect((await gw.request(`/v1/models/${MODEL}/download.sh`, { headers: bearer(org.token) })).status).toBe(403);
    const refusedHub = await hubResolve(gw, org.token);
    expect(refusedHub.status).toBe(403);
    expect(refusedHub.headers.get("x-error-code")).toBe("GatedRepo");
    expect(await refusedHub.json()).toMatchObject({ code: "license_reacceptance_required" });
    const refusedChat = await gw.request("/v1/chat/completions", chat(org.token));
    expect(refusedChat.status).toBe(403);
    const chatError = ((await refusedChat.json()) as { error: { code: string; message: string } }).error;
    expect(chatError.code).toBe("license_reacceptance_required");
    expect(chatError.message).toContain(`${gw.services().config.publicBaseUrl}/account/license`);

    // What changed, as members see it.
    const [change] = await changesOf(gw, org.member.headers);
    if (!change) throw new Error("no pending change");
    expect(change).toMatchObject({
      overdue: true,
      acceptBy: DEADLINE,
      accepted: { version: 1 },
      current: { version: 2 },
    });
    expect(change.diff.license.filter((l) => l.kind !== "same")).toEqual([
      { kind: "removed", text: "2. Additional commercial terms." },
      { kind: "added", text: "2. Additional commercial terms, revised." },
      { kind: "added", text: "2a. Attribution." },
    ]);
    expect(change.diff.aup.filter((l) => l.kind !== "same")).toEqual([{ kind: "added", text: "No impersonation." }]);
    const page = await gw.request(`/account/license?organization=${org.member.organizationId}`, {
      headers: { cookie: org.member.cookie },
    });
    const html = await page.text();
    expect(page.status).toBe(200);
    expect(html).toContain("<del>- 2. Additional commercial terms.</del>");
    expect(html).toContain("<ins>+ 2a. Attribution.</ins>");
    expect(html).toContain(`value="${change.id}"`);
    const account = await (await gw.request("/account", { headers: { cookie: org.member.cookie } })).text();
    expect(account).toContain("/account/license");

    const accept = { licenseSha256: change.current.licenseSha256, aupSha256: change.current.aupSha256 };
    const acceptPath = `/v1/organization/license-changes/${change.id}/accept`;

    // A developer may not accept for the organization.
    const developer = await signedInMember(gw, { organizationId: org.member.organizationId, role: "developer" });
    const byDeveloper = await gw.request(acceptPath, json(accept, developer.headers));
    expect(byDeveloper.status).toBe(403);
    // Another organization's owner knows nothing of it.
    const byOther = await gw.request(acceptPath, json(accept, other.member.headers));
    expect(byOther.status).toBe(404);
    // The texts of another version are stale.
    const stale = await gw.request(acceptPath, json({ ...accept, licenseSha256: licenseSha256 }, org.member.headers));
    expect(stale.status).toBe(409);
    expect(await stale.json()).toMatchObject({ code: "stale_license" });
    expect((await manifest(gw, org.token)).status).toBe(403);

    const accepted = await gw.request(acceptPath, {
      ...json(accept, { ...org.member.headers, "cf-connecting-ip": "203.0.113.7", "user-agent": "test-browser" }),
      cf: { country: "DE" },
    } as RequestInit);
    expect(accepted.status).toBe(200);
    const [evidence] = await gw.db.select().from(licenseReacceptances).where(eq(licenseReacceptances.id, change.id));
    expect(evidence).toMatchObject({
      acceptedAt: clock.now().toISOString(),
      acceptedByUserId: org.member.user.id,
      licenseSha256: change.current.licenseSha256,
      aupSha256: change.current.aupSha256,
      country: "DE",
      ip: "203.0.113.7",
      userAgent: "test-browser",
    });
    const [grant] = await gw.db.select().from(grants).where(eq(grants.id, org.grantId));
    expect(grant?.licenseVersionId).toBe(evidence?.licenseVersionId);
    expect((await gw.request(acceptPath, json(accept, org.member.headers))).status).toBe(409);

    clearCallerCache();
    const after = await manifest(gw, org.token);
    expect(after.status).toBe(200);
    expect(after.headers.get("x-license-reaccept-by")).toBeNull();
    expect(((await after.json()) as { license: { version: number } }).license.version).toBe(2);
    const script = await (await gw.request(`/v1/models/${MODEL}/download.sh`, { headers: bearer(org.token) })).text();
    expect(script).toContain("2a. Attribution.");
    expect(script).toContain("No impersonation.");
    expect((await hubResolve(gw, org.token)).status).toBe(302);
    const acceptedChat = await gw.request("/v1/chat/completions", chat(org.token));
    expect(acceptedChat.status).toBe(200);
    expect(acceptedChat.headers.get("x-license-reaccept-by")).toBeNull();
    expect(await changesOf(gw, org.member.headers)).toEqual([]);

    // The other organization is still refused: its requirement stands.
    expect((await manifest(gw, other.token)).status).toBe(403);
    const pending = await gw.db
      .select()
      .from(licenseReacceptances)
      .where(and(eq(licenseReacceptances.grantId, other.grantId)));
    expect(pending[0]?.acceptedAt).toBeNull();
  });

  it("security: a grant issued after a version with a deadline, under the one applied for, must accept it by the same deadline", async () => {
    const { gw, clock, loadVersion } = await setup();
    const unique = crypto.randomUUID().slice(0, 8);
    const body = (overrides: Record<string, unknown> = {}) => ({
      family: "llama-2",
      organization: { name: `Late ${unique} GmbH`, website: `https://late-${unique}.example`, country: "DE" },
      contact: { name: "Ada Late", email: `ada@late-${unique}.example` },
      intendedUse: "Customer support assistant for our robot vacuum owners.",
      declaredMau: 120_000,
      models: [MODEL],
      licenseSha256,
      acceptLicense: true,
      acceptAup: true,
      ...overrides,
    });
    // One applied under v1 and confirms after v2 came; another sat in review under v1 until after.
    expect((await gw.request("/v1/applications", json(body()))).status).toBe(201);
    const inReview = await applyAndConfirm(
      gw,
      body({
        organization: { name: `Review ${unique} GmbH`, website: `https://review-${unique}.example`, country: "DE" },
        contact: { name: "Bo Review", email: `bo@review-${unique}.example` },
        intendedUse: "Fraud detection assistant for our bank customers.",
      }),
    );
    expect(inReview.status).toBe("pending_review");
    expect((await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE })).status).toBe(200);
    const confirmed = await confirmRequest(gw, confirmationToken(gw, `ada@late-${unique}.example`));
    expect(confirmed.status).toBe(200);
    const late = (await confirmed.json()) as { applicationId: string; status: string };
    expect(late.status).toBe("approved");
    const approver = await adminToken({ email: "rev@reviewers.example", role: "approver", issuedAt: clock.now() });
    const decided = await gw.request(`/admin/api/applications/${inReview.applicationId}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "Checked.", visibleToApplicant: false }),
    });
    expect(decided.status).toBe(200);

    for (const [applicationId, cookie] of [
      [late.applicationId, (confirmed.headers.get("set-cookie") ?? "").split(";")[0] ?? ""],
      [inReview.applicationId, inReview.cookie],
    ] as const) {
      const [app] = await gw.db.select().from(applications).where(eq(applications.id, applicationId));
      const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, applicationId));
      expect(
        await gw.db
          .select()
          .from(licenseReacceptances)
          .where(eq(licenseReacceptances.grantId, grant?.id ?? "")),
      ).toEqual([
        expect.objectContaining({
          acceptBy: DEADLINE,
          fromLicenseVersionId: grant?.licenseVersionId,
          acceptedAt: null,
        }),
      ]);
      const minted = await gw.request(
        "/v1/tokens",
        json({ name: "ci", scopes: ["download"] }, { cookie, "x-modelgate-organization": app?.organizationId ?? "" }),
      );
      expect(minted.status).toBe(201);
      const token = ((await minted.json()) as { token: string }).token;
      expect((await manifest(gw, token)).status).toBe(200);
      clock.set(new Date(Date.parse(DEADLINE) + 86_400_000));
      clearCallerCache();
      const refused = await manifest(gw, token);
      expect(refused.status).toBe(403);
      expect(await refused.json()).toMatchObject({ code: "license_reacceptance_required" });
      clock.set(NOW);
      clearCallerCache();
    }
  });

  it("security: a newer version does not lift a refusal for a missed deadline; accepting the newest does", async () => {
    const { gw, clock, organization, loadVersion } = await setup();
    const org = await organization();
    expect((await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE })).status).toBe(200);
    clock.set(new Date(Date.parse(DEADLINE) + 86_400_000));
    clearCallerCache();
    expect((await manifest(gw, org.token)).status).toBe(403);

    const loaded = await loadVersion({ license: V3_LICENSE, aup: V2_AUP, reacceptBy: LATER_DEADLINE });
    expect(await loaded.json()).toMatchObject({ version: 3, created: true, grantsToReaccept: 1 });
    clearCallerCache();
    const refused = await manifest(gw, org.token);
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ code: "license_reacceptance_required" });
    expect((await gw.request("/v1/chat/completions", chat(org.token))).status).toBe(403);
    const mails = await gw.db.select().from(mailOutbox).where(like(mailOutbox.subject, "%accept version 3%"));
    expect(mails.map((m) => m.subject)).toEqual([expect.stringContaining(`by ${DEADLINE.slice(0, 10)}`)]);

    // The one change left to accept is version 3, still due by the first deadline.
    const changes = await changesOf(gw, org.member.headers);
    expect(changes).toEqual([
      expect.objectContaining({
        acceptBy: DEADLINE,
        overdue: true,
        accepted: expect.objectContaining({ version: 1 }),
        current: expect.objectContaining({ version: 3 }),
      }),
    ]);
    const [change] = changes;
    if (!change) throw new Error("no pending change");
    const accepted = await gw.request(
      `/v1/organization/license-changes/${change.id}/accept`,
      json({ licenseSha256: change.current.licenseSha256, aupSha256: change.current.aupSha256 }, org.member.headers),
    );
    expect(accepted.status).toBe(200);
    clearCallerCache();
    const served = await manifest(gw, org.token);
    expect(served.status).toBe(200);
    expect(((await served.json()) as { license: { version: number } }).license.version).toBe(3);
    expect(await changesOf(gw, org.member.headers)).toEqual([]);
  });

  it("a requirement carried to a newer version keeps the earlier deadline; a grant that accepted gets the new one", async () => {
    const { gw, clock, organization, loadVersion } = await setup();
    const behind = await organization();
    const current = await organization();
    expect((await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE })).status).toBe(200);
    const [change] = await changesOf(gw, current.member.headers);
    if (!change) throw new Error("no pending change");
    const accept = { licenseSha256: change.current.licenseSha256, aupSha256: change.current.aupSha256 };
    const acceptPath = `/v1/organization/license-changes/${change.id}/accept`;
    expect((await gw.request(acceptPath, json(accept, current.member.headers))).status).toBe(200);

    // Version 3 comes before the first deadline, with a later one of its own.
    expect((await loadVersion({ license: V3_LICENSE, aup: V2_AUP, reacceptBy: LATER_DEADLINE })).status).toBe(200);
    clearCallerCache();
    const warned = await manifest(gw, behind.token);
    expect(warned.status).toBe(200);
    expect(warned.headers.get("x-license-reaccept-by")).toBe(DEADLINE);
    expect((await manifest(gw, current.token)).headers.get("x-license-reaccept-by")).toBe(LATER_DEADLINE_AT);
    expect(await changesOf(gw, behind.member.headers)).toEqual([
      expect.objectContaining({ acceptBy: DEADLINE, current: expect.objectContaining({ version: 3 }) }),
    ]);

    clock.set(new Date(Date.parse(DEADLINE) + 60_000));
    clearCallerCache();
    expect((await manifest(gw, behind.token)).status).toBe(403);
    expect((await manifest(gw, current.token)).status).toBe(200);
  });

  it("a grant issued after two versions with deadlines, under an older one, must accept the newest by the earlier deadline", async () => {
    const { gw, loadVersion } = await setup();
    const unique = crypto.randomUUID().slice(0, 8);
    const application = {
      family: "llama-2",
      organization: { name: `Review ${unique} GmbH`, website: `https://review-${unique}.example`, country: "DE" },
      contact: { name: "Bo Review", email: `bo@review-${unique}.example` },
      intendedUse: "Fraud detection assistant for our bank customers.",
      declaredMau: 120_000,
      models: [MODEL],
      licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    };
    const inReview = await applyAndConfirm(gw, application);
    expect(inReview.status).toBe("pending_review");
    expect((await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE })).status).toBe(200);
    expect((await loadVersion({ license: V3_LICENSE, aup: V2_AUP, reacceptBy: LATER_DEADLINE })).status).toBe(200);
    const approver = await adminToken({ email: "rev@reviewers.example", role: "approver", issuedAt: new Date(NOW) });
    const decided = await gw.request(`/admin/api/applications/${inReview.applicationId}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "Checked.", visibleToApplicant: false }),
    });
    expect(decided.status).toBe(200);
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, inReview.applicationId));
    const requirements = await gw.db
      .select()
      .from(licenseReacceptances)
      .where(eq(licenseReacceptances.grantId, grant?.id ?? ""));
    expect(requirements).toEqual([expect.objectContaining({ acceptBy: DEADLINE, acceptedAt: null })]);
    expect(requirements[0]?.licenseVersionId).not.toBe(grant?.licenseVersionId);
  });

  it("accepts through the portal form for owners and admins", async () => {
    const { gw, clock, organization, loadVersion } = await setup();
    const org = await organization();
    await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE });
    clock.advance(8 * 86_400_000);
    const [change] = await changesOf(gw, org.member.headers);
    if (!change) throw new Error("no pending change");
    const form = new URLSearchParams({
      id: change.id,
      licenseSha256: change.current.licenseSha256,
      aupSha256: change.current.aupSha256,
      agree: "yes",
    });
    const action = `/account/license/accept?organization=${org.member.organizationId}`;
    const viewer = await signedInMember(gw, { organizationId: org.member.organizationId, role: "viewer" });
    const refused = await gw.request(action, {
      method: "POST",
      headers: { cookie: viewer.cookie, "content-type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
    expect(refused.status).toBe(403);
    const posted = await gw.request(action, {
      method: "POST",
      headers: { cookie: org.member.cookie, "content-type": "application/x-www-form-urlencoded" },
      body: form.toString(),
    });
    expect(posted.status).toBe(303);
    clearCallerCache();
    expect((await manifest(gw, org.token)).status).toBe(200);
  });

  it("answers a form that does not parse, or is too large, with a problem, not a server error", async () => {
    const { gw, organization } = await setup();
    const org = await organization();
    const action = `/account/license/accept?organization=${org.member.organizationId}`;
    const post = (contentType: string, body: string) =>
      gw.request(action, { method: "POST", headers: { cookie: org.member.cookie, "content-type": contentType }, body });
    const malformed = await post("multipart/form-data; boundary=zzz", "this is not multipart");
    expect(malformed.status).toBe(400);
    expect(malformed.headers.get("content-type")).toContain("application/problem+json");
    expect(await malformed.json()).toMatchObject({ code: "malformed_body" });
    const large = await post("application/x-www-form-urlencoded", `agree=yes&pad=${"x".repeat(200_000)}`);
    expect(large.status).toBe(413);
    const other = await post("text/plain", "agree=yes");
    expect(other.status).toBe(415);
  });

  it("shows what changed on the application's status page, pointing members to where they accept", async () => {
    const { gw, clock, organization, loadVersion } = await setup();
    const org = await organization();
    const secret = "mgs_status-secret-for-the-test";
    await gw.db.insert(statusLinks).values({
      secretHash: await sha256Hex(secret),
      applicationId: org.applicationId,
      createdAt: clock.now().toISOString(),
      expiresAt: new Date(clock.now().getTime() + 86_400_000).toISOString(),
    });
    const before = await (await gw.request(`/applications/${org.applicationId}?token=${secret}`)).text();
    expect(before).not.toContain("The license changed");
    await loadVersion({ license: V2_LICENSE, aup: V2_AUP, reacceptBy: DEADLINE });
    const page = await gw.request(`/applications/${org.applicationId}?token=${secret}`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain("The license changed");
    expect(html).toContain("<ins>+ No impersonation.</ins>");
    expect(html).toContain('href="/account/license"');
    // The status link is no member: it shows the change but cannot accept it.
    expect(html).not.toContain('name="licenseSha256"');
  });
});
