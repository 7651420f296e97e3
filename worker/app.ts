import { getPath } from "hono/utils/url";
import { adminConsoleRoutes } from "../admin-ui/routes";
import { adminRoutes } from "./admin/routes";
import { applicationRoutes } from "./applications/routes";
import { ACCESS_SECURITY_SCHEME } from "./auth/admin-door";
import { authRoutes } from "./auth/routes";
import { billingRoutes } from "./billing/routes";
import type { Config } from "./config";
import { registerHubOperations } from "./docs/hub-openapi";
import { HTTP_METHODS, type OpenApiDocument, type OperationObject } from "./docs/openapi";
import { registerPublicOperations } from "./docs/public-openapi";
import { docsRoutes, type OpenApiSource } from "./docs/routes";
import { hubRoutes } from "./downloads/hub";
import { downloadRoutes } from "./downloads/routes";
import { webhookRoutes } from "./events/routes";
import { handleError, handleNotFound } from "./http/errors";
import { pageSecurityHeaders, requestContext } from "./http/middleware";
import { newRouter } from "./http/router";
import type { Endpoint, ProxyOptions } from "./inference/proxy";
import { inferenceRoutes, serveCompletion } from "./inference/routes";
import { licenseRoutes } from "./licenses/routes";
import { health } from "./observability/readiness";
import { organizationOverviewRoutes } from "./organizations/overview";
import { organizationRoutes } from "./organizations/routes";
import { portalRoutes } from "./portal/routes";
import type { ServiceOptions } from "./services";
import { tokenRoutes } from "./tokens/routes";
import { usageRoutes } from "./usage/routes";

/** Options for building the app; defaults are production behaviour. */
export interface AppOptions extends ServiceOptions {
  /** Makes request ids when the edge gave none. */
  requestIdGenerator?: () => string;
  /** Backend health, fetch and randomness of the inference proxy. */
  inference?: ProxyOptions;
}

/**
 * Builds the gateway's HTTP app. The one factory used in production (`worker/index.ts`) and in
 * tests, which pass a fixed clock, predictable ids or a recording mailer through `options`.
 */
export function newApp(options: AppOptions = {}) {
  const app = withCommonHandling(newRouter(), options);

  app.get("/health", health);
  app.route("/", licenseRoutes);
  app.route("/", applicationRoutes);
  app.route("/", authRoutes);
  app.route("/", organizationRoutes);
  app.route("/", webhookRoutes);
  app.route("/", tokenRoutes);
  app.route("/", downloadRoutes);
  app.route("/", usageRoutes);
  app.route("/", inferenceRoutes(options.inference));
  app.route("/", billingRoutes);
  app.route("/", organizationOverviewRoutes);
  app.route("/", portalRoutes);
  app.route("/", adminRoutes);
  app.route("/admin", adminConsoleRoutes);
  // Last: the Hub paths (`/{namespace}/{repo}/resolve/…`) are the broadest patterns.
  app.route("/", hubRoutes);
  const openApi = openApiDocuments(app);
  app.route("/", docsRoutes(openApi));
  app.get("/openapi.json", (c) =>
    c.body(openApi(c.get("services").config).json, 200, { "content-type": "application/json; charset=utf-8" }),
  );

  // Completions are most of the traffic: they skip the router (and the walk through the whole
  // route table that the Hub's wildcard paths make a tree search).
  const fetchAny = app.fetch;
  app.fetch = (request, env, ctx) => {
    const endpoint = request.method === "POST" ? COMPLETION_ENDPOINTS.get(getPath(request)) : undefined;
    return endpoint && ctx ? serveCompletion(request, env as Env, ctx, endpoint, options) : fetchAny(request, env, ctx);
  };
  return app;
}

/**
 * The OpenAPI document, built once per isolate and configuration: it depends on nothing else, and
 * building it walks every route's schemas (tens of milliseconds of CPU).
 */
function openApiDocuments(app: ReturnType<typeof newRouter>): OpenApiSource {
  app.openAPIRegistry.registerComponent("securitySchemes", "accessToken", {
    type: "http",
    scheme: "bearer",
    description: "A personal access token (`mg_…`) of an approved organization, with the scope the call needs.",
  });
  app.openAPIRegistry.registerComponent("securitySchemes", ACCESS_SECURITY_SCHEME, {
    type: "apiKey",
    in: "header",
    name: "Cf-Access-Jwt-Assertion",
    description:
      "The Cloudflare Access application token of a reviewer; the operation's `x-required-role` names the least role it needs.",
  });
  registerPublicOperations(app.openAPIRegistry);
  registerHubOperations(app.openAPIRegistry);
  const built = new WeakMap<Config, { document: OpenApiDocument; json: string }>();
  return (config) => {
    let entry = built.get(config);
    if (!entry) {
      const document = app.getOpenAPI31Document({
        openapi: "3.1.0",
        info: {
          title: "modelgate",
          version: "1",
          description: "Model-license and access gateway: applications under a model's license, review, and access.",
        },
        servers: [{ url: config.publicBaseUrl }],
      }) as unknown as OpenApiDocument;
      nameOperations(document);
      entry = { document, json: JSON.stringify(document) };
      built.set(config, entry);
    }
    return entry;
  };
}

/**
 * Gives every operation without an `operationId` one made of its method and path
 * (`GET /admin/api/applications/{id}` → `getAdminApplicationsById`), so generated clients get
 * stable names without each route file having to state one. `/v1` and `/api` are left out: they
 * name no resource.
 */
function nameOperations(document: OpenApiDocument): void {
  const pascal = (word: string) => word.charAt(0).toUpperCase() + word.slice(1);
  for (const [path, item] of Object.entries(document.paths ?? {})) {
    for (const method of HTTP_METHODS) {
      const operation = item[method] as OperationObject | undefined;
      if (!operation || operation.operationId) continue;
      const words = path
        .split("/")
        .filter((segment) => segment !== "" && segment !== "v1" && segment !== "api")
        .flatMap((segment) => {
          const param = /^\{(.+)\}$/.exec(segment)?.[1];
          const parts = (param ?? segment)
            .split(/[^A-Za-z0-9]+/)
            .filter(Boolean)
            .map(pascal);
          return param ? ["By", ...parts] : parts;
        });
      operation.operationId = method + words.join("");
    }
  }
}

const COMPLETION_ENDPOINTS = new Map<string, Endpoint>([
  ["/v1/chat/completions", "chat"],
  ["/v1/completions", "completions"],
]);

/** Request ids, the request's services and problem documents for errors, on `app`. */
function withCommonHandling(app: ReturnType<typeof newRouter>, options: AppOptions) {
  app.use("*", requestContext(options));
  app.use("*", pageSecurityHeaders());
  app.onError(handleError);
  app.notFound(handleNotFound);
  return app;
}

export type App = ReturnType<typeof newApp>;
