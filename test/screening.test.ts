import { count, eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { auditEvents, grants, screeningEntries, screeningNames } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { csvRecords, parseScreeningList } from "../worker/screening/csv";
import { screenNames } from "../worker/screening/list";
import { normalizeEntityName, screeningKey } from "../worker/screening/names";
import SAMPLE from "./fixtures/screening-sample.csv?raw";
import { accessHeaders, adminToken } from "./helpers/access";
import { applyAndConfirm } from "./helpers/apply";
import { seedLicense, testGateway } from "./helpers/fixtures";
import { json } from "./helpers/gateway";

type Gateway = ReturnType<typeof testGateway>;

describe("screening names", () => {
  it.each([
    ["Acme Robotics GmbH", "acme robotics"],
    ["ACME  robotics, Inc.", "acme robotics"],
    ["Acme Co., Ltd.", "acme"],
    ["Société Générale d'Électronique S.A.", "societe generale delectronique"],
    ["OOO Rostec Torgovlya", "rostec torgovlya"],
    ["Smith & Sons LLC", "smith and sons"],
    ["Ｆｕｌｌｗｉｄｔｈ　Ｃｏｒｐ", "fullwidth"],
    ["Ltd", "ltd"],
    // Invisible characters do not split what a reader sees as one word.
    ["Ac\u00ADme Rock\u200Bets LLC", "acme rockets"],
    ["Acme\u2060 Rockets\uFEFF", "acme rockets"],
  ])("normalizes %s to %s", (name, normalized) => {
    expect(normalizeEntityName(name)).toBe(normalized);
  });

  it("keys names by their words in any order, so a list's surname-first form meets the applicant's", () => {
    expect(screeningKey("IVANOV, Ivan")).toBe(screeningKey("Ivan Ivanov"));
    expect(screeningKey("Acme Rockets")).not.toBe(screeningKey("Acme Robotics"));
    expect(screeningKey("!!!")).toBe("");
  });

  it.each([
    // One look-alike letter from another script: a Cyrillic о, а Cyrillic С in the legal form.
    "Acme R\u043Eckets LLC",
    "Acme Rockets LL\u0421",
    // Whole words of Cyrillic capitals, Greek capitals, Cyrillic lower case.
    "\u0410\u0421\u041C\u0415 ROCKETS LLC",
    "\u0391CM\u0395 R\u039FCK\u0395T\u0405",
    "\u0430\u0441m\u0435 r\u043E\u0441\u043A\u0435ts",
    // Fullwidth and mathematical letters, folded by compatibility decomposition.
    "\uFF21\uFF43\uFF4D\uFF45 \uFF32\uFF4F\uFF43\uFF4B\uFF45\uFF54\uFF53",
    "\u{1D400}cme Rockets",
  ])("keys %s, spelled with look-alike letters, as the Latin name it imitates", (name) => {
    expect(screeningKey(name)).toBe(screeningKey("Acme Rockets LLC"));
  });

  it("keeps names apart that differ in a letter a reader sees, in any script", () => {
    expect(screeningKey("Acme Rocketry LLC")).not.toBe(screeningKey("Acme Rockets LLC"));
    expect(screeningKey("Acme R\u043Ecketry LLC")).not.toBe(screeningKey("Acme Rockets LLC"));
    // A Greek Ρ is a P, not an R; Cyrillic Б and Д look like no Latin letter.
    expect(screeningKey("Acme \u03A1ockets")).not.toBe(screeningKey("Acme Rockets"));
    expect(screeningKey("\u0411\u0414 Rockets")).not.toBe(screeningKey("Acme Rockets"));
    expect(screeningKey("\u0418\u0432\u0430\u043D \u0418\u0432\u0430\u043D\u043E\u0432")).toBe(
      screeningKey("\u0418\u0432\u0430\u043D\u043E\u0432 \u0418\u0432\u0430\u043D"),
    );
    expect(screeningKey("\u0418\u0432\u0430\u043D \u0418\u0432\u0430\u043D\u043E\u0432")).not.toBe(
      screeningKey("Ivan Ivanov"),
    );
  });

  it("reads the Consolidated Screening List's CSV: quoted commas, aliases, countries from addresses", () => {
    expect(csvRecords('a,"b, ""c""",d\r\n"multi\nline",x,\n')).toEqual([
      ["a", 'b, "c"', "d"],
      ["multi\nline", "x", ""],
    ]);
    const parties = parseScreeningList(SAMPLE);
    expect(parties).toHaveLength(4);
    expect(parties[0]).toEqual({
      source: "Specially Designated Nationals (SDN) - Treasury Department",
      name: "ROSTEC TRADING, LTD.",
      altNames: ["Rostek Trade House", "OOO Rostec Torgovlya"],
      country: "RU",
      addresses: "12 Example Street, Moscow, , RU",
    });
    expect(parties[1]?.country).toBe("IR");
    expect(() => parseScreeningList("id,title\n1,x\n")).toThrowError(/no name or source column/);
  });
});

describe("the denied-party list at application time", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  async function loadSample(role: "admin" | "reviewer" = "admin", body = SAMPLE) {
    const token = await adminToken({ role, email: `${role}@example.com` });
    return gateway.request("/admin/api/screening/list", {
      method: "PUT",
      headers: accessHeaders(token, { "content-type": "text/csv" }),
      body,
    });
  }

  function application(organization: string, contact = "Ada Lovelace", email = "ada@applicant.example") {
    return {
      family: "llama-2",
      organization: { name: organization, website: "https://applicant.example", country: "DE" },
      contact: { name: contact, email },
      intendedUse: "Customer support assistant for our products.",
      declaredMau: 120_000,
      models: ["llama-2-7b-chat"],
      licenseSha256: license.licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    };
  }

  async function caseFile(id: string) {
    const token = await adminToken({ role: "reviewer" });
    const res = await gateway.request(`/admin/api/applications/${id}`, { headers: accessHeaders(token) });
    expect(res.status).toBe(200);
    return (await res.json()) as {
      application: { policyReasons: { code: string }[] };
      auditEvents: { action: string; data: Record<string, unknown> }[];
    };
  }

  it("loads a list as an admin, replacing the one in force, audited; reviewers may only read it", async () => {
    expect((await loadSample("reviewer")).status).toBe(403);
    const res = await loadSample();
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      entries: 4,
      sources: expect.arrayContaining(["Entity List (EL) - Bureau of Industry and Security"]),
    });
    expect((await loadSample()).status).toBe(200);
    const [stored] = await gateway.db.select({ n: count() }).from(screeningEntries);
    expect(stored?.n).toBe(4);
    const loads = (await gateway.db.select().from(auditEvents)).filter((e) => e.action === "screening.list_loaded");
    expect(loads).toHaveLength(2);
    const standing = await gateway.request("/admin/api/screening/list", {
      headers: accessHeaders(await adminToken({ role: "reviewer" })),
    });
    expect(await standing.json()).toMatchObject({ entries: 4 });
  });

  it("refuses a list without names, in another media type, or empty", async () => {
    const bad = await loadSample("admin", "id,title\n1,x\n");
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ code: "validation_failed" });
    expect((await loadSample("admin", "name,source\n")).status).toBe(400);
    const token = await adminToken({ role: "admin" });
    const json = await gateway.request("/admin/api/screening/list", {
      method: "PUT",
      headers: accessHeaders(token),
      body: JSON.stringify({ name: "x" }),
    });
    expect(json.status).toBe(415);
  });

  it("sends an organization matching a listed alias to review, and shows reviewers the listed party", async () => {
    expect((await loadSample()).status).toBe(200);
    const decided = await applyAndConfirm(gateway, application("Rostek Trade House Ltd"));
    expect(decided.status).toBe("pending_review");
    const file = await caseFile(decided.applicationId);
    expect(file.application.policyReasons.map((r) => r.code)).toEqual(["denied_party_match"]);
    const match = file.auditEvents.find((e) => e.action === "application.screening_match");
    expect(match?.data.matches).toEqual([
      expect.objectContaining({
        screened: "Rostek Trade House Ltd",
        name: "ROSTEC TRADING, LTD.",
        matchedName: "Rostek Trade House",
        source: "Specially Designated Nationals (SDN) - Treasury Department",
        country: "RU",
      }),
    ]);
    // The console's case page shows reviewers the listed party.
    const page = await gateway.request(`/admin/applications/${decided.applicationId}`, {
      headers: accessHeaders(await adminToken({ role: "reviewer" })),
    });
    const html = await page.text();
    expect(html).toContain("Denied-party screening");
    expect(html).toContain("ROSTEC TRADING, LTD.");
    expect(html).toContain("Specially Designated Nationals (SDN) - Treasury Department");
    // The applicant learns that the case is reviewed, not against which party.
    const status = await gateway.request(`/v1/applications/${decided.applicationId}`, {
      headers: { authorization: `Bearer ${decided.capability}` },
    });
    const text = await status.text();
    expect(text).toContain("denied_party_match");
    expect(text).not.toContain("ROSTEC");
    expect(text).not.toContain("SDN");
  });

  it("screens the contact's name too, in the list's surname-first form", async () => {
    expect((await loadSample()).status).toBe(200);
    const decided = await applyAndConfirm(gateway, application("Harmless Widgets GmbH", "Ivan Ivanov"));
    expect(decided.status).toBe("pending_review");
    const file = await caseFile(decided.applicationId);
    expect(file.application.policyReasons.map((r) => r.code)).toContain("denied_party_match");
  });

  it("approves a different company that shares a word with a listed one", async () => {
    expect((await loadSample()).status).toBe(200);
    const decided = await applyAndConfirm(gateway, application("Acme Robotics GmbH"));
    expect(decided.status).toBe("approved");
    expect(await screenNames(gateway.services, ["Acme Robotics GmbH", "Rostec"])).toEqual([]);
    expect(await screenNames(gateway.services, ["acme rockets, inc."])).toMatchObject([{ name: "Acme Rockets LLC" }]);
  });

  it("security: sends a listed party spelled with a look-alike letter from another script to review", async () => {
    expect((await loadSample()).status).toBe(200);
    const decided = await applyAndConfirm(gateway, application("Acme R\u043Eckets LLC"));
    expect(decided.status).toBe("pending_review");
    const file = await caseFile(decided.applicationId);
    expect(file.application.policyReasons.map((r) => r.code)).toEqual(["denied_party_match"]);
    const match = file.auditEvents.find((e) => e.action === "application.screening_match");
    expect(match?.data.matches).toEqual([
      expect.objectContaining({ screened: "Acme R\u043Eckets LLC", name: "Acme Rockets LLC" }),
    ]);
  });

  it("approves a different company whose name differs from a listed one in a letter a reader sees", async () => {
    expect((await loadSample()).status).toBe(200);
    const decided = await applyAndConfirm(gateway, application("Acme Rocketry LLC"));
    expect(decided.status).toBe("approved");
  });

  it("matches a listed alias written in Cyrillic, also in a list loaded before look-alike letters were folded", async () => {
    expect((await loadSample()).status).toBe(200);
    const cyrillic = "\u0418\u0432\u0430\u043D \u0418\u0432\u0430\u043D\u043E\u0432";
    expect(await screenNames(gateway.services, [cyrillic])).toMatchObject([{ matchedName: cyrillic }]);
    // The list in force then kept each name under its key without that folding.
    await gateway.db
      .update(screeningNames)
      .set({ nameKey: "\u0438\u0432\u0430\u043D \u0438\u0432\u0430\u043D\u043E\u0432" })
      .where(eq(screeningNames.nameKey, screeningKey(cyrillic)));
    expect(await screenNames(gateway.services, [cyrillic])).toMatchObject([
      { name: "IVANOV, Ivan Petrovich", matchedName: cyrillic },
    ]);
  });

  it("screens a request for more models again: an organization listed since its case goes to review", async () => {
    const first = await applyAndConfirm(gateway, { ...application("Acme Rockets LLC"), models: ["llama-2-7b"] });
    expect(first.status).toBe("approved");
    expect((await loadSample()).status).toBe(200);
    const res = await gateway.request(
      "/v1/organization/model-requests",
      json({ models: ["llama-2-70b"] }, { cookie: first.cookie }),
    );
    expect(res.status).toBe(201);
    const body = (await res.json()) as { applicationId: string; status: string };
    expect(body.status).toBe("pending_review");
    const file = await caseFile(body.applicationId);
    expect(file.application.policyReasons.map((r) => r.code)).toContain("denied_party_match");
    expect(file.auditEvents.map((e) => e.action)).toContain("application.screening_match");
    const [grant] = await gateway.db.select().from(grants).where(eq(grants.applicationId, first.applicationId));
    expect(grant?.models).toEqual(["llama-2-7b"]);
  });

  it("approves as before while no list is loaded", async () => {
    const decided = await applyAndConfirm(gateway, application("Rostec Trading Ltd"));
    expect(decided.status).toBe("approved");
  });
});
