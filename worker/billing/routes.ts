import { createRoute, z } from "@hono/zod-openapi";
import { and, eq, gte, inArray, lt, sql } from "drizzle-orm";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { bearerToken } from "../auth/bearer";
import { billingEnabled } from "../config";
import {
  type BillingAccount,
  billingAccounts,
  billingIntervals,
  organizations,
  usageHours,
  usageLedger,
} from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses, readBody } from "../http/router";
import type { Services } from "../services";
import { tokenProblem } from "../tokens/middleware";
import { checkAccessToken } from "../tokens/service";
import { type LiveUsage, livePartsIn, liveUsageFor, replacedParts } from "../usage/live";
import { paymentStanding } from "./accounts";
import {
  BILLABLE_KINDS,
  billingFailures,
  MAX_RESEND,
  MAX_RESEND_IDS,
  outboxStates,
  resendDeadLetters,
  retryingBillables,
} from "./outbox";
import { handleBillingEvent, MAX_WEBHOOK_BODY_BYTES, readWebhook } from "./webhooks";

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
    usage: z
      .object({
        requests: z.number().int(),
        promptTokens: z.number().int(),
        completionTokens: z.number().int(),
        totalTokens: z.number().int(),
        unbilledRequests: z
          .number()
          .int()
          .openapi({
            description:
              "Requests of this month whose tokens Stripe has not accepted yet: in hours still open or on their way, " +
              "refused so far, dead-lettered, or too old to send. The requests of one part of an hour are billed " +
              "together, so they count until Stripe accepted the part; a part without tokens has nothing to bill " +
              "and does not count.",
          }),
      })
      .openapi({
        description:
          "This calendar month (UTC) so far: every request settled in it, counted in the hour it was recorded " +
          "(when it ended). `GET /v1/billing` includes the hours the organization's quota object still holds " +
          "open; the operators' view shows D1's figures, which lag them by at most `USAGE_SYNC_SECONDS`.",
      }),
  })
  .openapi("Billing");

/** What a month's usage counts, as `BillingSchema.usage` shows it. */
type MonthUsage = z.infer<typeof BillingSchema>["usage"];

/** Billing states in which Stripe has what it should have of an interval or a ledger row. */
const ACCEPTED = ["sent", "skipped"] as const;

/**
 * An organization's usage in the month of `now`, and how many of its requests Stripe has not
 * accepted yet. D1's hourly totals (every part of an hour summed), with the parts the quota object
 * still holds open taken from the object instead (`live`; D1 alone when it cannot be reached), and
 * ledger rows not carried into the hours yet. A part is billed as one interval, so its requests
 * are unbilled until its interval is accepted; ledger rows (part `ledger` in D1) are billed one by
 * one, so theirs are counted from the ledger. The three D1 reads are one batch: a carry of ledger
 * rows into the hours commits either before all of them or after.
 */
async function monthUsage(
  services: Pick<Services, "db" | "log">,
  organizationId: string,
  now: Date,
  live: LiveUsage | null,
): Promise<MonthUsage> {
  const month = now.toISOString().slice(0, 7);
  const nextMonth = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)).toISOString();
  const lastDay = new Date(Date.parse(nextMonth) - 86_400_000).toISOString().slice(0, 10);
  const from = { hour: `${month}-01T00`, at: `${month}-01T00:00:00.000Z` };
  const to = { hour: nextMonth.slice(0, 13), at: nextMonth };
  const open = live ? await livePartsIn(services, organizationId, live, { from: `${month}-01`, to: lastDay }) : [];

  const inMonth = [
    eq(usageHours.organizationId, organizationId),
    gte(usageHours.hour, from.hour),
    lt(usageHours.hour, to.hour),
  ];
  if (open.length) {
    inMonth.push(
      sql`${usageHours.hour} || ':' || ${usageHours.part} not in (select value from json_each(${replacedParts(open)}))`,
    );
  }
  const parts = services.db
    .select({
      part: usageHours.part,
      requests: sql<number>`sum(${usageHours.requests})`.as("requests"),
      promptTokens: sql<number>`sum(${usageHours.promptTokens})`.as("prompt_tokens"),
      completionTokens: sql<number>`sum(${usageHours.completionTokens})`.as("completion_tokens"),
      totalTokens: sql<number>`sum(${usageHours.totalTokens})`.as("total_tokens"),
    })
    .from(usageHours)
    .where(and(...inMonth))
    .groupBy(usageHours.hour, usageHours.part)
    .as("parts");
  const [[hours], [accepted], [ledger]] = await services.db.batch([
    services.db
      .select({
        requests: sql<number>`coalesce(sum(${parts.requests}), 0)`,
        promptTokens: sql<number>`coalesce(sum(${parts.promptTokens}), 0)`,
        completionTokens: sql<number>`coalesce(sum(${parts.completionTokens}), 0)`,
        totalTokens: sql<number>`coalesce(sum(${parts.totalTokens}), 0)`,
        // Requests of parts billed as intervals: those with tokens to bill.
        billable: sql<number>`coalesce(sum(case when ${parts.part} <> 'ledger' and ${parts.promptTokens} + ${parts.completionTokens} > 0 then ${parts.requests} else 0 end), 0)`,
      })
      .from(parts),
    services.db
      .select({ requests: sql<number>`coalesce(sum(${billingIntervals.requests}), 0)` })
      .from(billingIntervals)
      .where(
        and(
          eq(billingIntervals.organizationId, organizationId),
          gte(billingIntervals.hour, from.hour),
          lt(billingIntervals.hour, to.hour),
          inArray(billingIntervals.state, [...ACCEPTED]),
        ),
      ),
    services.db
      .select({
        // Rows not carried into the hours yet count here, as the cron will carry them.
        requests: sql<number>`coalesce(sum(case when ${usageLedger.aggregatedAt} is null then 1 else 0 end), 0)`,
        promptTokens: sql<number>`coalesce(sum(case when ${usageLedger.aggregatedAt} is null then ${usageLedger.promptTokens} else 0 end), 0)`,
        completionTokens: sql<number>`coalesce(sum(case when ${usageLedger.aggregatedAt} is null then ${usageLedger.completionTokens} else 0 end), 0)`,
        totalTokens: sql<number>`coalesce(sum(case when ${usageLedger.aggregatedAt} is null then ${usageLedger.totalTokens} else 0 end), 0)`,
        unbilled: sql<number>`coalesce(sum(case when ${usageLedger.billingState} in ('sent', 'skipped') then 0 else 1 end), 0)`,
      })
      .from(usageLedger)
      .where(
        and(
          eq(usageLedger.organizationId, organizationId),
          // A request ends within minutes of its start: the index's bound, the hour's by `createdAt`.
          gte(usageLedger.startedAt, new Date(Date.parse(from.at) - 86_400_000).toISOString()),
          gte(usageLedger.createdAt, from.at),
          lt(usageLedger.createdAt, to.at),
        ),
      ),
  ]);
  const usage: MonthUsage = {
    requests: Number(hours?.requests ?? 0) + Number(ledger?.requests ?? 0),
    promptTokens: Number(hours?.promptTokens ?? 0) + Number(ledger?.promptTokens ?? 0),
    completionTokens: Number(hours?.completionTokens ?? 0) + Number(ledger?.completionTokens ?? 0),
    totalTokens: Number(hours?.totalTokens ?? 0) + Number(ledger?.totalTokens ?? 0),
    unbilledRequests:
      Math.max(0, Number(hours?.billable ?? 0) - Number(accepted?.requests ?? 0)) + Number(ledger?.unbilled ?? 0),
  };
  for (const part of open) {
    let requests = 0;
    let tokens = 0;
    for (const [, counts] of part.inference) {
      requests += counts.requests;
      tokens += counts.promptTokens + counts.completionTokens;
      usage.promptTokens += counts.promptTokens;
      usage.completionTokens += counts.completionTokens;
      usage.totalTokens += counts.totalTokens;
    }
    usage.requests += requests;
    // An open part has no interval yet: all of it is still to be billed.
    if (tokens > 0) usage.unbilledRequests += requests;
  }
  return usage;
}

/**
 * An organization's billing standing and its usage in the current calendar month. `live` reads
 * the hours its quota object holds open (`liveUsageFor`); null: D1's figures alone, which lag
 * those hours by at most `USAGE_SYNC_SECONDS`.
 */
export async function billingStanding(
  services: Pick<Services, "db" | "clock" | "config" | "log">,
  organizationId: string,
  live: LiveUsage | null,
  /** The organization's account when the caller has read it already (`null`: it has none). */
  known?: BillingAccount | null,
) {
  const now = services.clock.now();
  const from = `${now.toISOString().slice(0, 7)}-01T00:00:00.000Z`;
  const [account, usage] = await Promise.all([
    known !== undefined
      ? known
      : services.db
          .select()
          .from(billingAccounts)
          .where(eq(billingAccounts.organizationId, organizationId))
          .then((rows) => rows[0]),
    monthUsage(services, organizationId, now, live),
  ]);
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
    usage,
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
  description: `Verified with the raw body and the \`Stripe-Signature\` header against every configured signing secret; a signature timestamped more than 5 minutes from now, either way, is refused. A request without the header is refused before its body is read, and a body over ${MAX_WEBHOOK_BODY_BYTES} bytes is \`413\`. Events are applied once, in any order: \`customer.subscription.updated\`/\`deleted\`, \`invoice.payment_failed\`, \`invoice.paid\`. Only the account's own subscription counts: an invoice of another subscription or of none changes nothing, another subscription replaces it only once it has ended and only if it carries the plan's prices, and an ended subscription never comes back.`,
  responses: {
    200: {
      description: "Received",
      content: { "application/json": { schema: z.object({ received: z.boolean(), result: z.string() }) } },
    },
    ...problemResponses(400, 413, 503),
  },
});

const BillableKind = z.enum(BILLABLE_KINDS).openapi({
  description:
    "`interval`: an organization's closed part of an hour, billed as one meter event per token kind; `row`: a request recorded on its own (by an older gateway, or when its quota object could not take it), billed by itself.",
});
const BillingStateSchema = z.enum(["pending", "sent", "skipped", "dead", "expired"]);

const outboxRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/billing/outbox",
  summary: "Billing intervals and usage rows by billing state: the backlog on its way to Stripe",
  description:
    "Per kind and state, how many there are and when the oldest was written; which are retrying after Stripe refused them; and the most recent that did not reach Stripe in their first attempt (retrying, dead-lettered or expired), newest first, with the last error.",
  responses: {
    200: {
      description: "Backlog",
      content: {
        "application/json": {
          schema: z.object({
            enabled: z.boolean(),
            states: z.array(
              z.object({
                kind: BillableKind,
                state: BillingStateSchema,
                rows: z.number().int().openapi({ description: "Intervals or rows in this state." }),
                requests: z.number().int().openapi({ description: "The requests they bill (a row is one)." }),
                oldest: z.string().nullable(),
              }),
            ),
            retrying: z.object({
              interval: z.object({ rows: z.number().int(), oldest: z.string().nullable() }),
              row: z.object({ rows: z.number().int(), oldest: z.string().nullable() }),
            }),
            failures: z.array(
              z.object({
                kind: BillableKind,
                id: z.string(),
                organizationId: z.string(),
                organization: z.string().nullable(),
                model: z.string().nullable().openapi({ description: "A row's model; null for an interval." }),
                hour: z.string().openapi({ description: "The hour (`YYYY-MM-DDTHH`, UTC) it bills." }),
                requests: z.number().int(),
                promptTokens: z.number().int(),
                completionTokens: z.number().int(),
                state: BillingStateSchema,
                attempts: z.number().int(),
                error: z.string().nullable(),
                createdAt: z.string(),
              }),
            ),
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
      .array(z.string().min(1).max(128))
      .min(1)
      .max(MAX_RESEND_IDS)
      .optional()
      .openapi({
        description: `Billing interval or ledger row ids (at most ${MAX_RESEND_IDS}); without it, every dead-lettered interval and row, intervals first, oldest first, up to ${MAX_RESEND} per call.`,
      }),
  })
  .openapi("ResendDeadLetters");

const resendRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/billing/outbox/resend",
  summary: "Send dead-lettered billing intervals and usage rows to Stripe again",
  description:
    "Needs the admin role. Intervals and rows the usage queue gave up on go back to `pending` and onto the queue. Each part (prompt, completion) Stripe accepted in an earlier attempt is recorded and not sent again, however long ago that was (Stripe remembers a meter event's identifier for about 24 hours only). Audited, one event per kind.",
  request: {
    body: { content: { "application/json": { schema: { $ref: "#/components/schemas/ResendDeadLetters" } } } },
  },
  responses: {
    200: {
      description: "What was put back on the queue",
      content: {
        "application/json": {
          schema: z.object({
            resent: z.number().int(),
            ids: z.array(z.string()),
            intervals: z.array(z.string()).openapi({ description: "The billing intervals among `ids`." }),
            rows: z.array(z.string()).openapi({ description: "The ledger rows among `ids`." }),
          }),
        },
      },
    },
    ...problemResponses(400, 401, 403, 415, 503),
  },
});

const organizationBillingRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/billing/organizations/{id}",
  summary: "An organization's billing standing",
  description: "Its usage as D1 has it: the hours still open lag by at most `USAGE_SYNC_SECONDS`.",
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
    const organizationId = check.principal.organizationId;
    return c.json(await billingStanding(services, organizationId, liveUsageFor(c.env, organizationId)), 200);
  })
  .openapi(webhookRoute, async (c) => {
    const services = c.get("services");
    const event = await readWebhook(services, c.req.raw);
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
    const [states, retrying, failures] = await Promise.all([
      outboxStates(services.db),
      retryingBillables(services.db),
      billingFailures(services.db, 50),
    ]);
    return c.json({ enabled: billingEnabled(services.config), states, retrying, failures }, 200);
  })
  .openapi(resendRoute, async (c) => {
    const services = c.get("services");
    const { ids } = await readBody(c, ResendRequest);
    if (!billingEnabled(services.config)) {
      throw new AppError("service_unavailable", "Billing is off (no STRIPE_SECRET_KEY): there is nothing to send to.");
    }
    const moved = await resendDeadLetters(services, c.env.USAGE_QUEUE, `reviewer:${currentAdmin(c).email}`, ids);
    const all = [...moved.intervals, ...moved.rows];
    return c.json({ resent: all.length, ids: all, intervals: moved.intervals, rows: moved.rows }, 200);
  })
  .openapi(organizationBillingRoute, async (c) => {
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const [org] = await services.db
      .select({ id: organizations.id })
      .from(organizations)
      .where(eq(organizations.id, id));
    if (!org) throw new AppError("not_found", "No such organization.");
    // The console's figures: D1's, which lag the hours still open by at most `USAGE_SYNC_SECONDS`.
    return c.json(await billingStanding(services, id, null), 200);
  });
