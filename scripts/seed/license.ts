/** Loads license versions into a D1 database through the gateway's own license store. */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createDatabase } from "../../worker/db/client";
import { currentLicenseVersion, type LicenseTexts, loadLicenseVersion } from "../../worker/licenses/store";
import { systemClock } from "../../worker/platform/clock";
import { randomIds } from "../../worker/platform/ids";
import { FAMILIES } from "../../worker/policy/families";

/** Lower-case hex SHA-256 of UTF-8 text, the digest the gateway publishes for a license text. */
export function sha256OfText(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** What a load did, for printing. */
export interface LicenseLoadReport {
  family: string;
  version: number;
  licenseSha256: string;
  aupSha256: string;
  source: "placeholder" | "official";
  created: boolean;
  /** Grants that must accept the new version (`reacceptBy`). */
  grantsToReaccept?: number;
}

/**
 * Stores a family's license and AUP texts as its next version unless they are already current,
 * with the audit event that records the load, by `operator`.
 */
export async function loadLicenseTexts(db: D1Database, input: Omit<LicenseTexts, "actor">): Promise<LicenseLoadReport> {
  const deps = { db: createDatabase(db), clock: systemClock, ids: randomIds(systemClock) };
  const { version, created, grantsToReaccept } = await loadLicenseVersion(deps, { ...input, actor: "operator" });
  return {
    family: version.family,
    version: version.version,
    licenseSha256: version.licenseSha256,
    aupSha256: version.aupSha256,
    source: version.licenseSource,
    created,
    grantsToReaccept,
  };
}

/**
 * The placeholder texts of a family shipped for local development (`<family>-license.placeholder.txt`
 * and `<family>-aup.placeholder.md` beside this file); not the official documents.
 */
export function placeholderTexts(family: string): { license: string; aup: string } {
  const dir = import.meta.dirname;
  return {
    license: readFileSync(join(dir, `${family}-license.placeholder.txt`), "utf8"),
    aup: readFileSync(join(dir, `${family}-aup.placeholder.md`), "utf8"),
  };
}

/** The placeholder Llama 2 texts shipped for local development; not the official documents. */
export function placeholderLlama2Texts(): { license: string; aup: string } {
  return placeholderTexts("llama-2");
}

/**
 * Seeds one family's placeholder license. Idempotent: the same texts load once. Once an operator
 * has loaded the official texts, the placeholder never replaces them again.
 */
export async function seedPlaceholderFamily(db: D1Database, family: string): Promise<LicenseLoadReport> {
  const current = await currentLicenseVersion(createDatabase(db), family);
  if (current?.licenseSource === "official") {
    return {
      family: current.family,
      version: current.version,
      licenseSha256: current.licenseSha256,
      aupSha256: current.aupSha256,
      source: current.licenseSource,
      created: false,
    };
  }
  return loadLicenseTexts(db, { family, ...placeholderTexts(family), source: "placeholder" });
}

/** Seeds the placeholder license of every family the gateway knows, in the order it lists them. */
export async function seedPlaceholderLicense(db: D1Database): Promise<LicenseLoadReport[]> {
  const reports: LicenseLoadReport[] = [];
  for (const family of FAMILIES.keys()) reports.push(await seedPlaceholderFamily(db, family));
  return reports;
}

/** One line a human can read per load. */
export function describeLoad(reports: LicenseLoadReport | readonly LicenseLoadReport[]): string {
  return (Array.isArray(reports) ? reports : [reports])
    .map((report: LicenseLoadReport) => {
      const what = report.created ? "loaded as new version" : "already current, version";
      return `${report.family} license (${report.source}) ${what} ${report.version} — license sha256 ${report.licenseSha256}, AUP sha256 ${report.aupSha256}`;
    })
    .join("\n");
}
