/// <reference types="vite/client" />
import { modelInfo } from "@huggingface/hub";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { applications, grants, licenseVersions, organizations } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { chatTemplateAllowance, tokenBound } from "../worker/inference/token-bound";
import { tokenCounterFor } from "../worker/inference/tokenizer";
import { fixedClock } from "../worker/platform/clock";
import { evaluateApplication, measurementMonth } from "../worker/policy/evaluate";
import evaluateSource from "../worker/policy/evaluate.ts?raw";
import { FAMILIES, findFamily, findModelByHubRepo } from "../worker/policy/families";
import { noticeWithDuties } from "../worker/policy/notice";
import regionsSource from "../worker/policy/regions.ts?raw";
import type { LicenseFamily } from "../worker/policy/types";
import { applyAndConfirm } from "./helpers/apply";
import { scopedBackend } from "./helpers/backends";
import { insertLicenseVersion, json, testGateway } from "./helpers/gateway";
import { usageRows } from "./helpers/ledger";
import { signedInMember } from "./helpers/members";
import { approvedToken, seedRevision } from "./helpers/weights";

const clean = { country: "US", declaredMau: 1_000, intendedUse: "Customer support assistant for our shop." };

function family(id: string): LicenseFamily {
  const found = findFamily(id);
  if (!found) throw new Error(`no family ${id}`);
  return found;
}

/** Loads a family's license version (without the audit event a real load writes). */
async function loadLicense(gw: ReturnType<typeof testGateway>, familyId: string) {
  return insertLicenseVersion(gw.services(), {
    family: familyId,
    license: `${familyId} license (test text)`,
    aup: `${familyId} AUP (test text)`,
    source: "placeholder",
  });
}

/** Beispiel KI's application for `models` of a family, declaring `country`. */
function beispiel(family: string, licenseSha256: string, country: string, models?: string[]) {
  return {
    family,
    organization: { name: "Beispiel KI GmbH", website: "https://beispiel.example", country },
    contact: { name: "Ada Lovelace", email: "ada@beispiel.example" },
    intendedUse: "Customer support assistant for our shop.",
    declaredMau: 120_000,
    licenseSha256,
    acceptLicense: true,
    acceptAup: true,
    ...(models ? { models } : {}),
  };
}

/**
 * An organization in `country` with an approved application and active grant of `familyId`
 * covering `models`, a signed-in owner, and a token that owner minted for that family.
 */
async function grantedToken(
  gw: ReturnType<typeof testGateway>,
  familyId: string,
  models: string[],
  country = "US",
): Promise<{ token: string; member: Awaited<ReturnType<typeof signedInMember>> }> {
  const { db, ids, clock } = gw.services();
  const at = clock.now().toISOString();
  const [license] = await db.select().from(licenseVersions).where(eq(licenseVersions.family, familyId));
  if (!license) throw new Error("load the license first");
  const organizationId = ids.id("org");
  const name = `Globex ${ids.id("n")}`;
  await db.insert(organizations).values({
    id: organizationId,
    name,
    normalizedName: name.toLowerCase(),
    website: null,
    country,
    createdAt: at,
  });
  const member = await signedInMember(gw, { organizationId });
  const applicationId = ids.id("app");
  await db.insert(applications).values({
    id: applicationId,
    family: familyId,
    organizationId,
    organizationName: name,
    website: null,
    country,
    contactName: "Grace",
    contactEmail: member.user.email,
    contactUserId: member.user.id,
    intendedUse: "Customer support assistant.",
    declaredMau: 5_000,
    models,
    status: "approved",
    policyReasons: [],
    requiredApprovals: 1,
    licenseVersionId: license.id,
    createdAt: at,
    updatedAt: at,
    decidedAt: at,
  });
  await db.insert(grants).values({
    id: ids.id("grt"),
    applicationId,
    organizationId,
    family: familyId,
    models,
    licenseVersionId: license.id,
    status: "active",
    createdAt: at,
    updatedAt: at,
  });
  const minted = await gw.request(
    "/v1/tokens",
    json({ name: "ci", scopes: ["download", "inference"], family: familyId }, member.headers),
  );
  if (minted.status !== 201) throw new Error(`token mint failed: ${minted.status} ${await minted.text()}`);
  return { token: ((await minted.json()) as { token: string }).token, member };
}

/** The gateway's fetch for the Hub client, following same-origin redirects. */
function hubFetch(gw: ReturnType<typeof testGateway>): typeof fetch {
  return async (input, init) => {
    let url = new URL(input instanceof Request ? input.url : String(input));
    for (let hop = 0; hop < 5; hop++) {
      const res = await gw.request(url.pathname + url.search, init);
      const location = res.headers.get("location");
      if (res.status < 300 || res.status >= 400 || !location) return res;
      url = new URL(location, url);
    }
    throw new Error("too many redirects");
  };
}

describe("the Llama 3 family line as data", () => {
  it.each([
    ["llama-3", "2024-04-18", "2024-03"],
    ["llama-3.1", "2024-07-23", "2024-06"],
    ["llama-3.2", "2024-09-25", "2024-08"],
    ["llama-3.3", "2024-12-06", "2024-11"],
  ])("%s, released %s, measures 700M monthly active users in %s", (id, releaseDate, month) => {
    const f = family(id);
    expect(f.releaseDate).toBe(releaseDate);
    expect(f.mau).toEqual({
      threshold: 700_000_000,
      rule: "greater_than",
      includesAffiliates: true,
      measuredMonth: month,
    });
    expect(measurementMonth(f.releaseDate)).toBe(month);

    expect(evaluateApplication({ ...clean, declaredMau: 700_000_000 }, f).outcome).toBe("approve");
    const over = evaluateApplication({ ...clean, declaredMau: 700_000_001 }, f);
    expect(over.outcome).toBe("review");
    expect(over.requiredApprovals).toBe(2);
    expect(over.reasons).toHaveLength(1);
    expect(over.reasons[0]?.code).toBe("mau_over_threshold");
    expect(over.reasons[0]?.detail).toContain(`in ${month},`);
  });

  it("asks the applicant for June 2024's figure on the Llama 3.1 form, and March 2024's on Llama 3's", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.1");
    await loadLicense(gw, "llama-3");
    const form31 = await (await gw.request("/apply/llama-3.1")).text();
    expect(form31).toContain("Monthly active users in June 2024");
    expect(form31).not.toContain("June 2023");
    const form3 = await (await gw.request("/apply/llama-3")).text();
    expect(form3).toContain("Monthly active users in March 2024");
  });

  it("serves each family's models under their own Hub repository ids, and no model id twice", () => {
    expect(findModelByHubRepo("meta-llama/Meta-Llama-3-8B-Instruct")?.family.id).toBe("llama-3");
    expect(findModelByHubRepo("meta-llama/llama-3.1-405b-instruct")?.model.id).toBe("llama-3.1-405b-instruct");
    expect(findModelByHubRepo("meta-llama/Llama-3.2-11B-Vision-Instruct")?.family.id).toBe("llama-3.2");
    expect(findModelByHubRepo("meta-llama/Llama-3.3-70B-Instruct")?.family.id).toBe("llama-3.3");
    const ids = [...FAMILIES.values()].flatMap((f) => f.models.map((m) => m.id));
    const repos = [...FAMILIES.values()].flatMap((f) => f.models.map((m) => m.hubRepo.toLowerCase()));
    expect(new Set(ids).size).toBe(ids.length);
    expect(new Set(repos).size).toBe(repos.length);
  });
});

describe("each family's placeholder texts", () => {
  const placeholders = import.meta.glob<string>("../scripts/seed/*.placeholder.*", {
    query: "?raw",
    import: "default",
    eager: true,
  });

  it.each([...FAMILIES.keys()])("%s has its own license and AUP placeholder, naming its notice", (id) => {
    const license = placeholders[`../scripts/seed/${id}-license.placeholder.txt`];
    const aup = placeholders[`../scripts/seed/${id}-aup.placeholder.md`];
    expect(license).toContain("PLACEHOLDER");
    expect(aup).toContain("PLACEHOLDER");
    expect(license).toContain(`--family ${id} `);
    const notice = family(id).noticeText.split("\n")[0] ?? "";
    expect(license?.replace(/\s+/g, " ")).toContain(notice);
  });

  it("Llama 3.2's AUP placeholder carries the European Union clause for the multimodal models", () => {
    const aup = placeholders["../scripts/seed/llama-3.2-aup.placeholder.md"]?.replace(/\s+/g, " ");
    expect(aup).toContain("principal place of business in, the European Union");
    expect(placeholders["../scripts/seed/llama-3.1-aup.placeholder.md"]).not.toContain("European Union");
  });
});

describe("a made-up family decided by the generic engine", () => {
  const acme: LicenseFamily = {
    id: "acme-open",
    displayName: "Acme Open",
    licenseName: "ACME OPEN LICENSE",
    licensor: "Acme Corp.",
    releaseDate: "2025-01-10",
    mau: { threshold: 1_000, rule: "greater_than", includesAffiliates: false, measuredMonth: "2024-12" },
    exportReviewCountries: ["BR"],
    embargoedCountries: ["AQ"],
    aupCategories: [{ id: "rockets", section: "9", title: "Rockets", phrases: ["rocket"] }],
    noticeText: noticeWithDuties("Acme Open is licensed under the Acme Open License.", [
      { id: "credit", section: "3", text: 'Show "Powered by Acme".' },
    ]),
    duties: [{ id: "credit", section: "3", text: 'Show "Powered by Acme".' }],
    reapplyCooldownDays: 7,
    models: [
      { id: "acme-s", displayName: "Acme S", parameters: "1B", variant: "base", hubRepo: "acme/s" },
      {
        id: "acme-eye",
        displayName: "Acme Eye",
        parameters: "2B",
        variant: "chat",
        hubRepo: "acme/eye",
        excludedRegions: ["EU", "CH"],
      },
    ],
  };

  it("applies the family's own threshold, month, lists and model exclusions", () => {
    const over = evaluateApplication({ ...clean, declaredMau: 1_001 }, acme);
    expect(over.reasons.map((r) => r.code)).toEqual(["mau_over_threshold"]);
    expect(over.reasons[0]?.detail).toContain("in 2024-12,");
    expect(evaluateApplication({ ...clean, declaredMau: 1_000 }, acme).outcome).toBe("approve");
    expect(evaluateApplication({ ...clean, country: "BR" }, acme).reasons.map((r) => r.code)).toEqual([
      "export_review_country",
    ]);
    expect(evaluateApplication({ ...clean, country: "AQ" }, acme).outcome).toBe("reject");
    expect(evaluateApplication({ ...clean, intendedUse: "rocket guidance" }, acme).reasons[0]?.category).toBe(
      "rockets",
    );

    // A region by name (the EU) and a single country (CH) both exclude the model; elsewhere it is licensed.
    for (const country of ["FR", "ch"]) {
      const refused = evaluateApplication({ ...clean, country, models: ["acme-s", "acme-eye"] }, acme);
      expect(refused.outcome).toBe("reject");
      expect(refused.reasons).toEqual([expect.objectContaining({ code: "model_region_excluded", model: "acme-eye" })]);
    }
    // The parts of the Union with codes of their own are in it: French outermost regions, Åland.
    for (const country of ["RE", "GP", "MQ", "GF", "YT", "MF", "AX"]) {
      const refused = evaluateApplication({ ...clean, country, models: ["acme-eye"] }, acme);
      expect(refused.outcome, country).toBe("reject");
    }
    expect(evaluateApplication({ ...clean, country: "FR", models: ["acme-s"] }, acme).outcome).toBe("approve");
    expect(evaluateApplication({ ...clean, country: "NO", models: ["acme-eye"] }, acme).outcome).toBe("approve");
    expect(acme.noticeText).toContain('Show "Powered by Acme". (section 3)');
  });

  it("keeps family names out of the engine and the region table", () => {
    for (const source of [evaluateSource, regionsSource]) {
      expect(source).not.toMatch(/llama|meta platforms|vision/i);
    }
  });
});

describe("Llama 3.2's vision models and the European Union", () => {
  const vision = [
    "llama-3.2-11b-vision",
    "llama-3.2-11b-vision-instruct",
    "llama-3.2-90b-vision",
    "llama-3.2-90b-vision-instruct",
  ];
  const text = ["llama-3.2-1b", "llama-3.2-1b-instruct", "llama-3.2-3b", "llama-3.2-3b-instruct"];

  it("the policy refuses each vision model to an EU organization and grants the text models", () => {
    const f = family("llama-3.2");
    expect(f.models.filter((m) => m.excludedRegions?.includes("EU")).map((m) => m.id)).toEqual(vision);
    const refused = evaluateApplication({ ...clean, country: "DE", models: [...text, ...vision] }, f);
    expect(refused.outcome).toBe("reject");
    expect(refused.reasons.map((r) => r.model)).toEqual(vision);
    expect(refused.reasons[0]?.detail).toContain("the European Union");
    expect(evaluateApplication({ ...clean, country: "DE", models: text }, f).outcome).toBe("approve");
    // Outside the EU, and for other families, nothing changes.
    expect(evaluateApplication({ ...clean, country: "US", models: vision }, f).outcome).toBe("approve");
    expect(evaluateApplication({ ...clean, country: "CH", models: vision }, f).outcome).toBe("approve");
    expect(
      evaluateApplication({ ...clean, country: "DE", models: ["llama-3.1-8b"] }, family("llama-3.1")).outcome,
    ).toBe("approve");
  });

  it("an EU applicant asking for a vision model is refused that model with the reason; the text models are granted", async () => {
    const gw = testGateway();
    const license = await loadLicense(gw, "llama-3.2");
    const body = {
      family: "llama-3.2",
      organization: { name: "Beispiel KI GmbH", website: "https://beispiel.example", country: "DE" },
      contact: { name: "Ada Lovelace", email: "ada@beispiel.example" },
      intendedUse: "Customer support assistant for our shop.",
      declaredMau: 120_000,
      licenseSha256: license.licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    };

    const refused = await gw.request(
      "/v1/applications",
      json({ ...body, models: ["llama-3.2-3b-instruct", "llama-3.2-11b-vision-instruct"] }),
    );
    expect(refused.status).toBe(400);
    expect(refused.headers.get("content-type")).toContain("application/problem+json");
    const problem = (await refused.json()) as { code: string; errors: { field: string; message: string }[] };
    expect(problem.code).toBe("validation_failed");
    expect(problem.errors).toHaveLength(1);
    expect(problem.errors[0]?.field).toBe("models");
    expect(problem.errors[0]?.message).toContain("Llama 3.2 11B Vision Instruct is not licensed");
    expect(problem.errors[0]?.message).toContain("the European Union (DE)");
    expect(problem.errors[0]?.message).not.toContain("3B Instruct");

    // Without a list, the family's default (every model) would include them: the answer names the licensed ones.
    const unlisted = await gw.request("/v1/applications", json(body));
    expect(unlisted.status).toBe(400);
    const unlistedProblem = (await unlisted.json()) as { errors: { field: string; message: string }[] };
    expect(unlistedProblem.errors[0]?.field).toBe("models");
    expect(unlistedProblem.errors[0]?.message).toContain(text.join(", "));

    // Nothing was stored or mailed for the refused requests.
    expect(gw.mailer.sent).toHaveLength(0);

    const confirmed = await applyAndConfirm(gw, { ...body, models: text });
    expect(confirmed.status).toBe("approved");
    const [grant] = await gw.db.select().from(grants).where(eq(grants.applicationId, confirmed.applicationId));
    expect(grant?.family).toBe("llama-3.2");
    expect(grant?.models).toEqual(text);
  });

  it("security: judges an organization's further case by the country on record, not the one declared now", async () => {
    const gw = testGateway();
    const base = await loadLicense(gw, "llama-2");
    const license = await loadLicense(gw, "llama-3.2");
    expect((await applyAndConfirm(gw, beispiel("llama-2", base.licenseSha256, "DE"))).status).toBe("approved");
    // The same organization, now saying it is in the US: the vision model stays out of its reach.
    const vision = await applyAndConfirm(
      gw,
      beispiel("llama-3.2", license.licenseSha256, "US", ["llama-3.2-90b-vision-instruct"]),
    );
    expect(vision.status).toBe("rejected");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, vision.applicationId));
    expect(app?.policyReasons.map((r) => r.code).sort()).toEqual([
      "country_differs_from_record",
      "model_region_excluded",
    ]);
    expect(await gw.db.select().from(grants).where(eq(grants.applicationId, vision.applicationId))).toEqual([]);
  });

  it("security: sends a text model asked for from another country than the one on record to a reviewer", async () => {
    const gw = testGateway();
    const base = await loadLicense(gw, "llama-2");
    const license = await loadLicense(gw, "llama-3.2");
    expect((await applyAndConfirm(gw, beispiel("llama-2", base.licenseSha256, "DE"))).status).toBe("approved");
    const other = await applyAndConfirm(
      gw,
      beispiel("llama-3.2", license.licenseSha256, "US", ["llama-3.2-1b-instruct"]),
    );
    expect(other.status).toBe("pending_review");
    const [app] = await gw.db.select().from(applications).where(eq(applications.id, other.applicationId));
    expect(app?.policyReasons.map((r) => r.code)).toEqual(["country_differs_from_record"]);
  });

  it("a US applicant gets the vision models", async () => {
    const gw = testGateway();
    const license = await loadLicense(gw, "llama-3.2");
    const application = {
      family: "llama-3.2",
      organization: { name: "Example Vision Inc", website: "https://vision.example", country: "US" },
      contact: { name: "Grace Hopper", email: "grace@vision.example" },
      intendedUse: "Reading receipts for our bookkeeping product.",
      declaredMau: 50_000,
      models: ["llama-3.2-11b-vision-instruct"],
      licenseSha256: license.licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    };
    const confirmed = await applyAndConfirm(gw, application);
    expect(confirmed.status).toBe("approved");
  });

  it("an EU organization holding the text models is refused the vision models when it asks for more; a US one gets them", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.2");
    const ask = (member: Awaited<ReturnType<typeof signedInMember>>, models: string[]) =>
      gw.request("/v1/organization/model-requests", json({ family: "llama-3.2", models }, member.headers));

    const eu = await grantedToken(gw, "llama-3.2", ["llama-3.2-3b-instruct"], "FR");
    const refused = await ask(eu.member, ["llama-3.2-1b-instruct", "llama-3.2-90b-vision-instruct"]);
    expect(refused.status).toBe(201);
    const outcome = (await refused.json()) as { status: string; reasons: { code: string; detail: string }[] };
    expect(outcome.status).toBe("rejected");
    expect(outcome.reasons.map((r) => r.code)).toEqual(["model_region_excluded"]);
    expect(outcome.reasons[0]?.detail).toContain("Llama 3.2 90B Vision Instruct is not licensed");
    const [euGrant] = await gw.db.select().from(grants).where(eq(grants.organizationId, eu.member.organizationId));
    expect(euGrant?.models).toEqual(["llama-3.2-3b-instruct"]);

    const us = await grantedToken(gw, "llama-3.2", ["llama-3.2-3b-instruct"], "US");
    const granted = await ask(us.member, ["llama-3.2-90b-vision-instruct"]);
    expect(((await granted.json()) as { status: string }).status).toBe("approved");
    const [usGrant] = await gw.db.select().from(grants).where(eq(grants.organizationId, us.member.organizationId));
    expect(usGrant?.models).toEqual(["llama-3.2-3b-instruct", "llama-3.2-90b-vision-instruct"]);
  });

  it("the form marks the vision models as not licensed in the European Union", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.2");
    const form = await (await gw.request("/apply/llama-3.2")).text();
    expect(form).toContain(
      "Llama 3.2 11B Vision Instruct (not licensed to organizations whose principal place of business is in the European Union)",
    );
    expect(form).not.toContain("Llama 3.2 3B Instruct (not licensed");
  });
});

describe("the NOTICE and duties of each family", () => {
  it.each([
    [
      "llama-3",
      "Meta Llama 3 is licensed under the Meta Llama 3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
      '"Built with Meta Llama 3"',
      '"Llama 3"',
    ],
    [
      "llama-3.1",
      "Llama 3.1 is licensed under the Llama 3.1 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
      '"Built with Llama"',
      '"Llama"',
    ],
    [
      "llama-3.2",
      "Llama 3.2 is licensed under the Llama 3.2 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
      '"Built with Llama"',
      '"Llama"',
    ],
    [
      "llama-3.3",
      "Llama 3.3 is licensed under the Llama 3.3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
      '"Built with Llama"',
      '"Llama"',
    ],
  ])("%s: the notice verbatim, then attribution and naming", (id, notice, builtWith, prefix) => {
    const f = family(id);
    expect(f.noticeText.startsWith(`${notice}\n\n`)).toBe(true);
    expect(f.duties.map((d) => d.id)).toEqual(["attribution", "model_naming", "notice"]);
    const [attribution, naming] = f.duties;
    expect(attribution?.text).toContain(builtWith);
    expect(naming?.text).toContain(`with ${prefix}.`);
    for (const duty of f.duties) expect(f.noticeText).toContain(duty.text);
  });

  it("GET /v1/licenses/{family} publishes the duties, the NOTICE and each model's excluded regions", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.2");
    const res = await gw.request("/v1/licenses/llama-3.2");
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      releaseDate: string;
      mauMeasuredMonth: string;
      noticeText: string;
      duties: { id: string }[];
      models: { id: string; hubRepo: string; excludedRegions: string[] }[];
    };
    expect(body).toMatchObject({ releaseDate: "2024-09-25", mauMeasuredMonth: "2024-08" });
    expect(body.noticeText).toBe(family("llama-3.2").noticeText);
    expect(body.duties.map((d) => d.id)).toEqual(["attribution", "model_naming", "notice"]);
    expect(body.models.find((m) => m.id === "llama-3.2-11b-vision-instruct")).toEqual({
      id: "llama-3.2-11b-vision-instruct",
      displayName: "Llama 3.2 11B Vision Instruct",
      hubRepo: "meta-llama/Llama-3.2-11B-Vision-Instruct",
      excludedRegions: ["EU"],
    });
    expect(body.models.find((m) => m.id === "llama-3.2-3b-instruct")?.excludedRegions).toEqual([]);
  });

  it("Llama 2's NOTICE stays its one sentence, with no duties added", () => {
    const f = family("llama-2");
    expect(f.duties).toEqual([]);
    expect(f.noticeText).toBe(
      "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms, Inc. All Rights Reserved.",
    );
  });

  it("writes the duties into the NOTICE of a Llama 3.1 download and its manifest", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.1");
    await seedRevision("llama-3.1-8b-instruct", { "config.json": '{"architectures":["LlamaForCausalLM"]}' });
    const { token } = await grantedToken(gw, "llama-3.1", ["llama-3.1-8b-instruct"]);
    const auth = { authorization: `Bearer ${token}` };

    const manifest = await gw.request("/v1/models/llama-3.1-8b-instruct/manifest", { headers: auth });
    expect(manifest.status).toBe(200);
    const body = (await manifest.json()) as { family: string; notice: string };
    expect(body.family).toBe("llama-3.1");
    expect(body.notice).toBe(family("llama-3.1").noticeText);

    const script = await gw.request("/v1/models/llama-3.1-8b-instruct/download.sh", { headers: auth });
    expect(script.status).toBe(200);
    const text = await script.text();
    expect(text).toContain("NOTICE");
    expect(text).toContain("Llama 3.1 is licensed under the Llama 3.1 Community License");
    for (const duty of family("llama-3.1").duties) expect(text).toContain(duty.text);
    expect(text).toContain("llama-3.1 license (test text)");
  });

  it("shows the duties on the form and on an approved case's status page", async () => {
    const gw = testGateway();
    const license = await loadLicense(gw, "llama-3.3");
    const form = await (await gw.request("/apply/llama-3.3")).text();
    expect(form).toContain("What the license asks of you");
    expect(form).toContain("&quot;Built with Llama&quot;");

    const application = {
      family: "llama-3.3",
      organization: { name: "Example Chat Inc", website: "https://chat.example", country: "US" },
      contact: { name: "Grace Hopper", email: "grace@chat.example" },
      intendedUse: "Customer support assistant for our shop.",
      declaredMau: 50_000,
      licenseSha256: license.licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    };
    const confirmed = await applyAndConfirm(gw, application);
    expect(confirmed.status).toBe("approved");
    const page = await (
      await gw.request(new URL(confirmed.statusUrl).pathname + new URL(confirmed.statusUrl).search)
    ).text();
    expect(page).toContain("What the license asks of you");
    expect(page).toContain("with &quot;Llama&quot;.");
  });

  it("the Llama 2 form shows no duties section", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-2");
    const form = await (await gw.request("/apply/llama-2")).text();
    expect(form).toContain("Monthly active users in June 2023");
    expect(form).not.toContain("What the license asks of you");
  });
});

describe("the Hub API per family", () => {
  it("resolves a Llama 3 repository for a token whose grant covers it, and refuses a Llama 2 grant's token", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3");
    const llama2License = await loadLicense(gw, "llama-2");
    const { revision } = await seedRevision("llama-3-8b-instruct", { "config.json": '{"model_type":"llama"}' });
    const repo = "meta-llama/Meta-Llama-3-8B-Instruct";

    const { token: llama3Token } = await grantedToken(gw, "llama-3", ["llama-3-8b-instruct"]);
    const info = await modelInfo({
      name: repo,
      hubUrl: "http://gw",
      accessToken: `hf_${llama3Token}`,
      fetch: hubFetch(gw),
      additionalFields: ["sha"],
    });
    expect(info).toMatchObject({ name: repo, sha: revision });
    const file = await hubFetch(gw)(`http://gw/${repo}/resolve/main/config.json`, {
      headers: { authorization: `Bearer hf_${llama3Token}` },
    });
    expect(file.status).toBe(200);
    expect(await file.text()).toBe('{"model_type":"llama"}');

    const { token: llama2Token } = await approvedToken(gw, llama2License.licenseSha256);
    const refused = await gw.request(`/api/models/${repo}`, { headers: { authorization: `Bearer hf_${llama2Token}` } });
    expect(refused.status).toBe(403);
    expect(refused.headers.get("x-error-code")).toBe("GatedRepo");
    const refusedFile = await gw.request(`/${repo}/resolve/main/config.json`, {
      headers: { authorization: `Bearer hf_${llama2Token}` },
    });
    expect(refusedFile.status).toBe(403);
  });

  it("a Llama 3.2 grant of the text models does not open the vision repository", async () => {
    const gw = testGateway();
    await loadLicense(gw, "llama-3.2");
    await seedRevision("llama-3.2-11b-vision-instruct", { "config.json": "{}" });
    await seedRevision("llama-3.2-3b-instruct", { "config.json": "{}" });
    const { token } = await grantedToken(gw, "llama-3.2", ["llama-3.2-3b-instruct"], "DE");
    const headers = { authorization: `Bearer hf_${token}` };
    expect((await gw.request("/api/models/meta-llama/Llama-3.2-3B-Instruct", { headers })).status).toBe(200);
    const vision = await gw.request("/api/models/meta-llama/Llama-3.2-11B-Vision-Instruct", { headers });
    expect(vision.status).toBe(403);
    expect(vision.headers.get("x-error-code")).toBe("GatedRepo");
  });
});

describe("inference for a family without a token counter", () => {
  const MODEL = "llama-3-8b-instruct";
  const MESSAGES = [
    { role: "system", content: "You are a careful assistant for a shipping company. Answer briefly." },
    { role: "user", content: "Can I send lithium batteries to Norway by air? Ünïcödé: Tromsø, 東京." },
    { role: "assistant", content: "Spare lithium-ion batteries up to 100 Wh may travel, packed one by one." },
    { role: "user", content: "And the ones inside a laptop?" },
  ];
  // Llama 3's chat template renders every message with three special tokens, after one
  // <|begin_of_text|>: the real prompt is at least this many tokens, whatever its text.
  const REAL_PROMPT_AT_LEAST = 1 + 3 * MESSAGES.length;

  async function setup(backendIndex: number) {
    clearCallerCache();
    const backend = scopedBackend(backendIndex);
    const gw = testGateway({
      clock: fixedClock("2026-06-15T12:00:05Z"),
      inference: { health: new BackendHealth(), random: () => 0 },
      bindings: {
        // The simulator serves Llama 2's ids; the server's own model name is configuration.
        INFERENCE_BACKENDS: JSON.stringify({
          [MODEL]: [{ url: backend.url, timeoutMs: 10_000, servedModel: "llama-2-7b-chat" }],
        }),
        INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
      },
    });
    await loadLicense(gw, "llama-3");
    const { token } = await grantedToken(gw, "llama-3", [MODEL]);
    return { gw, backend, token };
  }

  const post = (gw: ReturnType<typeof testGateway>, token: string, body: object) =>
    gw.request("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });

  it("Llama 3.x has none: Llama 2's tokenizer would not count what its servers count", () => {
    expect(tokenCounterFor("llama-2")).toBeDefined();
    for (const id of ["llama-3", "llama-3.1", "llama-3.2", "llama-3.3"]) expect(tokenCounterFor(id)).toBeUndefined();
  });

  it("bills a cut stream its reserved prompt, which the server prefilled whole, and a token per chunk", async () => {
    const { gw, backend, token } = await setup(0);
    await backend.mode("cut", { cutAfter: 5, reportUsage: false });
    const body = { model: MODEL, messages: MESSAGES, max_tokens: 40, stream: true };
    const res = await post(gw, token, body);
    expect(res.status).toBe(200);
    await res.text().catch(() => "");
    const [row] = await usageRows();
    expect(row).toMatchObject({ model: MODEL, partial: true, usageReported: false });
    expect(row?.promptTokens).toBe(tokenBound(body, 16, chatTemplateAllowance("llama-3")).prompt);
    expect(row?.promptTokens).toBeGreaterThan(REAL_PROMPT_AT_LEAST);
    // Five chunks of one token each were sent before the cut.
    expect(row?.completionTokens).toBeGreaterThanOrEqual(4);
    expect(row?.completionTokens).toBeLessThanOrEqual(5);
  });

  it("bills a plain answer that reported no usage its reserved prompt and a token per generated text, not its max_tokens", async () => {
    const { gw, backend, token } = await setup(1);
    await backend.mode("ok", { reportUsage: false });
    const res = await post(gw, token, { model: MODEL, messages: MESSAGES, max_tokens: 40 });
    expect(res.status).toBe(200);
    const answer = (await res.json()) as { choices: { message: { content: string } }[]; usage?: unknown };
    expect(answer.choices[0]?.message.content.length).toBeGreaterThan(0);
    const [row] = await usageRows();
    expect(row).toMatchObject({ model: MODEL, usageReported: false });
    expect(row?.promptTokens).toBe(tokenBound({ messages: MESSAGES }, 16, chatTemplateAllowance("llama-3")).prompt);
    expect(row?.completionTokens).toBe(1);
  });
});
