/**
 * An organization's downloads of weights per UTC day and model, for the portal: every answer a
 * signed link gave, counted in the day of the hour it was recorded (when its body ended). Read from
 * the hourly totals in D1 (`download_hours`, every part of an hour summed) and, for hours still
 * open, from the organization's quota object (`live.ts`), so that a download shows once it ends.
 */
import { and, eq, gte, lt, type SQL, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import { downloadHours } from "../db/schema";
import type { Services } from "../services";
import { type LivePart, type LiveUsage, livePartsIn, replacedParts } from "./live";
import { compareText, nextDay, type UsagePeriod } from "./totals";

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

/**
 * The organization's downloads per day and model in `period`, oldest day first. Hours still open
 * in its quota object (`live`) count as the object has them, in place of D1's older totals of the
 * same parts; when the object cannot be reached, D1's totals alone are answered.
 */
export async function downloadsPerDay(
  services: Pick<Services, "db" | "log">,
  organizationId: string,
  period: UsagePeriod,
  live: LiveUsage,
): Promise<DownloadDay[]> {
  const parts = await livePartsIn(services, organizationId, live, period);
  const days = new Map<string, DownloadDay>();
  const add = (d: DownloadDay) => {
    const id = JSON.stringify([d.day, d.model]);
    const sum = days.get(id);
    if (!sum) {
      days.set(id, d);
      return;
    }
    sum.requests += d.requests;
    sum.completed += d.completed;
    sum.bytes += d.bytes;
  };
  for (const d of await storedDownloadsPerDay(services.db, organizationId, period, parts)) add(d);
  for (const p of parts) {
    for (const [key, counts] of p.downloads) {
      const [, , model] = JSON.parse(key) as [string, string, string];
      add({
        day: p.hour.slice(0, 10),
        model,
        requests: counts.requests,
        completed: counts.completeRequests,
        bytes: counts.bytesServed,
      });
    }
  }
  return [...days.values()].sort((a, b) => compareText(a.day, b.day) || compareText(a.model, b.model));
}

/** D1's totals per day and model, every part of an hour summed except those `live` replaces. */
async function storedDownloadsPerDay(
  db: Database,
  organizationId: string,
  period: UsagePeriod,
  live: readonly LivePart[],
): Promise<DownloadDay[]> {
  const day = sql<string>`substr(${downloadHours.hour}, 1, 10)`;
  const conditions: SQL[] = [
    eq(downloadHours.organizationId, organizationId),
    gte(downloadHours.hour, `${period.from}T00`),
    lt(downloadHours.hour, `${nextDay(period.to)}T00`),
  ];
  if (live.length) {
    conditions.push(
      sql`${downloadHours.hour} || ':' || ${downloadHours.part} not in (select value from json_each(${replacedParts(live)}))`,
    );
  }
  const rows = await db
    .select({
      day,
      model: downloadHours.model,
      requests: sql<number>`coalesce(sum(${downloadHours.requests}), 0)`,
      completed: sql<number>`coalesce(sum(${downloadHours.completeRequests}), 0)`,
      bytes: sql<number>`coalesce(sum(${downloadHours.bytesServed}), 0)`,
    })
    .from(downloadHours)
    .where(and(...conditions))
    .groupBy(day, downloadHours.model);
  return rows.map((row) => ({
    day: String(row.day),
    model: row.model,
    requests: Number(row.requests),
    completed: Number(row.completed),
    bytes: Number(row.bytes),
  }));
}
