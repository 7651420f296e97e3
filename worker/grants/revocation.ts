/**
 * What revoking a grant does to the organization's cases of the family: a case still open — a
 * request for more models, or any other in review or waiting for the applicant — would otherwise
 * hand back by approval the access the revocation took away. Each is closed with the revocation.
 */
import { and, eq, inArray } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { AuditEntry } from "../audit/log";
import { applications, type Grant, OPEN_STATUSES } from "../db/schema";
import { caseEvents, type EventRecorder } from "../events/record";

/** What the applicant reads on a case closed by the revocation. */
export const CLOSED_BY_REVOCATION_MESSAGE =
  "This request was closed because your organization's access to this model family was revoked.";

/**
 * The statements and audit events that close `grant`'s organization's open cases of its family as
 * rejected, at `at`, each with its `application.status_changed` event for the organization. Only
 * a case still open when the batch runs is changed.
 */
export async function closeOpenCasesOfRevokedGrant(
  deps: EventRecorder,
  grant: Pick<Grant, "id" | "organizationId" | "family">,
  at: string,
  actor: string,
): Promise<{ statements: BatchItem<"sqlite">[]; events: AuditEntry[] }> {
  const open = await deps.db
    .select({
      id: applications.id,
      organizationId: applications.organizationId,
      family: applications.family,
      status: applications.status,
    })
    .from(applications)
    .where(
      and(
        eq(applications.organizationId, grant.organizationId),
        eq(applications.family, grant.family),
        inArray(applications.status, [...OPEN_STATUSES]),
      ),
    );
  const statements: BatchItem<"sqlite">[] = [];
  const events: AuditEntry[] = [];
  for (const application of open) {
    statements.push(
      deps.db
        .update(applications)
        .set({ status: "rejected", updatedAt: at, decidedAt: at, applicantMessage: CLOSED_BY_REVOCATION_MESSAGE })
        .where(and(eq(applications.id, application.id), inArray(applications.status, [...OPEN_STATUSES]))),
      ...caseEvents(deps, application, application.status, "rejected"),
    );
    events.push({
      actor,
      action: "application.closed",
      subjectType: "application",
      subjectId: application.id,
      data: {
        reason: "grant_revoked",
        grantId: grant.id,
        organizationId: grant.organizationId,
        family: grant.family,
        from: application.status,
        to: "rejected",
      },
    });
  }
  return { statements, events };
}
