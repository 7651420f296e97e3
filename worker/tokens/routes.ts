import { createRoute, z } from "@hono/zod-openapi";
import { applicationBySecret, capability } from "../applications/status";
import { TOKEN_SCOPES } from "../db/schema";
import { abuseBrake } from "../http/middleware";
import { newRouter, problemResponses, readBody } from "../http/router";
import { listAccessTokens, mintAccessToken, revokeAccessToken } from "./service";

const TokenSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    prefix: z.string().openapi({ description: "The token's first characters, to tell tokens apart." }),
    scopes: z.array(z.enum(TOKEN_SCOPES)),
    createdAt: z.string(),
    expiresAt: z.string().nullable(),
    revokedAt: z.string().nullable(),
  })
  .openapi("AccessToken");

const NewToken = z
  .strictObject({
    name: z.string().trim().min(1).max(100),
    scopes: z.array(z.enum(TOKEN_SCOPES)).min(1),
    expiresInDays: z.number().int().min(1).max(366).optional(),
  })
  .openapi("NewAccessToken");

const Params = z.object({ id: z.string().min(1).max(64) });
const Query = z.object({ token: z.string().optional() });
const capabilityNote =
  "Authorized by the application's status capability (`Authorization: Bearer mgs_…` or `?token=`).";

const createToken = createRoute({
  method: "post",
  path: "/v1/applications/{id}/tokens",
  tags: ["Access tokens"],
  summary: "Create a personal access token for an approved application",
  description: `${capabilityNote} The token (\`mg_…\`) is shown once; only its hash is stored.`,
  middleware: [abuseBrake()] as const,
  request: {
    params: Params,
    query: Query,
    body: {
      content: { "application/json": { schema: { $ref: "#/components/schemas/NewAccessToken" } } },
      required: true,
    },
  },
  responses: {
    201: {
      description: "The new token, with its secret",
      content: { "application/json": { schema: TokenSchema.extend({ token: z.string() }) } },
    },
    ...problemResponses(400, 404, 409, 415),
  },
});

const listTokens = createRoute({
  method: "get",
  path: "/v1/applications/{id}/tokens",
  tags: ["Access tokens"],
  summary: "List an application's access tokens",
  description: capabilityNote,
  request: { params: Params, query: Query },
  responses: {
    200: {
      description: "Tokens, newest first",
      content: { "application/json": { schema: z.object({ tokens: z.array(TokenSchema) }) } },
    },
    ...problemResponses(404),
  },
});

const deleteToken = createRoute({
  method: "delete",
  path: "/v1/applications/{id}/tokens/{tokenId}",
  tags: ["Access tokens"],
  summary: "Revoke an access token",
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
  .openapi(createToken, async (c) => {
    const services = c.get("services");
    const app = await applicationBySecret(services, c.req.valid("param").id, capability(c));
    const input = await readBody(c, NewToken);
    return c.json(await mintAccessToken(services, app, input), 201);
  })
  .openapi(listTokens, async (c) => {
    const services = c.get("services");
    const app = await applicationBySecret(services, c.req.valid("param").id, capability(c));
    return c.json({ tokens: await listAccessTokens(services, app) }, 200);
  })
  .openapi(deleteToken, async (c) => {
    const services = c.get("services");
    const { id, tokenId } = c.req.valid("param");
    const app = await applicationBySecret(services, id, capability(c));
    return c.json(await revokeAccessToken(services, app, tokenId), 200);
  });
