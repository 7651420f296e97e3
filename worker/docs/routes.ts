import { newRouter } from "../http/router";
import type { OpenApiDocument } from "./openapi";
import { renderApiReference } from "./reference";

/** The app whose `/openapi.json` the reference page renders. */
export interface OpenApiSource {
  request(path: string, init: RequestInit, env: Env): Response | Promise<Response>;
}

// The page is all inline CSS and links: nothing may load from elsewhere, nothing may run.
const CONTENT_SECURITY_POLICY =
  "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/**
 * `GET /docs`: a human-readable API reference, rendered on the server from the same OpenAPI 3.1
 * document that `/openapi.json` serves, so the two cannot disagree.
 */
export function docsRoutes(app: OpenApiSource) {
  return newRouter().get("/docs", async (c) => {
    const res = await app.request("/openapi.json", {}, c.env);
    if (!res.ok) throw new Error(`the OpenAPI document answered ${res.status}`);
    const html = await renderApiReference((await res.json()) as OpenApiDocument, "/openapi.json");
    return c.html(html, 200, {
      "content-security-policy": CONTENT_SECURITY_POLICY,
      "x-content-type-options": "nosniff",
    });
  });
}
