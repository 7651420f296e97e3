/**
 * Organizations are found through proof, never by name: a confirmed contact's own organization.
 * Anything that only resembles another organization's case, an address at its verified domain
 * included, is linked and reviewed.
 */
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { keyOrganizationNames } from "../worker/applications/identity";
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
import { applyAndConfirm, confirmationToken, confirmRequest } from "./helpers/apply";
import { json, seedLicense, testGateway } from "./helpers/gateway";

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

  it("security: never makes a colleague at a verified domain a member; links their case to the organization's for a reviewer", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application({ name: "Globex" }, "hank@globex.example"));
    expect(first.status).toBe("approved");
    const globex = await organizationOf(gw, first.applicationId);
    expect(await gw.db.select().from(organizationDomains)).toEqual([
      expect.objectContaining({ domain: "globex.example", organizationId: globex }),
    ]);
    // The first to prove an address at a domain may be anyone there: a colleague's address proves
    // their mailbox, not a place in Hank's organization, which they join only by an owner's invitation.
    const colleague = await applyAndConfirm(gw, application({ name: "Globex Labs" }, "marge@globex.example"));
    expect(colleague).toMatchObject({ status: "pending_review", duplicate: false });
    expect(colleague.applicationId).not.toBe(first.applicationId);
    expect(await organizationOf(gw, colleague.applicationId)).not.toBe(globex);
    const roles = await gw.db
      .select({ email: users.email, role: memberships.role, organizationId: memberships.organizationId })
      .from(memberships)
      .innerJoin(users, eq(users.id, memberships.userId));
    expect(roles.filter((r) => r.organizationId === globex).map((r) => r.email)).toEqual(["hank@globex.example"]);
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, colleague.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    const links = await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, colleague.applicationId));
    expect(links.map((l) => [l.relatedApplicationId, l.reasons])).toEqual([[first.applicationId, ["email_domain"]]]);
    // The first owner's status link still works.
    const status = await gw.request(`/v1/applications/${first.applicationId}`, {
      headers: { authorization: `Bearer ${first.capability}` },
    });
    expect(status.status).toBe(200);
  });

  it("security: a relay or alias service's domain is nobody's, so its users are strangers to each other", async () => {
    const gw = testGateway();
    for (const domain of ["duck.com", "mozmail.com", "privaterelay.appleid.com", "passmail.net", "bk.ru"]) {
      const eve = await applyAndConfirm(gw, application({ name: `Eve ${domain}` }, `eve@${domain}`));
      const victim = await applyAndConfirm(gw, application({ name: `Victim ${domain}` }, `victim@${domain}`));
      expect(victim.status, domain).toBe("approved");
      expect(await organizationOf(gw, victim.applicationId)).not.toBe(await organizationOf(gw, eve.applicationId));
    }
    expect(await gw.db.select().from(organizationDomains)).toEqual([]);
  });

  it("security: refuses a member who owns none of their organizations, who would otherwise file cases in its name", async () => {
    const gw = testGateway();
    const first = await applyAndConfirm(gw, application({ name: "Initech" }, "bill@initech.example"));
    const initech = await organizationOf(gw, first.applicationId);
    const [viewer] = await gw.db
      .insert(users)
      .values({ id: "usr_viewer", email: "milton@initech.example", name: "Milton", createdAt: "2026-01-01T00:00:00Z" })
      .returning();
    await gw.db.insert(memberships).values({
      id: "mem_viewer",
      organizationId: initech as string,
      userId: viewer?.id as string,
      role: "viewer",
      createdAt: "2026-01-01T00:00:00Z",
    });
    const submitted = await gw.request(
      "/v1/applications",
      json(application({ name: "Initech" }, "milton@initech.example", { declaredMau: 1_000 })),
    );
    expect(submitted.status).toBe(201);
    const res = await confirmRequest(gw, confirmationToken(gw, "milton@initech.example"));
    expect(res.status).toBe(403);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    expect(((await res.json()) as { code: string }).code).toBe("forbidden");
    expect(await gw.db.select().from(applications)).toHaveLength(1);
    const status = await gw.request(`/v1/applications/${first.applicationId}`, {
      headers: { authorization: `Bearer ${first.capability}` },
    });
    expect(status.status).toBe(200);
  });

  it("security: a case resembling one the licensor refused needs two approvers, as that one did", async () => {
    const gw = testGateway();
    const big = await applyAndConfirm(
      gw,
      application(
        { name: "Acme Robotics GmbH", website: "https://acme-robotics.example" },
        "cto@acme-robotics.example",
        {
          declaredMau: 900_000_000,
        },
      ),
    );
    expect(big.status).toBe("pending_review");
    await gw.db.update(applications).set({ status: "rejected" }).where(eq(applications.id, big.applicationId));
    const again = await applyAndConfirm(
      gw,
      application({ name: "Acme Robotics Holding", website: "https://acme-robotics.example" }, "ops@gmail.com", {
        declaredMau: 600_000_000,
      }),
    );
    expect(again.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    expect(app?.requiredApprovals).toBe(2);
  });

  /** Acme's case over the threshold, refused: what a stranger's name is compared with below. */
  async function rejectedAcme(gw: ReturnType<typeof testGateway>, name = "Acme Robotics GmbH") {
    const big = await applyAndConfirm(
      gw,
      application({ name }, "cto@acme-robotics.example", { declaredMau: 900_000_000 }),
    );
    await gw.db.update(applications).set({ status: "rejected" }).where(eq(applications.id, big.applicationId));
    return big;
  }

  function strangerApplying(name: string, email = "acme.again@gmail.com") {
    return application({ name }, email, { declaredMau: 600_000_000 });
  }

  it.each([
    "Acme Robotics GmbH",
    "Acme Robotics, GmbH.",
    "ACME-Robotics G.m.b.H.",
    "Robotics Acme GmbH",
    "Acme Robotics Limited",
    // Look-alike letters from other scripts: a Cyrillic о, a Greek ο.
    "Acme R\u043Ebotics GmbH",
    "Acme Rob\u03BFtics GmbH",
  ])("security: sends '%s', resembling a rejected organization's name, to review", async (name) => {
    const gw = testGateway();
    const refused = await rejectedAcme(gw);
    const again = await applyAndConfirm(gw, strangerApplying(name));
    expect(again.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, again.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["related_organization"]);
    expect(app?.requiredApprovals).toBe(2);
    const links = await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, again.applicationId));
    expect(links).toEqual([
      expect.objectContaining({ relatedApplicationId: refused.applicationId, reasons: ["name"] }),
    ]);
  });

  it.each([
    ["Acme Robotics GmbH", "Acme Rocketry GmbH"],
    ["Acme Robotics GmbH", "Acme GmbH"],
    // A name of legal forms alone, or of punctuation alone, tells no organization apart.
    ["Acme Robotics GmbH", "GmbH"],
    ["GmbH", "Acme Robotics GmbH"],
    ["GmbH", "Ltd."],
    ["GmbH", "G.m.b.H."],
    ["Acme Robotics GmbH", "..."],
    ["...", "-"],
  ])("beside a rejected '%s', approves '%s' at once: no shared name", async (rejected, name) => {
    const gw = testGateway();
    await rejectedAcme(gw, rejected);
    const other = await applyAndConfirm(gw, strangerApplying(name));
    expect(other.status).toBe("approved");
    expect(await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, other.applicationId))).toEqual([]);
  });

  it("still compares an organization stored before its name had a key by its name as then normalized", async () => {
    const gw = testGateway();
    const refused = await rejectedAcme(gw);
    const acmeOrg = (await organizationOf(gw, refused.applicationId)) ?? "";
    await gw.db.update(organizations).set({ nameKey: null }).where(eq(organizations.id, acmeOrg));
    const again = await applyAndConfirm(gw, strangerApplying("  acme ROBOTICS gmbh "));
    expect(again.status).toBe("pending_review");
    const links = await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, again.applicationId));
    expect(links.map((l) => l.relatedApplicationId)).toEqual([refused.applicationId]);
  });

  it("keys the names of organizations stored before, so that punctuation stops hiding them too", async () => {
    const gw = testGateway();
    const refused = await rejectedAcme(gw);
    const acmeOrg = (await organizationOf(gw, refused.applicationId)) ?? "";
    await gw.db.update(organizations).set({ nameKey: null }).where(eq(organizations.id, acmeOrg));
    expect(await keyOrganizationNames(gw.services())).toBeGreaterThanOrEqual(1);
    const [org] = await gw.db.select().from(organizations).where(eq(organizations.id, acmeOrg));
    expect(org?.nameKey).toBe("acme robotics");
    expect(await keyOrganizationNames(gw.services())).toBe(0);
    const again = await applyAndConfirm(gw, strangerApplying("Acme Robotics, GmbH."));
    expect(again.status).toBe("pending_review");
    const links = await gw.db.select().from(caseLinks).where(eq(caseLinks.applicationId, again.applicationId));
    expect(links.map((l) => l.relatedApplicationId)).toEqual([refused.applicationId]);
  });

  it("stores each new organization's name under the key resemblance compares", async () => {
    const gw = testGateway();
    const named = await applyAndConfirm(gw, application({ name: "Acme R\u043Ebotics, GmbH." }, "x@gmail.com"));
    const [org] = await gw.db
      .select({ nameKey: organizations.nameKey, normalizedName: organizations.normalizedName })
      .from(organizations)
      .where(eq(organizations.id, (await organizationOf(gw, named.applicationId)) ?? ""));
    expect(org).toEqual({ nameKey: "acme robotics", normalizedName: "acme r\u043Ebotics, gmbh." });
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
