import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { getPath } from "hono/utils/url";
import { bearerToken } from "../auth/bearer";
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
    );
  return router;
}
