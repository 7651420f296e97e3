/**
 * Webhook deliveries for operators, across organizations: the dead letters (and any other status)
 * and sending one again. Mounted under the admin API's one door.
 */
import { z } from "@hono/zod-openapi";
import { PageQuery } from "../admin/cursor";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { WEBHOOK_DELIVERY_STATUSES, WEBHOOK_EVENT_TYPES } from "../db/schema";
import { newRouter, problemResponses } from "../http/router";
import { listDeliveries, resendDeliveryForOperator } from "./deliveries";

const AdminDeliverySchema = z
  .object({
    id: z.string(),
    organizationId: z.string(),
    endpointId: z.string(),
    eventId: z.string(),
    eventType: z.enum(WEBHOOK_EVENT_TYPES),
    status: z.enum(WEBHOOK_DELIVERY_STATUSES),
    attempts: z.number().int(),
    lastStatusCode: z.number().int().nullable(),
    lastError: z.string().nullable(),
    lastAttemptAt: z.string().nullable(),
    nextAttemptAt: z.string().nullable(),
    deliveredAt: z.string().nullable(),
    createdAt: z.string(),
  })
  .openapi("AdminWebhookDelivery");

const listRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/webhooks/deliveries",
  summary: "Webhook deliveries of every organization",
  description:
    "Newest first; `status=dead` (the default) lists the dead letters: deliveries every attempt of which failed.",
  request: {
    query: z.object({
      status: z.enum(WEBHOOK_DELIVERY_STATUSES).default("dead"),
      organization: z.string().trim().min(1).max(64).optional().openapi({ description: "An organization id" }),
      ...PageQuery,
    }),
  },
  responses: {
    200: {
      description: "A page of deliveries",
      content: {
        "application/json": {
          schema: z.object({ items: z.array(AdminDeliverySchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    ...problemResponses(400),
  },
});

const resendRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/webhooks/deliveries/{id}/resend",
  summary: "Send a webhook delivery again",
  description:
    "Needs the admin role. From its first attempt, with the same `webhook-id`; 409 while it is pending or its " +
    "endpoint is disabled. Audited as `webhook.delivery_resent`, with the delivery, endpoint and organization. " +
    "An admin party to the delivery's organization (a member or invitee, its applicant contact, at its domain) " +
    "is refused with `conflict_of_interest`, audited as `webhook.delivery_resend_refused`.",
  request: { params: z.object({ id: z.string().min(1).max(64) }) },
  responses: {
    202: { description: "Queued", content: { "application/json": { schema: AdminDeliverySchema } } },
    ...problemResponses(404, 409),
  },
});

/** Operators' view of webhook deliveries, mounted by the admin router. */
export const webhookAdminRoutes = newRouter()
  .openapi(listRoute, async (c) => {
    const { status, organization, cursor, limit } = c.req.valid("query");
    const page = await listDeliveries(c.get("services"), { status, organizationId: organization, cursor, limit });
    return c.json(page, 200);
  })
  .openapi(resendRoute, async (c) => {
    const { id } = c.req.valid("param");
    const resent = await resendDeliveryForOperator(c.get("services"), c.env.EVENTS_QUEUE, id, currentAdmin(c));
    return c.json(resent, 202);
  });
