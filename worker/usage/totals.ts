/**
 * An organization's metered inference, per UTC day and one dimension: the model, the member who
 * minted the token, or the token. A call counts in the day of the hour it was recorded (when it
 * ended: the ledger row's `createdAt`), not the one it started in. Read from the hourly totals in
 * D1 (`usage_hours`, every part of an hour summed) and, for hours still open, from the
 * organization's quota object, so that a call shows the moment it is settled (`live.ts`); the
 * portal, `GET /v1/usage` and its CSV all answer from here.
 */
import { and, eq, gte, inArray, lt, type SQL, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { accessTokens, usageHours, users } from "../db/schema";
import type { Services } from "../services";
import { type LivePart, type LiveUsage, livePartsIn, replacedParts } from "./live";

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
      return { key: sql<string>`${usageHours.model}`, label: sql<string>`${usageHours.model}` };
    case "token":
      return {
        key: sql<string>`${usageHours.tokenId}`,
        label: sql<string>`coalesce(${accessTokens.name}, ${usageHours.tokenId})`,
      };
    case "member":
      return {
        key: sql<string>`coalesce(${accessTokens.userId}, ${ORGANIZATION_TOKEN})`,
        label: sql<string>`coalesce(${users.email}, ${ORGANIZATION_TOKEN})`,
      };
  }
}

/** A token's name and minter, as the groups of live usage name them. */
interface TokenNames {
  name: string | null;
  userId: string | null;
  email: string | null;
}

/** The group a model and token fall in, keyed and labelled as `groupColumns` does in SQL. */
function groupOf(
  groupBy: UsageGroup,
  model: string,
  tokenId: string,
  token: TokenNames | undefined,
): { key: string; label: string } {
  switch (groupBy) {
    case "model":
      return { key: model, label: model };
    case "token":
      return { key: tokenId, label: token?.name ?? tokenId };
    case "member":
      return { key: token?.userId ?? ORGANIZATION_TOKEN, label: token?.email ?? ORGANIZATION_TOKEN };
  }
}

/**
 * An organization's usage per day and group in `period`, oldest day first, then groups by label.
 * Only the organization's own rows are read; tokens and users are joined to name them. The hours
 * still open in its quota object (`live`) count as the object has them, in place of D1's older
 * totals of the same parts; when the object cannot be reached, D1's totals alone are answered.
 */
export async function usagePerDay(
  services: Pick<Services, "db" | "log">,
  organizationId: string,
  groupBy: UsageGroup,
  period: UsagePeriod,
  live: LiveUsage,
): Promise<UsageDay[]> {
  const parts = await livePartsIn(services, organizationId, live, period);
  const days = new Map<string, UsageDay>();
  const add = (day: UsageDay) => {
    const id = JSON.stringify([day.day, day.key]);
    const sum = days.get(id);
    if (!sum) days.set(id, day);
    else addCounts(sum, day);
  };
  for (const day of await storedUsagePerDay(services.db, organizationId, groupBy, period, parts)) add(day);
  for (const day of await liveUsagePerDay(services.db, groupBy, parts)) add(day);
  return [...days.values()].sort(
    (a, b) => compareText(a.day, b.day) || compareText(a.label, b.label) || compareText(a.key, b.key),
  );
}

/** Code-unit order, as SQLite orders text: the same in every locale. */
export function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function addCounts(sum: UsageCounts, counts: UsageCounts): void {
  sum.requests += counts.requests;
  sum.promptTokens += counts.promptTokens;
  sum.completionTokens += counts.completionTokens;
  sum.totalTokens += counts.totalTokens;
  sum.partialRequests += counts.partialRequests;
}

/** D1's totals per day and group, every part of an hour summed except those `live` replaces. */
async function storedUsagePerDay(
  db: Database,
  organizationId: string,
  groupBy: UsageGroup,
  period: UsagePeriod,
  live: readonly LivePart[],
): Promise<UsageDay[]> {
  const day = sql<string>`substr(${usageHours.hour}, 1, 10)`;
  const { key, label } = groupColumns(groupBy);
  const conditions: SQL[] = [
    eq(usageHours.organizationId, organizationId),
    gte(usageHours.hour, `${period.from}T00`),
    lt(usageHours.hour, `${nextDay(period.to)}T00`),
  ];
  if (live.length) {
    conditions.push(
      sql`${usageHours.hour} || ':' || ${usageHours.part} not in (select value from json_each(${replacedParts(live)}))`,
    );
  }
  const rows = await db
    .select({
      day,
      key,
      label,
      requests: sql<number>`coalesce(sum(${usageHours.requests}), 0)`,
      promptTokens: sql<number>`coalesce(sum(${usageHours.promptTokens}), 0)`,
      completionTokens: sql<number>`coalesce(sum(${usageHours.completionTokens}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageHours.totalTokens}), 0)`,
      partialRequests: sql<number>`coalesce(sum(${usageHours.partialRequests}), 0)`,
    })
    .from(usageHours)
    .leftJoin(accessTokens, eq(accessTokens.id, usageHours.tokenId))
    .leftJoin(users, eq(users.id, accessTokens.userId))
    .where(and(...conditions))
    .groupBy(day, key, label);
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

/** The live parts' totals per day and group, their tokens named from D1 when the grouping needs it. */
async function liveUsagePerDay(db: Database, groupBy: UsageGroup, parts: readonly LivePart[]): Promise<UsageDay[]> {
  const counted = parts.flatMap((p) =>
    p.inference.map(([key, counts]) => {
      const [model, , tokenId] = JSON.parse(key) as [string, string, string];
      return { day: p.hour.slice(0, 10), model, tokenId, counts };
    }),
  );
  if (counted.length === 0) return [];
  const tokens = new Map<string, TokenNames>();
  if (groupBy !== "model") {
    const ids = [...new Set(counted.map((c) => c.tokenId))];
    const named = await db
      .select({ id: accessTokens.id, name: accessTokens.name, userId: accessTokens.userId, email: users.email })
      .from(accessTokens)
      .leftJoin(users, eq(users.id, accessTokens.userId))
      .where(inArray(accessTokens.id, sql`(select value from json_each(${JSON.stringify(ids)}))`));
    for (const t of named) tokens.set(t.id, t);
  }
  return counted.map(({ day, model, tokenId, counts }) => ({
    day,
    ...groupOf(groupBy, model, tokenId, tokens.get(tokenId)),
    requests: counts.requests,
    promptTokens: counts.promptTokens,
    completionTokens: counts.completionTokens,
    totalTokens: counts.totalTokens,
    partialRequests: counts.partialRequests,
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
