import { isFreeMailDomain } from "../auth/free-mail";
import type { ApplicationStatus, Decision } from "../db/schema";
import { canonicalEmail } from "../mail/mailbox";

/** What a reviewer's decision acts on. */
export interface ReviewState {
  status: ApplicationStatus;
  requiredApprovals: number;
  /** E-mails of the approvers who approved in the current review round. */
  approvalsThisRound: readonly string[];
}

/** The result of applying a decision. */
export type ReviewTransition =
  | { ok: true; status: ApplicationStatus; issueGrant: boolean; approvals: number }
  | { ok: false; code: "invalid_state" | "conflict"; detail: string };

const DECIDABLE: Record<Decision, readonly ApplicationStatus[]> = {
  approve: ["pending_review"],
  reject: ["pending_review", "info_requested"],
  request_info: ["pending_review"],
};

/**
 * The review state machine. Pure: given the case as stored and one reviewer's decision, says what
 * the case becomes. Approval needs `requiredApprovals` distinct approvers within one round (four
 * eyes for cases the licence reserves to the licensor); a request for information ends the round.
 */
export function applyDecision(state: ReviewState, reviewerEmail: string, decision: Decision): ReviewTransition {
  if (!DECIDABLE[decision].includes(state.status)) {
    return { ok: false, code: "invalid_state", detail: `A case that is ${state.status} cannot take "${decision}".` };
  }
  const reviewer = canonicalEmail(reviewerEmail);
  switch (decision) {
    case "approve": {
      if (state.approvalsThisRound.some((email) => canonicalEmail(email) === reviewer)) {
        return {
          ok: false,
          code: "conflict",
          detail: "You have already approved this case; the next approval must come from another approver.",
        };
      }
      const approvals = state.approvalsThisRound.length + 1;
      const done = approvals >= state.requiredApprovals;
      return { ok: true, status: done ? "approved" : "pending_review", issueGrant: done, approvals };
    }
    case "reject":
      return { ok: true, status: "rejected", issueGrant: false, approvals: state.approvalsThisRound.length };
    case "request_info":
      return { ok: true, status: "info_requested", issueGrant: false, approvals: state.approvalsThisRound.length };
  }
}

/** Why a reviewer may not decide a case: they are, or work where, the applicant is. */
export type ConflictOfInterest =
  | "applicant_email"
  | "contact_domain"
  | "website_domain"
  | "organization_member"
  | "organization_domain";

/** Who and what belongs to the applicant organization: its members' and invitees' e-mails, its verified domains. */
export interface OrganizationTies {
  emails: readonly string[];
  domains: readonly string[];
}

/** The domain of an e-mail address, lower-cased; `undefined` when there is none. */
function emailDomain(email: string): string | undefined {
  const at = email.lastIndexOf("@");
  const domain =
    at < 0
      ? ""
      : email
          .slice(at + 1)
          .toLowerCase()
          .replace(/\.$/, "");
  return domain.includes(".") ? domain : undefined;
}

/** The host of a website, lower-cased and without `www.`; `undefined` when it does not parse. */
function websiteDomain(website: string | null): string | undefined {
  if (!website) return undefined;
  try {
    const host = new URL(website).hostname.toLowerCase().replace(/\.$/, "");
    return host.replace(/^www\./, "") || undefined;
  } catch {
    return undefined;
  }
}

/** The same organization's domains: equal, or one a subdomain of the other, and neither free mail. */
function sameOrganizationDomain(a: string | undefined, b: string | undefined): boolean {
  if (!a || !b || isFreeMailDomain(a) || isFreeMailDomain(b)) return false;
  return a === b || a.endsWith(`.${b}`) || b.endsWith(`.${a}`);
}

/**
 * Whether a reviewer is too close to a case to decide it, approve it or change its grant: their
 * e-mail is the contact's (however spelt: `canonicalEmail`), or a member's or invitee's of the
 * applicant organization; or their domain is the contact's e-mail domain, the organization's
 * website domain or one it verified. A shared free-mail domain (`gmail.com`) is no conflict. Four
 * eyes mean nothing if one pair belongs to the applicant.
 */
export function conflictOfInterest(
  reviewerEmail: string,
  applicant: { contactEmail: string; website: string | null },
  ties: OrganizationTies = { emails: [], domains: [] },
): ConflictOfInterest | null {
  const reviewer = canonicalEmail(reviewerEmail);
  if (reviewer === canonicalEmail(applicant.contactEmail)) return "applicant_email";
  const reviewerDomain = emailDomain(reviewerEmail);
  if (sameOrganizationDomain(reviewerDomain, emailDomain(applicant.contactEmail))) return "contact_domain";
  if (sameOrganizationDomain(reviewerDomain, websiteDomain(applicant.website))) return "website_domain";
  if (ties.emails.some((email) => canonicalEmail(email) === reviewer)) return "organization_member";
  if (ties.domains.some((domain) => sameOrganizationDomain(reviewerDomain, domain.toLowerCase())))
    return "organization_domain";
  return null;
}
