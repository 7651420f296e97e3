/**
 * An organization as its own people see it (`GET /v1/organization`, and the portal at
 * `/account`): who it is, what it applied for and was granted, who works in it, the quota left
 * and its billing standing. Read by a member's session or by one of its tokens; pending
 * invitations only by its admins and owners.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { desc, eq } from "drizzle-orm";
import { OrganizationQuery, roleAtLeast } from "../auth/members";
import { type OrganizationReader, organizationReader } from "../auth/organization-reader";
import { billingStanding } from "../billing/routes";
import {
  APPLICATION_STATUSES,
  applications,
  GRANT_STATUSES,
  grants,
  MEMBER_ROLES,
  organizationDomains,
  organizations,
} from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses } from "../http/router";
import { effectiveLimits } from "../quota/limits";
import { type QuotaLimits, type QuotaSnapshot, quotaStub } from "../quota/org-quota";
import type { Services } from "../services";
import { type LiveUsage, liveUsageFor } from "../usage/live";
import { listInvitations } from "./invitations";
import { listMembers } from "./members";

/** Reads the organization's quota object without changing it; the route passes the real one. */
export type QuotaPeek = (limits: QuotaLimits, now: number) => Promise<QuotaSnapshot & { monthTokens: number }>;

/** Whether the reader may see pending invitations (addresses of people not yet members). */
function seesInvitations(reader: OrganizationReader): boolean {
  return reader.kind === "member" && roleAtLeast(reader.member.membership.role, "admin");
}

/**
 * The organization's quota standing: exact from its quota object, else this month's metered
 * tokens (`monthTokensMetered`: the hourly totals, as the billing standing counts them).
 */
async function quotaStanding(
  services: Pick<Services, "db" | "config" | "clock" | "log">,
  organizationId: string,
  peek: QuotaPeek,
  monthTokensMetered: number,
) {
  const limits = await effectiveLimits(services, organizationId);
  const now = services.clock.now();
  const base = {
    plan: limits.plan,
    month: now.toISOString().slice(0, 7),
    requestsPerMinute: limits.requestsPerMinute,
    tokensPerMinute: limits.tokensPerMinute,
    monthlyTokenBudget: limits.monthlyTokenBudget,
  };
  try {
    const s = await peek(limits, now.getTime());
    return {
      ...base,
      source: "quota" as const,
      remainingRequestsThisMinute: s.remainingRequests,
      remainingTokensThisMinute: s.remainingTokens,
      resetSeconds: s.resetSeconds,
      monthTokensUsed: s.monthTokens,
      monthTokensRemaining: s.monthlyRemaining,
    };
  } catch (error) {
    // The quota object holds the minute's counters; without it only the month is known, from the
    // metered usage (`source` keeps its name "ledger" for the clients that read it).
    services.log.warn("quota object not read for the organization overview", { organizationId, error: String(error) });
    return {
      ...base,
      source: "ledger" as const,
      remainingRequestsThisMinute: null,
      remainingTokensThisMinute: null,
      resetSeconds: null,
      monthTokensUsed: monthTokensMetered,
      monthTokensRemaining: Math.max(0, limits.monthlyTokenBudget - monthTokensMetered),
    };
  }
}

/**
 * Everything `GET /v1/organization` answers, for `reader`. This month's usage counts the hours
 * still open in the organization's quota object (`live`), as its usage views do.
 */
export async function organizationOverview(
  services: Pick<Services, "db" | "config" | "clock" | "log">,
  reader: OrganizationReader,
  peek: QuotaPeek,
  live: LiveUsage,
) {
  const id = reader.organizationId;
  const [organization] = await services.db.select().from(organizations).where(eq(organizations.id, id));
  if (!organization) throw new AppError("not_found", "No such organization.");
  const [domains, apps, grantRows, members, invited, billing] = await Promise.all([
    services.db
      .select({ domain: organizationDomains.domain })
      .from(organizationDomains)
      .where(eq(organizationDomains.organizationId, id))
      .orderBy(organizationDomains.domain),
    services.db
      .select({
        id: applications.id,
        family: applications.family,
        status: applications.status,
        models: applications.models,
        createdAt: applications.createdAt,
        decidedAt: applications.decidedAt,
      })
      .from(applications)
      .where(eq(applications.organizationId, id))
      .orderBy(desc(applications.createdAt)),
    services.db
      .select({
        id: grants.id,
        family: grants.family,
        models: grants.models,
        status: grants.status,
        createdAt: grants.createdAt,
      })
      .from(grants)
      .where(eq(grants.organizationId, id))
      .orderBy(desc(grants.createdAt)),
    listMembers(services, id),
    seesInvitations(reader) ? listInvitations(services, id) : Promise.resolve(null),
    billingStanding(services, id, live),
  ]);
  const quota = await quotaStanding(services, id, peek, Number(billing.usage.totalTokens));
  const caller =
    reader.kind === "member"
      ? {
          kind: "member" as const,
          userId: reader.member.user.id,
          email: reader.member.user.email,
          role: reader.member.membership.role,
        }
      : { kind: "token" as const, tokenId: reader.token.tokenId, scopes: reader.token.scopes };
  return {
    organization: {
      id: organization.id,
      name: organization.name,
      website: organization.website,
      country: organization.country,
      verifiedDomains: domains.map((d) => d.domain),
    },
    caller,
    applications: apps,
    grants: grantRows,
    members: members.map((m) => ({
      userId: m.userId,
      email: m.email,
      name: m.name,
      role: m.role,
      emailVerified: m.emailVerified,
      since: m.createdAt,
    })),
    invitations:
      invited?.map((i) => ({
        id: i.id,
        email: i.email,
        role: i.role,
        createdAt: i.createdAt,
        expiresAt: i.expiresAt,
      })) ?? null,
    quota,
    billing,
  };
}

/** An overview whose quota is read from the organization's quota object. */
export function quotaPeekFor(env: Env, organizationId: string): QuotaPeek {
  return (limits, now) => quotaStub(env, organizationId).peek(limits, now);
}

const OverviewSchema = z
  .object({
    organization: z.object({
      id: z.string(),
      name: z.string(),
      website: z.string().nullable(),
      country: z.string(),
      verifiedDomains: z.array(z.string()).openapi({ description: "Domains its verified members' addresses prove." }),
    }),
    caller: z.union([
      z.object({ kind: z.literal("member"), userId: z.string(), email: z.string(), role: z.enum(MEMBER_ROLES) }),
      z.object({ kind: z.literal("token"), tokenId: z.string(), scopes: z.array(z.string()) }),
    ]),
    applications: z.array(
      z.object({
        id: z.string(),
        family: z.string(),
        status: z.enum(APPLICATION_STATUSES),
        models: z.array(z.string()),
        createdAt: z.string(),
        decidedAt: z.string().nullable(),
      }),
    ),
    grants: z.array(
      z.object({
        id: z.string(),
        family: z.string(),
        models: z.array(z.string()),
        status: z.enum(GRANT_STATUSES),
        createdAt: z.string(),
      }),
    ),
    members: z.array(
      z.object({
        userId: z.string(),
        email: z.string(),
        name: z.string().nullable(),
        role: z.enum(MEMBER_ROLES),
        emailVerified: z.boolean(),
        since: z.string(),
      }),
    ),
    invitations: z
      .array(
        z.object({
          id: z.string(),
          email: z.string(),
          role: z.enum(MEMBER_ROLES),
          createdAt: z.string(),
          expiresAt: z.string(),
        }),
      )
      .nullable()
      .openapi({ description: "Pending invitations; null unless the caller is an admin or owner." }),
    quota: z.object({
      plan: z.string(),
      month: z.string(),
      source: z.enum(["quota", "ledger"]).openapi({
        description:
          "`quota`: read from the organization's quota object. `ledger`: the object could not be reached; " +
          "the month's tokens are its metered usage and the minute's figures are null.",
      }),
      requestsPerMinute: z.number().int(),
      tokensPerMinute: z.number().int(),
      monthlyTokenBudget: z.number().int(),
      remainingRequestsThisMinute: z.number().int().nullable(),
      remainingTokensThisMinute: z.number().int().nullable(),
      resetSeconds: z.number().int().nullable(),
      monthTokensUsed: z.number().int(),
      monthTokensRemaining: z.number().int(),
    }),
    billing: z.object({}).passthrough().openapi({ description: "As `GET /v1/billing` answers." }),
  })
  .openapi("OrganizationOverview");

const overviewRoute = createRoute({
  method: "get",
  path: "/v1/organization",
  tags: ["Organization"],
  summary: "Your organization: identity, applications, grants, members, quota and billing",
  description:
    "With a member's session (`?organization=` or `x-modelgate-organization` when you belong to several) " +
    "or a personal access token of the organization, which reads its own organization only.",
  security: [{ accessToken: [] }, { session: [] }],
  request: {
    query: OrganizationQuery,
  },
  responses: {
    200: { description: "The organization", content: { "application/json": { schema: OverviewSchema } } },
    ...problemResponses(401, 403),
  },
});

/** `GET /v1/organization`. */
export const organizationOverviewRoutes = newRouter();

organizationOverviewRoutes.openapi(overviewRoute, async (c) => {
  const reader = await organizationReader(c);
  const id = reader.organizationId;
  const overview = await organizationOverview(
    c.get("services"),
    reader,
    quotaPeekFor(c.env, id),
    liveUsageFor(c.env, id),
  );
  return c.json(overview, 200, { "cache-control": "no-store" });
});
