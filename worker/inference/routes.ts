import { createRoute, z } from "@hono/zod-openapi";
import { and, eq, gte, lt, sql } from "drizzle-orm";
import type { Context } from "hono";
import { getPath } from "hono/utils/url";
import { bearerToken } from "../auth/bearer";
import { usageLedger } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { modelCoverage, notCoveredProblem } from "../grants/coverage";
import { errorResponse } from "../http/errors";
import { type RequestContextOptions, requestIdFor } from "../http/middleware";
import { newRouter } from "../http/router";
import { findModel } from "../policy/families";
import { createServices, type Services } from "../services";
import { authenticateInference } from "./access";
import { backendPools } from "./backend-store";
import { type CompletionCall, type Endpoint, type ProxyOptions, proxyCompletion, proxyHealth } from "./proxy";

const openAiError = z.object({
  error: z.object({ message: z.string(), type: z.string(), code: z.string().nullable() }),
});
const errorResponses = Object.fromEntries(
  [400, 401, 403, 404, 413, 415, 429, 502, 503, 504].map((s) => [
    s,
    { description: "OpenAI-style error", content: { "application/json": { schema: openAiError } } },
  ]),
);

const completionRoute = (path: "/v1/chat/completions" | "/v1/completions", summary: string) =>
  createRoute({
    method: "post",
    path,
    tags: ["Inference"],
    summary,
    description:
      "OpenAI wire format, streamed (`stream: true`, server-sent events) or not. Authorized by a personal access token with the `inference` scope whose organization holds a live grant for the model's family. Answers carry OpenAI's `x-ratelimit-*` headers (once the request reached the quota check) and `x-modelgate-overhead-ms`: the gateway's own time before the backend, in ms.",
    security: [{ accessToken: [] }],
    request: {
      body: {
        content: { "application/json": { schema: { type: "object", additionalProperties: true } } },
        required: true,
      },
    },
    responses: {
      200: {
        description: "The completion (JSON) or its stream (text/event-stream)",
        content: {
          "application/json": { schema: { type: "object", additionalProperties: true } },
          "text/event-stream": { schema: { type: "string" } },
        },
      },
      ...errorResponses,
    },
  });

const UsageQuery = z.object({
  from: z.iso.date().optional().openapi({ description: "First day (UTC), inclusive. Default: 30 days ago." }),
  to: z.iso.date().optional().openapi({ description: "Last day (UTC), inclusive. Default: today." }),
  granularity: z.literal("day").default("day"),
});

const usageRoute = createRoute({
  method: "get",
  path: "/v1/usage",
  tags: ["Inference"],
  summary: "Token usage of the token's organization, per day and model",
  security: [{ accessToken: [] }],
  request: { query: UsageQuery },
  responses: {
    200: {
      description: "Usage per day and model",
      content: {
        "application/json": {
          schema: z.object({
            object: z.literal("list"),
            from: z.string(),
            to: z.string(),
            data: z.array(
              z.object({
                date: z.string(),
                model: z.string(),
                requests: z.number().int(),
                prompt_tokens: z.number().int(),
                completion_tokens: z.number().int(),
                total_tokens: z.number().int(),
                partial_requests: z.number().int(),
              }),
            ),
          }),
        },
      },
    },
    ...errorResponses,
  },
});

/** A completion reached through the router (the app serves most without it: `serveCompletion`). */
function honoCall(c: Context<HonoEnv>): CompletionCall {
  return {
    request: c.req.raw,
    env: c.env,
    ctx: c.executionCtx,
    services: c.get("services"),
    requestId: c.get("requestId"),
  };
}

/**
 * Serves `POST /v1/chat/completions` and `/v1/completions` without the router, whose context,
 * middleware chain and route search are a measurable share of a completion's cost in the
 * gateway: it does here the little the app's middleware and error handler would (request id,
 * services, errors in OpenAI's shape).
 */
export async function serveCompletion(
  request: Request,
  env: Env,
  ctx: Pick<ExecutionContext, "waitUntil">,
  endpoint: Endpoint,
  options: RequestContextOptions & { inference?: ProxyOptions } = {},
): Promise<Response> {
  const requestId = requestIdFor(request.headers.get("cf-ray"), options);
  let services: Services | undefined;
  try {
    services = createServices(env, options, { requestId });
    return await proxyCompletion({ request, env, ctx, services, requestId }, endpoint, options.inference);
  } catch (error) {
    return errorResponse(error, getPath(request), requestId, services?.log);
  }
}

/** The OpenAI-compatible surface. `options` lets tests swap the backend health and fetch. */
export function inferenceRoutes(options: ProxyOptions = {}) {
  const router = newRouter();
  /** The models the caller's grant and token cover (`coveredModels`) that have servers, as OpenAI's model objects. */
  const servedModels = async (c: Context<HonoEnv>) => {
    const services = c.get("services");
    const caller = await authenticateInference(services, bearerToken(c.req.header("authorization")));
    const pools = await backendPools(services, proxyHealth(options));
    return caller.principal.models.flatMap((id) => {
      const found = findModel(id);
      if (!found || (pools.get(id)?.length ?? 0) === 0) return [];
      const created = Math.floor(new Date(`${found.family.releaseDate}T00:00:00Z`).getTime() / 1000);
      return [{ id, object: "model" as const, created, owned_by: found.family.licensor }];
    });
  };
  router.get("/v1/models", async (c) => c.json({ object: "list", data: await servedModels(c) }));
  // OpenAI's `models.retrieve`: a model of a family outside the caller's coverage is refused as
  // such (saying how to get it); one without servers is as unknown as one that does not exist.
  router.get("/v1/models/:model", async (c) => {
    const id = c.req.param("model");
    const caller = await authenticateInference(c.get("services"), bearerToken(c.req.header("authorization")));
    const coverage = modelCoverage(caller.principal, id);
    if (!coverage.covered && findModel(id)) throw notCoveredProblem(coverage, "openai");
    const model = (await servedModels(c)).find((m) => m.id === id);
    if (!model)
      throw new AppError("not_found", `The model \`${id}\` does not exist or you do not have access to it.`, {
        extensions: { param: "model" },
      });
    return c.json(model);
  });
  router
    .openapi(completionRoute("/v1/chat/completions", "Chat completion (OpenAI-compatible)"), (c) =>
      proxyCompletion(honoCall(c), "chat", options),
    )
    .openapi(completionRoute("/v1/completions", "Text completion (OpenAI-compatible)"), (c) =>
      proxyCompletion(honoCall(c), "completions", options),
    )
    .openapi(usageRoute, async (c) => {
      const services = c.get("services");
      const caller = await authenticateInference(services, bearerToken(c.req.header("authorization")));
      const today = services.clock.now().toISOString().slice(0, 10);
      const query = c.req.valid("query");
      const to = query.to ?? today;
      const from = query.from ?? new Date(Date.parse(`${to}T00:00:00Z`) - 29 * 86_400_000).toISOString().slice(0, 10);
      if (from > to) throw new AppError("validation_failed", "`from` must not be after `to`.");
      const end = new Date(Date.parse(`${to}T00:00:00Z`) + 86_400_000).toISOString();
      const day = sql<string>`substr(${usageLedger.startedAt}, 1, 10)`;
      const rows = await services.db
        .select({
          date: day,
          model: usageLedger.model,
          requests: sql<number>`count(*)`,
          prompt_tokens: sql<number>`coalesce(sum(${usageLedger.promptTokens}), 0)`,
          completion_tokens: sql<number>`coalesce(sum(${usageLedger.completionTokens}), 0)`,
          total_tokens: sql<number>`coalesce(sum(${usageLedger.totalTokens}), 0)`,
          partial_requests: sql<number>`coalesce(sum(${usageLedger.partial}), 0)`,
        })
        .from(usageLedger)
        .where(
          and(
            eq(usageLedger.organizationId, caller.principal.organizationId),
            gte(usageLedger.startedAt, `${from}T00:00:00.000Z`),
            lt(usageLedger.startedAt, end),
          ),
        )
        .groupBy(day, usageLedger.model)
        .orderBy(day, usageLedger.model);
      return c.json({ object: "list" as const, from, to, data: rows }, 200);
    });
  return router;
}
