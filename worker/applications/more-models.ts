/**
 * An organization asks for more of a family's models than its grant covers. It is a case like
 * any other — the policy decides on the facts of the organization's approved case and its record,
 * as it decides a new application, and sends it to reviewers where it says so (always when the
 * licensor decided the approved case) — filed by a signed-in owner, whose address is proven.
 * Approved, it widens the organization's grant (`grantForApproval`).
 */
import { and, desc, eq } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditEntry, writeAudited } from "../audit/log";
import { type MemberPrincipal, memberNow } from "../auth/members";
import { acceptances, applications, grants, OPEN_STATUSES, type PolicyReasonRow } from "../db/schema";
import { AppError } from "../errors";
import { caseEvents } from "../events/record";
import { grantForApproval } from "../grants/approve";
import { currentLicenseVersion } from "../licenses/store";
import { evaluateApplication } from "../policy/evaluate";
import { findFamily } from "../policy/families";
import { screeningMatchEvent } from "../screening/case";
import { screenNames } from "../screening/list";
import type { Services } from "../services";
import { organizationRecord } from "./history";
import type { AcceptanceEvidence } from "./submit";

/** What a request for more models produced. */
export interface ModelRequestOutcome {
  applicationId: string;
  status: "approved" | "pending_review" | "rejected";
  models: string[];
  reasons: PolicyReasonRow[];
}

/**
 * Files a request by `member`'s organization for `models` of `familyId` beyond its active grant.
 * 409 without an active grant of the family, while another case of the organization is open, or
 * when the license changed since the organization accepted it (it applies anew then); 400 for
 * models the family lacks or the grant already covers.
 */
export async function requestMoreModels(
  services: Services,
  member: MemberPrincipal,
  familyId: string,
  models: string[],
  evidence: AcceptanceEvidence,
): Promise<ModelRequestOutcome> {
  const family = findFamily(familyId);
  if (!family) throw invalid("family", `No license family named ${familyId}.`);
  const unknown = models.filter((m) => !family.models.some((fm) => fm.id === m));
  if (unknown.length > 0) throw invalid("models", `Not models of ${family.displayName}: ${unknown.join(", ")}.`);

  return writeAudited<ModelRequestOutcome>(services, async () => {
    const { db, clock, ids } = services;
    await memberNow(services, member, "owner");
    const [current] = await db
      .select({ grant: grants, application: applications })
      .from(grants)
      .innerJoin(applications, eq(applications.id, grants.applicationId))
      .where(
        and(
          eq(grants.organizationId, member.organizationId),
          eq(grants.family, family.id),
          eq(grants.status, "active"),
        ),
      )
      .orderBy(desc(grants.createdAt));
    if (!current) throw new AppError("invalid_state", `Your organization holds no active ${family.displayName} grant.`);
    const wanted = [...new Set(models)].filter((m) => !current.grant.models.includes(m));
    if (wanted.length === 0) throw invalid("models", "Your grant already covers these models.");
    const open = await db
      .select({ id: applications.id, status: applications.status })
      .from(applications)
      .where(and(eq(applications.organizationId, member.organizationId), eq(applications.family, family.id)));
    if (open.some((a) => OPEN_STATUSES.includes(a.status))) {
      throw new AppError(
        "conflict",
        "Another case of your organization for this family is open; wait for its decision.",
      );
    }
    const license = await currentLicenseVersion(db, family.id);
    if (!license || license.id !== current.grant.licenseVersionId) {
      throw new AppError("stale_license", "The license changed since your organization accepted it; apply again.");
    }

    const base = current.application;
    // Screened again: the organization or the member asking may have been listed since its case.
    const contactName = member.user.name ?? base.contactName;
    const screening = await screenNames(services, [base.organizationName, contactName]);
    // Decided on the organization's record as a new application is: its country on record, an
    // earlier rejection or revocation, resembling cases, and a grant the licensor decided.
    const record = await organizationRecord(
      services,
      member.organizationId,
      family.id,
      { organization: { name: base.organizationName, country: base.country, website: base.website ?? undefined } },
      base.contactEmail,
    );
    const decision = evaluateApplication(
      {
        ...record.facts,
        country: base.country,
        declaredMau: base.declaredMau,
        intendedUse: base.intendedUse,
        models: wanted,
        deniedPartyMatch: screening.length > 0,
        licensorCase: base.requiredApprovals > 1,
      },
      family,
    );
    const status =
      decision.outcome === "approve" ? "approved" : decision.outcome === "reject" ? "rejected" : "pending_review";
    const reasons = decision.reasons.map((r) => ({ code: r.code, outcome: r.outcome, detail: r.detail }));
    const now = clock.now();
    const at = now.toISOString();
    const id = ids.id("app");
    const actor = `member:${member.user.email}`;
    const row = {
      ...base,
      id,
      contactName,
      contactEmail: member.user.email,
      contactUserId: member.user.id,
      models: wanted,
      status,
      policyReasons: reasons,
      requiredApprovals: decision.requiredApprovals,
      reviewRound: 1,
      applicantMessage: null,
      applicantResponse: null,
      licenseVersionId: license.id,
      reapplyAfter: null,
      createdAt: at,
      updatedAt: at,
      decidedAt: status === "pending_review" ? null : at,
    } as const;
    const statements: BatchItem<"sqlite">[] = [
      db.insert(applications).values(row),
      // The organization accepted this license version with its first case; the request records
      // who asked under it, from where.
      db.insert(acceptances).values({
        id: ids.id("acc"),
        applicationId: id,
        licenseVersionId: license.id,
        licenseSha256: license.licenseSha256,
        aupSha256: license.aupSha256,
        acceptedAt: at,
        ip: evidence.ip,
        country: evidence.country,
        userAgent: evidence.userAgent?.slice(0, 512) ?? null,
      }),
    ];
    const events: AuditEntry[] = [
      {
        actor,
        action: "application.models_requested",
        subjectType: "application",
        subjectId: id,
        data: {
          organizationId: member.organizationId,
          family: family.id,
          models: wanted,
          policyOutcome: decision.outcome,
        },
      },
    ];
    if (screening.length > 0) events.push(screeningMatchEvent(id, screening));
    if (status === "approved") {
      const granted = await grantForApproval(services, row, at, "system:policy");
      statements.push(...granted.statements);
      events.push(...granted.events);
    }
    statements.push(...caseEvents(services, row, null, status));
    return { statements, events, result: { applicationId: id, status, models: wanted, reasons } };
  });
}

function invalid(field: string, message: string): AppError {
  return new AppError("validation_failed", "The request body is invalid.", { errors: [{ field, message }] });
}
