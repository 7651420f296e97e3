import { createRoute, z } from "@hono/zod-openapi";
import { and, count, eq, gte, sql } from "drizzle-orm";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { bearerToken } from "../auth/bearer";
import { billingEnabled } from "../config";
import { type BillingAccount, billingAccounts, organizations, usageLedger } from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses, readBody } from "../http/router";
import type { Services } from "../services";
import { tokenProblem } from "../tokens/middleware";
import { checkAccessToken } from "../tokens/service";
import { paymentStanding } from "./accounts";
import { MAX_RESEND, MAX_RESEND_IDS, outboxStates, resendDeadLetters } from "./outbox";
import { handleBillingEvent, verifyWebhook } from "./webhooks";

const BillingSchema = z
  .object({
    organizationId: z.string(),
    enabled: z.boolean(),
    plan: z.string().nullable(),
    status: z.string().nullable(),
    suspended: z.boolean(),
    suspendedSince: z.string().nullable(),
    paymentFailedAt: z.string().nullable(),
    period: z.object({ from: z.string(), to: z.string() }),
    usage: z.object({
      requests: z.number().int(),
      promptTokens: z.number().int(),
      completionTokens: z.number().int(),
      totalTokens: z.number().int(),
      unbilledRequests: z.number().int(),
    }),
  })
  .openapi("Billing");

/** An organization's billing standing and its usage in the current calendar month. */
export async function billingStanding(
  services: Pick<Services, "db" | "clock" | "config">,
  organizationId: string,
  /** The organization's account when the caller has read it already (`null`: it has none). */
  known?: BillingAccount | null,
) {
  const now = services.clock.now();
  const from = `${now.toISOString().slice(0, 7)}-01T00:00:00.000Z`;
  const account =
    known !== undefined
      ? known
      : (await services.db.select().from(billingAccounts).where(eq(billingAccounts.organizationId, organizationId)))[0];
  const [usage] = await services.db
    .select({
      requests: count(),
      promptTokens: sql<number>`coalesce(sum(${usageLedger.promptTokens}), 0)`,
      completionTokens: sql<number>`coalesce(sum(${usageLedger.completionTokens}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageLedger.totalTokens}), 0)`,
      unbilledRequests: sql<number>`coalesce(sum(case when ${usageLedger.billingState} = 'pending' then 1 else 0 end), 0)`,
    })
    .from(usageLedger)
    .where(and(eq(usageLedger.organizationId, organizationId), gte(usageLedger.startedAt, from)));
  const standing = account ? paymentStanding(account, services.config.billing.graceDays, now) : undefined;
  return {
    organizationId,
    enabled: billingEnabled(services.config),
    plan: account?.plan ?? null,
    status: account?.status ?? null,
    suspended: standing?.suspended ?? false,
    suspendedSince: standing?.suspendedSince ?? null,
    paymentFailedAt: account?.paymentFailedAt ?? null,
    period: { from, to: now.toISOString() },
    usage: usage ?? { requests: 0, promptTokens: 0, completionTokens: 0, totalTokens: 0, unbilledRequests: 0 },
  };
}

const billingRoute = createRoute({
  method: "get",
  path: "/v1/billing",
  tags: ["Billing"],
  summary: "The token's organization: plan, payment status and this month's usage",
  security: [{ accessToken: [] }],
  responses: {
    200: { description: "Billing standing", content: { "application/json": { schema: BillingSchema } } },
    ...problemResponses(401, 403),
  },
});

const webhookRoute = createRoute({
  method: "post",
  path: "/webhooks/stripe",
  tags: ["Billing"],
  summary: "Stripe webhook endpoint",
  description:
    "Verified with the raw body and the `Stripe-Signature` header against every configured signing secret. Events are applied once, in any order: `customer.subscription.updated`/`deleted`, `invoice.payment_failed`, `invoice.paid`.",
  responses: {
    200: {
      description: "Received",
      content: { "application/json": { schema: z.object({ received: z.boolean(), result: z.string() }) } },
    },
    ...problemResponses(400, 503),
  },
});

const outboxRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/billing/outbox",
  summary: "Usage rows by billing state: the backlog on its way to Stripe",
  responses: {
    200: {
      description: "Backlog",
      content: {
        "application/json": {
          schema: z.object({
            enabled: z.boolean(),
            states: z.array(z.object({ state: z.string(), rows: z.number().int(), oldest: z.string().nullable() })),
          }),
        },
      },
    },
    ...problemResponses(401, 403),
  },
});

const ResendRequest = z
  .object({
    ids: z
      .array(z.string().min(1).max(64))
      .min(1)
      .max(MAX_RESEND_IDS)
      .optional()
      .openapi({
        description: `Ledger row ids (at most ${MAX_RESEND_IDS}); without it, every dead-lettered row, oldest first, up to ${MAX_RESEND} per call.`,
      }),
  })
  .openapi("ResendDeadLetters");

const resendRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/billing/outbox/resend",
  summary: "Send dead-lettered usage rows to Stripe again",
  description:
    "Needs the admin role. Rows the usage queue gave up on go back to `pending` and onto the queue; Stripe's identifier on each meter event keeps a row from being billed twice. Audited.",
  request: {
    body: { content: { "application/json": { schema: { $ref: "#/components/schemas/ResendDeadLetters" } } } },
  },
  responses: {
    200: {
      description: "The rows put back on the queue",
      content: { "application/json": { schema: z.object({ resent: z.number().int(), ids: z.array(z.string()) }) } },
    },
    ...problemResponses(400, 401, 403, 415, 503),
  },
});

const organizationBillingRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/billing/organizations/{id}",
  summary: "An organization's billing standing",
  request: { params: z.object({ id: z.string().min(1).max(64) }) },
  responses: {
    200: { description: "Billing standing", content: { "application/json": { schema: BillingSchema } } },
    ...problemResponses(401, 403, 404),
  },
});

/** The public billing routes: an organization's own standing and Stripe's webhooks. */
export const billingRoutes = newRouter();

billingRoutes
  .openapi(billingRoute, async (c) => {
    const services = c.get("services");
    const bearer = bearerToken(c.req.header("authorization"));
    let check = await checkAccessToken(services, bearer, "inference");
    if (!check.ok && check.refusal === "scope") check = await checkAccessToken(services, bearer, "download");
    if (!check.ok) throw tokenProblem(check.refusal, "inference");
    return c.json(await billingStanding(services, check.principal.organizationId), 200);
  })
  .openapi(webhookRoute, async (c) => {
    const services = c.get("services");
    const event = await verifyWebhook(services, await c.req.text(), c.req.header("stripe-signature"));
    const result = await handleBillingEvent(services, event);
    services.log.info("stripe webhook", { event: event.id, type: event.type, result });
    return c.json({ received: true, result }, 200);
  });

/** The operators' billing routes, mounted behind the admin door. */
export const billingAdminRoutes = newRouter();
billingAdminRoutes.openAPIRegistry.register("ResendDeadLetters", ResendRequest);

billingAdminRoutes
  .openapi(outboxRoute, async (c) => {
    const services = c.get("services");
    const states = await outboxStates(services.db);
    return c.json({ enabled: billingEnabled(services.config), states }, 200);
  })
  .openapi(resendRoute, async (c) => {
    const services = c.get("services");
    const { ids } = await readBody(c, ResendRequest);
    if (!billingEnabled(services.config)) {
      throw new AppError("service_unavailable", "Billing is off (no STRIPE_SECRET_KEY): there is nothing to send to.");
    }
    const moved = await resendDeadLetters(services, c.env.USAGE_QUEUE, `reviewer:${currentAdmin(c).email}`, ids);
    return c.json({ resent: moved.length, ids: moved }, 200);
  })
  .openapi(organizationBillingRoute, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const [org] = await services.db
      .select({ id: organizations.id })
      .from(organizations)
      .where(eq(organizations.id, id));
    if (!org) throw new AppError("not_found", "No such organization.");
    return c.json(await billingStanding(services, id), 200);
  });
