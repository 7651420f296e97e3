/**
 * An organization's metered inference, per UTC day (by the call's start) and one dimension: the
 * model, the member who minted the token, or the token. Read from the usage ledger; the portal,
 * `GET /v1/usage` and its CSV all answer from here.
 */
import { and, eq, gte, lt, type SQL, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { accessTokens, usageLedger, users } from "../db/schema";

/** The dimensions usage can be grouped by. */
export const USAGE_GROUPS = ["model", "member", "token"] as const;
export type UsageGroup = (typeof USAGE_GROUPS)[number];

/** The member key of usage by tokens from before members existed (minted with a status link). */
export const ORGANIZATION_TOKEN = "(organization token)";

/** Days a usage query may span, both ends included. */
export const MAX_USAGE_DAYS = 366;
/** Days a usage query spans when it names none. */
export const DEFAULT_USAGE_DAYS = 30;

/** Calls and tokens: what every usage figure counts. */
export interface UsageCounts {
  requests: number;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** Calls whose usage is partly estimated: cut off, or the backend failed mid-answer. */
  partialRequests: number;
}

/** One day of one group. `key` identifies the group (a model, user or token id), `label` names it. */
export interface UsageDay extends UsageCounts {
  day: string;
  key: string;
  label: string;
}

/** One group over the whole period. */
export interface UsageGroupTotal extends UsageCounts {
  key: string;
  label: string;
}

/** UTC days, `YYYY-MM-DD`, both included. */
export interface UsagePeriod {
  from: string;
  to: string;
}

const DAY_MS = 86_400_000;

/** The day after `day` (`YYYY-MM-DD`). */
export function nextDay(day: string): string {
  return new Date(Date.parse(`${day}T00:00:00.000Z`) + DAY_MS).toISOString().slice(0, 10);
}

/** How many days a period holds, both ends included. */
export function periodDays(period: UsagePeriod): number {
  return Math.round((Date.parse(`${period.to}T00:00:00Z`) - Date.parse(`${period.from}T00:00:00Z`)) / DAY_MS) + 1;
}

/** The last `DEFAULT_USAGE_DAYS` days up to today, or up to `to`, or from `from`. */
export function usagePeriod(now: Date, from?: string, to?: string): UsagePeriod {
  const end = to ?? (from ? undefined : now.toISOString().slice(0, 10));
  if (end && from) return { from, to: end };
  if (end) {
    const start = new Date(Date.parse(`${end}T00:00:00Z`) - (DEFAULT_USAGE_DAYS - 1) * DAY_MS);
    return { from: start.toISOString().slice(0, 10), to: end };
  }
  const start = from as string;
  const last = new Date(Date.parse(`${start}T00:00:00Z`) + (DEFAULT_USAGE_DAYS - 1) * DAY_MS);
  return { from: start, to: last.toISOString().slice(0, 10) };
}

/** What a group's key and label are, per dimension (the token and member ones need joins). */
function groupColumns(groupBy: UsageGroup): { key: SQL<string>; label: SQL<string> } {
  switch (groupBy) {
    case "model":
      return { key: sql<string>`${usageLedger.model}`, label: sql<string>`${usageLedger.model}` };
    case "token":
      return {
        key: sql<string>`${usageLedger.tokenId}`,
        label: sql<string>`coalesce(${accessTokens.name}, ${usageLedger.tokenId})`,
      };
    case "member":
      return {
        key: sql<string>`coalesce(${accessTokens.userId}, ${ORGANIZATION_TOKEN})`,
        label: sql<string>`coalesce(${users.email}, ${ORGANIZATION_TOKEN})`,
      };
  }
}

/**
 * An organization's usage per day and group in `period`, oldest day first, groups by label.
 * Only the organization's own ledger rows are read; tokens and users are joined to name them.
 */
export async function usagePerDay(
  db: Database,
  organizationId: string,
  groupBy: UsageGroup,
  period: UsagePeriod,
): Promise<UsageDay[]> {
  const day = sql<string>`substr(${usageLedger.startedAt}, 1, 10)`;
  const { key, label } = groupColumns(groupBy);
  const rows = await db
    .select({
      day,
      key,
      label,
      requests: sql<number>`count(*)`,
      promptTokens: sql<number>`coalesce(sum(${usageLedger.promptTokens}), 0)`,
      completionTokens: sql<number>`coalesce(sum(${usageLedger.completionTokens}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageLedger.totalTokens}), 0)`,
      partialRequests: sql<number>`coalesce(sum(${usageLedger.partial}), 0)`,
    })
    .from(usageLedger)
    .leftJoin(accessTokens, eq(accessTokens.id, usageLedger.tokenId))
    .leftJoin(users, eq(users.id, accessTokens.userId))
    .where(
      and(
        eq(usageLedger.organizationId, organizationId),
        gte(usageLedger.startedAt, `${period.from}T00:00:00.000Z`),
        lt(usageLedger.startedAt, `${nextDay(period.to)}T00:00:00.000Z`),
      ),
    )
    .groupBy(day, key, label)
    .orderBy(day, label, key);
  return rows.map((row) => ({
    day: String(row.day),
    key: String(row.key),
    label: String(row.label),
    requests: Number(row.requests),
    promptTokens: Number(row.promptTokens),
    completionTokens: Number(row.completionTokens),
    totalTokens: Number(row.totalTokens),
    partialRequests: Number(row.partialRequests),
  }));
}

/** Each group's totals over the days given, most tokens first. Keys are user data: a `Map`, never an object. */
export function usageByGroup(days: readonly UsageDay[]): UsageGroupTotal[] {
  const groups = new Map<string, UsageGroupTotal>();
  for (const d of days) {
    const total = groups.get(d.key) ?? {
      key: d.key,
      label: d.label,
      requests: 0,
      promptTokens: 0,
      completionTokens: 0,
      totalTokens: 0,
      partialRequests: 0,
    };
    total.requests += d.requests;
    total.promptTokens += d.promptTokens;
    total.completionTokens += d.completionTokens;
    total.totalTokens += d.totalTokens;
    total.partialRequests += d.partialRequests;
    groups.set(d.key, total);
  }
  return [...groups.values()].sort((a, b) => b.totalTokens - a.totalTokens || a.label.localeCompare(b.label));
}

/** Total tokens per day over the groups, for a chart. */
export function tokensPerDay(days: readonly UsageDay[]): Map<string, number> {
  const perDay = new Map<string, number>();
  for (const d of days) perDay.set(d.day, (perDay.get(d.day) ?? 0) + d.totalTokens);
  return perDay;
}
