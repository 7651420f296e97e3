/** The guard's flags: recorded per request, listed for reviewers per organization, pruned of samples. */
import { and, desc, eq, gte, inArray, isNotNull, lt } from "drizzle-orm";
import { grants, guardFlags, organizations } from "../db/schema";
import { addDays } from "../platform/clock";
import type { Services } from "../services";

export type GuardFlagRow = typeof guardFlags.$inferSelect;
export type NewGuardFlag = typeof guardFlags.$inferInsert;

/** The most flags one listing returns, newest first. */
const LISTED_FLAGS = 100;

/** One organization's standing in the reviewers' queue. */
export interface GuardFlagSummary {
  organizationId: string;
  organizationName: string;
  /** Flags in the window. */
  flags: number;
  /** Flags in the last 24 hours. */
  flagsLast24h: number;
  blocked: number;
  lastAt: string;
  categories: { code: string; count: number }[];
  /** `flagsLast24h` reached `GUARD_SUSPEND_THRESHOLD`: a reviewer should consider suspending its grants. */
  suspensionProposed: boolean;
  /** The organization's active grants, which the console's suspend action names. */
  activeGrants: string[];
}

/** Records a flag. */
export async function recordGuardFlag(services: Pick<Services, "db">, flag: NewGuardFlag): Promise<void> {
  await services.db.insert(guardFlags).values(flag);
}

/** Organizations with flags since `since`, most flags in 24 hours first. */
export async function guardFlagSummaries(
  services: Pick<Services, "db" | "clock">,
  options: { since: string; threshold: number; organizationId?: string },
): Promise<GuardFlagSummary[]> {
  const dayAgo = addDays(services.clock.now(), -1).toISOString();
  const where = and(
    gte(guardFlags.createdAt, options.since),
    options.organizationId ? eq(guardFlags.organizationId, options.organizationId) : undefined,
  );
  const rows = await services.db
    .select({
      organizationId: guardFlags.organizationId,
      organizationName: organizations.name,
      categories: guardFlags.categories,
      action: guardFlags.action,
      createdAt: guardFlags.createdAt,
    })
    .from(guardFlags)
    .innerJoin(organizations, eq(organizations.id, guardFlags.organizationId))
    .where(where)
    .orderBy(desc(guardFlags.createdAt))
    .limit(5_000);
  const byOrganization = new Map<string, GuardFlagSummary & { counts: Map<string, number> }>();
  for (const row of rows) {
    let summary = byOrganization.get(row.organizationId);
    if (!summary) {
      summary = {
        organizationId: row.organizationId,
        organizationName: row.organizationName,
        flags: 0,
        flagsLast24h: 0,
        blocked: 0,
        lastAt: row.createdAt,
        categories: [],
        suspensionProposed: false,
        activeGrants: [],
        counts: new Map(),
      };
      byOrganization.set(row.organizationId, summary);
    }
    summary.flags += 1;
    if (row.createdAt >= dayAgo) summary.flagsLast24h += 1;
    if (row.action === "blocked") summary.blocked += 1;
    for (const code of row.categories) summary.counts.set(code, (summary.counts.get(code) ?? 0) + 1);
  }
  const summaries: GuardFlagSummary[] = [];
  for (const { counts, ...summary } of byOrganization.values()) {
    summary.categories = [...counts].map(([code, count]) => ({ code, count })).sort((a, b) => b.count - a.count);
    summary.suspensionProposed = options.threshold > 0 && summary.flagsLast24h >= options.threshold;
    summaries.push(summary);
  }
  const proposed = summaries.filter((s) => s.suspensionProposed).map((s) => s.organizationId);
  if (proposed.length > 0) {
    const active = await services.db
      .select({ id: grants.id, organizationId: grants.organizationId })
      .from(grants)
      .where(and(inArray(grants.organizationId, proposed), eq(grants.status, "active")));
    for (const grant of active)
      summaries.find((s) => s.organizationId === grant.organizationId)?.activeGrants.push(grant.id);
  }
  return summaries.sort((a, b) => b.flagsLast24h - a.flagsLast24h || b.flags - a.flags);
}

/** One organization's latest flags, newest first. */
export async function organizationGuardFlags(
  services: Pick<Services, "db">,
  organizationId: string,
  since: string,
): Promise<GuardFlagRow[]> {
  return services.db
    .select()
    .from(guardFlags)
    .where(and(eq(guardFlags.organizationId, organizationId), gte(guardFlags.createdAt, since)))
    .orderBy(desc(guardFlags.createdAt))
    .limit(LISTED_FLAGS);
}

/** Removes the samples of flags older than the retention; the flags themselves (categories, counts) stay. */
export async function pruneGuardSamples(
  services: Pick<Services, "db" | "clock">,
  retentionDays: number,
): Promise<number> {
  const before = addDays(services.clock.now(), -retentionDays).toISOString();
  const result = await services.db
    .update(guardFlags)
    .set({ sample: null })
    .where(and(lt(guardFlags.createdAt, before), isNotNull(guardFlags.sample)));
  return result.meta.changes ?? 0;
}
