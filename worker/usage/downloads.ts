/**
 * An organization's downloads of weights per UTC day and model, from `download_events` (each
 * answer with a body that a signed link served), for the portal.
 */
import { and, eq, gte, lt, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { downloadEvents, grants } from "../db/schema";
import { nextDay, type UsagePeriod } from "./totals";

/** One day of one model's downloads. */
export interface DownloadDay {
  day: string;
  model: string;
  /** Answers that served a whole file or a range of one. */
  requests: number;
  /** Of those, the ones the client read to the end. */
  completed: number;
  bytes: number;
}

/** The organization's downloads per day and model in `period`, oldest day first. */
export async function downloadsPerDay(
  db: Database,
  organizationId: string,
  period: UsagePeriod,
): Promise<DownloadDay[]> {
  const day = sql<string>`substr(${downloadEvents.at}, 1, 10)`;
  const rows = await db
    .select({
      day,
      model: downloadEvents.model,
      requests: sql<number>`count(*)`,
      completed: sql<number>`coalesce(sum(case when ${downloadEvents.complete} then 1 else 0 end), 0)`,
      bytes: sql<number>`coalesce(sum(${downloadEvents.bytesServed}), 0)`,
    })
    .from(downloadEvents)
    .innerJoin(grants, eq(grants.id, downloadEvents.grantId))
    .where(
      and(
        eq(grants.organizationId, organizationId),
        gte(downloadEvents.at, `${period.from}T00:00:00.000Z`),
        lt(downloadEvents.at, `${nextDay(period.to)}T00:00:00.000Z`),
      ),
    )
    .groupBy(day, downloadEvents.model)
    .orderBy(day, downloadEvents.model);
  return rows.map((row) => ({
    day: String(row.day),
    model: row.model,
    requests: Number(row.requests),
    completed: Number(row.completed),
    bytes: Number(row.bytes),
  }));
}
