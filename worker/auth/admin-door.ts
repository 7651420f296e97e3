/**
 * The one door of the admin API. Every operation under `/admin/api` is declared with
 * `adminRoute`, which states the least role it needs, and is mounted under the admin router,
 * whose middleware first refuses cross-site writes and then authenticates every path (even one
 * no route claims) before any handler, body parser or validator runs. The role, the Access
 * security scheme and the 401/403 answers are part of each operation's OpenAPI entry
 * (`x-required-role`), so a test can walk the whole surface from the published document.
 */
import { createRoute, type RouteConfig } from "@hono/zod-openapi";
import type { MiddlewareHandler } from "hono";
import type { AdminRole } from "../config";
import type { HonoEnv } from "../env";
import { refuseCrossSite } from "../http/middleware";
import { problemResponses } from "../http/router";
import { adminIdentity, requireRole } from "./access";

/** Where the admin API lives. */
export const ADMIN_API_PREFIX = "/admin/api/";

/** The OpenAPI security scheme of admin operations: a Cloudflare Access application token. */
export const ACCESS_SECURITY_SCHEME = "cloudflareAccess";

/**
 * An admin API operation needing `role` (or a higher one). The path must lie under
 * `/admin/api/`; the role check runs as the operation's first middleware.
 */
export function adminRoute<P extends string, R extends Omit<RouteConfig, "path" | "middleware" | "tags"> & { path: P }>(
  role: AdminRole,
  route: R,
) {
  if (!route.path.startsWith(ADMIN_API_PREFIX)) {
    throw new Error(`admin operation outside ${ADMIN_API_PREFIX}: ${route.path}`);
  }
  return createRoute({
    ...route,
    tags: ["Admin"],
    security: [{ [ACCESS_SECURITY_SCHEME]: [] }],
    "x-required-role": role,
    middleware: [requireRole(role)] as const,
    responses: { ...problemResponses(401, 403), ...route.responses },
  });
}

/**
 * The admin router's guard, for every path under `/admin/api/`: a state-changing request from
 * another site is refused (a reviewer's browser carries Access's cookie to any site that posts to
 * us), then the caller must hold a valid Access token with at least one reviewer role.
 */
export function adminDoor(): MiddlewareHandler<HonoEnv>[] {
  return [
    refuseCrossSite(),
    async (c, next) => {
      await adminIdentity(c);
      await next();
    },
  ];
}
