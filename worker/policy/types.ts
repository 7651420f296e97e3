/**
 * License families as data. A new family (or a new threshold, release date, export list or AUP
 * category) is a new `LicenseFamily` value, not a new code path.
 */

/** A category of the Acceptable Use Policy, and the phrases that suggest an intended use falls in it. */
export interface AupCategory {
  /** Stable identifier used in review reasons, e.g. `weapons`. */
  id: string;
  /** The AUP section this category comes from, e.g. `2.a`. */
  section: string;
  title: string;
  /**
   * Lower-case phrases matched at the start of a word in the intended-use text, so a stem such
   * as `impersonat` also matches "impersonation".
   */
  phrases: readonly string[];
}

/** One model of a family that applicants can ask for. */
export interface FamilyModel {
  id: string;
  displayName: string;
  parameters: string;
  variant: "base" | "chat";
  /** The Hugging Face Hub repository id the Hub-compatible API serves this model as. */
  hubRepo: string;
  /**
   * Regions (keys of `REGIONS` in `regions.ts`, or single ISO 3166-1 alpha-2 codes) whose
   * organizations this model is not licensed to, by their country of principal place of business:
   * an application from there that asks for it is refused for this model (Llama 3.2's vision
   * models and the EU). Absent: licensed everywhere the family is.
   */
  excludedRegions?: readonly string[];
}

/**
 * A duty the licence puts on whoever uses or redistributes the models, shown to applicants on the
 * form and the status page and written into the NOTICE shipped with every download.
 */
export interface LicenseDuty {
  /** Stable identifier, e.g. `attribution`. */
  id: string;
  /** The licence section it comes from, e.g. `1.b.i`. */
  section: string;
  /** What the licensee must do, in one sentence. */
  text: string;
}

export interface LicenseFamily {
  /** Stable identifier, used in URLs: `llama-2`. */
  id: string;
  displayName: string;
  licenseName: string;
  licensor: string;
  /** The version release date the licence's MAU test is pinned to (YYYY-MM-DD). */
  releaseDate: string;
  mau: {
    /** The threshold named by the licence. */
    threshold: number;
    /**
     * `greater_than`: only a figure strictly above the threshold needs the licensor's approval
     * (Llama 2 §2: "greater than 700 million monthly active users").
     */
    rule: "greater_than";
    /** Whether affiliates' users count towards the figure. */
    includesAffiliates: boolean;
    /**
     * The month measured: the calendar month preceding the release date, as YYYY-MM. Derived
     * from `releaseDate` by `measurementMonth()`; stored for display and checked by the tests.
     */
    measuredMonth: string;
  };
  /**
   * Countries (ISO 3166-1 alpha-2) whose applicants are always sent to a reviewer, because the
   * licence requires compliance with trade and export law (§1.b.iv).
   */
  exportReviewCountries: readonly string[];
  /** Countries that cannot be granted at all (comprehensive embargoes); rejected outright. */
  embargoedCountries: readonly string[];
  aupCategories: readonly AupCategory[];
  /**
   * The NOTICE text shipped with every download: the notice the licence requires redistributions
   * to carry, followed by the family's duties (see `noticeWithDuties()`).
   */
  noticeText: string;
  /** What licensees must do beyond accepting the texts (attribution, naming); empty when nothing. */
  duties: readonly LicenseDuty[];
  /** Days a rejected applicant waits before applying again. */
  reapplyCooldownDays: number;
  models: readonly FamilyModel[];
}
