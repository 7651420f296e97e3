/**
 * Which organization a confirmed application belongs to, and which other cases it resembles.
 * An organization is never found by its name: a name, a website and a declared country are claims.
 * A case joins an existing organization only through something proven — its contact owns it (a
 * membership they accepted or founded) — and anything that merely resembles another organization's
 * case, an address at its verified domain included, is linked for reviewers and decided by one.
 */
import { and, eq, inArray, isNull, like, ne, or } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { AuditEntry } from "../audit/log";
import { isFreeMailDomain } from "../auth/free-mail";
import { membershipsOf } from "../auth/members";
import { emailDomain } from "../auth/users";
import {
  applications,
  grants,
  memberships,
  OPEN_STATUSES,
  organizationDomains,
  organizations,
  type User,
} from "../db/schema";
import { AppError } from "../errors";
import { resemblanceKey } from "../screening/names";
import type { Services } from "../services";
import type { ApplicationInput } from "./schemas";
import { normalizeOrganizationName } from "./submit";

/** How a confirmed application found its organization. */
export type JoinedBy = "membership" | "new_organization";

/** The organization of a confirmed application, and what must be written to make it so. */
export interface ResolvedOrganization {
  organizationId: string;
  joinedBy: JoinedBy;
  statements: BatchItem<"sqlite">[];
  events: AuditEntry[];
}

/**
 * A website's host as resemblance compares it: lower-cased, without `www.` or a trailing dot (the
 * same host); null if unparseable.
 */
export function websiteHost(website: string | null | undefined): string | null {
  if (!website) return null;
  try {
    return (
      new URL(website).hostname
        .toLowerCase()
        .replace(/\.$/, "")
        .replace(/^www\./, "") || null
    );
  } catch {
    return null;
  }
}

/**
 * The organization of `user`'s application: the one they own (their oldest), else a new one they
 * own, with their domain as its first verified domain (free-mail domains never, and a domain
 * another organization verified first stays that one's). An address at another organization's
 * domain proves a mailbox, not a place in that organization: one joins by an owner's invitation,
 * and such a case is linked to that organization's for reviewers (`relatedCases`). A member who
 * owns none of their organizations is refused: the owners apply, or ask for more models, for it.
 */
export async function resolveOrganization(
  services: Services,
  user: User,
  input: ApplicationInput,
  at: string,
): Promise<ResolvedOrganization> {
  const { db, ids } = services;
  const actor = `member:${user.email}`;
  const memberOf = await membershipsOf(services, user.id);
  const owned = memberOf.find((m) => m.membership.role === "owner");
  if (owned) {
    return { organizationId: owned.membership.organizationId, joinedBy: "membership", statements: [], events: [] };
  }
  const [member] = memberOf;
  if (member) {
    throw new AppError(
      "forbidden",
      `You are a ${member.membership.role} of ${member.organizationName}: its owners apply for it, or ask for more models at /account.`,
    );
  }
  const domain = emailDomain(user.email);
  const free = isFreeMailDomain(domain);
  const organizationId = ids.id("org");
  const statements: BatchItem<"sqlite">[] = [
    db.insert(organizations).values({
      id: organizationId,
      name: input.organization.name,
      normalizedName: normalizeOrganizationName(input.organization.name),
      nameKey: resemblanceKey(input.organization.name) ?? "",
      website: input.organization.website ?? null,
      country: input.organization.country,
      createdAt: at,
    }),
    db.insert(memberships).values({ id: ids.id("mem"), organizationId, userId: user.id, role: "owner", createdAt: at }),
  ];
  if (!free) {
    // Two organizations confirmed at once from one new domain: the first keeps it.
    statements.push(
      db
        .insert(organizationDomains)
        .values({ domain, organizationId, verifiedByUserId: user.id, verifiedAt: at })
        .onConflictDoNothing(),
    );
  }
  return {
    organizationId,
    joinedBy: "new_organization",
    statements,
    events: [
      {
        actor,
        action: "organization.created",
        subjectType: "organization",
        subjectId: organizationId,
        data: { owner: user.id, verifiedDomain: free ? null : domain },
      },
    ],
  };
}

/**
 * Keys the names of up to `limit` organizations created before names were keyed (`nameKey`
 * null), so that they too are found by `resemblanceKey`; a name with no key gets an empty one,
 * which matches nothing. Run by the scheduled handler; answers how many it keyed.
 */
export async function keyOrganizationNames(services: Pick<Services, "db">, limit = 200): Promise<number> {
  const { db } = services;
  const unkeyed = await db
    .select({ id: organizations.id, name: organizations.name })
    .from(organizations)
    .where(isNull(organizations.nameKey))
    .limit(limit);
  const [first, ...rest] = unkeyed.map((org) =>
    db
      .update(organizations)
      .set({ nameKey: resemblanceKey(org.name) ?? "" })
      .where(and(eq(organizations.id, org.id), isNull(organizations.nameKey))),
  );
  if (first) await db.batch([first, ...rest]);
  return unkeyed.length;
}

/** A case of another organization that this one resembles. */
export interface RelatedCase {
  applicationId: string;
  organizationId: string;
  /** What resembles: `name`, `website`, `email_domain`. */
  reasons: string[];
  /** The related case was the licensor's to decide (over the threshold), whatever its state now. */
  overThreshold: boolean;
}

/**
 * Cases of other organizations that resemble this application — the same name (`resemblanceKey`),
 * the same website host, or the contact's (non-free-mail) e-mail domain as their website or
 * verified domain — and are open, rejected, or hold a suspended or revoked grant; at the
 * organization whose verified domain is the contact's, every case.
 */
export async function relatedCases(
  services: Pick<Services, "db">,
  organizationId: string,
  input: Pick<ApplicationInput, "organization">,
  contactEmail: string,
): Promise<RelatedCase[]> {
  const { db } = services;
  const name = normalizeOrganizationName(input.organization.name);
  const nameKey = resemblanceKey(input.organization.name);
  const host = websiteHost(input.organization.website);
  const mailDomain = emailDomain(contactEmail);
  const domains = [...new Set([host, isFreeMailDomain(mailDomain) ? null : mailDomain].filter((d) => d !== null))];

  const reasonsByOrganization = new Map<string, Set<string>>();
  const note = (id: string, reason: string) => {
    if (id === organizationId) return;
    const reasons = reasonsByOrganization.get(id) ?? new Set<string>();
    reasons.add(reason);
    reasonsByOrganization.set(id, reasons);
  };
  // The same key, or the same name as normalized before keys were kept: organizations created
  // since have both, so a name that resembled one before still does (and the scheduled handler
  // keys the older ones, `keyOrganizationNames`).
  const sameName =
    nameKey === null
      ? eq(organizations.normalizedName, name)
      : or(eq(organizations.nameKey, nameKey), eq(organizations.normalizedName, name));
  const byName = await db
    .select({ id: organizations.id })
    .from(organizations)
    .where(and(sameName, ne(organizations.id, organizationId)));
  for (const org of byName) note(org.id, "name");
  if (domains.length > 0) {
    const byDomain = await db
      .select({ id: organizationDomains.organizationId, domain: organizationDomains.domain })
      .from(organizationDomains)
      .where(inArray(organizationDomains.domain, domains));
    for (const org of byDomain) {
      if (org.domain === host) note(org.id, "website");
      if (org.domain === mailDomain) note(org.id, "email_domain");
    }
    // Websites are stored as typed; a LIKE narrows the candidates, the parsed host decides.
    const bySite = await db
      .select({ id: organizations.id, website: organizations.website })
      .from(organizations)
      .where(or(...domains.map((d) => like(organizations.website, `%${d.replace(/[%_]/g, "")}%`))));
    for (const org of bySite) {
      const theirs = websiteHost(org.website);
      if (theirs === host) note(org.id, "website");
      if (theirs !== null && theirs === mailDomain && !isFreeMailDomain(mailDomain)) note(org.id, "email_domain");
    }
  }
  if (reasonsByOrganization.size === 0) return [];

  const candidates = await db
    .select({
      applicationId: applications.id,
      organizationId: applications.organizationId,
      status: applications.status,
      requiredApprovals: applications.requiredApprovals,
      grantStatus: grants.status,
    })
    .from(applications)
    .leftJoin(grants, eq(grants.applicationId, applications.id))
    .where(inArray(applications.organizationId, [...reasonsByOrganization.keys()]));
  return candidates
    .filter(
      (c) =>
        OPEN_STATUSES.includes(c.status) ||
        c.status === "rejected" ||
        c.grantStatus === "suspended" ||
        c.grantStatus === "revoked" ||
        // An address at a domain another organization verified: likely a colleague of its members,
        // whose organization's cases count whatever their state.
        reasonsByOrganization.get(c.organizationId)?.has("email_domain"),
    )
    .map((c) => ({
      applicationId: c.applicationId,
      organizationId: c.organizationId,
      reasons: [...(reasonsByOrganization.get(c.organizationId) ?? [])].sort(),
      // The licensor's case stays the licensor's, open or already refused, suspended or revoked.
      overThreshold: c.requiredApprovals > 1,
    }));
}
