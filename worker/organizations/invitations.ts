/**
 * Invitations: a single-use link (7 days) mailed to an address, whose use makes that address's
 * person a member with the invited role. The link is mailed only to the invited address, so using
 * it proves the address, and nobody else can accept it: a person signed in as another address is
 * refused before the link is used. D1 keeps the secret's sha256 alone. An invitation gives no
 * more than its inviter still may (`roles.ts`): the ones they may no longer give end when they
 * leave or their role is lowered, and acceptance checks the inviter again.
 */
import { and, desc, eq, gt, inArray, isNull } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditEntry, writeAudited } from "../audit/log";
import { type MemberPrincipal, memberNow } from "../auth/members";
import { newSession } from "../auth/sessions";
import { userActor } from "../auth/sign-in";
import { normalizeEmail, provenUser } from "../auth/users";
import {
  type Invitation,
  invitations,
  type MemberRole,
  memberships,
  organizations,
  type User,
  users,
} from "../db/schema";
import { AppError } from "../errors";
import { gatewayLink } from "../mail/links";
import type { OutgoingMail } from "../mail/mailer";
import { enqueueMailWithinLimits } from "../mail/outbox";
import { mailSafeName } from "../mail/templates";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";
import { assertMayManage, mayGive } from "./roles";

/** How long an invitation link lives. */
export const INVITATION_TTL_MS = 7 * 86_400_000;

/** Prefix of invitation secrets, so they are recognisable in logs and leak scans. */
const SECRET_PREFIX = "mgi_";

type Deps = Pick<Services, "db" | "clock" | "ids" | "auditAnchor">;

/** An invitation as its organization's admins see it: never its secret. */
export interface InvitationView {
  id: string;
  email: string;
  role: MemberRole;
  invitedByUserId: string;
  createdAt: string;
  expiresAt: string;
}

function view(row: Invitation): InvitationView {
  return {
    id: row.id,
    email: row.email,
    role: row.role,
    invitedByUserId: row.invitedByUserId,
    createdAt: row.createdAt,
    expiresAt: row.expiresAt,
  };
}

/** Neither accepted, revoked nor expired. */
function pending(now: string) {
  return and(isNull(invitations.acceptedAt), isNull(invitations.revokedAt), gt(invitations.expiresAt, now));
}

/**
 * The invitation mail: the gateway's words, the organization's name only as `mailSafeName`
 * allows (the address is not proven yet), the role, and the gateway's own link.
 */
function invitationMail(to: string, organizationName: string, role: MemberRole, link: string): OutgoingMail {
  const name = mailSafeName(organizationName, { verified: false });
  const organization = name ? `the organization “${name}”` : "an organization";
  return {
    to,
    subject: "Invitation to an organization on modelgate",
    text: `Hello,\n\nyou are invited to join ${organization} on modelgate as ${role}. To accept, open this link within 7 days and press “Accept”:\n${link}\n\nThe link works once. If you do not expect this invitation, ignore this message: nothing happens without the link.\n\n— modelgate licensing\n`,
  };
}

/** The organization's pending invitations, newest first. */
export async function listInvitations(
  services: Pick<Services, "db" | "clock">,
  organizationId: string,
): Promise<InvitationView[]> {
  const rows = await services.db
    .select()
    .from(invitations)
    .where(and(eq(invitations.organizationId, organizationId), pending(services.clock.now().toISOString())))
    .orderBy(desc(invitations.createdAt));
  return rows.map(view);
}

/**
 * Invites `email` with `role` and mails the link. Only an owner invites an owner or an admin (403,
 * as for a role change); a live member cannot be invited again (409). A new invitation to the
 * same address replaces a pending one.
 */
export async function inviteMember(
  services: Deps & Pick<Services, "config">,
  actor: MemberPrincipal,
  input: { email: string; role: MemberRole },
): Promise<InvitationView> {
  const email = normalizeEmail(input.email);
  assertMayManage(actor, input.role);
  return writeAudited(services, async () => {
    assertMayManage(await memberNow(services, actor, "admin"), input.role);
    const now = services.clock.now();
    const at = now.toISOString();
    const [[organization], [member]] = await Promise.all([
      services.db
        .select({ name: organizations.name })
        .from(organizations)
        .where(eq(organizations.id, actor.organizationId)),
      services.db
        .select({ id: memberships.id })
        .from(memberships)
        .innerJoin(users, eq(users.id, memberships.userId))
        .where(
          and(
            eq(memberships.organizationId, actor.organizationId),
            eq(users.email, email),
            isNull(memberships.removedAt),
          ),
        ),
    ]);
    if (!organization) throw new AppError("not_found", "The organization does not exist.");
    if (member) throw new AppError("conflict", "That address is already a member of the organization.");
    const secret = `${SECRET_PREFIX}${services.ids.secret(32)}`;
    const row: Invitation = {
      id: services.ids.id("inv"),
      organizationId: actor.organizationId,
      email,
      role: input.role,
      secretHash: await sha256Hex(secret),
      invitedByUserId: actor.user.id,
      createdAt: at,
      expiresAt: new Date(now.getTime() + INVITATION_TTL_MS).toISOString(),
      acceptedAt: null,
      acceptedByUserId: null,
      revokedAt: null,
    };
    const link = gatewayLink(services.config.publicBaseUrl, `/invitations/accept?token=${secret}`);
    const mail = await enqueueMailWithinLimits(services, invitationMail(email, organization.name, input.role, link));
    return {
      statements: [
        // One live link per address: the new invitation replaces an earlier pending one.
        services.db
          .update(invitations)
          .set({ revokedAt: at })
          .where(and(eq(invitations.organizationId, actor.organizationId), eq(invitations.email, email), pending(at))),
        services.db.insert(invitations).values(row),
        ...mail,
      ],
      events: [
        {
          actor: userActor(actor.user),
          action: "invitation.created",
          subjectType: "organization",
          subjectId: actor.organizationId,
          data: { invitationId: row.id, email, role: row.role },
        },
      ],
      result: view(row),
    };
  });
}

/** Revokes a pending invitation of the actor's organization; 404 for any other. */
export async function revokeInvitation(
  services: Deps,
  actor: MemberPrincipal,
  invitationId: string,
): Promise<InvitationView> {
  return writeAudited(services, async () => {
    const at = services.clock.now().toISOString();
    const [row] = await services.db
      .select()
      .from(invitations)
      .where(and(eq(invitations.id, invitationId), eq(invitations.organizationId, actor.organizationId), pending(at)));
    if (!row) throw new AppError("not_found", "No pending invitation with that id in this organization.");
    const me = await memberNow(services, actor, "admin");
    if (row.role === "owner" && me.membership.role !== "owner") {
      throw new AppError("forbidden", "Only an owner may revoke an invitation to an owner.");
    }
    return {
      statements: [
        services.db
          .update(invitations)
          .set({ revokedAt: at })
          .where(and(eq(invitations.id, row.id), pending(at))),
      ],
      events: [
        {
          actor: userActor(actor.user),
          action: "invitation.revoked",
          subjectType: "organization",
          subjectId: actor.organizationId,
          data: { invitationId: row.id, email: row.email },
        },
      ],
      result: view(row),
    };
  });
}

/**
 * The pending invitations `inviter` sent that a member with `role` may not give (all of them when
 * `role` is null: the inviter is leaving), as statements that revoke them and one
 * `invitation.revoked` event each, for the audited write that changes the inviter's membership.
 */
export async function withdrawnInvitations(
  services: Pick<Services, "db">,
  actor: MemberPrincipal,
  inviter: { userId: string; role: MemberRole | null },
  at: string,
): Promise<{ statements: BatchItem<"sqlite">[]; events: AuditEntry[] }> {
  const sent = await services.db
    .select({ id: invitations.id, email: invitations.email, role: invitations.role })
    .from(invitations)
    .where(
      and(
        eq(invitations.organizationId, actor.organizationId),
        eq(invitations.invitedByUserId, inviter.userId),
        pending(at),
      ),
    );
  const { role } = inviter;
  const ended = sent.filter((invitation) => role === null || !mayGive(role, invitation.role));
  if (ended.length === 0) return { statements: [], events: [] };
  return {
    statements: [
      services.db
        .update(invitations)
        .set({ revokedAt: at })
        .where(
          and(
            inArray(
              invitations.id,
              ended.map((invitation) => invitation.id),
            ),
            pending(at),
          ),
        ),
    ],
    events: ended.map((invitation) => ({
      actor: userActor(actor.user),
      action: "invitation.revoked",
      subjectType: "organization",
      subjectId: actor.organizationId,
      data: {
        invitationId: invitation.id,
        email: invitation.email,
        role: invitation.role,
        reason: role === null ? "inviter_removed" : "inviter_role_lowered",
      },
    })),
  };
}

const refused = () => new AppError("unauthorized", "This invitation is not valid any more. Ask for a new one.");

/** A pending invitation by its secret, with its organization's name; 401 for any other. */
export async function pendingInvitation(services: Pick<Services, "db" | "clock">, secret: string) {
  if (!secret.startsWith(SECRET_PREFIX) || secret.length > 100) throw refused();
  const [row] = await services.db
    .select({ invitation: invitations, organizationName: organizations.name })
    .from(invitations)
    .innerJoin(organizations, eq(organizations.id, invitations.organizationId))
    .where(and(eq(invitations.secretHash, await sha256Hex(secret)), pending(services.clock.now().toISOString())));
  if (!row) throw refused();
  return row;
}

/**
 * Refuses (409) an invitation whose inviter is no longer a member of its organization or whose
 * role there may not give the invited one.
 */
export async function assertInviterMayGive(services: Pick<Services, "db">, invitation: Invitation): Promise<void> {
  const [inviter] = await services.db
    .select({ role: memberships.role })
    .from(memberships)
    .where(
      and(
        eq(memberships.organizationId, invitation.organizationId),
        eq(memberships.userId, invitation.invitedByUserId),
        isNull(memberships.removedAt),
      ),
    );
  if (!inviter || !mayGive(inviter.role, invitation.role)) {
    throw new AppError(
      "invalid_state",
      "Whoever sent this invitation may no longer give this role. Ask the organization for a new invitation.",
    );
  }
}

/** What accepting made: the member, and a session to set unless the person was signed in. */
export interface Acceptance {
  user: User;
  organizationId: string;
  session: { secret: string; expiresAt: string } | null;
}

/**
 * Accepts an invitation once. `signedIn` is the person the request is already signed in as: one
 * with another address is refused (403). So is an invitation its inviter may no longer give
 * (409), and the link stays unused. Otherwise, in one audited write, the link is used, the person
 * is proven, becomes a member (unless they already are) and, when not signed in yet, gets a
 * session.
 * The checks are reads inside that write: a concurrent audited write (a second use of the link,
 * the inviter's removal or new role) fails its batch on the audit chain and the checks are read
 * again, so a replay finds the link used (401), and an invitation is either accepted before its
 * inviter's demotion or refused after it, never accepted with a role its inviter had lost.
 */
export async function acceptInvitation(
  services: Deps,
  secret: string,
  signedIn: User | null,
  request: { ip: string | null; userAgent: string | null },
): Promise<Acceptance> {
  return writeAudited(services, async () => {
    const { invitation } = await pendingInvitation(services, secret);
    if (signedIn && signedIn.email !== invitation.email) {
      throw new AppError(
        "forbidden",
        "This invitation is for another address; sign out first, then open the invitation again.",
      );
    }
    await assertInviterMayGive(services, invitation);
    const now = services.clock.now().toISOString();
    const proven = await provenUser(services, invitation.email);
    const [already] = await services.db
      .select({ id: memberships.id })
      .from(memberships)
      .where(
        and(
          eq(memberships.organizationId, invitation.organizationId),
          eq(memberships.userId, proven.user.id),
          isNull(memberships.removedAt),
        ),
      );
    const membershipId = already?.id ?? services.ids.id("mem");
    const session = signedIn ? null : await newSession(services, proven.user, request);
    return {
      statements: [
        ...proven.statements,
        services.db
          .update(invitations)
          .set({ acceptedAt: now, acceptedByUserId: proven.user.id })
          .where(and(eq(invitations.id, invitation.id), pending(now))),
        ...(already
          ? []
          : [
              services.db.insert(memberships).values({
                id: membershipId,
                organizationId: invitation.organizationId,
                userId: proven.user.id,
                role: invitation.role,
                createdAt: now,
              }),
            ]),
        ...(session ? [session.statement] : []),
      ],
      events: [
        {
          actor: userActor(proven.user),
          action: "invitation.accepted",
          subjectType: "organization",
          subjectId: invitation.organizationId,
          data: {
            invitationId: invitation.id,
            membershipId,
            userId: proven.user.id,
            role: invitation.role,
            alreadyMember: Boolean(already),
          },
        },
      ],
      result: {
        user: proven.user,
        organizationId: invitation.organizationId,
        session: session ? { secret: session.secret, expiresAt: session.session.expiresAt } : null,
      },
    };
  });
}
