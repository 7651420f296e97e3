/** The operators' view of billing against Stripe's own totals (`stripe-totals.ts`). */
import { z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { adminRoute } from "../auth/admin-door";
import { organizations } from "../db/schema";
import { AppError } from "../errors";
import { Day } from "../http/days";
import { newRouter, problemResponses } from "../http/router";
import { StripeUnavailableError } from "./breaker";
import { isStripeUnavailable, stripeClient } from "./stripe";
import { MAX_RECONCILE_DAYS, ReconciliationSchema, reconcileWithStripe, STRIPE_TOTALS_TTL_MS } from "./stripe-totals";

const DAY_MS = 86_400_000;

// Needs the admin role: the figures are operators' billing data, and each answer costs calls
// against the deployment's Stripe rate limit, which billing's meter events share.
const reconciliationRoute = adminRoute("admin", {
  method: "get",
  path: "/admin/api/billing/reconciliation",
  summary: "An organization's metered, sent and Stripe-held tokens per hour",
  description:
    "Compares, hour by hour, the tokens the gateway metered (hourly aggregates), what it sent Stripe (billing " +
    "intervals and ledger rows accepted), and Stripe's own totals for the organization's customer (Billing Meter " +
    `event summaries). At most ${MAX_RECONCILE_DAYS} days; default: this month so far. Needs the admin role: ` +
    "these are operators' billing figures, and Stripe's side is read live from the account whose rate limit " +
    `billing's meter events use. So Stripe's totals for one organization and period are kept for ` +
    `${STRIPE_TOTALS_TTL_MS / 1000} s (an answer may show them that old), and Stripe is asked through billing's ` +
    "circuit breaker: while it is open (Stripe failing) the answer is 503 with `Retry-After`, without calling Stripe.",
  request: {
    query: z.object({
      organization: z.string().min(1).max(64),
      from: Day.optional().openapi({ description: "First UTC day; default the first of this month." }),
      to: Day.optional().openapi({ description: "Last UTC day, included; default today." }),
    }),
  },
  responses: {
    200: {
      description: "The hours and their totals",
      content: { "application/json": { schema: ReconciliationSchema } },
    },
    ...problemResponses(400, 401, 403, 404, 502, 503),
  },
});

export const reconciliationRoutes = newRouter().openapi(reconciliationRoute, async (c) => {
  const services = c.get("services");
  const { organization, from: fromDay, to: toDay } = c.req.valid("query");
  const today = services.clock.now().toISOString().slice(0, 10);
  const to = toDay ?? today;
  const from = fromDay ?? `${to.slice(0, 7)}-01`;
  const days = Math.round((Date.parse(to) - Date.parse(from)) / DAY_MS) + 1;
  if (days < 1 || days > MAX_RECONCILE_DAYS) {
    throw new AppError(
      "validation_failed",
      `The period must run forwards and span at most ${MAX_RECONCILE_DAYS} days.`,
      {
        errors: [{ field: "from", message: `Between \`to\` minus ${MAX_RECONCILE_DAYS - 1} days and \`to\`.` }],
      },
    );
  }
  const [org] = await services.db
    .select({ id: organizations.id })
    .from(organizations)
    .where(eq(organizations.id, organization));
  if (!org) throw new AppError("not_found", "No such organization.");
  const stripe = stripeClient(services.config.billing);
  if (!stripe)
    throw new AppError(
      "service_unavailable",
      "Billing is off (no STRIPE_SECRET_KEY): there is no Stripe to compare with.",
    );
  try {
    const result = await reconcileWithStripe(services, stripe, organization, { from, to });
    const agrees = result.hours.every((h) => h.status === "agrees");
    return c.json({ organizationId: organization, from, to, agrees, ...result }, 200);
  } catch (error) {
    if (error instanceof StripeUnavailableError) {
      const seconds = Math.max(1, Math.ceil((error.retryAt - services.clock.now().getTime()) / 1000));
      throw new AppError("service_unavailable", "Stripe is failing: billing has paused calls to it for a while.", {
        headers: { "retry-after": String(seconds) },
      });
    }
    if (isStripeUnavailable(error)) throw new AppError("bad_gateway", "Stripe did not answer; try again.");
    throw error;
  }
});
