import { and, eq, gt, inArray, isNull, lt, ne } from "drizzle-orm";
import { issueEmailLink } from "../auth/email-links";
import { normalizeEmail } from "../auth/users";
import { type ApplicationDraft, applicationDrafts, emailLinks, licenseVersions } from "../db/schema";
import { AppError } from "../errors";
import { currentLicenseVersion } from "../licenses/store";
import { gatewayLink } from "../mail/links";
import { enqueueMailWithinLimits } from "../mail/outbox";
import { confirmationMail } from "../mail/templates";
import { sha256Hex } from "../platform/hash";
import { findFamily } from "../policy/families";
import type { LicenseFamily } from "../policy/types";
import type { Services } from "../services";
import type { ApplicationInput } from "./schemas";

/**
 * Where and how a request was made: kept as evidence of an acceptance, for the submission that
 * states it and for the confirmation that makes it the contact's.
 */
export interface AcceptanceEvidence {
  ip: string | null;
  country: string | null;
  userAgent: string | null;
}

/** What submitting an application produced: a case waiting for its contact to confirm. */
export interface SubmissionOutcome {
  id: string;
  status: "awaiting_verification";
  /** When the confirmation link mailed to the contact stops working. */
  confirmBy: string;
  statusApiUrl: string;
}

/** How long an unconfirmed application (and its link) waits for its contact. */
export const DRAFT_TTL_MS = 24 * 60 * 60_000;

/**
 * Lower-cased, whitespace-collapsed organization name without invisible characters (a soft
 * hyphen, a zero-width space), stored with every organization. Resemblance compares it beside the
 * `resemblanceKey`, which folds far more, because organizations created before that key was kept
 * have only this.
 */
export function normalizeOrganizationName(name: string): string {
  return name
    .normalize("NFKC")
    .replace(/\p{Cf}+/gu, "")
    .toLowerCase()
    .replace(/\s+/g, " ")
    .trim();
}

/** Makes a status-page capability: the secret for the link, and its hash for the database. */
export async function newStatusSecret(services: Pick<Services, "ids">): Promise<{ secret: string; hash: string }> {
  const secret = `mgs_${services.ids.secret(32)}`;
  return { secret, hash: await sha256Hex(secret) };
}

/** The status page with its capability, and the status API, of a case: links on the gateway only. */
export function statusUrls(base: string, id: string, secret: string) {
  return {
    statusUrl: gatewayLink(base, `/applications/${encodeURIComponent(id)}?token=${encodeURIComponent(secret)}`),
    statusApiUrl: gatewayLink(base, `/v1/applications/${encodeURIComponent(id)}`),
  };
}

/** The family an application names, and its models checked against it; 400 otherwise. */
export function familyOf(input: Pick<ApplicationInput, "family" | "models">): LicenseFamily {
  const family = findFamily(input.family);
  if (!family) {
    throw new AppError("validation_failed", "The request body is invalid.", {
      errors: [{ field: "family", message: `No license family named ${input.family}.` }],
    });
  }
  const unknownModels = (input.models ?? []).filter((m) => !family.models.some((fm) => fm.id === m));
  if (unknownModels.length > 0) {
    throw new AppError("validation_failed", "The request body is invalid.", {
      errors: [{ field: "models", message: `Not models of ${family.displayName}: ${unknownModels.join(", ")}.` }],
    });
  }
  return family;
}

/** The family's current license version, which the applicant must have accepted; 409 otherwise. */
async function acceptedLicense(services: Services, family: LicenseFamily, input: ApplicationInput) {
  const license = await currentLicenseVersion(services.db, family.id);
  if (!license) throw new AppError("service_unavailable", `No license text for ${family.displayName} is loaded yet.`);
  const aupStale =
    input.aupSha256 !== undefined
      ? input.aupSha256 !== license.aupSha256
      : await aupChangedAlone(services, family.id, license);
  if (license.licenseSha256 !== input.licenseSha256 || aupStale) {
    const base = services.config.publicBaseUrl;
    throw new AppError(
      "stale_license",
      license.licenseSha256 !== input.licenseSha256
        ? "The license changed since you read it. Read the current version and accept it."
        : "The Acceptable Use Policy changed since you read it. Read the current one and accept it, naming it as `aupSha256`.",
      {
        extensions: {
          currentLicenseSha256: license.licenseSha256,
          currentAupSha256: license.aupSha256,
          licenseUrl: `${base}/v1/licenses/${family.id}/text`,
          aupUrl: `${base}/v1/licenses/${family.id}/aup`,
        },
      },
    );
  }
  return license;
}

/**
 * Whether an older version of the family has the current license text with another Acceptable Use
 * Policy: then the license's hash alone does not say which policy the applicant read.
 */
async function aupChangedAlone(
  services: Services,
  family: string,
  current: { licenseSha256: string; aupSha256: string },
): Promise<boolean> {
  const [older] = await services.db
    .select({ id: licenseVersions.id })
    .from(licenseVersions)
    .where(
      and(
        eq(licenseVersions.family, family),
        eq(licenseVersions.licenseSha256, current.licenseSha256),
        ne(licenseVersions.aupSha256, current.aupSha256),
      ),
    )
    .limit(1);
  return older !== undefined;
}

/**
 * Submits an application. Nothing is decided yet: the contact address is only a claim until a
 * link mailed to it is used, so the application is kept as a draft (with the license version it
 * states, and where it came from) and the confirmation link is mailed — a message with no
 * applicant-written text, so the form cannot make the gateway speak for anyone, naming the version
 * the contact accepts by confirming. `confirmApplication` decides it.
 */
export async function submitApplication(
  services: Services,
  input: ApplicationInput,
  evidence: AcceptanceEvidence,
): Promise<SubmissionOutcome> {
  const { db, clock, ids, config } = services;
  const family = familyOf(input);
  const license = await acceptedLicense(services, family, input);
  const now = clock.now();
  const id = ids.id("app");
  const email = normalizeEmail(input.contact.email);
  const link = await issueEmailLink(services, { purpose: "verify_application", email, applicationId: id });
  const confirmBy = new Date(now.getTime() + DRAFT_TTL_MS).toISOString();
  const mail = confirmationMail(
    email,
    family.displayName,
    id,
    {
      name: family.licenseName,
      version: license.version,
      licenseSha256: license.licenseSha256,
      aupSha256: license.aupSha256,
    },
    gatewayLink(config.publicBaseUrl, `/applications/confirm?token=${encodeURIComponent(link.secret)}`),
  );
  const [first, ...rest] = [
    db.insert(applicationDrafts).values({
      id,
      family: family.id,
      contactEmail: email,
      input: input as unknown as Record<string, unknown>,
      licenseVersionId: license.id,
      evidence: { ...evidence, userAgent: evidence.userAgent?.slice(0, 512) ?? null },
      createdAt: now.toISOString(),
      expiresAt: confirmBy,
    }),
    link.statement,
    ...(await enqueueMailWithinLimits(services, mail)),
  ];
  await db.batch([first, ...rest]);
  return {
    id,
    status: "awaiting_verification",
    confirmBy,
    statusApiUrl: gatewayLink(config.publicBaseUrl, `/v1/applications/${encodeURIComponent(id)}`),
  };
}

/** An unconfirmed application still waiting for its contact (not confirmed, not expired), if `id` is one. */
export async function pendingDraft(
  services: Pick<Services, "db" | "clock">,
  id: string,
): Promise<ApplicationDraft | undefined> {
  const [draft] = await services.db
    .select()
    .from(applicationDrafts)
    .where(
      and(
        eq(applicationDrafts.id, id),
        isNull(applicationDrafts.confirmedAt),
        gt(applicationDrafts.expiresAt, services.clock.now().toISOString()),
      ),
    );
  return draft;
}

/** How long an unconfirmed application is kept after its link expired, then deleted. */
export const DRAFT_RETENTION_MS = 7 * 86_400_000;

/**
 * Deletes applications nobody confirmed, a week after their link expired, with their links: they
 * are claims by strangers (anyone can post the form), decided nothing, and hold text nobody proved
 * they may give. Confirmed drafts stay as the record of what was submitted. Returns how many went.
 */
export async function purgeUnconfirmedDrafts(services: Pick<Services, "db" | "clock">, limit = 500): Promise<number> {
  const before = new Date(services.clock.now().getTime() - DRAFT_RETENTION_MS).toISOString();
  const stale = await services.db
    .select({ id: applicationDrafts.id })
    .from(applicationDrafts)
    .where(and(isNull(applicationDrafts.confirmedAt), lt(applicationDrafts.expiresAt, before)))
    .limit(limit);
  if (stale.length === 0) return 0;
  const ids = stale.map((d) => d.id);
  await services.db.batch([
    services.db.delete(emailLinks).where(inArray(emailLinks.applicationId, ids)),
    services.db.delete(applicationDrafts).where(inArray(applicationDrafts.id, ids)),
  ]);
  return ids.length;
}
