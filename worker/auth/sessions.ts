/**
 * Signed-in people: a session is a random secret in a `__Host-` cookie (HttpOnly, Secure,
 * SameSite=Lax, path `/`) whose sha256 is a row in D1, so it can be listed and revoked one by one
 * or all at once. Sessions are made only by using a link mailed to the address (sign-in, an
 * application's confirmation, an invitation).
 */
import { and, desc, eq, gt, isNull } from "drizzle-orm";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { type Session, sessions, type User, users } from "../db/schema";
import type { HonoEnv } from "../env";
import { clientIp } from "../http/middleware";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";

/** The session cookie. `__Host-` pins it to this origin, path `/`, Secure. */
export const SESSION_COOKIE = "__Host-mg_session";

/** A session lives 30 days from sign-in, however active; then its person signs in again. */
export const SESSION_TTL_MS = 30 * 86_400_000;

/** `lastSeenAt` is written at most this often, so reading a session is not a write per request. */
const TOUCH_INTERVAL_MS = 5 * 60_000;

const SECRET_PREFIX = "mgsess_";

/** Starts a session for `user`: the insert (for a batch) and the cookie to set once it is written. */
export async function newSession(
  services: Pick<Services, "db" | "clock" | "ids">,
  user: Pick<User, "id">,
  request: { ip: string | null; userAgent: string | null },
) {
  const secret = `${SECRET_PREFIX}${services.ids.secret(32)}`;
  const now = services.clock.now();
  const row: Session = {
    id: services.ids.id("ses"),
    secretHash: await sha256Hex(secret),
    userId: user.id,
    createdAt: now.toISOString(),
    lastSeenAt: now.toISOString(),
    expiresAt: new Date(now.getTime() + SESSION_TTL_MS).toISOString(),
    revokedAt: null,
    ip: request.ip,
    userAgent: request.userAgent?.slice(0, 256) ?? null,
  };
  return { secret, session: row, statement: services.db.insert(sessions).values(row) };
}

/** Sets the session cookie on the response. */
export function setSessionCookie(c: Context<HonoEnv>, secret: string, expiresAt: string): void {
  setCookie(c, SESSION_COOKIE, secret, {
    path: "/",
    secure: true,
    httpOnly: true,
    sameSite: "Lax",
    expires: new Date(expiresAt),
  });
}

/** Clears the session cookie. */
export function clearSessionCookie(c: Context<HonoEnv>): void {
  deleteCookie(c, SESSION_COOKIE, { path: "/", secure: true });
}

/** The request's evidence for a new session: where it came from. */
export function sessionRequest(c: Context<HonoEnv>) {
  return { ip: clientIp(c.req), userAgent: c.req.header("user-agent") ?? null };
}

/** The live session of a request and its user, or null (no cookie, unknown, expired, revoked). */
export async function currentSession(c: Context<HonoEnv>): Promise<{ session: Session; user: User } | null> {
  const secret = getCookie(c, SESSION_COOKIE);
  if (!secret?.startsWith(SECRET_PREFIX) || secret.length > 100) return null;
  const services = c.get("services");
  const now = services.clock.now();
  const [row] = await services.db
    .select({ session: sessions, user: users })
    .from(sessions)
    .innerJoin(users, eq(users.id, sessions.userId))
    .where(
      and(
        eq(sessions.secretHash, await sha256Hex(secret)),
        isNull(sessions.revokedAt),
        gt(sessions.expiresAt, now.toISOString()),
      ),
    );
  if (!row) return null;
  if (now.getTime() - Date.parse(row.session.lastSeenAt) > TOUCH_INTERVAL_MS) {
    const touch = services.db
      .update(sessions)
      .set({ lastSeenAt: now.toISOString() })
      .where(eq(sessions.id, row.session.id));
    c.executionCtx.waitUntil(touch.then(() => undefined));
  }
  return row;
}

/** A session as listed to its person: never its secret. */
export function describeSession(session: Session, current: string | null) {
  return {
    id: session.id,
    createdAt: session.createdAt,
    lastSeenAt: session.lastSeenAt,
    expiresAt: session.expiresAt,
    ip: session.ip,
    userAgent: session.userAgent,
    current: session.id === current,
  };
}

/** A user's live sessions, newest first. */
export async function liveSessions(services: Pick<Services, "db" | "clock">, userId: string) {
  return services.db
    .select()
    .from(sessions)
    .where(
      and(
        eq(sessions.userId, userId),
        isNull(sessions.revokedAt),
        gt(sessions.expiresAt, services.clock.now().toISOString()),
      ),
    )
    .orderBy(desc(sessions.createdAt));
}

/** Revokes one of a user's sessions (its id), or all of them; answers how many ended. */
export async function revokeSessions(
  services: Pick<Services, "db" | "clock">,
  userId: string,
  sessionId?: string,
): Promise<number> {
  const ended = await services.db
    .update(sessions)
    .set({ revokedAt: services.clock.now().toISOString() })
    .where(
      and(eq(sessions.userId, userId), isNull(sessions.revokedAt), ...(sessionId ? [eq(sessions.id, sessionId)] : [])),
    )
    .returning({ id: sessions.id });
  return ended.length;
}
