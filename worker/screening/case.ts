import type { AuditEntry } from "../audit/log";
import type { ScreeningMatch } from "./list";

/** The audit action recording the listed parties an application's names matched. */
export const SCREENING_MATCH_ACTION = "application.screening_match";

/**
 * The case's record of a screening match: each listed party (name, source, country) and the
 * applicant's name that matched it, in the application's audit trail that the case file shows.
 */
export function screeningMatchEvent(applicationId: string, matches: readonly ScreeningMatch[]): AuditEntry {
  return {
    actor: "system:screening",
    action: SCREENING_MATCH_ACTION,
    subjectType: "application",
    subjectId: applicationId,
    data: {
      matches: matches.map((m) => ({
        screened: m.screened,
        name: m.name,
        matchedName: m.matchedName,
        source: m.source,
        country: m.country,
        entryId: m.entryId,
      })),
    },
  };
}
