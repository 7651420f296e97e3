import { createRoute, z } from "@hono/zod-openapi";
import { PageQuery } from "../admin/cursor";
import { applicationBySecret, capability } from "../applications/status";
import { currentMember, OrganizationQuery, requireMember } from "../auth/members";
import { TOKEN_SCOPES } from "../db/schema";
import { AppError } from "../errors";
import { abuseBrake } from "../http/middleware";
import { newRouter, problemResponses, readBody } from "../http/router";
import {
  listAccessTokens,
  listMemberTokens,
  MAX_LIVE_TOKENS_PER_MEMBER,
  MAX_TOKEN_DAYS,
  MINTING_ROLE,
  mintMemberToken,
  revokeAccessToken,
  revokeMemberToken,
} from "./service";

const Limits = z
  .strictObject({
    requestsPerMinute: z.number().int().positive().optional(),
    tokensPerMinute: z.number().int().positive().optional(),
    monthlyTokenBudget: z.number().int().positive().optional(),
  })
  .openapi("AccessTokenLimits", {
    description: "The token's own limits, each at most the organization's; the organization's hold as well.",
  });

const TokenSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    prefix: z.string().openapi({ description: "The token's first characters, to tell tokens apart." }),
    scopes: z.array(z.enum(TOKEN_SCOPES)),
    models: z
      .array(z.string())
      .nullable()
      .openapi({ description: "The models it may use; null: every model its grant covers." }),
    limits: Limits.nullable(),
    createdAt: z.string(),
    expiresAt: z.string().nullable(),
    revokedAt: z.string().nullable(),
  })
  .openapi("AccessToken");

const MemberTokenSchema = TokenSchema.extend({
  family: z.string(),
  member: z
    .object({ id: z.string(), email: z.string().nullable() })
    .nullable()
    .openapi({ description: "Who minted it; null for a token made with a status link before members existed." }),
}).openapi("MemberAccessToken");

const NewToken = z
  .strictObject({
    name: z.string().trim().min(1).max(100),
    scopes: z.array(z.enum(TOKEN_SCOPES)).min(1).max(TOKEN_SCOPES.length),
    family: z
      .string()
      .min(1)
      .max(64)
      .optional()
      .openapi({ description: "The family whose grant the token uses. Default `llama-2`." }),
    models: z
      .array(z.string().min(1).max(128))
      .min(1)
      .max(64)
      .optional()
      .openapi({ description: "A subset of the models the grant covers. Default: all of them." }),
    expiresInDays: z
      .number()
      .int()
      .min(1)
      .max(MAX_TOKEN_DAYS)
      .optional()
      .openapi({ description: "Default 90, at most 365: every token expires." }),
    limits: Limits.optional(),
  })
  .openapi("NewAccessToken");

const memberNote =
  "Authorized by a signed-in member's session (the `__Host-mg_session` cookie; sign in with `POST /v1/auth/email-link`). Writes must come from this site.";

const mintRoute = createRoute({
  method: "post",
  path: "/v1/tokens",
  tags: ["Access tokens"],
  summary: "Mint a personal access token",
  description: `${memberNote} Needs the developer role or above. The token (\`mg_…\`) is shown once; only its hash is stored. It works while its member belongs to the organization, its grant is active and it has not expired. A member holds at most ${MAX_LIVE_TOKENS_PER_MEMBER} live (unrevoked, unexpired) tokens in an organization: past that, \`409 token_limit\` until one is revoked.`,
  middleware: [abuseBrake(), requireMember(MINTING_ROLE)] as const,
  request: {
    query: OrganizationQuery,
    body: {
      content: { "application/json": { schema: { $ref: "#/components/schemas/NewAccessToken" } } },
      required: true,
    },
  },
  responses: {
    201: {
      description: "The new token, with its secret",
      content: { "application/json": { schema: MemberTokenSchema.extend({ token: z.string() }) } },
    },
    ...problemResponses(400, 401, 403, 409, 415),
  },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/tokens",
  tags: ["Access tokens"],
  summary: "List access tokens: your own, or with `all=true` (admins and owners) the organization's",
  description: `${memberNote} Paged, newest first: revoked and expired tokens are listed too; pass \`nextCursor\` back as \`cursor\` for the next page, until it is null.`,
  middleware: [requireMember("viewer")] as const,
  request: {
    query: OrganizationQuery.extend({ all: z.enum(["true", "false"]).optional(), ...PageQuery }),
  },
  responses: {
    200: {
      description: "A page of tokens, newest first",
      content: {
        "application/json": {
          schema: z.object({ tokens: z.array(MemberTokenSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

const revokeRoute = createRoute({
  method: "delete",
  path: "/v1/tokens/{id}",
  tags: ["Access tokens"],
  summary: "Revoke an access token: your own, or (admins and owners) any of the organization's",
  description: `${memberNote} Takes effect on the next request made with the token.`,
  middleware: [requireMember("viewer")] as const,
  request: { params: z.object({ id: z.string().min(1).max(64) }), query: OrganizationQuery },
  responses: {
    200: { description: "The revoked token", content: { "application/json": { schema: TokenSchema } } },
    ...problemResponses(401, 403, 404),
  },
});

const Params = z.object({ id: z.string().min(1).max(64) });
const Query = z.object({ token: z.string().optional() });
const capabilityNote =
  "Authorized by the application's status capability (`Authorization: Bearer mgs_…` or `?token=`), which works only while the owner it was issued to is still an owner of the organization.";

const legacyCreateRoute = createRoute({
  method: "post",
  path: "/v1/applications/{id}/tokens",
  tags: ["Access tokens"],
  summary: "No longer mints tokens: members mint their own with POST /v1/tokens",
  description: "Always 403: a status link no longer mints tokens; tokens need a signed-in member.",
  request: { params: Params, query: Query },
  responses: { ...problemResponses(403) },
});

const legacyListRoute = createRoute({
  method: "get",
  path: "/v1/applications/{id}/tokens",
  tags: ["Access tokens"],
  summary: "List the tokens an application's status link made before members existed",
  description: `${capabilityNote} Members' tokens are listed with GET /v1/tokens.`,
  request: { params: Params, query: Query },
  responses: {
    200: {
      description: "Tokens, newest first",
      content: { "application/json": { schema: z.object({ tokens: z.array(TokenSchema) }) } },
    },
    ...problemResponses(404),
  },
});

const legacyDeleteRoute = createRoute({
  method: "delete",
  path: "/v1/applications/{id}/tokens/{tokenId}",
  tags: ["Access tokens"],
  summary: "Revoke a token an application's status link made before members existed",
  description: `${capabilityNote} Takes effect on the next request made with the token.`,
  request: { params: Params.extend({ tokenId: z.string().min(1).max(64) }), query: Query },
  responses: {
    200: { description: "The revoked token", content: { "application/json": { schema: TokenSchema } } },
    ...problemResponses(404),
  },
});

export const tokenRoutes = newRouter();
tokenRoutes.openAPIRegistry.register("NewAccessToken", NewToken);

tokenRoutes
  .openapi(mintRoute, async (c) => {
    const input = await readBody(c, NewToken);
    return c.json(await mintMemberToken(c.get("services"), currentMember(c), input), 201);
  })
  .openapi(listRoute, async (c) => {
    const { all, cursor, limit } = c.req.valid("query");
    return c.json(
      await listMemberTokens(c.get("services"), currentMember(c), { all: all === "true", cursor, limit }),
      200,
    );
  })
  .openapi(revokeRoute, async (c) => {
    return c.json(await revokeMemberToken(c.get("services"), currentMember(c), c.req.valid("param").id), 200);
  })
  .openapi(legacyCreateRoute, () => {
    throw new AppError(
      "forbidden",
      "Status links no longer mint tokens: tokens need a signed-in member. Sign in with a link mailed to you (POST /v1/auth/email-link), then mint tokens at /account or with POST /v1/tokens.",
      { extensions: { signIn: "/v1/auth/email-link", account: "/account", mint: "/v1/tokens" } },
    );
  })
  .openapi(legacyListRoute, async (c) => {
    const services = c.get("services");
    const app = await applicationBySecret(services, c.req.valid("param").id, capability(c));
    return c.json({ tokens: await listAccessTokens(services, app) }, 200);
  })
  .openapi(legacyDeleteRoute, async (c) => {
    const { id, tokenId } = c.req.valid("param");
    return c.json(
      await revokeAccessToken(c.get("services"), { applicationId: id, secret: capability(c) }, tokenId),
      200,
    );
  });
