/**
 * What licensees did with their access, as reviewers see it: downloads per day (from
 * `download_events`) and inference tokens per day (from `usage_ledger`), per organization, model,
 * grant and token.
 */
import { and, desc, eq, gte, inArray, type SQL, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { accessTokens, downloadEvents, grants, organizations, usageLedger } from "../db/schema";

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
  const day = sql<string>`substr(${downloadEvents.at}, 1, 10)`;
  const conditions: SQL[] = [gte(downloadEvents.at, filter.since)];
  if (filter.organizationId) conditions.push(eq(grants.organizationId, filter.organizationId));
  if (filter.model) conditions.push(eq(downloadEvents.model, filter.model));
  const rows = await db
    .select({
      day,
      organizationId: grants.organizationId,
      organization: organizations.name,
      model: downloadEvents.model,
      requests: sql<number>`count(*)`,
      completed: sql<number>`sum(case when ${downloadEvents.complete} then 1 else 0 end)`,
      bytes: sql<number>`coalesce(sum(${downloadEvents.bytesServed}), 0)`,
    })
    .from(downloadEvents)
    .innerJoin(grants, eq(grants.id, downloadEvents.grantId))
    .innerJoin(organizations, eq(organizations.id, grants.organizationId))
    .where(and(...conditions))
    .groupBy(day, grants.organizationId, organizations.name, downloadEvents.model)
    .orderBy(day, organizations.name, downloadEvents.model);
  return rows.map((row) => ({
    ...row,
    requests: Number(row.requests),
    completed: Number(row.completed),
    bytes: Number(row.bytes),
  }));
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
      grantId: downloadEvents.grantId,
      requests: sql<number>`count(*)`,
      bytes: sql<number>`coalesce(sum(${downloadEvents.bytesServed}), 0)`,
      lastAt: sql<string | null>`max(${downloadEvents.at})`,
    })
    .from(downloadEvents)
    .where(inArray(downloadEvents.grantId, grantIds))
    .groupBy(downloadEvents.grantId);
  for (const row of rows) {
    totals.set(row.grantId, { requests: Number(row.requests), bytes: Number(row.bytes), lastAt: row.lastAt });
  }
  return totals;
}

/** The most recent downloads of a grant, newest first, with the token's name. */
export async function recentGrantDownloads(db: Database, grantId: string, limit = 50) {
  return db
    .select({
      id: downloadEvents.id,
      at: downloadEvents.at,
      model: downloadEvents.model,
      revisionId: downloadEvents.revisionId,
      path: downloadEvents.path,
      status: downloadEvents.status,
      bytesServed: downloadEvents.bytesServed,
      complete: downloadEvents.complete,
      tokenId: downloadEvents.tokenId,
      tokenName: accessTokens.name,
    })
    .from(downloadEvents)
    .leftJoin(accessTokens, eq(accessTokens.id, downloadEvents.tokenId))
    .where(eq(downloadEvents.grantId, grantId))
    .orderBy(desc(downloadEvents.at), desc(downloadEvents.id))
    .limit(limit);
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

/** Inference tokens per UTC day (by the call's start), organization and model, from the usage ledger. */
export async function tokensPerDay(db: Database, filter: UsageFilter): Promise<TokenDay[]> {
  const day = sql<string>`substr(${usageLedger.startedAt}, 1, 10)`;
  const conditions: SQL[] = [gte(usageLedger.startedAt, filter.since)];
  if (filter.organizationId) conditions.push(eq(usageLedger.organizationId, filter.organizationId));
  if (filter.model) conditions.push(eq(usageLedger.model, filter.model));
  const rows = await db
    .select({
      day,
      organizationId: usageLedger.organizationId,
      organization: organizations.name,
      model: usageLedger.model,
      requests: sql<number>`count(*)`,
      promptTokens: sql<number>`coalesce(sum(${usageLedger.promptTokens}), 0)`,
      completionTokens: sql<number>`coalesce(sum(${usageLedger.completionTokens}), 0)`,
      totalTokens: sql<number>`coalesce(sum(${usageLedger.totalTokens}), 0)`,
    })
    .from(usageLedger)
    .innerJoin(organizations, eq(organizations.id, usageLedger.organizationId))
    .where(and(...conditions))
    .groupBy(day, usageLedger.organizationId, organizations.name, usageLedger.model)
    .orderBy(day, organizations.name, usageLedger.model);
  return rows.map((row) => ({
    ...row,
    requests: Number(row.requests),
    promptTokens: Number(row.promptTokens),
    completionTokens: Number(row.completionTokens),
    totalTokens: Number(row.totalTokens),
  }));
}

/** Inference use of a grant per token and model: calls and tokens, all time. */
export async function grantTokenUsage(db: Database, grantId: string) {
  const rows = await db
    .select({
      tokenId: usageLedger.tokenId,
      tokenName: accessTokens.name,
      model: usageLedger.model,
      requests: sql<number>`count(*)`,
      totalTokens: sql<number>`coalesce(sum(${usageLedger.totalTokens}), 0)`,
      lastAt: sql<string>`max(${usageLedger.startedAt})`,
    })
    .from(usageLedger)
    .leftJoin(accessTokens, eq(accessTokens.id, usageLedger.tokenId))
    .where(eq(usageLedger.grantId, grantId))
    .groupBy(usageLedger.tokenId, accessTokens.name, usageLedger.model)
    .orderBy(accessTokens.name, usageLedger.model);
  return rows.map((row) => ({ ...row, requests: Number(row.requests), totalTokens: Number(row.totalTokens) }));
}
