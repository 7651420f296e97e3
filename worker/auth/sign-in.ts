/**
 * Passwordless sign-in: a single-use link (15 minutes) mailed to a member's address, and the
 * session its use starts. Asking for a link answers the same whoever asks; only a known user with
 * a live membership is mailed, at most `SIGN_IN_LINKS_PER_HOUR` times an hour.
 */
import { and, count, eq, gte, inArray, isNull } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { writeAudited } from "../audit/log";
import { emailLinks, memberships, organizationDomains, sessions, type User, users } from "../db/schema";
import { gatewayLink } from "../mail/links";
import type { OutgoingMail } from "../mail/mailer";
import { enqueueMailWithinLimits } from "../mail/outbox";
import type { Services } from "../services";
import { EMAIL_LINK_TTL_MS, emailLinkToUse, issueEmailLink } from "./email-links";
import { isFreeMailDomain } from "./free-mail";
import { liveSessions, newSession } from "./sessions";
import { emailDomain, normalizeEmail, provenUser } from "./users";

/** How many sign-in links one address may be sent within an hour. */
export const SIGN_IN_LINKS_PER_HOUR = 5;

/** The audit actor for a person acting as themself. */
export function userActor(user: Pick<User, "email">): string {
  return `user:${user.email}`;
}

/** The sign-in mail: the gateway's words and its own link, nothing anyone typed. */
function signInMail(to: string, link: string): OutgoingMail {
  const minutes = EMAIL_LINK_TTL_MS.sign_in / 60_000;
  return {
    to,
    subject: "Your modelgate sign-in link",
    text: `Hello,\n\nsomeone asked to sign in to modelgate with this address. To sign in, open this link within ${minutes} minutes and press “Sign in”:\n${link}\n\nThe link works once. If it was not you, ignore this message: nothing happens without the link.\n\n— modelgate licensing\n`,
  };
}

/**
 * Mails a sign-in link to `email` when it belongs to a user with a live membership and the address
 * has had fewer than `SIGN_IN_LINKS_PER_HOUR` links in the last hour; otherwise does nothing. The
 * caller has answered already, so nothing here shows in the answer or its timing. Answers whether
 * a link was issued (for tests and logs only).
 */
export async function requestSignInLink(
  services: Pick<Services, "db" | "clock" | "ids" | "config" | "auditAnchor">,
  rawEmail: string,
): Promise<boolean> {
  const email = normalizeEmail(rawEmail);
  return writeAudited(services, async () => {
    const since = new Date(services.clock.now().getTime() - 60 * 60_000).toISOString();
    // The same two reads whoever the address belongs to.
    const [[person], [recent]] = await Promise.all([
      services.db
        .select({ id: users.id, email: users.email, liveMemberships: count(memberships.id) })
        .from(users)
        .leftJoin(memberships, and(eq(memberships.userId, users.id), isNull(memberships.removedAt)))
        .where(eq(users.email, email))
        .groupBy(users.id),
      services.db
        .select({ links: count() })
        .from(emailLinks)
        .where(and(eq(emailLinks.email, email), eq(emailLinks.purpose, "sign_in"), gte(emailLinks.createdAt, since))),
    ]);
    if (!person || person.liveMemberships === 0 || (recent?.links ?? 0) >= SIGN_IN_LINKS_PER_HOUR) {
      return { statements: [], events: [], result: false };
    }
    const { secret, statement } = await issueEmailLink(services, { purpose: "sign_in", email });
    const link = gatewayLink(services.config.publicBaseUrl, `/auth/sign-in?token=${secret}`);
    const mail = await enqueueMailWithinLimits(services, signInMail(email, link));
    return {
      statements: [statement, ...mail],
      events: [
        { actor: userActor(person), action: "user.sign_in_link_sent", subjectType: "user", subjectId: person.id },
      ],
      result: true,
    };
  });
}

/**
 * The verified domain an owner's first proven address gives their organizations: the domain of a
 * non-free-mail address, claimed for the oldest organization they own when none holds it yet (a
 * domain belongs to one organization). This is how a contact carried over from before members
 * existed verifies their organization by signing in.
 */
async function domainClaim(
  services: Pick<Services, "db" | "clock">,
  user: User,
): Promise<{ statements: BatchItem<"sqlite">[]; organizationId: string | null }> {
  const domain = emailDomain(user.email);
  if (isFreeMailDomain(domain)) return { statements: [], organizationId: null };
  const [[held], [owned]] = await Promise.all([
    services.db.select().from(organizationDomains).where(eq(organizationDomains.domain, domain)),
    services.db
      .select({ organizationId: memberships.organizationId })
      .from(memberships)
      .where(and(eq(memberships.userId, user.id), eq(memberships.role, "owner"), isNull(memberships.removedAt)))
      .orderBy(memberships.createdAt)
      .limit(1),
  ]);
  if (held || !owned) return { statements: [], organizationId: null };
  return {
    organizationId: owned.organizationId,
    statements: [
      services.db.insert(organizationDomains).values({
        domain,
        organizationId: owned.organizationId,
        verifiedByUserId: user.id,
        verifiedAt: services.clock.now().toISOString(),
      }),
    ],
  };
}

/**
 * Uses a sign-in link once and starts a session for the address it proves. Unknown, used, expired
 * and other links are one 401 (`emailLinkToUse`). Answers the session's secret and expiry for
 * the cookie.
 */
export async function completeSignIn(
  services: Pick<Services, "db" | "clock" | "ids" | "auditAnchor">,
  secret: string,
  request: { ip: string | null; userAgent: string | null },
): Promise<{ user: User; secret: string; expiresAt: string }> {
  return writeAudited(services, async () => {
    const link = await emailLinkToUse(services, secret, "sign_in");
    const proven = await provenUser(services, link.email);
    const firstProof = proven.statements.length > 0;
    const claim = firstProof ? await domainClaim(services, proven.user) : { statements: [], organizationId: null };
    const session = await newSession(services, proven.user, request);
    const actor = userActor(proven.user);
    return {
      statements: [link.use, ...proven.statements, ...claim.statements, session.statement],
      events: [
        {
          actor,
          action: "user.signed_in",
          subjectType: "user",
          subjectId: proven.user.id,
          data: { sessionId: session.session.id, firstProof },
        },
        ...(claim.organizationId
          ? [
              {
                actor,
                action: "organization.domain_verified",
                subjectType: "organization",
                subjectId: claim.organizationId,
                data: { domain: emailDomain(proven.user.email) },
              },
            ]
          : []),
      ],
      result: { user: proven.user, secret: session.secret, expiresAt: session.session.expiresAt },
    };
  });
}

/**
 * Ends the user's live sessions: one (`sessionId`), or all of them. Answers how many ended; none
 * when `sessionId` is not a live session of this user.
 */
export async function endSessions(
  services: Pick<Services, "db" | "clock" | "ids" | "auditAnchor">,
  user: User,
  which: { sessionId: string } | "all",
): Promise<number> {
  return writeAudited(services, async () => {
    const live = await liveSessions(services, user.id);
    const ending = which === "all" ? live : live.filter((s) => s.id === which.sessionId);
    if (ending.length === 0) return { statements: [], events: [], result: 0 };
    const now = services.clock.now().toISOString();
    const ids = ending.map((s) => s.id);
    return {
      statements: [
        services.db
          .update(sessions)
          .set({ revokedAt: now })
          .where(and(eq(sessions.userId, user.id), inArray(sessions.id, ids), isNull(sessions.revokedAt))),
      ],
      events: [
        {
          actor: userActor(user),
          action: which === "all" ? "user.signed_out_everywhere" : "session.revoked",
          subjectType: "user",
          subjectId: user.id,
          data: { sessionIds: ids },
        },
      ],
      result: ids.length,
    };
  });
}
