/**
 * Who a personal access token is, in the answer the Hub gives at `GET /api/whoami-v2`: what
 * `hf auth login`, `huggingface-cli login`, `hf auth whoami`, `HfApi().whoami()` and
 * `@huggingface/hub`'s `whoAmI` read. They need `name`, `orgs[].name` and
 * `auth.accessToken.{displayName, role}` (0.x indexes them without a fallback).
 */
import { eq } from "drizzle-orm";
import { accessTokens, organizations, TOKEN_SCOPES, type TokenScope, users } from "../db/schema";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import { checkAccessToken, type TokenCheck, type TokenPrincipal, type TokenRefusal } from "../tokens/service";

/** The Hub's permission for what each scope lets a token do with a model. */
const HUB_PERMISSION: Record<TokenScope, string> = {
  download: "repo.content.read",
  inference: "inference.serverless.write",
};

/** One repository a fine-grained Hub token reaches, and what it may do there. */
interface HubScopedPermission {
  entity: { type: "model"; name: string };
  permissions: string[];
}

/** The Hub's `whoami-v2` answer for a user's access token. */
export interface HubWhoAmI {
  type: "user";
  id: string;
  name: string;
  fullname: string;
  email?: string;
  emailVerified?: boolean;
  orgs: { type: "org"; id: string; name: string; fullname: string }[];
  auth: {
    type: "access_token";
    accessToken: {
      displayName: string;
      role: "read";
      createdAt: string;
      fineGrained: { canReadGatedRepos: boolean; global: string[]; scoped: HubScopedPermission[] };
    };
  };
}

/**
 * Checks a token whatever its scopes: who a token is does not depend on what it may do, so a
 * token with either scope answers.
 */
async function checkAnyScope(services: Pick<Services, "db" | "clock">, bearer: string | undefined) {
  let check: TokenCheck = { ok: false, refusal: "missing" };
  for (const scope of TOKEN_SCOPES) {
    check = await checkAccessToken(services, bearer, scope);
    if (check.ok || check.refusal !== "scope") break;
  }
  return check;
}

/** The Hub repositories of the models a principal covers, each with what its scopes allow. */
function scopedPermissions(principal: TokenPrincipal): HubScopedPermission[] {
  const family = findFamily(principal.family);
  const permissions = principal.scopes.map((scope) => HUB_PERMISSION[scope]);
  const scoped: HubScopedPermission[] = [];
  for (const id of principal.models) {
    const model = family?.models.find((m) => m.id === id);
    if (model) scoped.push({ entity: { type: "model", name: model.hubRepo }, permissions });
  }
  return scoped;
}

/**
 * The `whoami-v2` answer for a bearer token, or why it was refused. The user is the token's
 * member (named by the local part of their address) or, for a token from before members, its
 * organization; `orgs` is the token's organization. The role is `read`, since nothing here can
 * write; `fineGrained` lists the repositories the token reaches and, per scope, what it may do.
 */
export async function whoAmI(
  services: Pick<Services, "db" | "clock">,
  bearer: string | undefined,
): Promise<{ ok: true; answer: HubWhoAmI } | { ok: false; refusal: TokenRefusal }> {
  const check = await checkAnyScope(services, bearer);
  if (!check.ok) return check;
  const { principal } = check;
  const [row] = await services.db
    .select({ token: accessTokens, organization: organizations, user: users })
    .from(accessTokens)
    .innerJoin(organizations, eq(organizations.id, principal.organizationId))
    .leftJoin(users, eq(users.id, accessTokens.userId))
    .where(eq(accessTokens.id, principal.tokenId));
  // The token was read a moment ago; a row gone since is a token gone since.
  if (!row) return { ok: false, refusal: "invalid" };
  const { token, organization, user } = row;
  const org = { type: "org" as const, id: organization.id, name: organization.name, fullname: organization.name };
  const person = user
    ? {
        id: user.id,
        name: user.email.slice(0, user.email.lastIndexOf("@")),
        fullname: user.name ?? user.email,
        email: user.email,
        emailVerified: user.emailVerifiedAt !== null,
      }
    : { id: organization.id, name: organization.name, fullname: organization.name };
  return {
    ok: true,
    answer: {
      type: "user",
      ...person,
      orgs: [org],
      auth: {
        type: "access_token",
        accessToken: {
          displayName: token.name,
          role: "read",
          createdAt: token.createdAt,
          fineGrained: {
            canReadGatedRepos: principal.scopes.includes("download"),
            global: [],
            scoped: scopedPermissions(principal),
          },
        },
      },
    },
  };
}
