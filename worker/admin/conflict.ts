/**
 * Conflict of interest on the admin side, one rule for every write an admin makes on behalf of
 * one organization. Whoever is party to an organization — its applicant contact however spelt, a
 * colleague at the contact's or the website's domain, a member or invitee, someone at a domain it
 * verified (`conflictOfInterest`) — may not decide its cases, change its grants, comment on its
 * cases, nor change what the gateway lets it do (its acceptable-use screening, its inference
 * limits): four eyes and an admin role mean nothing if one pair belongs to the party, and an
 * insider admin could otherwise switch off their own organization's screening or lift its limits.
 * Reads stay open: a reviewer may see a case they are party to, and is told so.
 *
 * The check is made inside the audited write's plan (`refusalIfParty`), never before it. Joining
 * an organization, or being invited to one, is an audited write too; so an admin who joins while
 * their change is under way moves the audit chain under it, the change is planned again on fresh
 * state, and refused. The refusal is written to the audit log as well: someone party to an
 * organization tried to act on it.
 */
import { and, eq, isNull } from "drizzle-orm";
import { type ConflictOfInterest, conflictOfInterest } from "../applications/review";
import { type AuditedWrite, writeAudited } from "../audit/log";
import type { AdminIdentity } from "../auth/access";
import type { Database } from "../db/client";
import { applications, invitations, memberships, organizationDomains, organizations, users } from "../db/schema";
import { AppError } from "../errors";

/** What an audited write needs (`writeAudited`'s own dependencies). */
type AuditDeps = Parameters<typeof writeAudited>[0];

/** The actor name a reviewer has in the audit log. */
export function reviewerActor(reviewer: Pick<AdminIdentity, "email">): string {
  return `reviewer:${reviewer.email}`;
}

/** Why, in words fitting a case as well as an organization's settings. */
const CONFLICT_REASON: Record<ConflictOfInterest, string> = {
  applicant_email: "You are the applicant's contact",
  contact_domain: "The applicant's contact e-mail is at your organization's domain",
  website_domain: "The applicant's website is at your organization's domain",
  organization_member: "You are a member of the applicant organization, or invited to it",
  organization_domain: "Your e-mail is at a domain the applicant organization verified",
};

/** What the refused reviewer is told to do instead when the caller says nothing else. */
const DEFAULT_REMEDY = "another approver must decide it";

/** The refusal of a reviewer party to what they would change; `remedy` says who must do it instead. */
export function conflictError(conflict: ConflictOfInterest, remedy = DEFAULT_REMEDY): AppError {
  return new AppError("conflict_of_interest", `${CONFLICT_REASON[conflict]}; ${remedy}.`, { extensions: { conflict } });
}

/**
 * What a reviewer may be party to: an organization, through any of its cases, and when the write
 * is about one case, that case (its contact and website are judged first, so the conflict named
 * is the one closest to it).
 */
export interface ConflictSubject {
  organizationId: string;
  contactEmail?: string;
  website?: string | null;
}

/**
 * Why `reviewerEmail` is party to `subject`, or null: `conflictOfInterest` against the case when
 * there is one, then against every case the organization filed and the website it gave, each with
 * the organization's live members, open invitations and verified domains. Every case counts, not
 * only the one at hand: a colleague of the contact of last year's application is as much party to
 * the organization as one of this year's.
 */
export async function reviewerConflict(
  db: Database,
  reviewerEmail: string,
  subject: ConflictSubject,
): Promise<ConflictOfInterest | null> {
  const { organizationId } = subject;
  const [members, invited, domains, cases, organization] = await Promise.all([
    db
      .select({ email: users.email })
      .from(memberships)
      .innerJoin(users, eq(users.id, memberships.userId))
      .where(and(eq(memberships.organizationId, organizationId), isNull(memberships.removedAt))),
    db
      .select({ email: invitations.email })
      .from(invitations)
      .where(
        and(
          eq(invitations.organizationId, organizationId),
          isNull(invitations.acceptedAt),
          isNull(invitations.revokedAt),
        ),
      ),
    db
      .select({ domain: organizationDomains.domain })
      .from(organizationDomains)
      .where(eq(organizationDomains.organizationId, organizationId)),
    db
      .selectDistinct({ contactEmail: applications.contactEmail, website: applications.website })
      .from(applications)
      .where(eq(applications.organizationId, organizationId)),
    db.select({ website: organizations.website }).from(organizations).where(eq(organizations.id, organizationId)),
  ]);
  const ties = { emails: [...members, ...invited].map((row) => row.email), domains: domains.map((row) => row.domain) };
  const applicants: { contactEmail: string; website: string | null }[] = [];
  if (subject.contactEmail !== undefined) {
    applicants.push({ contactEmail: subject.contactEmail, website: subject.website ?? null });
  }
  applicants.push(...cases);
  // The organization's own website, and its ties, also where it has filed no case (yet).
  // (No contact there: an empty address is nobody's, so only the website and the ties are judged.)
  applicants.push({ contactEmail: "", website: organization[0]?.website ?? null });
  for (const applicant of applicants) {
    const conflict = conflictOfInterest(reviewerEmail, applicant, ties);
    if (conflict) return conflict;
  }
  return null;
}

/** What a refused attempt is recorded as. */
export interface RefusedAttempt {
  /** `subject.verb_refused`: `application.decision_refused`, `organization.change_refused`, … */
  action: string;
  subjectType: string;
  subjectId: string;
  /** What was attempted, beside the conflict and the reviewer the event always carries. */
  data?: Record<string, unknown>;
  /** Who must do it instead, as the refused reviewer is told; "another approver must decide it" unless said. */
  remedy?: string;
}

/** A plan's answer when the reviewer is party to what they would change. */
class Refusal {
  constructor(
    readonly conflict: ConflictOfInterest,
    readonly remedy: string | undefined,
  ) {}
}

/**
 * Inside an audited write's plan: when `reviewer` is party to `subject`, the plan to return
 * instead of the change — no statement, one audit event recording the attempt and the conflict;
 * undefined when they are not. Give the plan to `writeAuditedUnlessParty`, which turns it into
 * `conflict_of_interest` once the event is written.
 */
export async function refusalIfParty(
  db: Database,
  reviewer: Pick<AdminIdentity, "email">,
  subject: ConflictSubject,
  attempt: RefusedAttempt,
): Promise<AuditedWrite<Refusal> | undefined> {
  const conflict = await reviewerConflict(db, reviewer.email, subject);
  if (!conflict) return undefined;
  return {
    statements: [],
    events: [
      {
        actor: reviewerActor(reviewer),
        action: attempt.action,
        subjectType: attempt.subjectType,
        subjectId: attempt.subjectId,
        data: { code: "conflict_of_interest", conflict, ...attempt.data, reviewer: reviewer.email },
      },
    ],
    result: new Refusal(conflict, attempt.remedy),
  };
}

/**
 * `writeAudited` for a plan that may answer `refusalIfParty`'s refusal: the refusal's event is
 * written like any other, then `conflict_of_interest` is thrown; any other plan's result is returned.
 */
export async function writeAuditedUnlessParty<T>(
  services: AuditDeps,
  plan: () => Promise<AuditedWrite<T> | AuditedWrite<Refusal>>,
): Promise<T> {
  const planned = await writeAudited<T | Refusal>(services, plan);
  if (planned instanceof Refusal) throw conflictError(planned.conflict, planned.remedy);
  return planned;
}

/**
 * An admin's audited change to one organization's settings (its screening, its limits), refused
 * with `conflict_of_interest` — the refusal audited as `organization.change_refused`, naming the
 * `change` — when the admin is party to the organization. `plan` runs only for an admin who is
 * not, and reads and decides as any audited plan does.
 */
export function writeOrganizationChange<T>(
  services: AuditDeps,
  admin: Pick<AdminIdentity, "email">,
  organizationId: string,
  change: string,
  plan: () => Promise<AuditedWrite<T>>,
): Promise<T> {
  return writeAuditedUnlessParty<T>(services, async () => {
    const refused = await refusalIfParty(
      services.db,
      admin,
      { organizationId },
      {
        action: "organization.change_refused",
        subjectType: "organization",
        subjectId: organizationId,
        data: { change },
        remedy: "another admin must make this change",
      },
    );
    return refused ?? plan();
  });
}
