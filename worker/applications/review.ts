import type { ApplicationStatus, Decision } from "../db/schema";

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
  const reviewer = reviewerEmail.toLowerCase();
  switch (decision) {
    case "approve": {
      if (state.approvalsThisRound.some((email) => email.toLowerCase() === reviewer)) {
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
