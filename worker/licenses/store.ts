import { desc, eq } from "drizzle-orm";
import type { AuditAnchor } from "../audit/anchor";
import { type AuditedWrite, writeAudited } from "../audit/log";
import type { Database } from "../db/client";
import { documents, licenseVersions } from "../db/schema";
import type { Clock } from "../platform/clock";
import { sha256Hex } from "../platform/hash";
import type { IdGenerator } from "../platform/ids";

/** A family's license version with its two documents' hashes. */
export interface LicenseVersion {
  id: string;
  family: string;
  version: number;
  licenseSha256: string;
  aupSha256: string;
  createdAt: string;
  licenseSource: "placeholder" | "official";
}

/** The newest license version of a family, or undefined when none was ever loaded. */
export async function currentLicenseVersion(db: Database, family: string): Promise<LicenseVersion | undefined> {
  const [row] = await db
    .select({
      id: licenseVersions.id,
      family: licenseVersions.family,
      version: licenseVersions.version,
      licenseSha256: licenseVersions.licenseSha256,
      aupSha256: licenseVersions.aupSha256,
      createdAt: licenseVersions.createdAt,
      licenseSource: documents.source,
    })
    .from(licenseVersions)
    .innerJoin(documents, eq(documents.sha256, licenseVersions.licenseSha256))
    .where(eq(licenseVersions.family, family))
    .orderBy(desc(licenseVersions.version))
    .limit(1);
  return row;
}

/** A stored document's text, by hash. */
export async function documentText(db: Database, sha256: string): Promise<string | undefined> {
  const [row] = await db.select({ body: documents.body }).from(documents).where(eq(documents.sha256, sha256));
  return row?.body;
}

/** A family's license and AUP texts to load, and who loads them. */
export interface LicenseTexts {
  family: string;
  license: string;
  aup: string;
  source: "placeholder" | "official";
  /** Who loads them, as the audit log names actors: `operator` for the `license:load` script. */
  actor: string;
}

/**
 * Plans storing a license and AUP text pair as the family's next version, with the audit event
 * that records it, unless the newest version already has exactly these texts (then nothing).
 */
export async function planLicenseVersion(
  deps: { db: Database; clock: Clock; ids: IdGenerator },
  input: LicenseTexts,
): Promise<AuditedWrite<{ version: LicenseVersion; created: boolean }>> {
  const [licenseSha256, aupSha256] = await Promise.all([sha256Hex(input.license), sha256Hex(input.aup)]);
  const current = await currentLicenseVersion(deps.db, input.family);
  if (current && current.licenseSha256 === licenseSha256 && current.aupSha256 === aupSha256) {
    return { statements: [], events: [], result: { version: current, created: false } };
  }
  const now = deps.clock.now().toISOString();
  const row = {
    id: deps.ids.id("lic"),
    family: input.family,
    version: (current?.version ?? 0) + 1,
    licenseSha256,
    aupSha256,
    createdAt: now,
  };
  const document = (sha256: string, kind: "license" | "aup", mediaType: string, body: string) =>
    deps.db
      .insert(documents)
      .values({ sha256, kind, mediaType, body, source: input.source, createdAt: now })
      .onConflictDoNothing();
  return {
    statements: [
      document(licenseSha256, "license", "text/plain", input.license),
      document(aupSha256, "aup", "text/markdown", input.aup),
      deps.db.insert(licenseVersions).values(row),
    ],
    events: [
      {
        actor: input.actor,
        action: "license.version_loaded",
        subjectType: "license_version",
        subjectId: row.id,
        data: {
          family: row.family,
          version: row.version,
          licenseSha256,
          aupSha256,
          source: input.source,
          previousVersion: current?.version ?? null,
        },
      },
    ],
    result: { version: { ...row, licenseSource: input.source }, created: true },
  };
}

/**
 * Stores a license and AUP text pair as the family's next version, unless the newest version
 * already has exactly these texts (loading is idempotent). The version and its audit event land
 * together. Returns the current version.
 */
export async function loadLicenseVersion(
  deps: { db: Database; clock: Clock; ids: IdGenerator; auditAnchor?: AuditAnchor | undefined },
  input: LicenseTexts,
): Promise<{ version: LicenseVersion; created: boolean }> {
  return writeAudited(deps, () => planLicenseVersion(deps, input));
}
