import { env, exports } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { loadLicenseTexts } from "../scripts/seed/license";
import { verifyAuditChain } from "../worker/audit/log";
import { auditEvents, licenseVersions } from "../worker/db/schema";
import { loadLicenseVersion } from "../worker/licenses/store";
import { fixedClock } from "../worker/platform/clock";
import { sha256Hex } from "../worker/platform/hash";
import { createServices } from "../worker/services";
import { accessHeaders, adminToken } from "./helpers/access";
import { testGateway } from "./helpers/gateway";

describe("GET /v1/licenses/{family}", () => {
  beforeEach(async () => {
    await loadLicenseVersion(createServices(env), {
      family: "llama-2",
      license: "LICENSE v1",
      aup: "AUP v1",
      source: "placeholder",
      actor: "operator",
    });
  });

  it("returns the current version with the documents' hashes", async () => {
    const res = await exports.default.fetch("http://gw/v1/licenses/llama-2");
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      family: "llama-2",
      version: 1,
      releaseDate: "2023-07-18",
      mauThreshold: 700_000_000,
      mauMeasuredMonth: "2023-06",
      licenseSha256: await sha256Hex("LICENSE v1"),
      aupSha256: await sha256Hex("AUP v1"),
      placeholderText: true,
    });
  });

  it("serves the texts whose hashes it publishes", async () => {
    const text = await exports.default.fetch("http://gw/v1/licenses/llama-2/text");
    expect(await text.text()).toBe("LICENSE v1");
    const aup = await exports.default.fetch("http://gw/v1/licenses/llama-2/aup");
    expect(await aup.text()).toBe("AUP v1");
  });

  it("loads a new version only when the text changed", async () => {
    const services = createServices(env);
    const again = await loadLicenseVersion(services, {
      family: "llama-2",
      license: "LICENSE v1",
      aup: "AUP v1",
      source: "placeholder",
      actor: "operator",
    });
    expect(again.created).toBe(false);
    const next = await loadLicenseVersion(services, {
      family: "llama-2",
      license: "LICENSE v2",
      aup: "AUP v1",
      source: "official",
      actor: "operator",
    });
    expect(next).toMatchObject({ created: true, version: { version: 2 } });
    const body = (await (await exports.default.fetch("http://gw/v1/licenses/llama-2")).json()) as Record<
      string,
      unknown
    >;
    expect(body).toMatchObject({ version: 2, placeholderText: false, licenseSha256: await sha256Hex("LICENSE v2") });
  });

  it("answers an unknown family with a problem document", async () => {
    const res = await exports.default.fetch("http://gw/v1/licenses/nope");
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    expect(await res.json()).toMatchObject({ code: "not_found", status: 404 });
  });
});

describe("security: loading a license version is an audited write", () => {
  it("records the load by the license:load script, with the texts' hashes, atomically with the version", async () => {
    const report = await loadLicenseTexts(env.DB, {
      family: "llama-2",
      license: "LICENSE official",
      aup: "AUP official",
      source: "official",
    });
    const services = createServices(env);
    const [version] = await services.db.select().from(licenseVersions);
    const events = await services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(events.map((e) => [e.actor, e.action, e.subjectType, e.subjectId])).toEqual([
      ["operator", "license.version_loaded", "license_version", version?.id],
    ]);
    expect(events[0]?.data).toEqual({
      family: "llama-2",
      version: 1,
      licenseSha256: await sha256Hex("LICENSE official"),
      aupSha256: await sha256Hex("AUP official"),
      source: "official",
      previousVersion: null,
    });
    expect(report).toMatchObject({ version: 1, created: true });
    expect(await verifyAuditChain(services.db)).toMatchObject({ ok: true, checked: 1 });
  });

  it("records each new version with the one it replaces, and nothing for a load that changes nothing", async () => {
    const services = createServices(env);
    const texts = { family: "llama-2", aup: "AUP v1", source: "official" as const, actor: "operator" };
    await loadLicenseVersion(services, { ...texts, license: "LICENSE v1" });
    await loadLicenseVersion(services, { ...texts, license: "LICENSE v1" });
    const next = await loadLicenseVersion(services, { ...texts, license: "LICENSE v2" });
    const events = await services.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "license.version_loaded"))
      .orderBy(auditEvents.seq);
    expect(events.map((e) => [e.subjectId, e.data.version, e.data.previousVersion])).toEqual([
      [expect.any(String), 1, null],
      [next.version.id, 2, 1],
    ]);
  });

  it("lands two simultaneous loads of the same texts as one version and one event", async () => {
    const services = createServices(env);
    const texts = { family: "llama-2", license: "L", aup: "A", source: "official" as const, actor: "operator" };
    const results = await Promise.all([loadLicenseVersion(services, texts), loadLicenseVersion(services, texts)]);
    expect(results.map((r) => r.created).sort()).toEqual([false, true]);
    expect(await services.db.select().from(licenseVersions)).toHaveLength(1);
    expect(await services.db.select().from(auditEvents)).toHaveLength(1);
  });
});

describe("POST /admin/api/licenses/{family}/versions", () => {
  async function loadThroughApi(body: Record<string, unknown>) {
    const clock = fixedClock("2026-03-02T09:00:00.000Z");
    const gw = testGateway({ clock });
    const token = await adminToken({ role: "admin", email: "ops@example.com", issuedAt: clock.now() });
    const res = await gw.request("/admin/api/licenses/llama-2/versions", {
      method: "POST",
      headers: { ...accessHeaders(token), "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { res, gw };
  }

  it("refuses a license or AUP that is only whitespace, naming the field, and stores nothing", async () => {
    const { res, gw } = await loadThroughApi({ license: "   ", aup: " \n\t" });
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    const problem = (await res.json()) as { code: string; errors: { field: string }[] };
    expect(problem.code).toBe("validation_failed");
    expect(problem.errors.map((e) => e.field)).toEqual(["license", "aup"]);
    const onlyAup = await loadThroughApi({ license: "LICENSE v1", aup: "  " });
    expect(onlyAup.res.status).toBe(400);
    expect(((await onlyAup.res.json()) as { errors: { field: string }[] }).errors).toEqual([
      { field: "aup", message: expect.any(String) },
    ]);
    expect(await gw.db.select().from(licenseVersions)).toEqual([]);
    expect(await gw.db.select().from(auditEvents)).toEqual([]);
    expect((await exports.default.fetch("http://gw/v1/licenses/llama-2")).status).toBe(404);
  });

  it("refuses blank texts on every path that loads a version, not only the API", async () => {
    const load = loadLicenseVersion(createServices(env), {
      family: "llama-2",
      license: "\n\n",
      aup: "AUP v1",
      source: "official",
      actor: "operator",
    });
    await expect(load).rejects.toMatchObject({ code: "validation_failed", errors: [{ field: "license" }] });
    expect(await createServices(env).db.select().from(licenseVersions)).toEqual([]);
  });

  it("stores texts with surrounding whitespace exactly as given, so their hashes are of the published text", async () => {
    const license = "\n  LLAMA 2 COMMUNITY LICENSE\n";
    const { res } = await loadThroughApi({ license, aup: "AUP\n" });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      created: true,
      licenseSha256: await sha256Hex(license),
      aupSha256: await sha256Hex("AUP\n"),
    });
    expect(await (await exports.default.fetch("http://gw/v1/licenses/llama-2/text")).text()).toBe(license);
  });
});
