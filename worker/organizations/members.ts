/**
 * An organization's members: who they are, changing a member's role and removing a member. The
 * rules: admins manage developers and viewers, only an owner makes or removes an owner or an
 * admin, anyone may leave, and an organization always keeps an owner. A member's pending
 * invitations end with their right to give them: when they leave, are removed or get a role that
 * may not give the invited one. Each change is read and written inside one audited write, whose
 * retry on a concurrent audited write makes "the last owner" a fact at the moment of writing, not
 * a guess from before it.
 */
import { and, count, eq, inArray, isNull } from "drizzle-orm";
import { writeAudited } from "../audit/log";
import { type MemberPrincipal, memberNow, roleAtLeast } from "../auth/members";
import { userActor } from "../auth/sign-in";
import { accessTokens, grants, type MemberRole, memberships, users } from "../db/schema";
import { AppError } from "../errors";
import type { Services } from "../services";
import { withdrawnInvitations } from "./invitations";
import { assertMayManage } from "./roles";

type Deps = Pick<Services, "db" | "clock" | "ids" | "auditAnchor">;

/**
 * Token ids a removal's audit event names. The event counts every token revoked; the ids are
 * for finding them, and past this many they would make the one row, and every read of the log,
 * grow with a member's history (expired tokens stay unrevoked, so even the cap on live tokens
 * does not bound them). The rest are found by the member and the event's time.
 */
export const AUDITED_TOKEN_IDS = 100;

/** A member as their organization lists them. */
export interface MemberView {
  id: string;
  userId: string;
  email: string;
  name: string | null;
  role: MemberRole;
  /** Whether the member has proven their address (a carried-over contact may not have yet). */
  emailVerified: boolean;
  createdAt: string;
}

const memberColumns = {
  id: memberships.id,
  userId: memberships.userId,
  email: users.email,
  name: users.name,
  role: memberships.role,
  emailVerifiedAt: users.emailVerifiedAt,
  createdAt: memberships.createdAt,
};

function view(row: { emailVerifiedAt: string | null } & Omit<MemberView, "emailVerified">): MemberView {
  const { emailVerifiedAt, ...rest } = row;
  return { ...rest, emailVerified: emailVerifiedAt !== null };
}

/** The organization's live members, oldest first. */
export async function listMembers(services: Pick<Services, "db">, organizationId: string): Promise<MemberView[]> {
  const rows = await services.db
    .select(memberColumns)
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(and(eq(memberships.organizationId, organizationId), isNull(memberships.removedAt)))
    .orderBy(memberships.createdAt, memberships.id);
  return rows.map(view);
}

/** A live member of the organization by membership id, or 404 (another organization's too). */
async function liveMember(services: Pick<Services, "db">, organizationId: string, id: string): Promise<MemberView> {
  const [row] = await services.db
    .select(memberColumns)
    .from(memberships)
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(and(eq(memberships.id, id), eq(memberships.organizationId, organizationId), isNull(memberships.removedAt)));
  if (!row) throw new AppError("not_found", "No member with that id in this organization.");
  return view(row);
}

async function ownerCount(services: Pick<Services, "db">, organizationId: string): Promise<number> {
  const [row] = await services.db
    .select({ owners: count() })
    .from(memberships)
    .where(
      and(eq(memberships.organizationId, organizationId), eq(memberships.role, "owner"), isNull(memberships.removedAt)),
    );
  return row?.owners ?? 0;
}

/** Refuses leaving an organization without an owner. */
async function assertKeepsAnOwner(services: Pick<Services, "db">, organizationId: string, target: MemberView) {
  if (target.role === "owner" && (await ownerCount(services, organizationId)) <= 1) {
    throw new AppError("invalid_state", "An organization keeps at least one owner: make another member owner first.");
  }
}

/**
 * Changes a member's role (the actor is an admin or owner: the route checked), ending in the same
 * write the member's pending invitations the new role may not give.
 */
export async function changeMemberRole(
  services: Deps,
  actor: MemberPrincipal,
  membershipId: string,
  role: MemberRole,
): Promise<MemberView> {
  return writeAudited(services, async () => {
    const me = await memberNow(services, actor, "admin");
    const target = await liveMember(services, actor.organizationId, membershipId);
    assertMayManage(me, target.role, role);
    if (target.role === role) return { statements: [], events: [], result: target };
    if (role !== "owner") await assertKeepsAnOwner(services, actor.organizationId, target);
    const now = services.clock.now().toISOString();
    const withdrawn = await withdrawnInvitations(services, actor, { userId: target.userId, role }, now);
    return {
      statements: [
        services.db
          .update(memberships)
          .set({ role })
          .where(and(eq(memberships.id, target.id), isNull(memberships.removedAt))),
        ...withdrawn.statements,
      ],
      events: [
        {
          actor: userActor(actor.user),
          action: "member.role_changed",
          subjectType: "organization",
          subjectId: actor.organizationId,
          data: { membershipId: target.id, userId: target.userId, from: target.role, to: role },
        },
        ...withdrawn.events,
      ],
      result: { ...target, role },
    };
  });
}

/**
 * Removes a member: the membership ends and, in the same write, every live token the member
 * minted under the organization's grants is revoked, so none of them works a moment longer, and
 * every pending invitation the member sent is revoked, so none of them makes a member later.
 * The audit event counts the tokens revoked and names at most `AUDITED_TOKEN_IDS` of them, oldest
 * first. (Their sessions stay: they may belong to other organizations.) A member may remove themself;
 * removing anyone else needs an admin, and an owner for an owner or admin.
 */
export async function removeMember(
  services: Deps,
  actor: MemberPrincipal,
  membershipId: string,
): Promise<{ member: MemberView; revokedTokens: number }> {
  return writeAudited(services, async () => {
    const me = await memberNow(services, actor);
    const target = await liveMember(services, actor.organizationId, membershipId);
    const leaving = target.userId === me.user.id;
    if (!leaving) {
      if (!roleAtLeast(me.membership.role, "admin")) {
        throw new AppError("forbidden", "Removing another member needs the admin role in the organization.");
      }
      assertMayManage(me, target.role);
    }
    await assertKeepsAnOwner(services, actor.organizationId, target);
    const now = services.clock.now().toISOString();
    const organizationGrants = services.db
      .select({ id: grants.id })
      .from(grants)
      .where(eq(grants.organizationId, actor.organizationId));
    const liveTokens = and(
      eq(accessTokens.userId, target.userId),
      isNull(accessTokens.revokedAt),
      inArray(accessTokens.grantId, organizationGrants),
    );
    const [revoking] = await services.db.select({ n: count() }).from(accessTokens).where(liveTokens);
    const revokedTokens = revoking?.n ?? 0;
    const named = await services.db
      .select({ id: accessTokens.id })
      .from(accessTokens)
      .where(liveTokens)
      .orderBy(accessTokens.createdAt, accessTokens.id)
      .limit(AUDITED_TOKEN_IDS);
    const withdrawn = await withdrawnInvitations(services, actor, { userId: target.userId, role: null }, now);
    return {
      statements: [
        services.db
          .update(memberships)
          .set({ removedAt: now })
          .where(and(eq(memberships.id, target.id), isNull(memberships.removedAt))),
        services.db.update(accessTokens).set({ revokedAt: now }).where(liveTokens),
        ...withdrawn.statements,
      ],
      events: [
        {
          actor: userActor(actor.user),
          action: leaving ? "member.left" : "member.removed",
          subjectType: "organization",
          subjectId: actor.organizationId,
          data: {
            membershipId: target.id,
            userId: target.userId,
            role: target.role,
            revokedTokenCount: revokedTokens,
            revokedTokenIds: named.map((t) => t.id),
            revokedTokenIdsTruncated: revokedTokens > named.length,
          },
        },
        ...withdrawn.events,
      ],
      result: { member: target, revokedTokens },
    };
  });
}
