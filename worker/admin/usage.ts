/**
 * What licensees did with their access, as reviewers see it: downloads and inference per UTC day,
 * organization, model, grant and token, from the hourly totals in D1 (`download_hours`,
 * `usage_hours`, every part of an hour summed). A request counts in the hour it was recorded (when
 * it ended). The totals of hours still open reach D1 at most `USAGE_SYNC_SECONDS` after their
 * requests, so these figures may lag that much; the organizations' own views add the open hours.
 */
import { and, desc, eq, gte, inArray, type SQL, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { accessTokens, downloadHours, grants, organizations, usageHours } from "../db/schema";

/** One day of downloads for one organization and model. */
export interface DownloadDay {
  day: string;
  organizationId: string;
  organization: string;
  model: string;
  /** Requests that served a whole file or a range of one. */
  requests: number;
  /** Requests the client read to the end. */
  completed: number;
  bytes: number;
}

/** Filters of the usage view; every one optional. */
export interface UsageFilter {
  organizationId?: string | undefined;
  model?: string | undefined;
  /** First day included, `YYYY-MM-DD` (UTC). */
  since: string;
}

/** Downloads per UTC day, organization and model, oldest day first. */
export async function downloadsPerDay(db: Database, filter: UsageFilter): Promise<DownloadDay[]> {
  const day = sql<string>`substr(${downloadHours.hour}, 1, 10)`;
  const conditions: SQL[] = [gte(downloadHours.hour, sinceHour(filter.since))];
  if (filter.organizationId) conditions.push(eq(downloadHours.organizationId, filter.organizationId));
  if (filter.model) conditions.push(eq(downloadHours.model, filter.model));
  const rows = await db
    .select({
      day,
      organizationId: downloadHours.organizationId,
      organization: organizations.name,
      model: downloadHours.model,
      requests: sql<number>`coalesce(sum(${downloadHours.requests}), 0)`,
      completed: sql<number>`coalesce(sum(${downloadHours.completeRequests}), 0)`,
      bytes: sql<number>`coalesce(sum(${downloadHours.bytesServed}), 0)`,
    })
    .from(downloadHours)
    .innerJoin(organizations, eq(organizations.id, downloadHours.organizationId))
    .where(and(...conditions))
    .groupBy(day, downloadHours.organizationId, organizations.name, downloadHours.model)
    .orderBy(day, organizations.name, downloadHours.model);
  return rows.map((row) => ({
    ...row,
    requests: Number(row.requests),
    completed: Number(row.completed),
    bytes: Number(row.bytes),
  }));
}

/** The first hour (`YYYY-MM-DDTHH`) of a day (`YYYY-MM-DD`), or of the day an ISO time falls in. */
function sinceHour(since: string): string {
  return `${since.slice(0, 10)}T00`;
}

/** Totals of downloads per grant, for listing many grants at once (at most 50 ids). */
export async function downloadTotalsByGrant(
  db: Database,
  grantIds: string[],
): Promise<Map<string, { requests: number; bytes: number; lastAt: string | null }>> {
  const totals = new Map<string, { requests: number; bytes: number; lastAt: string | null }>();
  if (grantIds.length === 0) return totals;
  const rows = await db
    .select({
      grantId: downloadHours.grantId,
      requests: sql<number>`coalesce(sum(${downloadHours.requests}), 0)`,
      bytes: sql<number>`coalesce(sum(${downloadHours.bytesServed}), 0)`,
      lastAt: sql<string | null>`max(${downloadHours.lastAt})`,
    })
    .from(downloadHours)
    .where(inArray(downloadHours.grantId, grantIds))
    .groupBy(downloadHours.grantId);
  for (const row of rows) {
    totals.set(row.grantId, { requests: Number(row.requests), bytes: Number(row.bytes), lastAt: row.lastAt });
  }
  return totals;
}

/**
 * A grant's downloads per hour, token and model, newest hour first, at most `limit` rows: answers,
 * those read to the end, errors (status 400 or above), bytes served and the latest answer, with
 * the token's name. The totals keep no single request; its file, status and range are in the
 * organization's raw rows (its quota object for `USAGE_RAW_RETENTION_HOURS`, then the usage archive).
 */
export async function recentGrantDownloads(db: Database, grantId: string, limit = 50) {
  const rows = await db
    .select({
      hour: downloadHours.hour,
      tokenId: downloadHours.tokenId,
      tokenName: accessTokens.name,
      model: downloadHours.model,
      requests: sql<number>`sum(${downloadHours.requests})`,
      completeRequests: sql<number>`sum(${downloadHours.completeRequests})`,
      errorRequests: sql<number>`sum(${downloadHours.errorRequests})`,
      bytesServed: sql<number>`sum(${downloadHours.bytesServed})`,
      lastAt: sql<string>`max(${downloadHours.lastAt})`,
    })
    .from(downloadHours)
    .leftJoin(accessTokens, eq(accessTokens.id, downloadHours.tokenId))
    .where(eq(downloadHours.grantId, grantId))
    .groupBy(downloadHours.hour, downloadHours.tokenId, accessTokens.name, downloadHours.model)
    .orderBy(
      desc(downloadHours.hour),
      desc(sql`max(${downloadHours.lastAt})`),
      downloadHours.tokenId,
      downloadHours.model,
    )
    .limit(limit);
  return rows.map((row) => ({
    ...row,
    requests: Number(row.requests),
    completeRequests: Number(row.completeRequests),
    errorRequests: Number(row.errorRequests),
    bytesServed: Number(row.bytesServed),
  }));
}

/** The personal access tokens of a grant, newest first (never their secrets). */
export async function grantTokens(db: Database, grantId: string) {
  return db
    .select({
      id: accessTokens.id,
      name: accessTokens.name,
      prefix: accessTokens.displayPrefix,
      scopes: accessTokens.scopes,
      createdAt: accessTokens.createdAt,
      expiresAt: accessTokens.expiresAt,
      revokedAt: accessTokens.revokedAt,
    })
    .from(accessTokens)
    .where(eq(accessTokens.grantId, grantId))
    .orderBy(desc(accessTokens.createdAt));
}

/** Organizations that hold a grant, by name: the choices of the usage view's filter. */
export async function grantedOrganizations(db: Database): Promise<{ id: string; name: string }[]> {
  return db
    .selectDistinct({ id: organizations.id, name: organizations.name })
    .from(grants)
    .innerJoin(organizations, eq(organizations.id, grants.organizationId))
    .orderBy(organizations.name);
}

/** One day of metered inference for one organization and model. */
export interface TokenDay {
  day: string;
  organizationId: string;
  organization: string;
  model: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
}

/** Inference tokens per UTC day (by the hour the call was recorded), organization and model. */
export async function tokensPerDay(db: Database, filter: UsageFilter): Promise<TokenDay[]> {
  const day = sql<string>`substr(${usageHours.hour}, 1, 10)`;
  const conditions: SQL[] = [gte(usageHours.hour, sinceHour(filter.since))];
  if (filter.organizationId) conditions.push(eq(usageHours.organizationId, filter.organizationId));
  if (filter.model) conditions.push(eq(usageHours.model, filter.model));
  const rows = await db
    .select({
      day,
      organizationId: usageHours.organizationId,
      organization: organizations.name,
      model: usageHours.model,
      requests: sql<number>`coalesce(sum(${usageHours.requests}), 0)`,
      promptTokens: sql<number>`coalesce(sum(${usageHours.promptTokens}), 0)`,
      completionTokens: sql<number>`coalesce(sum(${usageHours.completionTokens}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageHours.totalTokens}), 0)`,
    })
    .from(usageHours)
    .innerJoin(organizations, eq(organizations.id, usageHours.organizationId))
    .where(and(...conditions))
    .groupBy(day, usageHours.organizationId, organizations.name, usageHours.model)
    .orderBy(day, organizations.name, usageHours.model);
  return rows.map((row) => ({
    ...row,
    requests: Number(row.requests),
    promptTokens: Number(row.promptTokens),
    completionTokens: Number(row.completionTokens),
    totalTokens: Number(row.totalTokens),
  }));
}

/** Inference use of a grant per token and model, all time: calls, tokens and when the latest was recorded. */
export async function grantTokenUsage(db: Database, grantId: string) {
  const rows = await db
    .select({
      tokenId: usageHours.tokenId,
      tokenName: accessTokens.name,
      model: usageHours.model,
      requests: sql<number>`coalesce(sum(${usageHours.requests}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageHours.totalTokens}), 0)`,
      lastAt: sql<string>`max(${usageHours.lastAt})`,
    })
    .from(usageHours)
    .leftJoin(accessTokens, eq(accessTokens.id, usageHours.tokenId))
    .where(eq(usageHours.grantId, grantId))
    .groupBy(usageHours.tokenId, accessTokens.name, usageHours.model)
    .orderBy(accessTokens.name, usageHours.model);
  return rows.map((row) => ({ ...row, requests: Number(row.requests), totalTokens: Number(row.totalTokens) }));
}
