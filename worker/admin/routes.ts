/**
 * The reviewer API under `/admin/api`. Every request is judged twice before any handler runs: a
 * state-changing call must come from this site (a reviewer's browser carries Access's cookie to
 * any site that posts to us), and the caller must hold a valid Cloudflare Access JWT with a
 * reviewer role. Each route then names the least role it needs.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { auditRoutes } from "../audit/routes";
import { ADMIN_ROLES } from "../config";
import { refuseCrossSite } from "../http/middleware";
import { newRouter, problemResponses } from "../http/router";
import { adminIdentity, currentAdmin, requireRole } from "./access";
import { inferenceBackendRoutes } from "./backends";
import { caseRoutes } from "./cases";
import { commentRoutes } from "./comments";
import { decisionRoutes } from "./decisions";
import { grantRoutes } from "./grants";

const getMe = createRoute({
  method: "get",
  path: "/admin/api/me",
  tags: ["Admin"],
  summary: "The signed-in reviewer and their roles",
  middleware: [requireRole("reviewer")] as const,
  responses: {
    200: {
      description: "The reviewer",
      content: {
        "application/json": {
          schema: z.object({ email: z.string(), roles: z.array(z.enum(ADMIN_ROLES)) }).openapi("AdminIdentity"),
        },
      },
    },
    ...problemResponses(401, 403),
  },
});

const adminApi = newRouter();
adminApi.use("/admin/api/*", refuseCrossSite());
// Authenticate every admin path, including ones no route claims, so the API's shape is not
// visible to strangers; routes still check their own least role.
adminApi.use("/admin/api/*", async (c, next) => {
  await adminIdentity(c);
  await next();
});

/** The admin router, mounted at `/` by the app. */
export const adminRoutes = adminApi
  .openapi(getMe, (c) => {
    const { email, roles } = currentAdmin(c);
    return c.json({ email, roles }, 200);
  })
  .route("/", caseRoutes)
  .route("/", commentRoutes)
  .route("/", decisionRoutes)
  .route("/", grantRoutes)
  .route("/", inferenceBackendRoutes)
  .route("/", auditRoutes);
