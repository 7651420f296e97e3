import { and, desc, eq, inArray } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditEntry, writeAudited } from "../audit/log";
import {
  acceptances,
  applications,
  grants,
  OPEN_STATUSES,
  organizations,
  type PolicyReasonRow,
  statusLinks,
} from "../db/schema";
import { AppError } from "../errors";
import { issueGrant } from "../grants/issue";
import { currentLicenseVersion } from "../licenses/store";
import { gatewayLink } from "../mail/links";
import { enqueueMailWithinLimits } from "../mail/outbox";
import { applicationReceivedMail, caseNotice } from "../mail/templates";
import { addDays } from "../platform/clock";
import { sha256Hex } from "../platform/hash";
import { evaluateApplication } from "../policy/evaluate";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import type { ApplicationInput } from "./schemas";

/** Where and how the applicant accepted the license: kept as evidence. */
export interface AcceptanceEvidence {
  ip: string | null;
  country: string | null;
  userAgent: string | null;
}

/** What submitting an application produced. */
export interface SubmissionOutcome {
  id: string;
  status: "approved" | "pending_review" | "info_requested" | "rejected";
  reasons: PolicyReasonRow[];
  /** The status page with its secret; only for a new case (repeat applicants get theirs by mail). */
  statusUrl: string | null;
  statusApiUrl: string | null;
  duplicate: boolean;
}

/** Lower-cased, whitespace-collapsed organization name: how repeat applicants are recognised. */
export function normalizeOrganizationName(name: string): string {
  return name.normalize("NFKC").toLowerCase().replace(/\s+/g, " ").trim();
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

/** The case's contact and names as the applicant gave them, for its notices. */
function applicantOf(input: ApplicationInput, id: string) {
  return {
    id,
    contactEmail: input.contact.email,
    contactName: input.contact.name,
    organizationName: input.organization.name,
  };
}

/**
 * Submits an application: validates it against the family's current license, lets the policy
 * decide, and writes the application, the acceptance evidence, the status link, the grant (when
 * approved at once), the applicant's e-mail and the audit events in one atomic batch. A repeat
 * application while a case is open (or approved) returns that case and mails a fresh status link
 * to its contact; a rejected applicant may apply again after the family's cool-down.
 */
export async function submitApplication(
  services: Services,
  input: ApplicationInput,
  evidence: AcceptanceEvidence,
): Promise<SubmissionOutcome> {
  const { db, clock, ids, config } = services;
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
  const license = await currentLicenseVersion(db, family.id);
  if (!license) throw new AppError("service_unavailable", `No license text for ${family.displayName} is loaded yet.`);
  if (license.licenseSha256 !== input.licenseSha256) {
    throw new AppError(
      "stale_license",
      "The license changed since you read it. Read the current version and accept it.",
      {
        extensions: {
          currentLicenseSha256: license.licenseSha256,
          currentAupSha256: license.aupSha256,
          licenseUrl: `${config.publicBaseUrl}/v1/licenses/${family.id}/text`,
          aupUrl: `${config.publicBaseUrl}/v1/licenses/${family.id}/aup`,
        },
      },
    );
  }

  const normalizedName = normalizeOrganizationName(input.organization.name);
  const { secret, hash } = await newStatusSecret(services);

  return writeAudited<SubmissionOutcome>(services, async () => {
    const now = clock.now();
    const at = now.toISOString();
    const [organization] = await db
      .select({ id: organizations.id })
      .from(organizations)
      .where(eq(organizations.normalizedName, normalizedName));

    const earlier = organization
      ? await db
          .select({
            id: applications.id,
            status: applications.status,
            policyReasons: applications.policyReasons,
            reapplyAfter: applications.reapplyAfter,
            grantStatus: grants.status,
          })
          .from(applications)
          .leftJoin(grants, eq(grants.applicationId, applications.id))
          .where(
            and(
              eq(applications.family, family.id),
              eq(applications.organizationId, organization.id),
              eq(applications.contactEmail, input.contact.email),
            ),
          )
          .orderBy(desc(applications.createdAt))
      : [];

    const standing = earlier.find(
      (a) => OPEN_STATUSES.includes(a.status) || (a.status === "approved" && a.grantStatus !== "revoked"),
    );
    if (standing) {
      // Never hand an existing case's capability to whoever asked: mail a fresh link to its contact.
      const urls = statusUrls(config.publicBaseUrl, standing.id, secret);
      const notice = applicationReceivedMail(
        caseNotice(config.publicBaseUrl, applicantOf(input, standing.id), family.displayName, urls.statusUrl),
        standing.status === "approved" ? "approved" : "pending_review",
      );
      return {
        statements: [
          db.insert(statusLinks).values({ secretHash: hash, applicationId: standing.id, createdAt: at }),
          ...(await enqueueMailWithinLimits(services, notice)),
        ],
        events: [
          {
            actor: `applicant:${input.contact.email}`,
            action: "application.status_link_resent",
            subjectType: "application",
            subjectId: standing.id,
            data: {},
          },
        ],
        result: {
          id: standing.id,
          status: standing.status,
          reasons: standing.policyReasons,
          statusUrl: null,
          statusApiUrl: urls.statusApiUrl,
          duplicate: true,
        } satisfies SubmissionOutcome,
      };
    }

    const lastRejection = earlier.find((a) => a.status === "rejected");
    if (lastRejection?.reapplyAfter && lastRejection.reapplyAfter > at) {
      throw new AppError("reapply_cooldown", `You may apply again after ${lastRejection.reapplyAfter}.`, {
        extensions: { reapplyAfter: lastRejection.reapplyAfter },
      });
    }

    const priorRevocation = organization
      ? (
          await db
            .select({ id: grants.id })
            .from(grants)
            .where(
              and(
                eq(grants.organizationId, organization.id),
                eq(grants.family, family.id),
                inArray(grants.status, ["revoked"]),
              ),
            )
            .limit(1)
        ).length > 0
      : false;

    const decision = evaluateApplication(
      {
        country: input.organization.country,
        declaredMau: input.declaredMau,
        intendedUse: input.intendedUse,
        priorRevocation,
      },
      family,
    );
    const status =
      decision.outcome === "approve" ? "approved" : decision.outcome === "reject" ? "rejected" : "pending_review";
    const reasons: PolicyReasonRow[] = decision.reasons.map((r) => ({
      code: r.code,
      outcome: r.outcome,
      detail: r.detail,
    }));
    const organizationId = organization?.id ?? ids.id("org");
    const applicationId = ids.id("app");
    const actor = `applicant:${input.contact.email}`;
    const statements: BatchItem<"sqlite">[] = [];
    const events: AuditEntry[] = [];

    if (!organization) {
      statements.push(
        db.insert(organizations).values({
          id: organizationId,
          name: input.organization.name,
          normalizedName,
          website: input.organization.website ?? null,
          country: input.organization.country,
          createdAt: at,
        }),
      );
    }
    statements.push(
      db.insert(applications).values({
        id: applicationId,
        family: family.id,
        organizationId,
        organizationName: input.organization.name,
        website: input.organization.website ?? null,
        country: input.organization.country,
        contactName: input.contact.name,
        contactEmail: input.contact.email,
        intendedUse: input.intendedUse,
        declaredMau: input.declaredMau,
        models: input.models ?? family.models.map((m) => m.id),
        status,
        policyReasons: reasons,
        requiredApprovals: decision.requiredApprovals,
        licenseVersionId: license.id,
        reapplyAfter: status === "rejected" ? addDays(now, family.reapplyCooldownDays).toISOString() : null,
        createdAt: at,
        updatedAt: at,
        decidedAt: status === "pending_review" ? null : at,
      }),
      db.insert(acceptances).values({
        id: ids.id("acc"),
        applicationId,
        licenseVersionId: license.id,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        acceptedAt: at,
        ip: evidence.ip,
        country: evidence.country,
        userAgent: evidence.userAgent?.slice(0, 512) ?? null,
      }),
      db.insert(statusLinks).values({ secretHash: hash, applicationId, createdAt: at }),
    );
    events.push({
      actor,
      action: "application.submitted",
      subjectType: "application",
      subjectId: applicationId,
      data: {
        family: family.id,
        organizationId,
        declaredMau: input.declaredMau,
        country: input.organization.country,
        licenseVersion: license.version,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        policyOutcome: decision.outcome,
        reasons: reasons.map((r) => r.code),
        ip: evidence.ip,
        requestCountry: evidence.country,
      },
    });
    if (status === "approved") {
      const grant = issueGrant(
        services,
        {
          id: applicationId,
          organizationId,
          family: family.id,
          licenseVersionId: license.id,
          models: input.models ?? family.models.map((m) => m.id),
        },
        at,
        "system:policy",
      );
      statements.push(grant.statement);
      events.push(grant.event);
    }
    const urls = statusUrls(config.publicBaseUrl, applicationId, secret);
    const notice = applicationReceivedMail(
      caseNotice(config.publicBaseUrl, applicantOf(input, applicationId), family.displayName, urls.statusUrl),
      status,
    );
    statements.push(...(await enqueueMailWithinLimits(services, notice)));
    return {
      statements,
      events,
      result: { id: applicationId, status, reasons, ...urls, duplicate: false } satisfies SubmissionOutcome,
    };
  });
}
