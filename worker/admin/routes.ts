/**
 * The admin API under `/admin/api`, behind its one door (`./door`): every request is judged
 * before any handler runs — a state-changing call must come from this site, and the caller must
 * hold a valid Cloudflare Access JWT with a reviewer role — and each operation, declared with
 * `adminRoute`, then checks the least role it needs. Every feature's admin operations are mounted
 * here and nowhere else.
 */
import { z } from "@hono/zod-openapi";
import { auditRoutes } from "../audit/routes";
import { currentAdmin } from "../auth/access";
import { ADMIN_API_PREFIX, adminDoor, adminRoute } from "../auth/admin-door";
import { reconciliationRoutes } from "../billing/reconcile-routes";
import { billingAdminRoutes } from "../billing/routes";
import { ADMIN_ROLES } from "../config";
import { webhookAdminRoutes } from "../events/admin-routes";
import { guardAdminRoutes } from "../guard/routes";
import { newRouter } from "../http/router";
import { licenseAdminRoutes } from "../licenses/admin-routes";
import { mailAdminRoutes } from "../mail/admin-routes";
import { quotaAdminRoutes } from "../quota/routes";
import { screeningAdminRoutes } from "../screening/routes";
import { usageArchiveRoutes } from "../usage/archive-routes";
import { inferenceBackendRoutes } from "./backends";
import { caseRoutes } from "./cases";
import { commentRoutes } from "./comments";
import { decisionRoutes } from "./decisions";
import { grantRoutes } from "./grants";

const getMe = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/me",
  summary: "The signed-in reviewer and their roles",
  responses: {
    200: {
      description: "The reviewer",
      content: {
        "application/json": {
          schema: z.object({ email: z.string(), roles: z.array(z.enum(ADMIN_ROLES)) }).openapi("AdminIdentity"),
        },
      },
    },
  },
});

const adminApi = newRouter();
// Every admin path, including ones no route claims, so the API's shape is not visible to strangers.
adminApi.use(`${ADMIN_API_PREFIX}*`, ...adminDoor());

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
  .route("/", licenseAdminRoutes)
  .route("/", inferenceBackendRoutes)
  .route("/", auditRoutes)
  .route("/", quotaAdminRoutes)
  .route("/", billingAdminRoutes)
  .route("/", reconciliationRoutes)
  .route("/", webhookAdminRoutes)
  .route("/", mailAdminRoutes)
  .route("/", usageArchiveRoutes)
  .route("/", screeningAdminRoutes)
  .route("/", guardAdminRoutes);
