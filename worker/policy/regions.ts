/**
 * Named groups of countries that licence terms refer to. A model's `excludedRegions` names these
 * (or single countries), so that the list of members lives in one place.
 */

/**
 * The 27 member states of the European Union (ISO 3166-1 alpha-2), as of 2020-02-01, and the parts
 * of the Union that have codes of their own: the outermost regions of France (Guadeloupe, French
 * Guiana, Martinique, Mayotte, Réunion, Saint-Martin; the Azores, Madeira and the Canary Islands go
 * under PT and ES) and the Åland Islands. A place of business there is in the European Union.
 */
const EUROPEAN_UNION = [
  "AX",
  "GF",
  "GP",
  "MF",
  "MQ",
  "RE",
  "YT",
  "AT",
  "BE",
  "BG",
  "CY",
  "CZ",
  "DE",
  "DK",
  "EE",
  "ES",
  "FI",
  "FR",
  "GR",
  "HR",
  "HU",
  "IE",
  "IT",
  "LT",
  "LU",
  "LV",
  "MT",
  "NL",
  "PL",
  "PT",
  "RO",
  "SE",
  "SI",
  "SK",
] as const;

/** Regions by the name licence data uses for them. */
export const REGIONS: ReadonlyMap<string, { name: string; countries: ReadonlySet<string> }> = new Map([
  ["EU", { name: "the European Union", countries: new Set<string>(EUROPEAN_UNION) }],
]);

/**
 * Whether `country` (ISO 3166-1 alpha-2, any case) lies in `region`: a key of `REGIONS`, or a
 * single country code naming itself. An unknown region contains no country but itself.
 */
export function regionContains(region: string, country: string): boolean {
  const code = country.toUpperCase();
  const named = REGIONS.get(region);
  return named ? named.countries.has(code) : region.toUpperCase() === code;
}

/** The region's name in words, for reasons shown to applicants. */
export function regionName(region: string): string {
  return REGIONS.get(region)?.name ?? region.toUpperCase();
}
