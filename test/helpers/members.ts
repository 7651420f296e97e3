/**
 * Signed-in members for tests: a verified user, a live membership and a session written straight
 * into D1, so a test about tokens, usage or the portal does not walk the e-mail sign-in first.
 */
import { eq } from "drizzle-orm";
import {
  type MemberRole,
  type Membership,
  memberships,
  organizations,
  sessions,
  type User,
  users,
} from "../../worker/db/schema";
import { sha256Hex } from "../../worker/platform/hash";
import type { Services } from "../../worker/services";

/** What a gateway from `testGateway` (fixtures or gateway) offers that this helper needs. */
interface GatewayLike {
  services: Pick<Services, "db" | "clock" | "ids"> | (() => Pick<Services, "db" | "clock" | "ids">);
}

/** Who to sign in, and where. */
export interface MemberSeed {
  /** The member's organization; a fresh one (no grant) when absent. */
  organizationId?: string;
  /** Defaults to a fresh address at acme.example. An existing user with it is reused. */
  email?: string;
  /** Defaults to `owner`. */
  role?: MemberRole;
  name?: string;
}

/** A member with a live session, and the headers a same-site browser request of theirs carries. */
export interface SignedInMember {
  user: User;
  membership: Membership;
  organizationId: string;
  /** The session's id (`ses_…`). */
  sessionId: string;
  /** A `Cookie` header value: `__Host-mg_session=…`. */
  cookie: string;
  /** `cookie` plus `x-modelgate-organization`, for requests on the organization's behalf. */
  headers: Record<string, string>;
}

/**
 * Inserts a verified user (or reuses the one with `email`), a live membership with `role` of
 * `organizationId` (or of a new organization) and a session, and answers the cookie for it.
 */
export async function signedInMember(gateway: GatewayLike, seed: MemberSeed = {}): Promise<SignedInMember> {
  const services = typeof gateway.services === "function" ? gateway.services() : gateway.services;
  const { db, clock, ids } = services;
  const at = clock.now().toISOString();
  let organizationId = seed.organizationId;
  if (!organizationId) {
    organizationId = ids.id("org");
    const name = `Acme ${ids.id("n")}`;
    await db.insert(organizations).values({
      id: organizationId,
      name,
      normalizedName: name.toLowerCase(),
      website: "https://acme.example",
      country: "DE",
      createdAt: at,
    });
  }
  const email = (seed.email ?? `${ids.id("dev")}@acme.example`).toLowerCase();
  let [user] = await db.select().from(users).where(eq(users.email, email));
  if (!user) {
    [user] = await db
      .insert(users)
      .values({ id: ids.id("usr"), email, name: seed.name ?? "Test Member", emailVerifiedAt: at, createdAt: at })
      .returning();
  }
  if (!user) throw new Error("seeded user vanished");
  const [membership] = await db
    .insert(memberships)
    .values({ id: ids.id("mem"), organizationId, userId: user.id, role: seed.role ?? "owner", createdAt: at })
    .returning();
  if (!membership) throw new Error("seeded membership vanished");
  const secret = `mgsess_${ids.secret(32)}`;
  const sessionId = ids.id("ses");
  await db.insert(sessions).values({
    id: sessionId,
    secretHash: await sha256Hex(secret),
    userId: user.id,
    createdAt: at,
    lastSeenAt: at,
    expiresAt: new Date(clock.now().getTime() + 30 * 86_400_000).toISOString(),
    revokedAt: null,
    ip: null,
    userAgent: "test",
  });
  const cookie = `__Host-mg_session=${secret}`;
  return {
    user,
    membership,
    organizationId,
    sessionId,
    cookie,
    headers: { cookie, "x-modelgate-organization": organizationId },
  };
}

let joins = 0;

/** What `joinByInvitation` drives: a gateway from `testGateway` with its recording mailer. */
interface InvitingGateway {
  request(path: string, init?: RequestInit): Promise<Response>;
  mailer: { sent: { to: string; text: string }[] };
}

/**
 * `email` joins `owner`'s organization the way people do, in two audited writes: the owner
 * invites them through the API, and they accept the link the invitation mail carries.
 */
export async function joinByInvitation(gateway: InvitingGateway, owner: SignedInMember, email: string): Promise<void> {
  const invited = await gateway.request("/v1/organization/invitations", {
    method: "POST",
    headers: { ...owner.headers, "content-type": "application/json" },
    body: JSON.stringify({ email, role: "viewer" }),
  });
  if (invited.status !== 201) throw new Error(`invitation failed: ${invited.status} ${await invited.text()}`);
  const mail = gateway.mailer.sent.filter((m) => m.to === email).at(-1);
  const token = mail?.text.match(/\/invitations\/accept\?token=(mgi_[A-Za-z0-9_-]+)/)?.[1];
  if (!token) throw new Error(`no invitation mailed to ${email}`);
  const accepted = await gateway.request("/invitations/accept", {
    method: "POST",
    // A client address of its own each time, so the public forms' brake of one test reaches no other.
    headers: { "content-type": "application/x-www-form-urlencoded", "cf-connecting-ip": `203.0.113.${++joins % 250}` },
    body: new URLSearchParams({ token }),
  });
  if (accepted.status !== 303) throw new Error(`acceptance failed: ${accepted.status} ${await accepted.text()}`);
}
