import type { AuditEntry } from "../audit/log";
import type { Database } from "../db/client";
import { grants } from "../db/schema";
import type { IdGenerator } from "../platform/ids";

/** The statement and audit event that issue a grant for an approved application: the models it applied for. */
export function issueGrant(
  deps: { db: Database; ids: IdGenerator },
  application: { id: string; organizationId: string; family: string; licenseVersionId: string; models: string[] },
  at: string,
  actor: string,
) {
  const grantId = deps.ids.id("grt");
  const statement = deps.db.insert(grants).values({
    id: grantId,
    applicationId: application.id,
    organizationId: application.organizationId,
    family: application.family,
    models: application.models,
    licenseVersionId: application.licenseVersionId,
    status: "active",
    createdAt: at,
    updatedAt: at,
  });
  const event: AuditEntry = {
    actor,
    action: "grant.issued",
    subjectType: "grant",
    subjectId: grantId,
    data: {
      applicationId: application.id,
      organizationId: application.organizationId,
      family: application.family,
      models: application.models,
    },
  };
  return { grantId, statement, event };
}
