import type { GrantStatus } from "../db/schema";

export type GrantAction = "suspend" | "revoke" | "reinstate";

const TRANSITIONS: Record<GrantAction, { from: readonly GrantStatus[]; to: GrantStatus }> = {
  suspend: { from: ["active"], to: "suspended" },
  reinstate: { from: ["suspended"], to: "active" },
  revoke: { from: ["active", "suspended"], to: "revoked" },
};

/** The status a grant moves to, or undefined when the action is not possible from `current`. Revocation is final. */
export function nextGrantStatus(current: GrantStatus, action: GrantAction): GrantStatus | undefined {
  const rule = TRANSITIONS[action];
  return rule.from.includes(current) ? rule.to : undefined;
}
