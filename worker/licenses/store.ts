import { desc, eq } from "drizzle-orm";
import type { AuditAnchor } from "../audit/anchor";
import { type AuditedWrite, writeAudited } from "../audit/log";
import type { Database } from "../db/client";
import { documents, licenseVersions } from "../db/schema";
import { AppError, type FieldError } from "../errors";
import type { Clock } from "../platform/clock";
import { sha256Hex } from "../platform/hash";
import type { IdGenerator } from "../platform/ids";
import { planReacceptanceRequirements } from "./reacceptance";

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

const versionColumns = {
  id: licenseVersions.id,
  family: licenseVersions.family,
  version: licenseVersions.version,
  licenseSha256: licenseVersions.licenseSha256,
  aupSha256: licenseVersions.aupSha256,
  createdAt: licenseVersions.createdAt,
  licenseSource: documents.source,
};

/** The newest license version of a family, or undefined when none was ever loaded. */
export async function currentLicenseVersion(db: Database, family: string): Promise<LicenseVersion | undefined> {
  const [row] = await db
    .select(versionColumns)
    .from(licenseVersions)
    .innerJoin(documents, eq(documents.sha256, licenseVersions.licenseSha256))
    .where(eq(licenseVersions.family, family))
    .orderBy(desc(licenseVersions.version))
    .limit(1);
  return row;
}

/** A license version by id: the one a grant was accepted under, say. */
export async function licenseVersionById(db: Database, id: string): Promise<LicenseVersion | undefined> {
  const [row] = await db
    .select(versionColumns)
    .from(licenseVersions)
    .innerJoin(documents, eq(documents.sha256, licenseVersions.licenseSha256))
    .where(eq(licenseVersions.id, id));
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
  /**
   * When set, existing grants of the family must accept the new version before this instant
   * (ISO-8601) or their downloads and inference stop; absent, they go on under the version they accepted.
   */
  reacceptBy?: string | undefined;
}

/** What loading texts did: the current version, whether it is new, how many grants must accept it again. */
export interface LoadedLicenseVersion {
  version: LicenseVersion;
  created: boolean;
  grantsToReaccept: number;
}

/**
 * Refuses a license or AUP that is empty or only whitespace: every grant of the family would have
 * to accept nothing. The texts are checked, never trimmed: their hashes are of the exact text.
 */
function refuseBlankTexts(input: Pick<LicenseTexts, "license" | "aup">): void {
  const errors: FieldError[] = [];
  if (!input.license.trim()) errors.push({ field: "license", message: "The license text is empty." });
  if (!input.aup.trim()) errors.push({ field: "aup", message: "The acceptable use policy text is empty." });
  if (errors.length > 0) {
    throw new AppError("validation_failed", errors.map((e) => e.message).join(" "), { errors });
  }
}

/**
 * Plans storing a license and AUP text pair as the family's next version, with the audit event
 * that records it, unless the newest version already has exactly these texts (then nothing).
 * Blank texts are refused (`validation_failed`, naming the field).
 */
export async function planLicenseVersion(
  deps: { db: Database; clock: Clock; ids: IdGenerator; config?: { publicBaseUrl: string } | undefined },
  input: LicenseTexts,
): Promise<AuditedWrite<LoadedLicenseVersion>> {
  refuseBlankTexts(input);
  const [licenseSha256, aupSha256] = await Promise.all([sha256Hex(input.license), sha256Hex(input.aup)]);
  const current = await currentLicenseVersion(deps.db, input.family);
  if (current && current.licenseSha256 === licenseSha256 && current.aupSha256 === aupSha256) {
    return { statements: [], events: [], result: { version: current, created: false, grantsToReaccept: 0 } };
  }
  const now = deps.clock.now().toISOString();
  const row = {
    id: deps.ids.id("lic"),
    family: input.family,
    version: (current?.version ?? 0) + 1,
    licenseSha256,
    aupSha256,
    reacceptBy: input.reacceptBy ?? null,
    createdAt: now,
  };
  const document = (sha256: string, kind: "license" | "aup", mediaType: string, body: string) =>
    deps.db
      .insert(documents)
      .values({ sha256, kind, mediaType, body, source: input.source, createdAt: now })
      .onConflictDoNothing();
  const requirements = input.reacceptBy
    ? await planReacceptanceRequirements(
        deps,
        { id: row.id, family: row.family, version: row.version },
        input.reacceptBy,
      )
    : { statements: [], grants: 0 };
  return {
    statements: [
      document(licenseSha256, "license", "text/plain", input.license),
      document(aupSha256, "aup", "text/markdown", input.aup),
      deps.db.insert(licenseVersions).values(row),
      ...requirements.statements,
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
          ...(input.reacceptBy ? { reacceptBy: input.reacceptBy, grantsToReaccept: requirements.grants } : {}),
        },
      },
    ],
    result: {
      version: { ...row, licenseSource: input.source },
      created: true,
      grantsToReaccept: requirements.grants,
    },
  };
}

/**
 * Stores a license and AUP text pair as the family's next version, unless the newest version
 * already has exactly these texts (loading is idempotent). The version and its audit event land
 * together. Returns the current version.
 */
export async function loadLicenseVersion(
  deps: {
    db: Database;
    clock: Clock;
    ids: IdGenerator;
    auditAnchor?: AuditAnchor | undefined;
    /** The gateway's address, for the notices a re-acceptance requirement mails; none without it. */
    config?: { publicBaseUrl: string } | undefined;
  },
  input: LicenseTexts,
): Promise<LoadedLicenseVersion> {
  return writeAudited(deps, () => planLicenseVersion(deps, input));
}
