import { and, desc, eq, gt, inArray, isNull, lt, or, type SQL, sql } from "drizzle-orm";
import { decodeCursor, encodeCursor } from "../admin/cursor";
import { applicationBySecret } from "../applications/status";
import { isNotNullViolation, writeAudited } from "../audit/log";
import { accessTokenSecret, TOKEN_PREFIX } from "../auth/bearer";
import { type MemberPrincipal, memberNow, roleAtLeast } from "../auth/members";
import {
  type AccessToken,
  type Application,
  accessTokens,
  type Grant,
  grants,
  licenseReacceptances,
  type MemberRole,
  memberships,
  type TokenLimits,
  type TokenScope,
  users,
} from "../db/schema";
import { AppError, type FieldError } from "../errors";
import { type CoverageScope, coveredModels } from "../grants/coverage";
import { reacceptanceOverdue } from "../licenses/reacceptance";
import { addDays } from "../platform/clock";
import { sha256Hex } from "../platform/hash";
import { findFamily } from "../policy/families";
import { effectiveLimits } from "../quota/limits";
import type { Services } from "../services";

/** A new token lives this long unless its member asks otherwise. */
export const DEFAULT_TOKEN_DAYS = 90;
/** No token lives longer than this. */
export const MAX_TOKEN_DAYS = 365;
/** The least role that mints tokens, and that a member's tokens need to keep working. */
export const MINTING_ROLE: MemberRole = "developer";
/**
 * Live tokens (unrevoked and unexpired) one member may hold in one organization at a time: a token
 * for each machine, service and CI job a developer runs, with room to spare. Without a bound a
 * mint costs a member nothing, so one member could grow the organization's token list, its
 * `/account` page and the one write that revokes a removed member's tokens without end. Revoked
 * and expired tokens do not count: revoking one makes room for the next.
 */
export const MAX_LIVE_TOKENS_PER_MEMBER = 50;

/** The organization, grant and member a token acts for, and what it may use, once authenticated. */
export interface TokenPrincipal extends CoverageScope {
  tokenId: string;
  grantId: string;
  organizationId: string;
  family: string;
  scopes: TokenScope[];
  /** The member who minted it; null for a token from before members existed. */
  userId: string | null;
  /** The models it may use: its grant's, narrowed to its own list (`coveredModels`). */
  models: string[];
  /** Its own limits inside the organization's; null: the organization's alone. */
  limits: TokenLimits | null;
  /** The license version the grant was accepted under. */
  licenseVersionId?: string;
  /** When a newer license version must have been accepted by; null: nothing pending. */
  reacceptBy?: string | null;
}

/** A token as listed: never its secret. */
export function describeToken(token: AccessToken) {
  return {
    id: token.id,
    name: token.name,
    prefix: token.displayPrefix,
    scopes: token.scopes,
    models: token.models,
    limits: token.limits,
    createdAt: token.createdAt,
    expiresAt: token.expiresAt,
    revokedAt: token.revokedAt,
  };
}

/** What a member asks for when minting a token (already shaped by the route's schema). */
export interface NewMemberToken {
  name: string;
  scopes: TokenScope[];
  /** The family whose grant the token uses; default `llama-2`. */
  family?: string | undefined;
  /** A subset of the grant's models; absent: all of them, including any the grant gains later. */
  models?: string[] | undefined;
  expiresInDays?: number | undefined;
  limits?: TokenLimits | undefined;
}

/**
 * The join condition that finds a token's member's live membership of its grant's organization
 * (with `accessTokens` and `grants` in the query), so the check rides on the token's own query.
 */
export const liveMembershipOfTokenMember = and(
  eq(memberships.userId, accessTokens.userId),
  eq(memberships.organizationId, grants.organizationId),
  isNull(memberships.removedAt),
);

/**
 * Whether a token's member may still use it: a token from before members has none and lives on
 * until it expires; a member's lives only as long as a membership that may mint it (a removed
 * member or a viewer may not).
 */
export function memberMayUseToken(userId: string | null, liveRole: MemberRole | null): boolean {
  return userId === null || (liveRole !== null && roleAtLeast(liveRole, MINTING_ROLE));
}

/**
 * The join condition that finds a grant's pending re-acceptance (at most one, by a unique index),
 * so its deadline rides on the token's own query.
 */
export const pendingReacceptanceOfGrant = and(
  eq(licenseReacceptances.grantId, grants.id),
  isNull(licenseReacceptances.acceptedAt),
  isNull(licenseReacceptances.supersededAt),
);

const LIMIT_NAMES = ["requestsPerMinute", "tokensPerMinute", "monthlyTokenBudget"] as const;

/** The organization's active grant for a family: the newest, should there be several. */
async function activeGrantOf(services: Pick<Services, "db">, organizationId: string, family: string) {
  const [grant] = await services.db
    .select()
    .from(grants)
    .where(and(eq(grants.organizationId, organizationId), eq(grants.family, family), eq(grants.status, "active")))
    .orderBy(desc(grants.createdAt))
    .limit(1);
  return grant;
}

/**
 * Checks a member's token request against the grant and the organization's limits: models a
 * subset of the grant's, each limit no larger than the organization's own. Field errors for all
 * that fail.
 */
async function checkedTokenRequest(services: Services, grant: Grant, input: NewMemberToken) {
  const errors: FieldError[] = [];
  let models: string[] | null = null;
  if (input.models !== undefined) {
    const wanted = new Set(input.models);
    input.models.forEach((model, i) => {
      if (!grant.models.includes(model)) {
        errors.push({
          field: `models.${i}`,
          message: `The grant does not cover ${model}; it covers ${grant.models.join(", ") || "no models"}.`,
        });
      }
    });
    models = grant.models.filter((m) => wanted.has(m));
  }
  let limits: TokenLimits | null = null;
  if (input.limits !== undefined) {
    const organization = await effectiveLimits(services, grant.organizationId);
    const own: TokenLimits = {};
    for (const name of LIMIT_NAMES) {
      const value = Object.hasOwn(input.limits, name) ? input.limits[name] : undefined;
      if (value === undefined) continue;
      if (value > organization[name]) {
        errors.push({
          field: `limits.${name}`,
          message: `At most the organization's own limit, ${organization[name]}.`,
        });
      }
      own[name] = value;
    }
    limits = Object.keys(own).length > 0 ? own : null;
  }
  if (errors.length > 0) {
    throw new AppError("validation_failed", "The token asks for more than the organization has.", { errors });
  }
  return { models, limits };
}

/**
 * The id a member's new token is inserted with, worked out by the insert itself: `id` while the
 * member holds fewer than `MAX_LIVE_TOKENS_PER_MEMBER` live tokens in the organization, else NULL,
 * which the primary key refuses. The count and the insert are one statement, which D1 runs alone,
 * so however many mints race (and whatever else wrote the rows counted), none lands past the cap.
 * NULL rather than a conditional `INSERT … SELECT … WHERE`: a statement that writes no row would
 * still let its batch's `token.issued` event land, where a refused one fails the batch whole.
 */
function idWithinCap(services: Pick<Services, "db">, member: MemberPrincipal, id: string, now: string): SQL {
  const organizationGrants = services.db
    .select({ id: grants.id })
    .from(grants)
    .where(eq(grants.organizationId, member.organizationId));
  const live = and(
    eq(accessTokens.userId, member.user.id),
    isNull(accessTokens.revokedAt),
    or(isNull(accessTokens.expiresAt), gt(accessTokens.expiresAt, now)),
    inArray(accessTokens.grantId, organizationGrants),
  );
  return sql`case when (select count(*) from ${accessTokens} where ${live}) < ${MAX_LIVE_TOKENS_PER_MEMBER} then ${id} end`;
}

/** The refusal of a mint past `MAX_LIVE_TOKENS_PER_MEMBER`. */
function tokenLimitReached(): AppError {
  return new AppError(
    "token_limit",
    `You already hold ${MAX_LIVE_TOKENS_PER_MEMBER} live tokens in this organization, the most a member may: revoke one you no longer use (DELETE /v1/tokens/{id}, or at /account), then mint again.`,
    { extensions: { limit: MAX_LIVE_TOKENS_PER_MEMBER } },
  );
}

/**
 * Mints a token for a signed-in member, on the organization's active grant for the family; the
 * secret is returned once. Every token expires (`DEFAULT_TOKEN_DAYS`, at most `MAX_TOKEN_DAYS`),
 * and a member holds at most `MAX_LIVE_TOKENS_PER_MEMBER` live ones (`409 token_limit` past it).
 */
export async function mintMemberToken(services: Services, member: MemberPrincipal, input: NewMemberToken) {
  const familyId = input.family ?? "llama-2";
  const family = findFamily(familyId);
  if (!family) {
    throw new AppError("validation_failed", `No license family named ${familyId}.`, {
      errors: [{ field: "family", message: `No license family named ${familyId}.` }],
    });
  }
  const secret = `${TOKEN_PREFIX}${services.ids.secret(32)}`;
  const secretHash = await sha256Hex(secret);
  const row = await writeAudited(services, async () => {
    // The membership needs no guard in the INSERT: a change after this read is audited, so this batch loses on `seq`.
    await memberNow(services, member, MINTING_ROLE);
    const grant = await activeGrantOf(services, member.organizationId, family.id);
    if (!grant) {
      throw new AppError(
        "invalid_state",
        `Your organization has no active grant for ${family.displayName}: tokens can be made once access is granted.`,
      );
    }
    const { models, limits } = await checkedTokenRequest(services, grant, input);
    const now = services.clock.now();
    const token: AccessToken = {
      id: services.ids.id("tok"),
      grantId: grant.id,
      name: input.name,
      secretHash,
      displayPrefix: secret.slice(0, TOKEN_PREFIX.length + 6),
      scopes: [...new Set(input.scopes)],
      createdAt: now.toISOString(),
      expiresAt: addDays(now, Math.min(input.expiresInDays ?? DEFAULT_TOKEN_DAYS, MAX_TOKEN_DAYS)).toISOString(),
      revokedAt: null,
      userId: member.user.id,
      models,
      limits,
    };
    return {
      statements: [
        services.db
          .insert(accessTokens)
          .values({ ...token, id: idWithinCap(services, member, token.id, token.createdAt) }),
      ],
      events: [
        {
          actor: `member:${member.user.email}`,
          action: "token.issued",
          subjectType: "token",
          subjectId: token.id,
          data: {
            grantId: grant.id,
            organizationId: grant.organizationId,
            userId: member.user.id,
            scopes: token.scopes,
            name: token.name,
            models,
            limits,
            expiresAt: token.expiresAt,
          },
        },
      ],
      result: token,
    };
  }).catch((error: unknown) => {
    throw isNotNullViolation(error, "access_tokens.id") ? tokenLimitReached() : error;
  });
  return {
    ...describeToken(row),
    family: family.id,
    member: { id: member.user.id, email: member.user.email },
    token: secret,
  };
}

/** Which page of `listMemberTokens`: every member's tokens (`all`), where the last page ended, how many. */
export interface MemberTokenQuery {
  all: boolean;
  cursor?: string | undefined;
  limit: number;
}

/**
 * A page of the organization's tokens a member may see, newest first: their own, or with `all`
 * (admins and owners only) every member's and the tokens from before members, each with its
 * member's address. Paged as the other listings are (`nextCursor`): revoked and expired tokens
 * stay listed, and only live ones are capped, so the list itself has no bound.
 */
export async function listMemberTokens(
  services: Pick<Services, "db">,
  member: MemberPrincipal,
  query: MemberTokenQuery,
) {
  if (query.all && !roleAtLeast(member.membership.role, "admin")) {
    throw new AppError("forbidden", "Only the organization's admins and owners see every member's tokens.");
  }
  const conditions: (SQL | undefined)[] = [eq(grants.organizationId, member.organizationId)];
  if (!query.all) conditions.push(eq(accessTokens.userId, member.user.id));
  if (query.cursor) {
    const before = decodeCursor(query.cursor);
    conditions.push(
      or(
        lt(accessTokens.createdAt, before.createdAt),
        and(eq(accessTokens.createdAt, before.createdAt), lt(accessTokens.id, before.id)),
      ),
    );
  }
  const rows = await services.db
    .select({ token: accessTokens, family: grants.family, email: users.email })
    .from(accessTokens)
    .innerJoin(grants, eq(grants.id, accessTokens.grantId))
    .leftJoin(users, eq(users.id, accessTokens.userId))
    .where(and(...conditions))
    .orderBy(desc(accessTokens.createdAt), desc(accessTokens.id))
    .limit(query.limit + 1);
  const page = rows.slice(0, query.limit);
  const last = page.at(-1)?.token;
  return {
    tokens: page.map(({ token, family, email }) => ({
      ...describeToken(token),
      family,
      member: token.userId ? { id: token.userId, email } : null,
    })),
    nextCursor: rows.length > query.limit && last ? encodeCursor(last) : null,
  };
}

/**
 * Revokes one of the organization's tokens: a member their own, an admin or owner any. Another
 * organization's token is as unknown as one that does not exist. Revoking twice is harmless. The
 * member's role is decided on as it stands when the write lands (`memberNow`), so a revoke planned
 * before its member was removed or lowered is refused.
 */
export async function revokeMemberToken(services: Services, member: MemberPrincipal, tokenId: string) {
  return writeAudited(services, async () => {
    const me = await memberNow(services, member);
    const [token] = await services.db
      .select({ token: accessTokens })
      .from(accessTokens)
      .innerJoin(grants, eq(grants.id, accessTokens.grantId))
      .where(and(eq(accessTokens.id, tokenId), eq(grants.organizationId, me.organizationId)))
      .then((rows) => rows.map((r) => r.token));
    if (!token) throw new AppError("not_found", "No such token.");
    if (token.userId !== me.user.id && !roleAtLeast(me.membership.role, "admin")) {
      throw new AppError("forbidden", "Only the organization's admins and owners revoke other members' tokens.");
    }
    return revocation(services, token, `member:${me.user.email}`, {
      organizationId: me.organizationId,
      userId: token.userId,
    });
  });
}

/**
 * The audited write that revokes `token` now, or nothing when it is revoked already (revoking
 * twice is harmless); the answer is the token as listed.
 */
function revocation(
  services: Pick<Services, "db" | "clock">,
  token: AccessToken,
  actor: string,
  data: Record<string, unknown> = {},
) {
  if (token.revokedAt) return { statements: [], events: [], result: describeToken(token) };
  const at = services.clock.now().toISOString();
  return {
    statements: [services.db.update(accessTokens).set({ revokedAt: at }).where(eq(accessTokens.id, token.id))],
    events: [
      {
        actor,
        action: "token.revoked",
        subjectType: "token",
        subjectId: token.id,
        data: { grantId: token.grantId, ...data },
      },
    ],
    result: describeToken({ ...token, revokedAt: at }),
  };
}

async function grantOfApplication(services: Pick<Services, "db">, applicationId: string) {
  const [grant] = await services.db.select().from(grants).where(eq(grants.applicationId, applicationId));
  return grant;
}

/**
 * The tokens of an application's grant minted through its status link before members existed,
 * newest first. Members' tokens are theirs to list (`GET /v1/tokens`), not the status link's.
 */
export async function listAccessTokens(services: Pick<Services, "db">, application: Application) {
  const grant = await grantOfApplication(services, application.id);
  if (!grant) return [];
  const rows = await services.db
    .select()
    .from(accessTokens)
    .where(and(eq(accessTokens.grantId, grant.id), isNull(accessTokens.userId)))
    .orderBy(desc(accessTokens.createdAt));
  return rows.map(describeToken);
}

/**
 * Revokes one of an application's status-link tokens (`listAccessTokens`), as the link's holder.
 * Revoking twice is harmless. The link is opened inside the write, so a holder removed or no
 * longer an owner by the time it lands is refused as their link is (404).
 */
export async function revokeAccessToken(
  services: Services,
  link: { applicationId: string; secret: string | undefined },
  tokenId: string,
) {
  return writeAudited(services, async () => {
    const application = await applicationBySecret(services, link.applicationId, link.secret);
    const grant = await grantOfApplication(services, application.id);
    const [token] = grant
      ? await services.db
          .select()
          .from(accessTokens)
          .where(and(eq(accessTokens.id, tokenId), eq(accessTokens.grantId, grant.id), isNull(accessTokens.userId)))
      : [];
    if (!token) throw new AppError("not_found", "No such token.");
    return revocation(services, token, `applicant:${application.holder.email}`);
  });
}

/** Why a token was refused; the HTTP layers decide how to say it (problem+json, Hub, OpenAI). */
export type TokenRefusal =
  | "missing"
  | "invalid"
  | "expired"
  | "revoked"
  | "member_removed"
  | "grant_inactive"
  | "scope"
  | "reacceptance_required";

/** The outcome of checking a bearer token. */
export type TokenCheck = { ok: true; principal: TokenPrincipal } | { ok: false; refusal: TokenRefusal };

/**
 * Checks a bearer token against the database in one query: the token must exist, be unexpired
 * and unrevoked, its grant active, its member (if it has one: tokens from before members have
 * none) still a member of the grant's organization who may hold tokens, and it must carry
 * `scope`. Read on every call, so revoking the token or the grant, or removing the member, takes
 * effect at once.
 */
export async function checkAccessToken(
  services: Pick<Services, "db" | "clock">,
  bearer: string | undefined,
  scope: TokenScope,
): Promise<TokenCheck> {
  if (!bearer) return { ok: false, refusal: "missing" };
  const secret = accessTokenSecret(bearer);
  if (!secret.startsWith(TOKEN_PREFIX) || secret.length > 100) return { ok: false, refusal: "invalid" };
  const [row] = await services.db
    .select({
      token: accessTokens,
      grant: grants,
      memberRole: memberships.role,
      reacceptBy: licenseReacceptances.acceptBy,
    })
    .from(accessTokens)
    .innerJoin(grants, eq(grants.id, accessTokens.grantId))
    .leftJoin(memberships, liveMembershipOfTokenMember)
    .leftJoin(licenseReacceptances, pendingReacceptanceOfGrant)
    .where(eq(accessTokens.secretHash, await sha256Hex(secret)));
  if (!row) return { ok: false, refusal: "invalid" };
  const { token, grant } = row;
  if (token.revokedAt) return { ok: false, refusal: "revoked" };
  if (token.expiresAt && token.expiresAt <= services.clock.now().toISOString()) {
    return { ok: false, refusal: "expired" };
  }
  if (!memberMayUseToken(token.userId, row.memberRole)) {
    return { ok: false, refusal: "member_removed" };
  }
  if (grant.status !== "active") return { ok: false, refusal: "grant_inactive" };
  if (!token.scopes.includes(scope)) return { ok: false, refusal: "scope" };
  if (reacceptanceOverdue(row.reacceptBy, services.clock.now().getTime())) {
    return { ok: false, refusal: "reacceptance_required" };
  }
  const coverage = { grantModels: grant.models, tokenModels: token.models };
  return {
    ok: true,
    principal: {
      tokenId: token.id,
      grantId: grant.id,
      organizationId: grant.organizationId,
      family: grant.family,
      scopes: token.scopes,
      userId: token.userId,
      ...coverage,
      models: coveredModels(coverage),
      limits: token.limits,
      licenseVersionId: grant.licenseVersionId,
      reacceptBy: row.reacceptBy,
    },
  };
}
