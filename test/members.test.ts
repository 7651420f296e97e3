/**
 * An organization's members and invitations, through the app: roles and who may change them, the
 * last owner, a removed member's tokens, invitations from mail to membership — and the attacker's
 * side: other organizations, lower roles, cross-site writes, another address accepting, replays,
 * expired and revoked links, bad input.
 */
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import {
  accessTokens,
  auditEvents,
  invitations,
  memberships,
  organizations,
  webhookEndpoints,
} from "../worker/db/schema";
import { AUDITED_TOKEN_IDS } from "../worker/organizations/members";
import { heldWrites } from "./helpers/bindings";
import { seedGrant, seedLicense, testGateway } from "./helpers/fixtures";
import { type SignedInMember, signedInMember } from "./helpers/members";

type Gateway = ReturnType<typeof testGateway>;

let lastIp = 0;
/** A fresh client address per call, so the per-network brake of one test does not reach another. */
function freshIp(): string {
  lastIp += 1;
  return `10.77.${lastIp % 250}.${Math.floor(lastIp / 250) + 1}`;
}

function call(
  gw: Gateway,
  who: SignedInMember,
  method: string,
  path: string,
  body?: unknown,
  extra: Record<string, string> = {},
) {
  return gw.request(path, {
    method,
    headers: { ...who.headers, ...(body === undefined ? {} : { "content-type": "application/json" }), ...extra },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
}

async function expectProblem(res: Response, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/problem+json");
  expect(((await res.json()) as { code: string }).code).toBe(code);
}

/** An organization with an owner, an admin, a developer and a viewer, joined in that order. */
async function team(gw: Gateway) {
  const owner = await signedInMember(gw, { email: "owner@acme.example", role: "owner" });
  const org = { organizationId: owner.organizationId };
  const next = (email: string, role: "admin" | "developer" | "viewer") => {
    gw.clock.advance(1000);
    return signedInMember(gw, { ...org, email, role });
  };
  const admin = await next("admin@acme.example", "admin");
  const developer = await next("dev@acme.example", "developer");
  const viewer = await next("viewer@acme.example", "viewer");
  return { owner, admin, developer, viewer };
}

/** A second owner of `owner`'s organization. */
function secondOwner(gw: Gateway, owner: SignedInMember) {
  return signedInMember(gw, { organizationId: owner.organizationId, email: "second@acme.example", role: "owner" });
}

/** The token of the newest invitation mailed to `to`. */
function invitationToken(gw: Gateway, to: string): string {
  const mail = gw.mailer.sent.filter((m) => m.to === to).at(-1);
  const match = mail?.text.match(/\/invitations\/accept\?token=(mgi_[A-Za-z0-9_-]+)/);
  if (!match?.[1]) throw new Error(`no invitation mailed to ${to}`);
  return match[1];
}

function accept(gw: Gateway, token: string, headers: Record<string, string> = {}) {
  return gw.request("/invitations/accept", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", "cf-connecting-ip": freshIp(), ...headers },
    body: new URLSearchParams({ token }),
  });
}

async function insertToken(gw: Gateway, grantId: string, userId: string, id: string) {
  await gw.db.insert(accessTokens).values({
    id,
    grantId,
    name: id,
    secretHash: `hash-${id}`,
    displayPrefix: "mg_xxxx",
    scopes: ["inference"],
    userId,
    createdAt: gw.clock.now().toISOString(),
  });
}

describe("members", () => {
  it("lists the organization's live members to any member", async () => {
    const gw = testGateway();
    const { owner, viewer } = await team(gw);
    const res = await call(gw, viewer, "GET", "/v1/organization/members");
    expect(res.status).toBe(200);
    const { members } = (await res.json()) as { members: { email: string; role: string; id: string }[] };
    expect(members.map((m) => [m.email, m.role])).toEqual([
      ["owner@acme.example", "owner"],
      ["admin@acme.example", "admin"],
      ["dev@acme.example", "developer"],
      ["viewer@acme.example", "viewer"],
    ]);
    expect(members[0]?.id).toBe(owner.membership.id);
  });

  it("lets an admin move developers and viewers, but only an owner make or unmake an admin or owner", async () => {
    const gw = testGateway();
    const { owner, admin, developer, viewer } = await team(gw);
    const changed = await call(gw, admin, "PATCH", `/v1/organization/members/${developer.membership.id}`, {
      role: "viewer",
    });
    expect(changed.status).toBe(200);
    expect(await changed.json()).toMatchObject({ id: developer.membership.id, role: "viewer" });

    await expectProblem(
      await call(gw, admin, "PATCH", `/v1/organization/members/${viewer.membership.id}`, { role: "admin" }),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, admin, "PATCH", `/v1/organization/members/${owner.membership.id}`, { role: "viewer" }),
      403,
      "forbidden",
    );
    for (const weak of [developer, viewer]) {
      await expectProblem(
        await call(gw, weak, "PATCH", `/v1/organization/members/${weak.membership.id}`, { role: "admin" }),
        403,
        "forbidden",
      );
    }
    const promoted = await call(gw, owner, "PATCH", `/v1/organization/members/${viewer.membership.id}`, {
      role: "owner",
    });
    expect(await promoted.json()).toMatchObject({ role: "owner" });
    const events = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "member.role_changed"));
    expect(events.map((e) => e.data)).toEqual([
      expect.objectContaining({ from: "developer", to: "viewer" }),
      expect.objectContaining({ from: "viewer", to: "owner" }),
    ]);
  });

  it("keeps the last owner: they cannot be demoted or removed, nor leave", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    await expectProblem(
      await call(gw, owner, "PATCH", `/v1/organization/members/${owner.membership.id}`, { role: "admin" }),
      409,
      "invalid_state",
    );
    await expectProblem(
      await call(gw, owner, "DELETE", `/v1/organization/members/${owner.membership.id}`),
      409,
      "invalid_state",
    );
    expect((await gw.db.select().from(memberships).where(eq(memberships.id, owner.membership.id)))[0]).toMatchObject({
      role: "owner",
      removedAt: null,
    });
  });

  it("keeps an owner when two owners demote each other at the same moment", async () => {
    const gw = testGateway();
    const a = await signedInMember(gw, { email: "a@acme.example", role: "owner" });
    const b = await signedInMember(gw, { email: "b@acme.example", role: "owner", organizationId: a.organizationId });
    const [ra, rb] = await Promise.all([
      call(gw, a, "PATCH", `/v1/organization/members/${b.membership.id}`, { role: "developer" }),
      call(gw, b, "PATCH", `/v1/organization/members/${a.membership.id}`, { role: "developer" }),
    ]);
    const statuses = [ra.status, rb.status].sort();
    expect(statuses[0]).toBe(200);
    expect(statuses[1]).not.toBe(200);
    const owners = await gw.db.select().from(memberships).where(eq(memberships.role, "owner"));
    expect(owners).toHaveLength(1);
  });

  it("security: refuses what a member asked for before their removal, when it would land after it", async () => {
    const gw = testGateway();
    const { owner, developer, viewer } = await team(gw);
    const second = await secondOwner(gw, owner);
    // The second owner's three writes have passed the door and planned on their membership...
    const held = heldWrites(4);
    const acting = testGateway(gw.clock.now(), { DB: held.db });
    const writes = [
      call(acting, second, "PATCH", `/v1/organization/members/${developer.membership.id}`, { role: "owner" }),
      call(acting, second, "PATCH", `/v1/organization/members/${viewer.membership.id}`, { role: "admin" }),
      call(acting, second, "POST", "/v1/organization/invitations", { email: "x@other.example", role: "admin" }),
      call(acting, second, "POST", "/v1/organization/webhooks", {
        url: "https://hooks.example.com/in",
        events: ["grant.suspended"],
      }),
    ];
    await held.poised;
    // ...when the first owner removes them.
    const removed = await call(gw, owner, "DELETE", `/v1/organization/members/${second.membership.id}`);
    expect(removed.status).toBe(200);
    held.release();
    for (const res of await Promise.all(writes)) await expectProblem(res, 403, "forbidden");
    const roles = await gw.db.select().from(memberships).where(eq(memberships.organizationId, owner.organizationId));
    expect(roles.find((m) => m.id === developer.membership.id)?.role).toBe("developer");
    expect(roles.find((m) => m.id === viewer.membership.id)?.role).toBe("viewer");
    expect(await gw.db.select().from(invitations)).toEqual([]);
    expect(await gw.db.select().from(webhookEndpoints)).toEqual([]);
  });

  it("removes a member and revokes their tokens of this organization in the same write, no one else's", async () => {
    const gw = testGateway();
    const license = await seedLicense(gw.services);
    const { grant } = await seedGrant(gw.services, license);
    const { grant: elsewhere } = await seedGrant(gw.services, license);
    const owner = await signedInMember(gw, { organizationId: grant.organizationId, email: "owner@acme.example" });
    const dev = await signedInMember(gw, {
      organizationId: grant.organizationId,
      email: "dev@acme.example",
      role: "developer",
    });
    await signedInMember(gw, {
      organizationId: elsewhere.organizationId,
      email: "dev@acme.example",
      role: "developer",
    });
    await insertToken(gw, grant.id, dev.user.id, "tok_dev");
    await insertToken(gw, elsewhere.id, dev.user.id, "tok_dev_elsewhere");
    await insertToken(gw, grant.id, owner.user.id, "tok_owner");

    const res = await call(gw, owner, "DELETE", `/v1/organization/members/${dev.membership.id}`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ member: { id: dev.membership.id }, revokedTokens: 1 });
    const tokens = Object.fromEntries((await gw.db.select().from(accessTokens)).map((t) => [t.id, t.revokedAt]));
    expect(tokens).toEqual({ tok_dev: gw.clock.now().toISOString(), tok_dev_elsewhere: null, tok_owner: null });
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "member.removed"));
    expect(event?.data).toMatchObject({
      membershipId: dev.membership.id,
      revokedTokenCount: 1,
      revokedTokenIds: ["tok_dev"],
      revokedTokenIdsTruncated: false,
    });
    // The removed member reaches nothing of the organization any more; their other one still works.
    await expectProblem(await call(gw, dev, "GET", "/v1/organization/members"), 403, "forbidden");
  });

  it("security: a removal's audit event counts every token it revokes but names a bounded number", async () => {
    const gw = testGateway();
    const license = await seedLicense(gw.services);
    const { grant } = await seedGrant(gw.services, license);
    const owner = await signedInMember(gw, { organizationId: grant.organizationId, email: "owner@acme.example" });
    const dev = await signedInMember(gw, {
      organizationId: grant.organizationId,
      role: "developer",
      email: "dev@acme.example",
    });
    // More than a member could hold live at once: expired tokens stay unrevoked, and a removal revokes them too.
    const TOKENS = AUDITED_TOKEN_IDS + 30;
    const ids = Array.from({ length: TOKENS }, (_, i) => `tok_${String(i).padStart(4, "0")}`);
    for (const id of ids) {
      gw.clock.advance(1000);
      await insertToken(gw, grant.id, dev.user.id, id);
    }
    gw.clock.advance(1000);
    const res = await call(gw, owner, "DELETE", `/v1/organization/members/${dev.membership.id}`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ revokedTokens: TOKENS });
    const live = (await gw.db.select().from(accessTokens)).filter((t) => t.revokedAt === null);
    expect(live).toEqual([]);
    const [event] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "member.removed"));
    expect(event?.data).toMatchObject({
      revokedTokenCount: TOKENS,
      revokedTokenIds: ids.slice(0, AUDITED_TOKEN_IDS),
      revokedTokenIdsTruncated: true,
    });
    // A member leaving is recorded the same way.
    const again = await signedInMember(gw, { organizationId: grant.organizationId, email: "dev@acme.example" });
    await insertToken(gw, grant.id, again.user.id, "tok_last");
    expect((await call(gw, again, "DELETE", `/v1/organization/members/${again.membership.id}`)).status).toBe(200);
    const [left] = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "member.left"));
    expect(left?.data).toMatchObject({
      revokedTokenCount: 1,
      revokedTokenIds: ["tok_last"],
      revokedTokenIdsTruncated: false,
    });
  });

  it("lets any member leave, but not remove others without the admin role", async () => {
    const gw = testGateway();
    const { owner, admin, developer, viewer } = await team(gw);
    await expectProblem(
      await call(gw, developer, "DELETE", `/v1/organization/members/${viewer.membership.id}`),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, viewer, "DELETE", `/v1/organization/members/${developer.membership.id}`),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, admin, "DELETE", `/v1/organization/members/${owner.membership.id}`),
      403,
      "forbidden",
    );
    const left = await call(gw, viewer, "DELETE", `/v1/organization/members/${viewer.membership.id}`);
    expect(left.status).toBe(200);
    expect((await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "member.left"))).length).toBe(1);
    expect((await call(gw, admin, "DELETE", `/v1/organization/members/${developer.membership.id}`)).status).toBe(200);
  });

  it("reaches nothing of another organization: its members, their ids, its invitations", async () => {
    const gw = testGateway();
    const mine = await team(gw);
    const other = await signedInMember(gw, { email: "boss@other.example", role: "owner" });
    const otherDev = await signedInMember(gw, {
      email: "dev@other.example",
      role: "developer",
      organizationId: other.organizationId,
    });
    const invited = await call(gw, other, "POST", "/v1/organization/invitations", {
      email: "new@other.example",
      role: "viewer",
    });
    const invitation = (await invited.json()) as { id: string };
    const named = { "x-modelgate-organization": other.organizationId };
    await expectProblem(
      await call(gw, mine.owner, "GET", "/v1/organization/members", undefined, named),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, mine.owner, "GET", `/v1/organization/members?organization=${other.organizationId}`, undefined, {
        "x-modelgate-organization": "",
      }),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, mine.owner, "GET", "/v1/organization/invitations", undefined, named),
      403,
      "forbidden",
    );
    await expectProblem(
      await call(gw, mine.owner, "PATCH", `/v1/organization/members/${otherDev.membership.id}`, { role: "viewer" }),
      404,
      "not_found",
    );
    await expectProblem(
      await call(gw, mine.owner, "DELETE", `/v1/organization/members/${otherDev.membership.id}`),
      404,
      "not_found",
    );
    await expectProblem(
      await call(gw, mine.owner, "DELETE", `/v1/organization/invitations/${invitation.id}`),
      404,
      "not_found",
    );
    const { members } = (await (await call(gw, other, "GET", "/v1/organization/members")).json()) as {
      members: unknown[];
    };
    expect(members).toHaveLength(2);
  });

  it("refuses cross-site writes carrying a member's cookie", async () => {
    const gw = testGateway();
    const { owner, developer } = await team(gw);
    const hostiles: Record<string, string>[] = [{ origin: "https://evil.example" }, { "sec-fetch-site": "cross-site" }];
    for (const hostile of hostiles) {
      await expectProblem(
        await call(
          gw,
          owner,
          "PATCH",
          `/v1/organization/members/${developer.membership.id}`,
          { role: "viewer" },
          hostile,
        ),
        403,
        "cross_site_request",
      );
      await expectProblem(
        await call(gw, owner, "DELETE", `/v1/organization/members/${developer.membership.id}`, undefined, hostile),
        403,
        "cross_site_request",
      );
      await expectProblem(
        await call(
          gw,
          owner,
          "POST",
          "/v1/organization/invitations",
          { email: "x@acme.example", role: "viewer" },
          hostile,
        ),
        403,
        "cross_site_request",
      );
    }
    expect(gw.mailer.sent).toEqual([]);
    const [dev] = await gw.db.select().from(memberships).where(eq(memberships.id, developer.membership.id));
    expect(dev).toMatchObject({ role: "developer", removedAt: null });
  });

  it("needs a session: none or a forged one is 401", async () => {
    const gw = testGateway();
    await expectProblem(await gw.request("/v1/organization/members"), 401, "unauthorized");
    await expectProblem(
      await gw.request("/v1/organization/invitations", { headers: { cookie: "__Host-mg_session=mgsess_forged" } }),
      401,
      "unauthorized",
    );
  });

  it("refuses bad input with a 4xx problem, never a 5xx", async () => {
    const gw = testGateway();
    const { owner, developer } = await team(gw);
    const path = `/v1/organization/members/${developer.membership.id}`;
    await expectProblem(await call(gw, owner, "PATCH", path, { role: "god" }), 400, "validation_failed");
    await expectProblem(await call(gw, owner, "PATCH", path, { role: "viewer", extra: 1 }), 400, "validation_failed");
    await expectProblem(await call(gw, owner, "PATCH", path, ["viewer"]), 400, "validation_failed");
    await expectProblem(
      await gw.request(path, {
        method: "PATCH",
        headers: { ...owner.headers, "content-type": "application/json" },
        body: "{",
      }),
      400,
      "malformed_body",
    );
    await expectProblem(
      await gw.request(path, {
        method: "PATCH",
        headers: { ...owner.headers, "content-type": "application/json" },
        body: '{"__proto__":{"role":"owner"}}',
      }),
      400,
      "malformed_body",
    );
    await expectProblem(
      await gw.request(path, { method: "PATCH", headers: owner.headers, body: "role=viewer" }),
      415,
      "unsupported_media_type",
    );
    await expectProblem(
      await call(gw, owner, "PATCH", `/v1/organization/members/${"x".repeat(100)}`, { role: "viewer" }),
      400,
      "validation_failed",
    );
    await expectProblem(await call(gw, owner, "DELETE", "/v1/organization/members/mem_nobody"), 404, "not_found");
    for (const body of [
      { email: "nope", role: "viewer" },
      { email: "a@b.example", role: "boss" },
      { email: "a@b.example" },
      {},
    ]) {
      await expectProblem(
        await call(gw, owner, "POST", "/v1/organization/invitations", body),
        400,
        "validation_failed",
      );
    }
    await expectProblem(await call(gw, owner, "DELETE", "/v1/organization/invitations/inv_nobody"), 404, "not_found");
    await expectProblem(
      await call(gw, owner, "GET", `/v1/organization/members?organization=${"o".repeat(100)}`),
      403,
      "forbidden",
    );
    for (const token of ["", "x".repeat(300), "mgi_forged", "mge_wrongkind"]) {
      const page = await gw.request(`/invitations/accept?token=${token}`, {
        headers: { "cf-connecting-ip": freshIp() },
      });
      expect(page.status, token).toBeGreaterThanOrEqual(400);
      expect(page.status, token).toBeLessThan(500);
      const res = await accept(gw, token);
      expect(res.status, token).toBeGreaterThanOrEqual(400);
      expect(res.status, token).toBeLessThan(500);
    }
  });
});

describe("invitations", () => {
  it("mails a single-use link that shows a page, then makes the address a member, signed in, on /account", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    await gw.db
      .update(organizations)
      .set({ name: "Acme http://evil.example/login" })
      .where(eq(organizations.id, owner.organizationId));
    const res = await call(gw, owner, "POST", "/v1/organization/invitations", {
      email: " New@Acme.Example",
      role: "developer",
    });
    expect(res.status).toBe(201);
    const created = (await res.json()) as Record<string, unknown>;
    expect(created).toMatchObject({ email: "new@acme.example", role: "developer", invitedByUserId: owner.user.id });
    expect(JSON.stringify(created)).not.toContain("mgi_");
    const [stored] = await gw.db.select().from(invitations);
    expect(stored?.secretHash).toMatch(/^[0-9a-f]{64}$/);

    const mail = gw.mailer.sent.find((m) => m.to === "new@acme.example");
    expect(mail?.text).toContain("as developer");
    expect(mail?.text).not.toContain("evil");
    const base = gw.services.config.publicBaseUrl;
    expect(mail?.text.match(/https?:\/\/\S+/g)).toEqual([
      expect.stringMatching(new RegExp(`^${base}/invitations/accept\\?token=mgi_`)),
    ]);
    const token = invitationToken(gw, "new@acme.example");

    const listed = (await (await call(gw, owner, "GET", "/v1/organization/invitations")).json()) as {
      invitations: { id: string }[];
    };
    expect(listed.invitations.map((i) => i.id)).toEqual([created.id]);

    // Loading the page (as a mail scanner would) does not use the link.
    for (let i = 0; i < 2; i++) {
      const page = await gw.request(`/invitations/accept?token=${token}`, {
        headers: { "cf-connecting-ip": freshIp() },
      });
      expect(page.status).toBe(200);
      const html = await page.text();
      expect(html).toContain('<form method="post" action="/invitations/accept">');
      expect(html).toContain("Accept");
      expect(page.headers.get("cache-control")).toBe("no-store");
    }

    const accepted = await accept(gw, token, { origin: "http://gw.test" });
    expect(accepted.status).toBe(303);
    expect(accepted.headers.get("location")).toBe("/account");
    const cookie = accepted.headers.get("set-cookie")?.match(/__Host-mg_session=[^;]+/)?.[0] ?? "";
    expect(cookie).toMatch(/mgsess_/);
    const members = (await (await gw.request("/v1/organization/members", { headers: { cookie } })).json()) as {
      members: { email: string; role: string; emailVerified: boolean }[];
    };
    expect(members.members).toContainEqual(
      expect.objectContaining({ email: "new@acme.example", role: "developer", emailVerified: true }),
    );
    const pending = (await (await call(gw, owner, "GET", "/v1/organization/invitations")).json()) as {
      invitations: unknown[];
    };
    expect(pending.invitations).toEqual([]);

    // Used once: a replay fails and makes nothing.
    await expectProblem(await accept(gw, token), 401, "unauthorized");
    expect((await gw.db.select().from(memberships)).length).toBe(5);
  });

  it("cannot be accepted by someone signed in as another address, and still works for its own", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    const stranger = await signedInMember(gw, { email: "eve@evil.example" });
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "new@acme.example", role: "admin" });
    const token = invitationToken(gw, "new@acme.example");
    await expectProblem(await accept(gw, token, { cookie: stranger.cookie }), 403, "forbidden");
    const page = await accept(gw, token, { cookie: stranger.cookie, accept: "text/html" });
    expect(page.status).toBe(403);
    expect(await page.text()).toContain("sign out first");
    const joined = await gw.db.select().from(memberships).where(eq(memberships.userId, stranger.user.id));
    expect(joined).toHaveLength(1);
    expect((await accept(gw, token)).status).toBe(303);
  });

  it("is accepted by the same person already signed in without a second session", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    const elsewhere = await signedInMember(gw, { email: "new@acme.example" });
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "new@acme.example", role: "viewer" });
    const res = await accept(gw, invitationToken(gw, "new@acme.example"), { cookie: elsewhere.cookie });
    expect(res.status).toBe(303);
    expect(res.headers.get("set-cookie")).toBeNull();
    const orgs = await gw.db.select().from(memberships).where(eq(memberships.userId, elsewhere.user.id));
    expect(orgs.map((m) => m.organizationId).sort()).toEqual([elsewhere.organizationId, owner.organizationId].sort());
  });

  it("refuses an expired, a revoked and a replaced invitation", async () => {
    const gw = testGateway();
    const { owner, admin } = await team(gw);
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "late@acme.example", role: "viewer" });
    const late = invitationToken(gw, "late@acme.example");
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "again@acme.example", role: "viewer" });
    const replaced = invitationToken(gw, "again@acme.example");
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "again@acme.example", role: "viewer" });
    const current = invitationToken(gw, "again@acme.example");
    await expectProblem(await accept(gw, replaced), 401, "unauthorized");

    const created = await call(gw, owner, "POST", "/v1/organization/invitations", {
      email: "gone@acme.example",
      role: "viewer",
    });
    const { id } = (await created.json()) as { id: string };
    const revoked = await call(gw, admin, "DELETE", `/v1/organization/invitations/${id}`);
    expect(revoked.status).toBe(200);
    await expectProblem(await accept(gw, invitationToken(gw, "gone@acme.example")), 401, "unauthorized");
    await expectProblem(await call(gw, admin, "DELETE", `/v1/organization/invitations/${id}`), 404, "not_found");

    gw.clock.advance(7 * 86_400_000 + 1);
    await expectProblem(await accept(gw, late), 401, "unauthorized");
    await expectProblem(await accept(gw, current), 401, "unauthorized");
    const page = await gw.request(`/invitations/accept?token=${late}`, {
      headers: { accept: "text/html", "cf-connecting-ip": freshIp() },
    });
    expect(page.status).toBe(401);
    expect(await page.text()).toContain("This invitation cannot be used");
  });

  it("is for admins and owners: a developer or viewer cannot invite, only an owner invites an admin or owner", async () => {
    const gw = testGateway();
    const { owner, admin, developer, viewer } = await team(gw);
    for (const weak of [developer, viewer]) {
      await expectProblem(
        await call(gw, weak, "POST", "/v1/organization/invitations", { email: "x@acme.example", role: "viewer" }),
        403,
        "forbidden",
      );
      await expectProblem(await call(gw, weak, "GET", "/v1/organization/invitations"), 403, "forbidden");
    }
    for (const role of ["owner", "admin"]) {
      await expectProblem(
        await call(gw, admin, "POST", "/v1/organization/invitations", { email: "x@acme.example", role }),
        403,
        "forbidden",
      );
    }
    for (const [email, role] of [
      ["x@acme.example", "developer"],
      ["v@acme.example", "viewer"],
    ]) {
      expect((await call(gw, admin, "POST", "/v1/organization/invitations", { email, role })).status).toBe(201);
    }
    for (const [email, role] of [
      ["y@acme.example", "owner"],
      ["z@acme.example", "admin"],
    ]) {
      expect((await call(gw, owner, "POST", "/v1/organization/invitations", { email, role })).status).toBe(201);
    }
    await expectProblem(
      await call(gw, owner, "POST", "/v1/organization/invitations", { email: "DEV@acme.example", role: "viewer" }),
      409,
      "conflict",
    );
    expect(gw.mailer.sent.map((m) => m.to)).toEqual([
      "x@acme.example",
      "v@acme.example",
      "y@acme.example",
      "z@acme.example",
    ]);
    const stored = await gw.db.select().from(invitations);
    expect(stored.map((i) => [i.email, i.role]).sort()).toEqual([
      ["v@acme.example", "viewer"],
      ["x@acme.example", "developer"],
      ["y@acme.example", "owner"],
      ["z@acme.example", "admin"],
    ]);
  });

  it("ends an inviter's invitations their lowered role cannot give, in the same write, and keeps the rest", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    const second = await secondOwner(gw, owner);
    const sent: Record<string, string> = {};
    for (const [email, role] of [
      ["x@other.example", "owner"],
      ["a@other.example", "admin"],
      ["d@other.example", "developer"],
    ] as const) {
      const res = await call(gw, second, "POST", "/v1/organization/invitations", { email, role });
      sent[email] = ((await res.json()) as { id: string }).id;
    }
    const demoted = await call(gw, owner, "PATCH", `/v1/organization/members/${second.membership.id}`, {
      role: "admin",
    });
    expect(demoted.status).toBe(200);

    const listed = (await (await call(gw, owner, "GET", "/v1/organization/invitations")).json()) as {
      invitations: { email: string }[];
    };
    expect(listed.invitations.map((i) => i.email)).toEqual(["d@other.example"]);
    const revoked = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "invitation.revoked"));
    expect(revoked.map((e) => [e.actor, e.data])).toEqual([
      ["user:owner@acme.example", expect.objectContaining({ invitationId: sent["x@other.example"], role: "owner" })],
      ["user:owner@acme.example", expect.objectContaining({ invitationId: sent["a@other.example"], role: "admin" })],
    ]);

    // The demoted inviter's owner invitation makes nobody an owner; the one they may still give works.
    await expectProblem(await accept(gw, invitationToken(gw, "x@other.example")), 401, "unauthorized");
    await expectProblem(await accept(gw, invitationToken(gw, "a@other.example")), 401, "unauthorized");
    expect((await accept(gw, invitationToken(gw, "d@other.example"))).status).toBe(303);
    const roles = (await gw.db.select().from(memberships)).map((m) => m.role).sort();
    expect(roles).toEqual(["admin", "admin", "developer", "developer", "owner", "viewer"]);
  });

  it("ends a removed or departed member's invitations in the same write", async () => {
    const gw = testGateway();
    const { owner, admin } = await team(gw);
    const other = await signedInMember(gw, {
      organizationId: owner.organizationId,
      email: "other-admin@acme.example",
      role: "admin",
    });
    await call(gw, admin, "POST", "/v1/organization/invitations", { email: "y@other.example", role: "developer" });
    await call(gw, other, "POST", "/v1/organization/invitations", { email: "w@other.example", role: "viewer" });
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "o@other.example", role: "viewer" });

    expect((await call(gw, owner, "DELETE", `/v1/organization/members/${admin.membership.id}`)).status).toBe(200);
    expect((await call(gw, other, "DELETE", `/v1/organization/members/${other.membership.id}`)).status).toBe(200);

    const listed = (await (await call(gw, owner, "GET", "/v1/organization/invitations")).json()) as {
      invitations: { email: string }[];
    };
    expect(listed.invitations.map((i) => i.email)).toEqual(["o@other.example"]);
    const stored = Object.fromEntries((await gw.db.select().from(invitations)).map((i) => [i.email, i.revokedAt]));
    expect(stored).toEqual({
      "y@other.example": gw.clock.now().toISOString(),
      "w@other.example": gw.clock.now().toISOString(),
      "o@other.example": null,
    });
    const revoked = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "invitation.revoked"));
    expect(revoked.map((e) => [e.actor, (e.data as { email: string }).email])).toEqual([
      ["user:owner@acme.example", "y@other.example"],
      ["user:other-admin@acme.example", "w@other.example"],
    ]);
    for (const email of ["y@other.example", "w@other.example"]) {
      await expectProblem(await accept(gw, invitationToken(gw, email)), 401, "unauthorized");
    }
    expect((await accept(gw, invitationToken(gw, "o@other.example"))).status).toBe(303);
  });

  it("refuses at acceptance an invitation its inviter may no longer give, without using the link", async () => {
    const gw = testGateway();
    const { owner, admin } = await team(gw);
    const second = await secondOwner(gw, owner);
    await call(gw, second, "POST", "/v1/organization/invitations", { email: "x@other.example", role: "owner" });
    await call(gw, admin, "POST", "/v1/organization/invitations", { email: "y@other.example", role: "developer" });
    // Changed by a write that left the invitations alone, as one made before this rule did.
    await gw.db.update(memberships).set({ role: "viewer" }).where(eq(memberships.id, second.membership.id));
    await gw.db
      .update(memberships)
      .set({ removedAt: gw.clock.now().toISOString() })
      .where(eq(memberships.id, admin.membership.id));

    for (const email of ["x@other.example", "y@other.example"]) {
      await expectProblem(await accept(gw, invitationToken(gw, email)), 409, "invalid_state");
      const refusal = await accept(gw, invitationToken(gw, email), { accept: "text/html" });
      expect(refusal.status).toBe(409);
      expect(await refusal.text()).toContain("This invitation cannot be used");
      const page = await gw.request(`/invitations/accept?token=${invitationToken(gw, email)}`, {
        headers: { accept: "text/html", "cf-connecting-ip": freshIp() },
      });
      expect(page.status).toBe(409);
      expect(await page.text()).not.toContain("<form");
    }
    const joined = await gw.db.select().from(memberships);
    expect(joined.map((m) => m.role).sort()).toEqual(["admin", "developer", "owner", "viewer", "viewer"]);
    expect((await gw.db.select().from(invitations)).map((i) => i.acceptedAt)).toEqual([null, null]);
    expect(await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "invitation.accepted"))).toEqual([]);

    // Not used up: once its inviter may give it again, the same link works.
    await gw.db.update(memberships).set({ role: "owner" }).where(eq(memberships.id, second.membership.id));
    expect((await accept(gw, invitationToken(gw, "x@other.example"))).status).toBe(303);
    const [joinedOwner] = await gw.db
      .select({ role: memberships.role })
      .from(memberships)
      .innerJoin(invitations, eq(invitations.acceptedByUserId, memberships.userId))
      .where(eq(invitations.email, "x@other.example"));
    expect(joinedOwner?.role).toBe("owner");
  });

  it("lets one of two requests racing with the same link in, and only one", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "new@acme.example", role: "viewer" });
    const token = invitationToken(gw, "new@acme.example");
    const statuses = (await Promise.all([accept(gw, token), accept(gw, token), accept(gw, token)]))
      .map((r) => r.status)
      .sort();
    expect(statuses).toEqual([303, 401, 401]);
    expect((await gw.db.select().from(memberships)).length).toBe(5);
    expect(await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "invitation.accepted"))).toHaveLength(1);
  });

  it("settles an acceptance racing the inviter's demotion one way: joined as invited, or ended and refused", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    const second = await secondOwner(gw, owner);
    await call(gw, second, "POST", "/v1/organization/invitations", { email: "x@other.example", role: "owner" });
    const [accepted, demoted] = await Promise.all([
      accept(gw, invitationToken(gw, "x@other.example")),
      call(gw, owner, "PATCH", `/v1/organization/members/${second.membership.id}`, { role: "viewer" }),
    ]);
    expect(demoted.status).toBe(200);
    const [invitation] = await gw.db.select().from(invitations);
    const joined = await gw.db.select().from(memberships).where(eq(memberships.role, "owner"));
    const revoked = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "invitation.revoked"));
    if (accepted.status === 303) {
      expect(invitation).toMatchObject({ revokedAt: null, acceptedAt: expect.any(String) });
      expect(joined).toHaveLength(2);
      expect(revoked).toEqual([]);
    } else {
      expect(accepted.status).toBe(401);
      expect(invitation).toMatchObject({ revokedAt: expect.any(String), acceptedAt: null });
      expect(joined).toHaveLength(1);
      expect(revoked).toHaveLength(1);
    }
  });

  it("refuses a cross-site accept, leaving the invitation usable", async () => {
    const gw = testGateway();
    const { owner } = await team(gw);
    await call(gw, owner, "POST", "/v1/organization/invitations", { email: "new@acme.example", role: "viewer" });
    const token = invitationToken(gw, "new@acme.example");
    await expectProblem(await accept(gw, token, { origin: "https://evil.example" }), 403, "cross_site_request");
    expect((await accept(gw, token, { "sec-fetch-site": "same-origin" })).status).toBe(303);
  });
});
