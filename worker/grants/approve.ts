/**
 * What approving a case does to the organization's access. An organization holds one grant per
 * family: its first approved case issues it, and a later approved case of the same family (a
 * request for more models) widens it to the union of both — never a second grant beside it.
 */
import { and, desc, eq, inArray } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { AuditEntry } from "../audit/log";
import type { Database } from "../db/client";
import { grants, licenseReacceptances, licenseVersions } from "../db/schema";
import { reacceptanceRequiredEvent } from "../events/record";
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
}

/**
 * The statements and audit events that give `approved`'s organization access to its models: a new
 * grant, or the organization's live (active or suspended) grant of the family widened by the
 * models it lacked.
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

/**
 * A grant issued under a version older than one loaded since with a deadline (the case was applied
 * for, or sat in review, before it came) must accept that version by the same deadline as the
 * grants that were live then: otherwise it would be the one grant the new terms never reach. The
 * newest such version is the one; its deadline may have passed already, and then the grant is of
 * no use until an owner or admin accepts it.
 */
async function reacceptanceOfNewerVersion(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  grant: { id: string; organizationId: string; family: string; licenseVersionId: string },
  at: string,
): Promise<BatchItem<"sqlite">[]> {
  const versions = await deps.db
    .select({ id: licenseVersions.id, version: licenseVersions.version, reacceptBy: licenseVersions.reacceptBy })
    .from(licenseVersions)
    .where(eq(licenseVersions.family, grant.family))
    .orderBy(desc(licenseVersions.version));
  const own = versions.find((v) => v.id === grant.licenseVersionId);
  const newer = versions.find((v) => v.reacceptBy !== null && own !== undefined && v.version > own.version);
  if (!newer?.reacceptBy) return [];
  return [
    deps.db.insert(licenseReacceptances).values({
      id: deps.ids.id("rac"),
      grantId: grant.id,
      organizationId: grant.organizationId,
      family: grant.family,
      fromLicenseVersionId: grant.licenseVersionId,
      licenseVersionId: newer.id,
      acceptBy: newer.reacceptBy,
      requiredAt: at,
    }),
    reacceptanceRequiredEvent(deps, grant, newer.id, newer.reacceptBy),
  ];
}
