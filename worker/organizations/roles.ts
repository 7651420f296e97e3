/**
 * Who may give which member role: an owner every role, an admin developer and viewer, other
 * members none. Changing a member's role, removing a member and inviting someone follow this one
 * rule, and an invitation gives no more than its inviter still may when it is accepted.
 */
import { type MemberPrincipal, roleAtLeast } from "../auth/members";
import type { MemberRole } from "../db/schema";
import { AppError } from "../errors";

/** Whether a member with `role` may make, unmake or invite a member with `given`. */
export function mayGive(role: MemberRole, given: MemberRole): boolean {
  return role === "owner" || (roleAtLeast(role, "admin") && !roleAtLeast(given, "admin"));
}

/** Refuses (403) an actor who may not give or take away each of `roles`. */
export function assertMayManage(actor: MemberPrincipal, ...roles: MemberRole[]): void {
  if (!roles.every((role) => mayGive(actor.membership.role, role))) {
    throw new AppError("forbidden", "Only an owner may make, invite or remove an owner or an admin.");
  }
}
