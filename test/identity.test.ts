/**
 * Organizations are found through proof, never by name: a confirmed contact's verified domain or
 * membership. Anything that only resembles another organization's case is linked and reviewed.
 */
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import {
  applications,
  caseLinks,
  grants,
  memberships,
  organizationDomains,
  organizations,
  users,
} from "../worker/db/schema";
import { fixedClock } from "../worker/platform/clock";
import { adminToken, TOKEN_NOW } from "./helpers/access";
import { applyAndConfirm } from "./helpers/apply";
import { seedLicense, testGateway } from "./helpers/gateway";

let licenseSha256: string;

beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
});

function application(
  organization: { name: string; website?: string; country?: string },
  email: string,
  overrides: Record<string, unknown> = {},
) {
  return {
    family: "llama-2",
    organization: { country: "DE", ...organization },
    contact: { name: "Contact", email },
    intendedUse: "Customer support assistant.",
    declaredMau: 120_000,
    licenseSha256,
    acceptLicense: true,
    acceptAup: true,
    ...overrides,
  };
}

async function organizationOf(gw: ReturnType<typeof testGateway>, applicationId: string) {
  const [row] = await gw.db
    .select({ organizationId: applications.organizationId })
    .from(applications)
    .where(eq(applications.id, applicationId));
  return row?.organizationId;
}

describe("security: organizations are never joined by name", () => {
  it("gives a stranger applying as '  ACME   ROBOTICS  ' an organization of their own, and Acme's open case sends it to review", async () => {
    const gw = testGateway();
    const acme = await applyAndConfirm(
      gw,
      application({ name: "Acme Robotics", website: "https://acme.example" }, "ada@acme.example", {
        declaredMau: 800_000_000,
      }),
    );
    expect(acme.status).toBe("pending_review");
    const stranger = await applyAndConfirm(gw, application({ name: "  ACME   ROBOTICS  " }, "eve@evil.example"));
    expect(stranger.duplicate).toBe(false);
    expect(stranger.status).toBe("pending_review");
    const acmeOrg = await organizationOf(gw, acme.applicationId);
    const strangerOrg = await organizationOf(gw, stranger.applicationId);
    expect(strangerOrg).not.toBe(acmeOrg);
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, stranger.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    expect(await gw.db.select().from(caseLinks)).toEqual([
      expect.objectContaining({
        applicationId: stranger.applicationId,
        relatedApplicationId: acme.applicationId,
        reasons: ["name"],
      }),
    ]);
    // The stranger is a member of their own organization only.
    const [eve] = await gw.db.select().from(users).where(eq(users.email, "eve@evil.example"));
    const eveMemberships = await gw.db
      .select()
      .from(memberships)
      .where(eq(memberships.userId, eve?.id ?? ""));
    expect(eveMemberships.map((m) => [m.organizationId, m.role])).toEqual([[strangerOrg, "owner"]]);
  });

  it("links a case whose name differs only by invisible characters, or whose website only by a trailing dot", async () => {
    const gw = testGateway();
    const big = await applyAndConfirm(
      gw,
      application({ name: "Bolt Robotics GmbH", website: "https://bolt.example" }, "bo@bolt.example", {
        declaredMau: 1_200_000_000,
      }),
    );
    expect(big.status).toBe("pending_review");
    const byName = await applyAndConfirm(
      gw,
      application({ name: "Bolt Ro\u00ADbotics\u200B GmbH" }, "bo.bolt@gmail.com"),
    );
    const bySite = await applyAndConfirm(
      gw,
      application({ name: "Bolt Holding Two", website: "https://bolt.example." }, "bo.bolt4@gmail.com"),
    );
    for (const again of [byName, bySite]) {
      expect(again.status).toBe("pending_review");
      const [app] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
      expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    }
  });

  it("gives a stranger resembling an approved organization a separate organization with none of its grant", async () => {
    const gw = testGateway();
    const acme = await applyAndConfirm(gw, application({ name: "Acme Robotics" }, "ada@acme.example"));
    const stranger = await applyAndConfirm(gw, application({ name: "ACME robotics" }, "eve@evil.example"));
    expect(await organizationOf(gw, stranger.applicationId)).not.toBe(await organizationOf(gw, acme.applicationId));
    const [strangerGrant] = await gw.db.select().from(grants).where(eq(grants.applicationId, stranger.applicationId));
    const [acmeGrant] = await gw.db.select().from(grants).where(eq(grants.applicationId, acme.applicationId));
    expect(strangerGrant?.id).not.toBe(acmeGrant?.id);
    expect(strangerGrant?.organizationId).toBe(await organizationOf(gw, stranger.applicationId));
  });

  it("keeps an over-threshold case's organization from being approved past it under another name or address", async () => {
    const gw = testGateway();
    const big = await applyAndConfirm(
      gw,
      application({ name: "Hyperscale Social", website: "https://hyperscale.example" }, "cto@hyperscale.example", {
        declaredMau: 1_200_000_000,
      }),
    );
    expect(big.status).toBe("pending_review");
    // Same company, another address, a small declared figure: still the licensor's to decide.
    const again = await applyAndConfirm(
      gw,
      application({ name: "Hyperscale Social" }, "intern@gmail.com", { declaredMau: 50_000 }),
    );
    expect(again.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    expect(app?.requiredApprovals).toBe(2);
    // Through the website instead of the name, the same.
    const viaSite = await applyAndConfirm(
      gw,
      application({ name: "HS Labs", website: "https://www.hyperscale.example/labs" }, "ops@hslabs.example", {
        declaredMau: 10,
      }),
    );
    expect(viaSite.status).toBe("pending_review");
    const links = await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, viaSite.applicationId));
    expect(links.map((l) => l.reasons)).toContainEqual(["website"]);
  });

  it("sends a case resembling a recently rejected one to review instead of approving it (cool-down across organizations)", async () => {
    const gw = testGateway({ clock: fixedClock("2026-03-01T00:00:00Z") });
    const rejected = await applyAndConfirm(
      gw,
      application({ name: "Northwind", country: "KP" }, "a@northwind.example"),
    );
    expect(rejected.status).toBe("rejected");
    const renamed = await applyAndConfirm(gw, application({ name: "northwind" }, "b@other-northwind.example"));
    expect(renamed.status).toBe("pending_review");
  });

  it("links a contact whose company domain is another organization's verified domain to that organization, not a new one", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application({ name: "Globex" }, "hank@globex.example"));
    expect(await gw.db.select().from(organizationDomains)).toEqual([
      expect.objectContaining({
        domain: "globex.example",
        organizationId: await organizationOf(gw, first.applicationId),
      }),
    ]);
    // A colleague's application joins Globex (the case already stands, so it is shown).
    const colleague = await applyAndConfirm(gw, application({ name: "Globex Corporation" }, "marge@globex.example"));
    expect(colleague).toMatchObject({ applicationId: first.applicationId, duplicate: true });
    const orgs = await gw.db.select().from(organizations);
    expect(orgs).toHaveLength(1);
    const roles = await gw.db
      .select({ email: users.email, role: memberships.role })
      .from(memberships)
      .innerJoin(users, eq(users.id, memberships.userId));
    expect(roles.sort((a, b) => a.email.localeCompare(b.email))).toEqual([
      { email: "hank@globex.example", role: "owner" },
      { email: "marge@globex.example", role: "developer" },
    ]);
  });

  it("never makes a free-mail domain an organization's, nor joins people through it", async () => {
    const gw = testGateway();
    const a = await applyAndConfirm(gw, application({ name: "Solo A" }, "alice@gmail.com"));
    const b = await applyAndConfirm(gw, application({ name: "Solo B" }, "bob@gmail.com"));
    expect(await gw.db.select().from(organizationDomains)).toEqual([]);
    expect(await organizationOf(gw, a.applicationId)).not.toBe(await organizationOf(gw, b.applicationId));
    expect(b.status).toBe("approved");
  });
});

describe("related cases in the review console", () => {
  it("shows a reviewer the resembling cases side by side, in the API and on the case page", async () => {
    const gw = testGateway({ clock: fixedClock(TOKEN_NOW) });
    const big = await applyAndConfirm(
      gw,
      application({ name: "Hyperscale Social" }, "cto@hyperscale.example", { declaredMau: 1_200_000_000 }),
    );
    const again = await applyAndConfirm(gw, application({ name: "hyperscale social" }, "x@gmail.com"));
    const headers = { "cf-access-jwt-assertion": await adminToken({ role: "reviewer" }) };
    for (const [id, other] of [
      [again.applicationId, big.applicationId],
      [big.applicationId, again.applicationId],
    ] as const) {
      const res = await gw.request(`/admin/api/applications/${id}`, { headers });
      expect(res.status, await res.clone().text()).toBe(200);
      const file = (await res.json()) as {
        relatedCases: { id: string; reasons: string[]; declaredMau: number }[];
      };
      expect(file.relatedCases.map((r) => [r.id, r.reasons])).toEqual([[other, ["name"]]]);
    }
    const page = await (await gw.request(`/admin/applications/${again.applicationId}`, { headers })).text();
    expect(page).toContain("Related cases of other organizations");
    expect(page).toContain("1,200,000,000");
    expect(page).toContain("same name");
  });
});

describe("grants cover what was applied for", () => {
  it("issues a grant for the models of the application only", async () => {
    const gw = testGateway();
    const confirmed = await applyAndConfirm(
      gw,
      application({ name: "Seven Only" }, "x@seven.example", { models: ["llama-2-7b"] }),
    );
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, confirmed.applicationId));
    expect(grant?.models).toEqual(["llama-2-7b"]);
  });
});
