/**
 * An organization's webhook endpoints under `/v1/organization/webhooks`, for its admins and owners
 * (`requireMember("admin")`: a live session, a live membership of the organization the request
 * names, same-site writes). Another organization's endpoints and deliveries are 404.
 */
import { createRoute, z } from "@hono/zod-openapi";
import { PageQuery } from "../admin/cursor";
import { currentMember, OrganizationQuery, requireMember } from "../auth/members";
import { SESSION_SECURITY_SCHEME } from "../auth/routes";
import { WEBHOOK_DELIVERY_STATUSES, WEBHOOK_EVENT_TYPES } from "../db/schema";
import { newRouter, problemResponses, readBody } from "../http/router";
import { listDeliveries, resendDelivery } from "./deliveries";
import { MAX_ENDPOINT_URL_LENGTH } from "./endpoint-url";
import {
  addSecret,
  createEndpoint,
  listEndpoints,
  liveEndpoint,
  readEndpoint,
  removeEndpoint,
  removeSecret,
  updateEndpoint,
} from "./endpoints";
import { eventSettings } from "./settings";

const EventTypes = z.array(z.enum(WEBHOOK_EVENT_TYPES)).min(1).max(WEBHOOK_EVENT_TYPES.length);

const EndpointSchema = z
  .object({
    id: z.string(),
    url: z.string(),
    description: z.string().nullable(),
    events: z.array(z.enum(WEBHOOK_EVENT_TYPES)),
    enabled: z.boolean(),
    secrets: z.array(z.object({ id: z.string(), createdAt: z.string() })).openapi({
      description: "Every secret signs each delivery (newest first); their values are shown only when made.",
    }),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi("WebhookEndpoint");

const NewSecretSchema = z
  .object({
    id: z.string(),
    secret: z.string().openapi({ description: "`whsec_…`: shown this once." }),
    createdAt: z.string(),
  })
  .openapi("WebhookSecret");

const DeliverySchema = z
  .object({
    id: z.string(),
    endpointId: z.string(),
    eventId: z.string().openapi({ description: "The `webhook-id` header of every attempt." }),
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
  .openapi("WebhookDelivery");

const Url = z.string().trim().min(1).max(MAX_ENDPOINT_URL_LENGTH);
const Description = z.string().trim().max(500).nullable();

const NewEndpoint = z
  .strictObject({ url: Url, events: EventTypes, description: Description.optional(), enabled: z.boolean().optional() })
  .openapi("NewWebhookEndpoint");
const EndpointChange = z
  .strictObject({
    url: Url.optional(),
    events: EventTypes.optional(),
    description: Description.optional(),
    enabled: z.boolean().optional(),
  })
  .openapi("WebhookEndpointChange");

const IdParam = z.object({ id: z.string().min(1).max(64) });
const SecretParams = z.object({ id: z.string().min(1).max(64), secretId: z.string().min(1).max(64) });
const DeliveryParams = z.object({ id: z.string().min(1).max(64), deliveryId: z.string().min(1).max(64) });
const security = [{ [SESSION_SECURITY_SCHEME]: [] }];
const tags = ["Webhooks"];

function jsonBody(ref: string) {
  // By reference: the handler reads the body itself (`readBody`), after the member check.
  return { content: { "application/json": { schema: { $ref: `#/components/schemas/${ref}` } } }, required: true };
}

const endpointResponse = (description: string) => ({
  description,
  content: { "application/json": { schema: EndpointSchema } },
});

const listRoute = createRoute({
  method: "get",
  path: "/v1/organization/webhooks",
  tags,
  summary: "The organization's webhook endpoints",
  description: "Admins and owners.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { query: OrganizationQuery },
  responses: {
    200: {
      description: "Endpoints, oldest first",
      content: { "application/json": { schema: z.object({ endpoints: z.array(EndpointSchema) }) } },
    },
    ...problemResponses(400, 401, 403),
  },
});

const createRouteDef = createRoute({
  method: "post",
  path: "/v1/organization/webhooks",
  tags,
  summary: "Add a webhook endpoint",
  description:
    "Admins and owners. The URL must be https and a public address (no private, loopback, link-local or metadata host in any spelling). Answers the endpoint and its signing secret, shown this once. At most 20 endpoints (409).",
  security,
  middleware: [requireMember("admin")] as const,
  request: { query: OrganizationQuery, body: jsonBody("NewWebhookEndpoint") },
  responses: {
    201: {
      description: "The endpoint and its secret",
      content: { "application/json": { schema: z.object({ endpoint: EndpointSchema, secret: NewSecretSchema }) } },
    },
    ...problemResponses(400, 401, 403, 409, 413, 415),
  },
});

const readRoute = createRoute({
  method: "get",
  path: "/v1/organization/webhooks/{id}",
  tags,
  summary: "A webhook endpoint",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery },
  responses: { 200: endpointResponse("The endpoint"), ...problemResponses(400, 401, 403, 404) },
});

const updateRouteDef = createRoute({
  method: "patch",
  path: "/v1/organization/webhooks/{id}",
  tags,
  summary: "Change a webhook endpoint",
  description:
    "URL, events, description, or `enabled` (a disabled endpoint receives nothing; waiting deliveries are canceled).",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery, body: jsonBody("WebhookEndpointChange") },
  responses: { 200: endpointResponse("The endpoint"), ...problemResponses(400, 401, 403, 404, 413, 415) },
});

const removeRoute = createRoute({
  method: "delete",
  path: "/v1/organization/webhooks/{id}",
  tags,
  summary: "Remove a webhook endpoint",
  description: "It receives nothing more; deliveries still waiting are canceled.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery },
  responses: { 200: endpointResponse("The removed endpoint"), ...problemResponses(400, 401, 403, 404) },
});

const addSecretRoute = createRoute({
  method: "post",
  path: "/v1/organization/webhooks/{id}/secrets",
  tags,
  summary: "Add a signing secret (rotate)",
  description:
    "The new secret, shown this once, signs every delivery beside the older ones (`webhook-signature` then holds one `v1,…` per secret) until they are removed.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: IdParam, query: OrganizationQuery },
  responses: {
    201: { description: "The new secret", content: { "application/json": { schema: NewSecretSchema } } },
    ...problemResponses(400, 401, 403, 404),
  },
});

const removeSecretRoute = createRoute({
  method: "delete",
  path: "/v1/organization/webhooks/{id}/secrets/{secretId}",
  tags,
  summary: "Remove a signing secret",
  description: "The endpoint's last secret stays (409).",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: SecretParams, query: OrganizationQuery },
  responses: { 200: endpointResponse("The endpoint"), ...problemResponses(400, 401, 403, 404, 409) },
});

const deliveriesRoute = createRoute({
  method: "get",
  path: "/v1/organization/webhooks/{id}/deliveries",
  tags,
  summary: "An endpoint's deliveries",
  description:
    "Newest first, with their status, attempts, last answer and times. `status=dead` lists the deliveries every attempt of which failed.",
  security,
  middleware: [requireMember("admin")] as const,
  request: {
    params: IdParam,
    query: OrganizationQuery.extend({ status: z.enum(WEBHOOK_DELIVERY_STATUSES).optional(), ...PageQuery }),
  },
  responses: {
    200: {
      description: "A page of deliveries",
      content: {
        "application/json": {
          schema: z.object({ items: z.array(DeliverySchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    ...problemResponses(400, 401, 403, 404),
  },
});

const resendRoute = createRoute({
  method: "post",
  path: "/v1/organization/webhooks/{id}/deliveries/{deliveryId}/resend",
  tags,
  summary: "Send a delivery again",
  description:
    "A dead, canceled or delivered delivery is attempted again from its first attempt, with the same `webhook-id`. 409 while it is still pending or the endpoint is disabled.",
  security,
  middleware: [requireMember("admin")] as const,
  request: { params: DeliveryParams, query: OrganizationQuery },
  responses: {
    202: { description: "Queued", content: { "application/json": { schema: DeliverySchema } } },
    ...problemResponses(400, 401, 403, 404, 409),
  },
});

/** Webhook endpoints and their deliveries, mounted at `/` by the app. */
export const webhookRoutes = newRouter();
webhookRoutes.openAPIRegistry.register("NewWebhookEndpoint", NewEndpoint);
webhookRoutes.openAPIRegistry.register("WebhookEndpointChange", EndpointChange);

webhookRoutes
  .openapi(listRoute, async (c) => {
    return c.json({ endpoints: await listEndpoints(c.get("services"), currentMember(c).organizationId) }, 200);
  })
  .openapi(createRouteDef, async (c) => {
    const input = await readBody(c, NewEndpoint);
    const created = await createEndpoint(c.get("services"), currentMember(c), input, eventSettings(c.env).allowedHosts);
    return c.json(created, 201);
  })
  .openapi(readRoute, async (c) => {
    return c.json(await readEndpoint(c.get("services"), currentMember(c).organizationId, c.req.valid("param").id), 200);
  })
  .openapi(updateRouteDef, async (c) => {
    const patch = await readBody(c, EndpointChange);
    const { id } = c.req.valid("param");
    const updated = await updateEndpoint(
      c.get("services"),
      currentMember(c),
      id,
      patch,
      eventSettings(c.env).allowedHosts,
    );
    return c.json(updated, 200);
  })
  .openapi(removeRoute, async (c) => {
    return c.json(await removeEndpoint(c.get("services"), currentMember(c), c.req.valid("param").id), 200);
  })
  .openapi(addSecretRoute, async (c) => {
    return c.json(await addSecret(c.get("services"), currentMember(c), c.req.valid("param").id), 201);
  })
  .openapi(removeSecretRoute, async (c) => {
    const { id, secretId } = c.req.valid("param");
    return c.json(await removeSecret(c.get("services"), currentMember(c), id, secretId), 200);
  })
  .openapi(deliveriesRoute, async (c) => {
    const services = c.get("services");
    const organizationId = currentMember(c).organizationId;
    const { id } = c.req.valid("param");
    const { status, cursor, limit } = c.req.valid("query");
    await liveEndpoint(services, organizationId, id);
    return c.json(await listDeliveries(services, { organizationId, endpointId: id, status, cursor, limit }), 200);
  })
  .openapi(resendRoute, async (c) => {
    const { id, deliveryId } = c.req.valid("param");
    const target = { endpointId: id, deliveryId };
    return c.json(await resendDelivery(c.get("services"), c.env.EVENTS_QUEUE, currentMember(c), target), 202);
  });
