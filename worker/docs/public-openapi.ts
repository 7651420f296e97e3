/**
 * Public routes that are plain Hono handlers rather than zod-validated routes — health and
 * readiness, the OpenAI model list, signed downloads, the download-signing JWKS, the document
 * itself — registered in the OpenAPI document here so that every public route is in it.
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { ProblemSchema } from "../http/router";

type Registry = OpenAPIHono["openAPIRegistry"];

const problem = (description: string) => ({
  description,
  content: { "application/problem+json": { schema: ProblemSchema } },
});

const OpenAiError = z
  .object({
    error: z.object({
      message: z.string(),
      type: z.string(),
      param: z.string().nullable(),
      code: z.string().nullable(),
    }),
  })
  .openapi("OpenAiError");
const openAiError = (description: string) => ({
  description,
  content: { "application/json": { schema: OpenAiError } },
});

const Model = z
  .object({ id: z.string(), object: z.literal("model"), created: z.number().int(), owned_by: z.string() })
  .openapi("OpenAiModel");

const Readiness = z
  .object({
    ok: z.boolean(),
    checks: z.record(z.string(), z.object({ ok: z.boolean(), ms: z.number(), detail: z.string().optional() })),
  })
  .openapi("Readiness");

/** Registers the public routes that no `createRoute` describes. */
export function registerPublicOperations(registry: Registry): void {
  registry.registerPath({
    method: "get",
    path: "/health",
    operationId: "getHealth",
    tags: ["Operations"],
    summary: "Liveness; with `?ready`, readiness: D1, R2, the quota object and the queue each answer",
    request: {
      query: z.object({
        ready: z
          .string()
          .optional()
          .openapi({ description: "Present: check every dependency (each with a short timeout)" }),
      }),
    },
    responses: {
      200: {
        description: "Up (and, with `?ready`, every check passed)",
        content: { "application/json": { schema: z.union([z.object({ ok: z.literal(true) }), Readiness]) } },
      },
      503: {
        description: "A readiness check failed; `checks` says which",
        content: { "application/json": { schema: Readiness } },
      },
    },
  });
  registry.registerPath({
    method: "get",
    path: "/v1/models",
    operationId: "listModels",
    tags: ["Inference"],
    summary: "The models served to the caller's grant (OpenAI-compatible `models.list`)",
    security: [{ accessToken: [] }],
    responses: {
      200: {
        description: "The served models",
        content: { "application/json": { schema: z.object({ object: z.literal("list"), data: z.array(Model) }) } },
      },
      401: openAiError("No valid token"),
    },
  });
  registry.registerPath({
    method: "get",
    path: "/v1/models/{model}",
    operationId: "retrieveModel",
    tags: ["Inference"],
    summary: "One served model (OpenAI-compatible `models.retrieve`)",
    security: [{ accessToken: [] }],
    request: { params: z.object({ model: z.string().openapi({ description: "A model id, e.g. `llama-2-7b-chat`" }) }) },
    responses: {
      200: { description: "The model", content: { "application/json": { schema: Model } } },
      401: openAiError("No valid token"),
      403: openAiError("The caller's grant or token does not cover the model"),
      404: openAiError("No such model, or none of its servers is configured"),
    },
  });
  const downloadParams = z.object({
    model: z.string().openapi({ description: "The model id" }),
    revision: z.string().openapi({ description: "The revision id" }),
    path: z.string().openapi({ description: "The file's path; may contain `/`" }),
  });
  const downloadQuery = z.object({
    sig: z.string().openapi({ description: "The signed link's token (from a manifest)" }),
  });
  for (const method of ["get", "head"] as const) {
    registry.registerPath({
      method,
      path: "/v1/download/{model}/{revision}/{path}",
      operationId: method === "get" ? "downloadFile" : "downloadFileHead",
      tags: ["Weights"],
      summary:
        method === "get"
          ? "A file of a signed link, streamed from R2 (single `Range` supported)"
          : "A signed link's file metadata",
      request: {
        params: downloadParams,
        query: downloadQuery,
        headers: z.object({ range: z.string().optional().openapi({ description: "`bytes=N-` or `bytes=N-M`" }) }),
      },
      responses: {
        200: {
          description: "The whole file",
          content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
        },
        206: {
          description: "The requested range",
          content: { "application/octet-stream": { schema: z.string().openapi({ format: "binary" }) } },
        },
        401: problem("No `sig`"),
        403: problem(
          "An invalid or expired signature, a link for another file, a spent download budget, or a grant, token or member no longer live",
        ),
        404: problem("No such file in the revision"),
        412: problem("The object changed since the link was signed"),
        416: problem("The range is not satisfiable"),
        503: problem("Downloads are not set up (no signing key)"),
      },
    });
  }
  registry.registerPath({
    method: "get",
    path: "/.well-known/jwks.json",
    operationId: "getDownloadSigningKeys",
    tags: ["Weights"],
    summary: "Public keys that verify signed download links (Ed25519 JWKs by `kid`)",
    responses: {
      200: {
        description: "The JWKS",
        content: {
          "application/json": {
            schema: z.object({
              keys: z.array(
                z.object({ kty: z.string(), crv: z.string(), x: z.string(), kid: z.string() }).passthrough(),
              ),
            }),
          },
        },
      },
    },
  });
  registry.registerPath({
    method: "get",
    path: "/openapi.json",
    operationId: "getOpenApiDocument",
    tags: ["Operations"],
    summary: "This document",
    responses: {
      200: {
        description: "The OpenAPI 3.1 document",
        content: { "application/json": { schema: z.object({}).passthrough() } },
      },
    },
  });
  registry.registerPath({
    method: "get",
    path: "/docs",
    operationId: "getApiReference",
    tags: ["Operations"],
    summary: "This document as an HTML reference page",
    responses: { 200: { description: "The reference page", content: { "text/html": { schema: z.string() } } } },
  });
}
