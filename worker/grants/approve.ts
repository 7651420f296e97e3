/**
 * What approving a case does to the organization's access. An organization holds one grant per
 * family: its first approved case issues it, and a later approved case of the same family (a
 * request for more models) widens it to the union of both — never a second grant beside it. A
 * revoked grant stays revoked: only a new application, which the policy sends to review with
 * `prior_revocation`, may lead to a grant again.
 */
import { and, eq, inArray } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { AuditEntry } from "../audit/log";
import type { Database } from "../db/client";
import { grants, type PolicyReasonRow } from "../db/schema";
import { AppError } from "../errors";
import { reacceptanceOfNewerVersion } from "../licenses/reacceptance";
import type { Clock } from "../platform/clock";
import type { IdGenerator } from "../platform/ids";
import { issueGrant } from "./issue";

/** An approved case, as far as access is concerned. */
export interface ApprovedCase {
  id: string;
  organizationId: string;
  family: string;
  licenseVersionId: string;
  models: string[];
  /** What the policy found when the case was filed; `prior_revocation` when it knew of a revoked grant. */
  policyReasons: PolicyReasonRow[];
}

/**
 * The statements and audit events that give `approved`'s organization access to its models: a new
 * grant, or the organization's live (active or suspended) grant of the family widened by the
 * models it lacked. With no live grant but a revoked one, only a case filed as a new application
 * after the revocation, and reviewed knowing of it (`prior_revocation`), issues a grant; any other
 * case, such as a request for more models still open when the grant was revoked, is refused with
 * `invalid_state` and nothing is written.
 */
export async function grantForApproval(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  approved: ApprovedCase,
  at: string,
  actor: string,
): Promise<{ grantId: string; statements: BatchItem<"sqlite">[]; events: AuditEntry[] }> {
  const [live] = await deps.db
    .select({ id: grants.id, models: grants.models })
    .from(grants)
    .where(
      and(
        eq(grants.organizationId, approved.organizationId),
        eq(grants.family, approved.family),
        // A suspended grant is widened and stays suspended: approving more models must not
        // become a way around a suspension.
        inArray(grants.status, ["active", "suspended"]),
      ),
    );
  if (!live) {
    if (!approved.policyReasons.some((r) => r.code === "prior_revocation")) {
      const [revoked] = await deps.db
        .select({ id: grants.id })
        .from(grants)
        .where(
          and(
            eq(grants.organizationId, approved.organizationId),
            eq(grants.family, approved.family),
            eq(grants.status, "revoked"),
          ),
        )
        .limit(1);
      if (revoked) {
        throw new AppError(
          "invalid_state",
          "The organization's grant of this model family was revoked, and revocation is final: access comes back only through a new application, reviewed knowing of the revocation.",
        );
      }
    }
    const issued = issueGrant(deps, approved, at, actor);
    const grant = { ...approved, id: issued.grantId };
    return {
      grantId: issued.grantId,
      statements: [issued.statement, ...(await reacceptanceOfNewerVersion(deps, grant, at))],
      events: [issued.event],
    };
  }
  const added = approved.models.filter((m) => !live.models.includes(m));
  const models = [...live.models, ...added];
  return {
    grantId: live.id,
    statements:
      added.length === 0 ? [] : [deps.db.update(grants).set({ models, updatedAt: at }).where(eq(grants.id, live.id))],
    events: [
      {
        actor,
        action: "grant.models_added",
        subjectType: "grant",
        subjectId: live.id,
        data: { applicationId: approved.id, added, models },
      },
    ],
  };
}
