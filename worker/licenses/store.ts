import { and, desc, eq } from "drizzle-orm";
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

/**
 * Stores a license and AUP text pair as the family's next version, unless the newest version
 * already has exactly these texts (loading is idempotent). Returns the current version.
 */
export async function loadLicenseVersion(
  deps: { db: Database; clock: Clock; ids: IdGenerator },
  input: { family: string; license: string; aup: string; source: "placeholder" | "official" },
): Promise<{ version: LicenseVersion; created: boolean }> {
  const [licenseSha256, aupSha256] = await Promise.all([sha256Hex(input.license), sha256Hex(input.aup)]);
  const current = await currentLicenseVersion(deps.db, input.family);
  if (current && current.licenseSha256 === licenseSha256 && current.aupSha256 === aupSha256) {
    return { version: current, created: false };
  }
  const now = deps.clock.now().toISOString();
  const version = (current?.version ?? 0) + 1;
  const id = deps.ids.id("lic");
  await deps.db.batch([
    deps.db
      .insert(documents)
      .values({
        sha256: licenseSha256,
        kind: "license",
        mediaType: "text/plain",
        body: input.license,
        source: input.source,
        createdAt: now,
      })
      .onConflictDoNothing(),
    deps.db
      .insert(documents)
      .values({
        sha256: aupSha256,
        kind: "aup",
        mediaType: "text/markdown",
        body: input.aup,
        source: input.source,
        createdAt: now,
      })
      .onConflictDoNothing(),
    deps.db
      .insert(licenseVersions)
      .values({ id, family: input.family, version, licenseSha256, aupSha256, createdAt: now }),
  ]);
  const [stored] = await deps.db
    .select()
    .from(licenseVersions)
    .where(and(eq(licenseVersions.family, input.family), eq(licenseVersions.version, version)));
  if (!stored) throw new Error("license version vanished after insert");
  return { version: { ...stored, licenseSource: input.source }, created: true };
}
