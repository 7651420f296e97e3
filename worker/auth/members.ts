/**
 * Members of organizations, and the check every session-authenticated organization route makes:
 * a live session, a live membership of the organization the request is about, a role at least
 * the route's, and, for a write, a request from this site (a session cookie travels with any
 * site's form post).
 */
import { z } from "@hono/zod-openapi";
import { and, eq, isNull } from "drizzle-orm";
import type { Context, MiddlewareHandler } from "hono";
import { type MemberRole, type Membership, memberships, organizations, type Session, type User } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { assertSameSite } from "../http/middleware";
import type { Services } from "../services";
import { currentSession } from "./sessions";

/** The query parameter that names which of a member's organizations a request is about. */
export const OrganizationQuery = z.object({
  organization: z
    .string()
    .max(64)
    .optional()
    .openapi({ description: "The organization, for members of several (or header `x-modelgate-organization`)." }),
});

/** Rank of each member role: a role includes every role below it. */
const RANK: Record<MemberRole, number> = { viewer: 0, developer: 1, admin: 2, owner: 3 };

/** Whether `role` is `required` or above it. */
export function roleAtLeast(role: MemberRole, required: MemberRole): boolean {
  return RANK[role] >= RANK[required];
}

/** A signed-in member acting for one organization. */
export interface MemberPrincipal {
  user: User;
  session: Session;
  membership: Membership;
  organizationId: string;
}

/** A user's live memberships with their organizations' names, oldest first. */
export async function membershipsOf(services: Pick<Services, "db">, userId: string) {
  return services.db
    .select({ membership: memberships, organizationName: organizations.name })
    .from(memberships)
    .innerJoin(organizations, eq(organizations.id, memberships.organizationId))
    .where(and(eq(memberships.userId, userId), isNull(memberships.removedAt)))
    .orderBy(memberships.createdAt);
}

/**
 * The member of this request for the organization it names (`?organization=` or the
 * `x-modelgate-organization` header), or the user's only organization. Throws 401 without a live
 * session, 403 when the user is no member of it or their role is below `role`.
 */
export async function memberOf(c: Context<HonoEnv>, role: MemberRole = "viewer"): Promise<MemberPrincipal> {
  const known = c.get("member");
  if (known && roleAtLeast(known.membership.role, role)) return known;
  const signedIn = await currentSession(c);
  if (!signedIn) {
    throw new AppError("unauthorized", "Sign in with a link mailed to you: POST /v1/auth/email-link.");
  }
  const wanted = c.req.query("organization") ?? c.req.header("x-modelgate-organization");
  const all = await membershipsOf(c.get("services"), signedIn.user.id);
  const chosen = wanted
    ? all.find((m) => m.membership.organizationId === wanted)
    : all.length === 1
      ? all[0]
      : undefined;
  if (!chosen) {
    throw new AppError(
      "forbidden",
      all.length > 1 && !wanted
        ? "You belong to several organizations: name one with ?organization=ID."
        : "You are not a member of that organization.",
      {
        extensions: { organizations: all.map((m) => ({ id: m.membership.organizationId, name: m.organizationName })) },
      },
    );
  }
  if (!roleAtLeast(chosen.membership.role, role)) {
    throw new AppError("forbidden", `This needs the ${role} role in the organization.`);
  }
  const member = { ...signedIn, membership: chosen.membership, organizationId: chosen.membership.organizationId };
  c.set("member", member);
  return member;
}

/**
 * `member` as their membership stands now, refused as `memberOf` refuses when it ended or its role
 * fell below `role`. A write on a member's behalf reads this inside its audited plan: a removal or
 * a new role written meanwhile is audited too, so the write is planned again and sees it, and
 * nothing is done in the name of a member who no longer may.
 */
export async function memberNow(
  services: Pick<Services, "db">,
  member: MemberPrincipal,
  role: MemberRole = "viewer",
): Promise<MemberPrincipal> {
  const [membership] = await services.db
    .select()
    .from(memberships)
    .where(and(eq(memberships.id, member.membership.id), isNull(memberships.removedAt)));
  if (!membership) {
    const remaining = await membershipsOf(services, member.user.id);
    throw new AppError("forbidden", "You are not a member of that organization.", {
      extensions: {
        organizations: remaining.map((m) => ({ id: m.membership.organizationId, name: m.organizationName })),
      },
    });
  }
  if (!roleAtLeast(membership.role, role)) {
    throw new AppError("forbidden", `This needs the ${role} role in the organization.`);
  }
  return { ...member, membership };
}

/** Admits signed-in members holding `role` or above; refuses cross-site writes first. */
export function requireMember(role: MemberRole = "viewer"): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    assertSameSite(c);
    await memberOf(c, role);
    await next();
  };
}

/** The member of a request that passed `requireMember`. */
export function currentMember(c: Context<HonoEnv>): MemberPrincipal {
  const member = c.get("member");
  if (!member) throw new Error("currentMember() used on a route without requireMember()");
  return member;
}
