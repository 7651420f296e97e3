import { createRoute, z } from "@hono/zod-openapi";
import { organizationReader } from "../auth/organization-reader";
import { AppError } from "../errors";
import { Day } from "../http/days";
import { newRouter, problemResponses } from "../http/router";
import type { Services } from "../services";
import { usageCsv } from "./csv";
import { type LiveUsage, liveUsageFor } from "./live";
import {
  MAX_USAGE_DAYS,
  periodDays,
  USAGE_GROUPS,
  type UsageGroup,
  type UsagePeriod,
  usageByGroup,
  usagePerDay,
  usagePeriod,
} from "./totals";

const UsageQuery = z.object({
  groupBy: z.enum(USAGE_GROUPS).optional().openapi({
    description: "What each row is about. Without it, the earlier answer (per day and model, OpenAI-style) is kept.",
  }),
  from: Day.optional().openapi({ description: "First UTC day (YYYY-MM-DD); default 29 days before `to`." }),
  to: Day.optional().openapi({ description: "Last UTC day (YYYY-MM-DD), included; default today." }),
  format: z.enum(["json", "csv"]).optional().openapi({
    description: "`csv` answers CSV (as does `Accept: text/csv`), grouped by model unless `groupBy` says.",
  }),
  granularity: z.literal("day").optional().openapi({ description: "Days; the only granularity." }),
  organization: z.string().max(64).optional().openapi({ description: "The organization, for members of several." }),
});

const Counts = {
  requests: z.number().int(),
  promptTokens: z.number().int(),
  completionTokens: z.number().int(),
  totalTokens: z.number().int(),
  partialRequests: z.number().int(),
};

const UsageSchema = z
  .object({
    organizationId: z.string(),
    groupBy: z.enum(USAGE_GROUPS),
    from: z.string(),
    to: z.string(),
    days: z.array(
      z.object({
        day: z.string(),
        key: z.string().openapi({ description: "The model, the member's user id, or the token id." }),
        label: z.string().openapi({ description: "The model, the member's e-mail address, or the token's name." }),
        ...Counts,
      }),
    ),
    groups: z.array(z.object({ key: z.string(), label: z.string(), ...Counts })),
  })
  .openapi("Usage");

const LegacyUsageSchema = z
  .object({
    object: z.literal("list"),
    from: z.string(),
    to: z.string(),
    data: z.array(
      z.object({
        date: z.string(),
        model: z.string(),
        requests: z.number().int(),
        prompt_tokens: z.number().int(),
        completion_tokens: z.number().int(),
        total_tokens: z.number().int(),
        partial_requests: z.number().int(),
      }),
    ),
  })
  .openapi("UsageList");

/** A token of the organization, or a member's session. */
const READERS: Record<string, string[]>[] = [{ accessToken: [] }, { session: [] }];

const usageRoute = createRoute({
  method: "get",
  path: "/v1/usage",
  tags: ["Organization"],
  summary: "The organization's inference usage per day, by model, member or token",
  description:
    "With a member's session or a personal access token of the organization. At most 366 days; " +
    "a call counts in the UTC day it was recorded in (when it ended), a fraction of a second after it ends; " +
    'tokens from before members existed are counted under the member "(organization token)". ' +
    "Without `groupBy` (and without CSV) the answer keeps its earlier shape, per day and model.",
  security: READERS,
  request: { query: UsageQuery },
  responses: {
    200: {
      description: "Usage per day and group, and each group's totals",
      content: {
        "application/json": { schema: z.union([UsageSchema, LegacyUsageSchema]) },
        "text/csv": { schema: z.string() },
      },
    },
    ...problemResponses(400, 401, 403),
  },
});

/** The period a query asks for, or a `validation_failed` problem. */
function checkedPeriod(now: Date, from: string | undefined, to: string | undefined): UsagePeriod {
  const period = usagePeriod(now, from, to);
  if (period.from > period.to) {
    throw new AppError("validation_failed", "The period ends before it starts.", {
      errors: [{ field: "from", message: "Must not be after `to`." }],
    });
  }
  if (periodDays(period) > MAX_USAGE_DAYS) {
    throw new AppError("validation_failed", `A period spans at most ${MAX_USAGE_DAYS} days.`, {
      errors: [{ field: "from", message: `At most ${MAX_USAGE_DAYS} days before \`to\`.` }],
    });
  }
  return period;
}

/** Whether the client asked for CSV (`format=csv`, or `text/csv` in `Accept` without `format`). */
function wantsCsv(format: "json" | "csv" | undefined, accept: string | undefined): boolean {
  if (format) return format === "csv";
  return (accept ?? "").toLowerCase().includes("text/csv");
}

/**
 * The organization's usage, grouped as asked: what the JSON and the CSV both answer. Hours still
 * open are read from the organization's quota object (`live`), which holds a call in its hour
 * within `LEDGER_FLUSH_MS` of its end.
 */
export async function organizationUsage(
  services: Pick<Services, "db" | "log">,
  organizationId: string,
  groupBy: UsageGroup,
  period: UsagePeriod,
  live: LiveUsage,
) {
  const days = await usagePerDay(services, organizationId, groupBy, period, live);
  return { organizationId, groupBy, from: period.from, to: period.to, days, groups: usageByGroup(days) };
}

/** `GET /v1/usage`. */
export const usageRoutes = newRouter();

usageRoutes.openapi(usageRoute, async (c) => {
  const services = c.get("services");
  const query = c.req.valid("query");
  // The period is checked before who asks, so a malformed query costs no database reads.
  const period = checkedPeriod(services.clock.now(), query.from, query.to);
  const reader = await organizationReader(c);
  const csv = wantsCsv(query.format, c.req.header("accept"));
  const groupBy = query.groupBy ?? "model";
  const live = liveUsageFor(c.env, reader.organizationId);
  const usage = await organizationUsage(services, reader.organizationId, groupBy, period, live);
  if (csv) {
    return c.body(usageCsv(groupBy, usage.days), 200, {
      "content-type": "text/csv; charset=utf-8; header=present",
      "content-disposition": `attachment; filename="usage-${groupBy}-${period.from}-${period.to}.csv"`,
      "cache-control": "no-store",
    }) as never;
  }
  if (!query.groupBy) return c.json(legacyUsage(usage), 200, { "cache-control": "no-store" });
  return c.json(usage, 200, { "cache-control": "no-store" });
});

/** The answer of `GET /v1/usage` before it could be grouped: per day and model, in OpenAI's style of names. */
function legacyUsage(usage: Awaited<ReturnType<typeof organizationUsage>>) {
  return {
    object: "list" as const,
    from: usage.from,
    to: usage.to,
    data: usage.days.map((d) => ({
      date: d.day,
      model: d.key,
      requests: d.requests,
      prompt_tokens: d.promptTokens,
      completion_tokens: d.completionTokens,
      total_tokens: d.totalTokens,
      partial_requests: d.partialRequests,
    })),
  };
}
