/**
 * Export rules at use time. An organization declares its country when it applies, but its
 * weights and its calls may be used from anywhere: every download (manifest, signed link, Hub
 * API) and every inference call is judged by the country Cloudflare observed for the request
 * (`request.cf.country`). A request from a country the family's policy restricts is refused
 * (`export_restricted`), and every country an organization is seen from is noted once a day, so
 * that reviewers see organizations used from a country other than the one they declared.
 */
import { and, eq, ne, sql } from "drizzle-orm";
import { writeAudited } from "../audit/log";
import { organizationCountries, organizations } from "../db/schema";
import { AppError } from "../errors";
import { ownProperty } from "../platform/untrusted";
import { isUseRestrictedCountry } from "../policy/evaluate";
import type { LicenseFamily } from "../policy/types";
import type { Services } from "../services";

/** Where a use was seen. */
export type UseSurface = "downloads" | "hub" | "inference";

/** Cloudflare's country for an unknown origin: treated as no country. */
const UNKNOWN_COUNTRY = "XX";

/**
 * The ISO 3166-1 alpha-2 country Cloudflare observed for a request, or undefined where it observed
 * none (a local run, a test without `cf`, an origin it could not place).
 */
export function observedCountry(request: Request): string | undefined {
  const country = ownProperty((request as { cf?: unknown }).cf, "country");
  if (typeof country !== "string" || !/^[A-Za-z][A-Za-z0-9]$/.test(country)) return undefined;
  const upper = country.toUpperCase();
  return upper === UNKNOWN_COUNTRY ? undefined : upper;
}

/** Whether the country observed for `request` is one `family`'s policy restricts (none observed: no). */
export function fromRestrictedCountry(request: Request, family: LicenseFamily): boolean {
  const country = observedCountry(request);
  return country !== undefined && isUseRestrictedCountry(country, family);
}

/** Sightings this isolate already noted: organization, day and country. */
const noted = new Set<string>();
const MAX_NOTED = 20_000;

/** Forgets the sightings this isolate noted (tests). */
export function clearNotedCountries(): void {
  noted.clear();
}

/** One use, as the rules judge it. */
export interface UseRequest {
  family: LicenseFamily;
  organizationId: string;
  surface: UseSurface;
  request: Request;
  /** Runs the sighting's write after the answer (the request's `waitUntil`). */
  waitUntil: (work: Promise<unknown>) => void;
}

/**
 * The refusal for a use from a restricted country, or undefined when the use may go on (no
 * observed country included). Either way the country is noted for the organization, at most one
 * D1 write per organization, day and country in each isolate.
 */
export function exportRefusal(services: Services, use: UseRequest): AppError | undefined {
  const country = observedCountry(use.request);
  if (country === undefined) return undefined;
  const refused = isUseRestrictedCountry(country, use.family);
  noteUseCountry(services, use, country, refused);
  if (!refused) return undefined;
  services.log.warn("export_restricted", {
    organizationId: use.organizationId,
    country,
    surface: use.surface,
    family: use.family.id,
  });
  return new AppError(
    "export_restricted",
    `${use.family.displayName} may not be used from ${country} under applicable trade and export law (${use.family.licenseName}, §1.b.iv).`,
    { extensions: { country } },
  );
}

function noteUseCountry(services: Services, use: UseRequest, country: string, refused: boolean): void {
  const at = services.clock.now().toISOString();
  const day = at.slice(0, 10);
  const key = `${use.organizationId}|${day}|${country}`;
  if (noted.has(key)) return;
  if (noted.size >= MAX_NOTED) noted.clear();
  noted.add(key);
  use.waitUntil(
    recordSighting(services, {
      organizationId: use.organizationId,
      day,
      country,
      surface: use.surface,
      refused,
      at,
    }).catch((error: unknown) => {
      noted.delete(key);
      services.log.error("use country not recorded", {
        organizationId: use.organizationId,
        country,
        error: String(error),
      });
    }),
  );
}

interface Sighting {
  organizationId: string;
  day: string;
  country: string;
  surface: UseSurface;
  refused: boolean;
  at: string;
}

/**
 * Stores a sighting once per organization, day and country; the first day an organization is
 * seen from a country other than its declared one is flagged in the audit log
 * (`export.country_mismatch`).
 */
export async function recordSighting(
  services: Pick<Services, "db" | "clock" | "ids" | "auditAnchor">,
  sighting: Sighting,
): Promise<void> {
  const { db } = services;
  const [organization] = await db
    .select({ country: organizations.country })
    .from(organizations)
    .where(eq(organizations.id, sighting.organizationId));
  if (!organization) return;
  const declaredCountry = organization.country.toUpperCase();
  const inserted = await db
    .insert(organizationCountries)
    .values({
      organizationId: sighting.organizationId,
      day: sighting.day,
      country: sighting.country,
      declaredCountry,
      surface: sighting.surface,
      refused: sighting.refused,
      firstSeenAt: sighting.at,
    })
    .onConflictDoNothing()
    .returning({ day: organizationCountries.day });
  if (inserted.length === 0 || sighting.country === declaredCountry) return;
  const [earlier] = await db
    .select({ days: sql<number>`count(*)` })
    .from(organizationCountries)
    .where(
      and(
        eq(organizationCountries.organizationId, sighting.organizationId),
        eq(organizationCountries.country, sighting.country),
        ne(organizationCountries.day, sighting.day),
      ),
    );
  if ((earlier?.days ?? 0) > 0) return;
  await writeAudited(services, async () => ({
    statements: [],
    events: [
      {
        actor: "system:export-rules",
        action: "export.country_mismatch",
        subjectType: "organization",
        subjectId: sighting.organizationId,
        data: {
          declaredCountry,
          observedCountry: sighting.country,
          surface: sighting.surface,
          refused: sighting.refused,
          day: sighting.day,
        },
      },
    ],
    result: undefined,
  }));
}
