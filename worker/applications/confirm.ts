/**
 * Confirming an application: its contact uses the single-use link mailed to the address the form
 * named. Only now is the contact a known person, the organization resolved from proof, and the
 * license policy asked; the contact is signed in to the applicant's portal as well.
 *
 * The confirmation is the license acceptance. Whoever posted the form may be anyone (it names any
 * address), so the acceptance a case is decided on is the contact's: the link's page shows them
 * the organization, the license version and the hashes of its texts, and confirming states those
 * hashes. The evidence keeps both steps, the submission's and the confirmation's.
 */
import { and, desc, eq, exists, isNull, or } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditEntry, writeAudited } from "../audit/log";
import { emailLinkToUse } from "../auth/email-links";
import { membershipsOf } from "../auth/members";
import { newSession } from "../auth/sessions";
import { provenUser, userByEmail } from "../auth/users";
import {
  type ApplicationDraft,
  acceptances,
  applicationDrafts,
  applications,
  caseLinks,
  grants,
  OPEN_STATUSES,
  type PolicyReasonRow,
  statusLinks,
  type User,
} from "../db/schema";
import { AppError } from "../errors";
import { caseEvents } from "../events/record";
import { grantForApproval } from "../grants/approve";
import { documentText, type LicenseVersion, licenseVersionById } from "../licenses/store";
import { enqueueMailWithinLimits } from "../mail/outbox";
import { applicationReceivedMail, caseNotice } from "../mail/templates";
import { addDays } from "../platform/clock";
import { evaluateApplication } from "../policy/evaluate";
import { findFamily } from "../policy/families";
import type { LicenseFamily } from "../policy/types";
import { screeningMatchEvent } from "../screening/case";
import { screenNames } from "../screening/list";
import type { Services } from "../services";
import { organizationRecord } from "./history";
import { resolveOrganization } from "./identity";
import type { ApplicationInput } from "./schemas";
import { type AcceptanceEvidence, familyOf, newStatusSecret, pendingDraft, statusUrls } from "./submit";

/** A status link works this long. Each owner who applied for a case holds one of their own. */
export const STATUS_LINK_TTL_DAYS = 30;

/** What confirming produced: the case (new, or the organization's standing one) and a session. */
export interface Confirmation {
  applicationId: string;
  status: "approved" | "pending_review" | "info_requested" | "rejected";
  /** The status page, with a fresh capability. */
  statusUrl: string;
  /** True when the organization already had a standing case for the family: that case is shown. */
  duplicate: boolean;
  session: { secret: string; expiresAt: string };
}

/**
 * A new status link for a case, held by the owner who confirmed, beside the ones its other owners
 * hold. It replaces the links that owner held for the case before (a link from before holders
 * were kept is the contact's), so each owner has one live link per case.
 */
function addStatusLink(
  services: Pick<Services, "db">,
  applicationId: string,
  holder: User,
  hash: string,
  at: Date,
): BatchItem<"sqlite">[] {
  const heldBefore = or(
    eq(statusLinks.userId, holder.id),
    and(
      isNull(statusLinks.userId),
      exists(
        services.db
          .select({ id: applications.id })
          .from(applications)
          .where(and(eq(applications.id, applicationId), eq(applications.contactUserId, holder.id))),
      ),
    ),
  );
  return [
    services.db
      .update(statusLinks)
      .set({ revokedAt: at.toISOString() })
      .where(and(eq(statusLinks.applicationId, applicationId), heldBefore, isNull(statusLinks.revokedAt))),
    services.db.insert(statusLinks).values({
      secretHash: hash,
      applicationId,
      userId: holder.id,
      createdAt: at.toISOString(),
      expiresAt: addDays(at, STATUS_LINK_TTL_DAYS).toISOString(),
    }),
  ];
}

/**
 * Confirms the application a verification link belongs to, once: in one audited batch uses the
 * link, proves the contact's user, resolves the organization, lets the policy decide
 * (resemblance to other organizations' cases sends it to review), and writes the application,
 * the acceptance evidence, case links, the grant when approved, a fresh status link, the notice
 * and a session for the contact.
 */
export async function confirmApplication(
  services: Services,
  secret: string,
  accepted: AcceptedTexts,
  request: AcceptanceEvidence,
): Promise<Confirmation> {
  const status = await newStatusSecret(services);
  return writeAudited<Confirmation>(services, async () => {
    // Read here and used with the rest of the write: a refusal below leaves the link usable.
    const link = await emailLinkToUse(services, secret, "verify_application");
    const draft = await liveDraft(services, link.applicationId);
    const input = draft.input as unknown as ApplicationInput;
    const family = familyOf(input);
    const license = await draftLicense(services, draft);
    // Before anything is planned: a refusal writes nothing, so the link stays usable.
    assertAccepted(services.config.publicBaseUrl, license, accepted);
    const now = services.clock.now();
    const at = now.toISOString();
    const { user, statements: userStatements } = await provenUser(services, link.email, input.contact.name);
    const organization = await resolveOrganization(services, user, input, at);
    const session = await newSession(services, user, request);
    const statements: BatchItem<"sqlite">[] = [
      link.use,
      ...userStatements,
      ...organization.statements,
      session.statement,
      services.db.update(applicationDrafts).set({ confirmedAt: at }).where(eq(applicationDrafts.id, draft.id)),
    ];
    const events: AuditEntry[] = [...organization.events];
    const sessionOut = { secret: session.secret, expiresAt: session.session.expiresAt };

    const standing = await standingCase(services, organization.organizationId, family.id);
    if (standing) {
      // The organization's case for this family goes on; this owner gets a status link of their own,
      // in place of any they held for it before.
      statements.push(...addStatusLink(services, standing.id, user, status.hash, now));
      events.push({
        actor: `member:${user.email}`,
        action: "application.status_link_issued",
        subjectType: "application",
        subjectId: standing.id,
        data: { draft: draft.id },
      });
      const { statusUrl } = statusUrls(services.config.publicBaseUrl, standing.id, status.secret);
      return {
        statements,
        events,
        result: {
          applicationId: standing.id,
          status: standing.status,
          statusUrl,
          duplicate: true,
          session: sessionOut,
        },
      };
    }
    const decided = await decide(services, organization.organizationId, input, family, link.email, now);
    const applicationId = draft.id;
    const row = {
      id: applicationId,
      family: family.id,
      organizationId: organization.organizationId,
      organizationName: input.organization.name,
      website: input.organization.website ?? null,
      country: input.organization.country,
      contactName: input.contact.name,
      contactEmail: link.email,
      contactUserId: user.id,
      intendedUse: input.intendedUse,
      declaredMau: input.declaredMau,
      models: input.models ?? family.models.map((m) => m.id),
      status: decided.status,
      policyReasons: decided.reasons,
      requiredApprovals: decided.requiredApprovals,
      licenseVersionId: draft.licenseVersionId,
      reapplyAfter: decided.status === "rejected" ? addDays(now, family.reapplyCooldownDays).toISOString() : null,
      createdAt: at,
      updatedAt: at,
      decidedAt: decided.status === "pending_review" ? null : at,
    };
    const evidence = draft.evidence as unknown as AcceptanceEvidence;
    statements.push(
      services.db.insert(applications).values(row),
      services.db.insert(acceptances).values({
        id: services.ids.id("acc"),
        applicationId,
        licenseVersionId: draft.licenseVersionId,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        acceptedAt: draft.createdAt,
        ip: evidence.ip,
        country: evidence.country,
        userAgent: evidence.userAgent,
        // The acceptance itself: the proven contact's, stating the hashes checked above.
        confirmedAt: at,
        confirmedByUserId: user.id,
        confirmedIp: request.ip,
        confirmedCountry: request.country,
        confirmedUserAgent: request.userAgent?.slice(0, 512) ?? null,
      }),
      ...addStatusLink(services, applicationId, user, status.hash, now),
      ...decided.related.map((r) =>
        services.db
          .insert(caseLinks)
          .values({ applicationId, relatedApplicationId: r.applicationId, reasons: r.reasons, createdAt: at }),
      ),
    );
    events.push({
      actor: `applicant:${link.email}`,
      action: "application.submitted",
      subjectType: "application",
      subjectId: applicationId,
      data: {
        family: family.id,
        organizationId: organization.organizationId,
        joinedBy: organization.joinedBy,
        contactUserId: user.id,
        declaredMau: input.declaredMau,
        country: input.organization.country,
        licenseVersionId: draft.licenseVersionId,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        policyOutcome: decided.outcome,
        reasons: decided.reasons.map((r) => r.code),
        relatedApplications: decided.related.map((r) => r.applicationId),
        // Who posted the form, which may be anyone: a claim, kept apart from the acceptance.
        submittedAt: draft.createdAt,
        submittedIp: evidence.ip,
        submittedCountry: evidence.country,
        // The acceptance: the contact (`contactUserId`) confirming with the mailed link.
        confirmedAt: at,
        confirmedIp: request.ip,
        confirmedCountry: request.country,
      },
    });
    if (decided.screening.length > 0) {
      // The listed parties go to the case's audit trail, which reviewers see in the case file and
      // the applicant never does.
      events.push(screeningMatchEvent(applicationId, decided.screening));
    }
    if (decided.status === "approved") {
      const granted = await grantForApproval(services, row, at, "system:policy");
      statements.push(...granted.statements);
      events.push(...granted.events);
    }
    const urls = statusUrls(services.config.publicBaseUrl, applicationId, status.secret);
    const notice = applicationReceivedMail(
      caseNotice(services.config.publicBaseUrl, row, family.displayName, urls.statusUrl),
      decided.status,
    );
    statements.push(...(await enqueueMailWithinLimits(services, notice)));
    statements.push(...caseEvents(services, row, null, row.status));
    return {
      statements,
      events,
      result: {
        applicationId,
        status: decided.status,
        statusUrl: urls.statusUrl,
        duplicate: false,
        session: sessionOut,
      },
    };
  });
}

/** What the contact accepts by confirming: the hashes of the license and AUP texts they were shown. */
export interface AcceptedTexts {
  licenseSha256: string;
  aupSha256: string;
}

/** The license version an application was submitted under: the one its contact accepts. */
async function draftLicense(services: Pick<Services, "db">, draft: ApplicationDraft): Promise<LicenseVersion> {
  const license = await licenseVersionById(services.db, draft.licenseVersionId);
  if (!license) throw new Error(`draft ${draft.id} names a license version that does not exist`);
  return license;
}

/** Where the texts of one license version are read, on the gateway. */
function versionLinks(base: string, license: Pick<LicenseVersion, "family" | "version">) {
  const path = `${base}/v1/licenses/${encodeURIComponent(license.family)}/versions/${license.version}`;
  return { licenseUrl: `${path}/text`, aupUrl: `${path}/aup` };
}

/**
 * Refuses a confirmation that does not state the texts of the application's license version:
 * `stale_license`, naming the version's hashes and where to read them. Hashes of another version
 * (an older page, a client that read the current license instead) accept something else than
 * what the case would be decided under.
 */
function assertAccepted(base: string, license: LicenseVersion, accepted: AcceptedTexts): void {
  if (accepted.licenseSha256 === license.licenseSha256 && accepted.aupSha256 === license.aupSha256) return;
  throw new AppError(
    "stale_license",
    `The texts you accepted are not version ${license.version} of the license and Acceptable Use Policy, which this application names. Read them and accept those.`,
    {
      extensions: {
        licenseVersion: license.version,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        ...versionLinks(base, license),
      },
    },
  );
}

/** What the confirmation page shows its contact before they accept. */
export interface ConfirmationTerms {
  /** The address the link proves. */
  contactEmail: string;
  familyName: string;
  /** The models applied for, by their display names. */
  models: string[];
  licenseName: string;
  licenseVersion: number;
  licenseSha256: string;
  aupSha256: string;
  licenseText: string;
  aupText: string;
  /** The operator loaded placeholder texts, not the licensor's. */
  placeholder: boolean;
  licenseUrl: string;
  aupUrl: string;
  /**
   * The organization the acceptance binds: the one the contact owns (`existing`), which the case
   * joins whatever name the form gave, or a new one under the name the application gives.
   */
  organization: { name: string; existing: boolean; named: string };
}

/**
 * The terms a confirmation link's page shows, read without using the link: the application's
 * license version with its texts and hashes, and the organization confirming accepts them for
 * (as `resolveOrganization` will find it). Unknown, used and expired links are the link's 401.
 */
export async function confirmationTerms(
  services: Pick<Services, "db" | "clock" | "config">,
  secret: string,
): Promise<ConfirmationTerms> {
  const link = await emailLinkToUse(services, secret, "verify_application");
  const draft = await liveDraft(services, link.applicationId);
  const input = draft.input as unknown as ApplicationInput;
  const license = await draftLicense(services, draft);
  const family = findFamily(license.family);
  const user = await userByEmail(services, link.email);
  const owned = user ? (await membershipsOf(services, user.id)).find((m) => m.membership.role === "owner") : undefined;
  const [licenseText, aupText] = await Promise.all([
    documentText(services.db, license.licenseSha256),
    documentText(services.db, license.aupSha256),
  ]);
  return {
    contactEmail: link.email,
    familyName: family?.displayName ?? license.family,
    models: (input.models ?? family?.models.map((m) => m.id) ?? []).map(
      (id) => family?.models.find((m) => m.id === id)?.displayName ?? id,
    ),
    licenseName: family?.licenseName ?? `${license.family} license`,
    licenseVersion: license.version,
    licenseSha256: license.licenseSha256,
    aupSha256: license.aupSha256,
    licenseText: licenseText ?? "",
    aupText: aupText ?? "",
    placeholder: license.licenseSource === "placeholder",
    ...versionLinks(services.config.publicBaseUrl, license),
    organization: {
      name: owned ? owned.organizationName : input.organization.name,
      existing: owned !== undefined,
      named: input.organization.name,
    },
  };
}

/** The draft a verification link names, while it waits; the link's own 401 otherwise. */
async function liveDraft(services: Pick<Services, "db" | "clock">, id: string | null): Promise<ApplicationDraft> {
  const draft = id ? await pendingDraft(services, id) : undefined;
  if (!draft) throw new AppError("unauthorized", "This link is not valid any more. Apply again.");
  return draft;
}

/** The organization's open or approved (not revoked) case for a family, newest first. */
async function standingCase(services: Pick<Services, "db">, organizationId: string, family: string) {
  const cases = await services.db
    .select({ id: applications.id, status: applications.status, grantStatus: grants.status })
    .from(applications)
    .leftJoin(grants, eq(grants.applicationId, applications.id))
    .where(and(eq(applications.organizationId, organizationId), eq(applications.family, family)))
    .orderBy(desc(applications.createdAt));
  return cases.find(
    (a) => OPEN_STATUSES.includes(a.status) || (a.status === "approved" && a.grantStatus !== "revoked"),
  );
}

/**
 * The policy's decision on a confirmed application, after the organization's own cool-down
 * (409 while it runs) and with what the organization's history and resembling cases add.
 */
async function decide(
  services: Pick<Services, "db">,
  organizationId: string,
  input: ApplicationInput,
  family: LicenseFamily,
  contactEmail: string,
  now: Date,
) {
  const record = await organizationRecord(services, organizationId, family.id, input, contactEmail);
  const lastRejection = record.lastRejection;
  if (lastRejection?.reapplyAfter && lastRejection.reapplyAfter > now.toISOString()) {
    throw new AppError("reapply_cooldown", `You may apply again after ${lastRejection.reapplyAfter}.`, {
      extensions: { reapplyAfter: lastRejection.reapplyAfter },
    });
  }
  const related = record.related;
  const screening = await screenNames(services, [input.organization.name, input.contact.name]);
  const decision = evaluateApplication(
    {
      ...record.facts,
      country: input.organization.country,
      declaredMau: input.declaredMau,
      intendedUse: input.intendedUse,
      models: input.models ?? family.models.map((m) => m.id),
      deniedPartyMatch: screening.length > 0,
    },
    family,
  );
  const status: "approved" | "pending_review" | "rejected" =
    decision.outcome === "approve" ? "approved" : decision.outcome === "reject" ? "rejected" : "pending_review";
  const reasons: PolicyReasonRow[] = decision.reasons.map((r) => ({
    code: r.code,
    outcome: r.outcome,
    detail: r.detail,
  }));
  return {
    status,
    reasons,
    requiredApprovals: decision.requiredApprovals,
    outcome: decision.outcome,
    related,
    screening,
  };
}
