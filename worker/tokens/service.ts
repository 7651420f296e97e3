import { and, desc, eq } from "drizzle-orm";
import { writeAudited } from "../audit/log";
import { type AccessToken, type Application, accessTokens, grants, type TokenScope } from "../db/schema";
import { AppError } from "../errors";
import { addDays } from "../platform/clock";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";

/** Every personal access token starts with this, so leaks are easy to scan for. */
export const TOKEN_PREFIX = "mg_";
/**
 * Hugging Face Hub clients refuse tokens that do not start with `hf_`; they may send
 * `hf_mg_…`, which is the same token.
 */
export const HUB_TOKEN_PREFIX = "hf_";

/** The organization and grant a token acts for, once authenticated. */
export interface TokenPrincipal {
  tokenId: string;
  grantId: string;
  organizationId: string;
  family: string;
  scopes: TokenScope[];
}

/** A token as listed: never its secret. */
export function describeToken(token: AccessToken) {
  return {
    id: token.id,
    name: token.name,
    prefix: token.displayPrefix,
    scopes: token.scopes,
    createdAt: token.createdAt,
    expiresAt: token.expiresAt,
    revokedAt: token.revokedAt,
  };
}

async function liveGrantOf(services: Pick<Services, "db">, applicationId: string) {
  const [grant] = await services.db.select().from(grants).where(eq(grants.applicationId, applicationId));
  return grant;
}

/** Mints a token for an approved application's live grant; the secret is returned once. */
export async function mintAccessToken(
  services: Services,
  application: Application,
  input: { name: string; scopes: TokenScope[]; expiresInDays?: number | undefined },
) {
  const secret = `${TOKEN_PREFIX}${services.ids.secret(32)}`;
  const secretHash = await sha256Hex(secret);
  const row = await writeAudited(services, async () => {
    const grant = await liveGrantOf(services, application.id);
    if (grant?.status !== "active") {
      throw new AppError("invalid_state", "Tokens can only be created while access is granted and active.");
    }
    const now = services.clock.now();
    const token: AccessToken = {
      id: services.ids.id("tok"),
      grantId: grant.id,
      name: input.name,
      secretHash,
      displayPrefix: secret.slice(0, TOKEN_PREFIX.length + 6),
      scopes: [...new Set(input.scopes)],
      createdAt: now.toISOString(),
      expiresAt: input.expiresInDays ? addDays(now, input.expiresInDays).toISOString() : null,
      revokedAt: null,
      userId: null,
      models: null,
      limits: null,
    };
    return {
      statements: [services.db.insert(accessTokens).values(token)],
      events: [
        {
          actor: `applicant:${application.contactEmail}`,
          action: "token.issued",
          subjectType: "token",
          subjectId: token.id,
          data: { grantId: grant.id, scopes: token.scopes, name: token.name, expiresAt: token.expiresAt },
        },
      ],
      result: token,
    };
  });
  return { ...describeToken(row), token: secret };
}

/** The tokens of an application's grant, newest first. */
export async function listAccessTokens(services: Pick<Services, "db">, application: Application) {
  const grant = await liveGrantOf(services, application.id);
  if (!grant) return [];
  const rows = await services.db
    .select()
    .from(accessTokens)
    .where(eq(accessTokens.grantId, grant.id))
    .orderBy(desc(accessTokens.createdAt));
  return rows.map(describeToken);
}

/** Revokes one token of an application's grant. Revoking twice is harmless. */
export async function revokeAccessToken(services: Services, application: Application, tokenId: string) {
  return writeAudited(services, async () => {
    const grant = await liveGrantOf(services, application.id);
    const [token] = grant
      ? await services.db
          .select()
          .from(accessTokens)
          .where(and(eq(accessTokens.id, tokenId), eq(accessTokens.grantId, grant.id)))
      : [];
    if (!token) throw new AppError("not_found", "No such token.");
    if (token.revokedAt) return { statements: [], events: [], result: describeToken(token) };
    const at = services.clock.now().toISOString();
    return {
      statements: [services.db.update(accessTokens).set({ revokedAt: at }).where(eq(accessTokens.id, token.id))],
      events: [
        {
          actor: `applicant:${application.contactEmail}`,
          action: "token.revoked",
          subjectType: "token",
          subjectId: token.id,
          data: { grantId: token.grantId },
        },
      ],
      result: describeToken({ ...token, revokedAt: at }),
    };
  });
}

/** Why a token was refused; the HTTP layers decide how to say it (problem+json, Hub, OpenAI). */
export type TokenRefusal = "missing" | "invalid" | "expired" | "revoked" | "grant_inactive" | "scope";

/** The outcome of checking a bearer token. */
export type TokenCheck = { ok: true; principal: TokenPrincipal } | { ok: false; refusal: TokenRefusal };

/**
 * Checks a bearer token against the database: the token must exist, be unexpired and unrevoked,
 * its grant must be active, and it must carry `scope`. Read on every call, so a revocation of
 * either the token or the grant takes effect at once.
 */
export async function checkAccessToken(
  services: Pick<Services, "db" | "clock">,
  bearer: string | undefined,
  scope: TokenScope,
): Promise<TokenCheck> {
  if (!bearer) return { ok: false, refusal: "missing" };
  const secret = bearer.startsWith(HUB_TOKEN_PREFIX + TOKEN_PREFIX) ? bearer.slice(HUB_TOKEN_PREFIX.length) : bearer;
  if (!secret.startsWith(TOKEN_PREFIX) || secret.length > 100) return { ok: false, refusal: "invalid" };
  const [row] = await services.db
    .select({ token: accessTokens, grant: grants })
    .from(accessTokens)
    .innerJoin(grants, eq(grants.id, accessTokens.grantId))
    .where(eq(accessTokens.secretHash, await sha256Hex(secret)));
  if (!row) return { ok: false, refusal: "invalid" };
  if (row.token.revokedAt) return { ok: false, refusal: "revoked" };
  if (row.token.expiresAt && row.token.expiresAt <= services.clock.now().toISOString()) {
    return { ok: false, refusal: "expired" };
  }
  if (row.grant.status !== "active") return { ok: false, refusal: "grant_inactive" };
  if (!row.token.scopes.includes(scope)) return { ok: false, refusal: "scope" };
  return {
    ok: true,
    principal: {
      tokenId: row.token.id,
      grantId: row.grant.id,
      organizationId: row.grant.organizationId,
      family: row.grant.family,
      scopes: row.token.scopes,
    },
  };
}

/** The bearer token of a request (`Authorization: Bearer …`). */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  const match = /^Bearer\s+(\S+)$/i.exec(authorization.trim());
  return match?.[1];
}
