/**
 * Organizations seen from a country other than the one they declared, for reviewers: from the
 * sightings export rules note (one per organization, day and country), over a window of days.
 */
import { and, desc, gte, ne, sql } from "drizzle-orm";
import { organizationCountries, organizations } from "../db/schema";
import type { Services } from "../services";

/** One organization's sightings outside its declared country. */
export interface CountryFlag {
  organizationId: string;
  organizationName: string;
  declaredCountry: string;
  /** Days in the window on which a request came from another country (one a day per country). */
  mismatchDays: number;
  countries: { country: string; days: number; firstSeenAt: string; lastDay: string; refused: boolean }[];
}

/** Organizations seen from another country than their declared one on or after `since` (YYYY-MM-DD), most days first. */
export async function countryMismatchFlags(services: Pick<Services, "db">, since: string): Promise<CountryFlag[]> {
  const rows = await services.db
    .select({
      organizationId: organizationCountries.organizationId,
      organizationName: organizations.name,
      declaredCountry: organizationCountries.declaredCountry,
      country: organizationCountries.country,
      days: sql<number>`count(*)`,
      firstSeenAt: sql<string>`min(${organizationCountries.firstSeenAt})`,
      lastDay: sql<string>`max(${organizationCountries.day})`,
      refused: sql<number>`max(${organizationCountries.refused})`,
    })
    .from(organizationCountries)
    .innerJoin(organizations, sql`${organizations.id} = ${organizationCountries.organizationId}`)
    .where(
      and(
        gte(organizationCountries.day, since),
        ne(organizationCountries.country, organizationCountries.declaredCountry),
      ),
    )
    .groupBy(organizationCountries.organizationId, organizationCountries.country)
    .orderBy(desc(sql`count(*)`));
  const flags = new Map<string, CountryFlag>();
  for (const row of rows) {
    let flag = flags.get(row.organizationId);
    if (!flag) {
      flag = {
        organizationId: row.organizationId,
        organizationName: row.organizationName,
        declaredCountry: row.declaredCountry,
        mismatchDays: 0,
        countries: [],
      };
      flags.set(row.organizationId, flag);
    }
    flag.mismatchDays += row.days;
    flag.countries.push({
      country: row.country,
      days: row.days,
      firstSeenAt: row.firstSeenAt,
      lastDay: row.lastDay,
      refused: row.refused === 1,
    });
  }
  return [...flags.values()].sort((a, b) => b.mismatchDays - a.mismatchDays);
}
