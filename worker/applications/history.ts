/**
 * What an organization's record adds to the facts the policy decides a new case of a family on:
 * the country it is on record in, an earlier rejection or revocation, and other organizations'
 * cases it resembles. A confirmed application and a request for more models are decided on the
 * same record, so that neither path is the easier one.
 */
import { and, desc, eq } from "drizzle-orm";
import { applications, grants, organizations } from "../db/schema";
import type { ApplicationFacts } from "../policy/evaluate";
import type { Services } from "../services";
import { type RelatedCase, relatedCases } from "./identity";
import type { ApplicationInput } from "./schemas";

/** An organization's record for a family, as the policy reads it. */
export interface OrganizationRecord {
  facts: Pick<ApplicationFacts, "recordedCountry" | "priorRevocation" | "priorRejection" | "relatedCases">;
  /** The newest rejection of the family, whose cool-down a new application waits out. */
  lastRejection: { reapplyAfter: string | null } | undefined;
  related: RelatedCase[];
}

/**
 * The record of `organizationId` (which may not exist yet: a new organization has none) for
 * `familyId`, with the cases of other organizations that `claims` and `contactEmail` resemble.
 */
export async function organizationRecord(
  services: Pick<Services, "db">,
  organizationId: string,
  familyId: string,
  claims: Pick<ApplicationInput, "organization">,
  contactEmail: string,
): Promise<OrganizationRecord> {
  const { db } = services;
  const [history, revoked, [record], related] = await Promise.all([
    db
      .select({
        status: applications.status,
        reapplyAfter: applications.reapplyAfter,
        requiredApprovals: applications.requiredApprovals,
      })
      .from(applications)
      .where(and(eq(applications.organizationId, organizationId), eq(applications.family, familyId)))
      .orderBy(desc(applications.createdAt)),
    db
      .select({ id: grants.id })
      .from(grants)
      .where(and(eq(grants.organizationId, organizationId), eq(grants.family, familyId), eq(grants.status, "revoked")))
      .limit(1),
    db.select({ country: organizations.country }).from(organizations).where(eq(organizations.id, organizationId)),
    relatedCases(services, organizationId, claims, contactEmail),
  ]);
  const rejections = history.filter((a) => a.status === "rejected");
  return {
    facts: {
      ...(record ? { recordedCountry: record.country } : {}),
      priorRevocation: revoked.length > 0,
      ...(rejections.length > 0
        ? { priorRejection: { overThreshold: rejections.some((r) => r.requiredApprovals > 1) } }
        : {}),
      ...(related.length > 0 ? { relatedCases: { overThreshold: related.some((r) => r.overThreshold) } } : {}),
    },
    lastRejection: rejections[0],
    related,
  };
}
