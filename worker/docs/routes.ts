import type { Config } from "../config";
import { newRouter } from "../http/router";
import type { OpenApiDocument } from "./openapi";
import { renderApiReference } from "./reference";

/** The gateway's OpenAPI document for a deployment's configuration, as an object and as JSON. */
export type OpenApiSource = (config: Config) => { document: OpenApiDocument; json: string };

// The page is all inline CSS and links: nothing may load from elsewhere, nothing may run.
const CONTENT_SECURITY_POLICY =
  "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/**
 * `GET /docs`: a human-readable API reference, rendered on the server from the same OpenAPI 3.1
 * document that `/openapi.json` serves, so the two cannot disagree. The page depends on nothing
 * but the deployment's configuration, so each isolate renders it once (an anonymous page that
 * rebuilt a large document per request would be a cheap way to burn the Worker's CPU).
 */
export function docsRoutes(openApi: OpenApiSource) {
  const pages = new WeakMap<Config, Promise<string>>();
  return newRouter().get("/docs", async (c) => {
    const { config } = c.get("services");
    let page = pages.get(config);
    if (!page) {
      page = renderApiReference(openApi(config).document, "/openapi.json");
      pages.set(config, page);
      page.catch(() => pages.delete(config));
    }
    return c.html(await page, 200, {
      "content-security-policy": CONTENT_SECURITY_POLICY,
      "x-content-type-options": "nosniff",
    });
  });
}
