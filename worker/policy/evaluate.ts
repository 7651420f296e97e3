import { regionContains, regionName } from "./regions";
import type { FamilyModel, LicenseFamily } from "./types";

/** What the applicant declared that the license policy looks at. */
export interface ApplicationFacts {
  /** ISO 3166-1 alpha-2, upper case. */
  country: string;
  /**
   * Monthly active users of the applicant's and its affiliates' products in the month the policy
   * measures. `undefined` when not declared: never approved automatically.
   */
  declaredMau: number | undefined;
  intendedUse: string;
  /**
   * The model ids asked for. Each is checked against the regions its licence excludes; undefined
   * checks none (a caller that grants the whole family passes every model's id).
   */
  models?: readonly string[];
  /** Whether an earlier grant of this family to the organization was revoked. */
  priorRevocation?: boolean;
  /**
   * An earlier case of this family of the organization's that was rejected, and whether it was the
   * licensor's to decide (over the threshold). A figure declared again for the same past month
   * after a rejection is a second claim about one fact: a reviewer compares the two.
   */
  priorRejection?: { overThreshold: boolean };
  /**
   * The country the organization is on record with, when it differs from the one declared now (an
   * existing organization's further case). Its principal place of business is a fact of record:
   * the rules of both countries apply, and the difference goes to a reviewer.
   */
  recordedCountry?: string;
  /**
   * The organization's grant was decided by the licensor (a case two approvers decided): what
   * widens it is the licensor's to decide too, by two approvers.
   */
  licensorCase?: boolean;
  /**
   * Cases of other organizations this one resembles (name, website, e-mail domain) that are open,
   * rejected, suspended or revoked. A resemblance is not proof of identity, so it decides nothing
   * by itself: it sends the case to a reviewer, who sees both side by side.
   */
  relatedCases?: { overThreshold: boolean };
  /**
   * Whether the organization's or the contact's name matched a party on the denied-party
   * screening list. A name match is not proof of identity: it sends the case to a reviewer, who
   * sees the listed party.
   */
  deniedPartyMatch?: boolean;
}

export type PolicyOutcome = "approve" | "review" | "reject";

export type PolicyReasonCode =
  | "mau_over_threshold"
  | "mau_not_declared"
  | "export_review_country"
  | "embargoed_country"
  | "aup_category_named"
  | "prior_revocation"
  | "prior_rejection"
  | "country_differs_from_record"
  | "licensor_case"
  | "related_organization"
  | "denied_party_match"
  | "model_region_excluded";

/** A machine-readable reason for a policy outcome. */
export interface PolicyReason {
  code: PolicyReasonCode;
  outcome: Exclude<PolicyOutcome, "approve">;
  detail: string;
  /** For `aup_category_named`: the category id. */
  category?: string;
  /** For `model_region_excluded`: the model refused. */
  model?: string;
}

export interface PolicyDecision {
  outcome: PolicyOutcome;
  reasons: PolicyReason[];
  /** Distinct approvers a human decision needs: two when the licence reserves it to the licensor. */
  requiredApprovals: number;
}

/**
 * The calendar month before a release date (YYYY-MM): the month whose active users the licence
 * counts: 2023-06 for a release on 2023-07-18.
 */
export function measurementMonth(releaseDate: string): string {
  const [year, month] = releaseDate.split("-").map(Number) as [number, number];
  const previous = month === 1 ? { y: year - 1, m: 12 } : { y: year, m: month - 1 };
  return `${previous.y}-${String(previous.m).padStart(2, "0")}`;
}

/** True when the declared figure is over the family's threshold under its rule. */
export function exceedsThreshold(declaredMau: number, family: LicenseFamily): boolean {
  switch (family.mau.rule) {
    case "greater_than":
      return declaredMau > family.mau.threshold;
  }
}

/**
 * Whether the family's models may not be used from `country` at all: the countries it cannot be
 * granted to (comprehensive embargoes) are refused at use time too, by the country a request comes
 * from, whatever the organization declared when it applied.
 */
export function isUseRestrictedCountry(country: string, family: LicenseFamily): boolean {
  return family.embargoedCountries.includes(country.toUpperCase());
}

/** The first of `model`'s excluded regions that holds `country`, or undefined when it is licensed there. */
function excludingRegion(model: FamilyModel, country: string): string | undefined {
  return (model.excludedRegions ?? []).find((region) => regionContains(region, country));
}

/**
 * Why each of `modelIds` is not licensed to an organization whose principal place of business is
 * in `country`: one `model_region_excluded` reason per refused model, none for the rest (unknown
 * ids included: naming them is the schema's job).
 */
export function modelRegionRefusals(
  family: LicenseFamily,
  country: string,
  modelIds: readonly string[],
): PolicyReason[] {
  const reasons: PolicyReason[] = [];
  for (const id of new Set(modelIds)) {
    const model = family.models.find((m) => m.id === id);
    const region = model ? excludingRegion(model, country) : undefined;
    if (!model || !region) continue;
    reasons.push({
      code: "model_region_excluded",
      outcome: "reject",
      model: model.id,
      detail: `${model.displayName} is not licensed to organizations whose principal place of business is in ${regionName(region)} (${country.toUpperCase()}); apply for the family's other models.`,
    });
  }
  return reasons;
}

/** The family's models an organization in `country` may be granted, in the family's order. */
export function modelsLicensedTo(family: LicenseFamily, country: string): FamilyModel[] {
  return family.models.filter((m) => excludingRegion(m, country) === undefined);
}

function namesPhrase(text: string, phrase: string): boolean {
  let from = 0;
  for (;;) {
    const at = text.indexOf(phrase, from);
    if (at < 0) return false;
    const before = at === 0 ? "" : text[at - 1];
    if (before === "" || !/[a-z0-9]/.test(before as string)) return true;
    from = at + 1;
  }
}

/**
 * Decides an application under a family's license policy. Pure: the same facts and family always
 * give the same decision. Any reject reason rejects; otherwise any review reason sends the case to
 * a reviewer; otherwise it is approved at once.
 */
export function evaluateApplication(facts: ApplicationFacts, family: LicenseFamily): PolicyDecision {
  const reasons: PolicyReason[] = [];
  const country = facts.country.toUpperCase();
  const recorded = facts.recordedCountry?.toUpperCase();
  const countries = recorded && recorded !== country ? [country, recorded] : [country];

  for (const where of countries) {
    if (family.embargoedCountries.includes(where)) {
      reasons.push({
        code: "embargoed_country",
        outcome: "reject",
        detail: `Access cannot be granted to organizations in ${where} under applicable trade law.`,
      });
    } else if (family.exportReviewCountries.includes(where)) {
      reasons.push({
        code: "export_review_country",
        outcome: "review",
        detail: `Applications from ${where} are reviewed for trade and export compliance.`,
      });
    }
  }
  if (countries.length > 1) {
    reasons.push({
      code: "country_differs_from_record",
      outcome: "review",
      detail: `The organization is on record in ${recorded}, not ${country}; a reviewer looks at its principal place of business.`,
    });
  }

  if (facts.models) {
    const refused = new Set<string>();
    for (const where of countries) {
      for (const reason of modelRegionRefusals(family, where, facts.models)) {
        if (refused.has(reason.model ?? "")) continue;
        refused.add(reason.model ?? "");
        reasons.push(reason);
      }
    }
  }

  let overThreshold = false;
  if (facts.declaredMau === undefined || !Number.isSafeInteger(facts.declaredMau) || facts.declaredMau < 0) {
    reasons.push({
      code: "mau_not_declared",
      outcome: "review",
      detail: "No valid monthly active user figure was declared.",
    });
  } else if (exceedsThreshold(facts.declaredMau, family)) {
    overThreshold = true;
    reasons.push({
      code: "mau_over_threshold",
      outcome: "review",
      detail: `Declared ${facts.declaredMau} monthly active users in ${family.mau.measuredMonth}, greater than the license threshold of ${family.mau.threshold}; the licensor decides at its sole discretion.`,
    });
  }

  if (facts.priorRevocation) {
    reasons.push({
      code: "prior_revocation",
      outcome: "review",
      detail: "An earlier grant of this model family to the organization was revoked.",
    });
  }

  if (facts.priorRejection) {
    // The licensor's refusal is not undone by a smaller figure for the same month: two approvers again.
    if (facts.priorRejection.overThreshold) overThreshold = true;
    reasons.push({
      code: "prior_rejection",
      outcome: "review",
      detail:
        "An earlier application of the organization for this model family was rejected; a reviewer compares them.",
    });
  }

  if (facts.licensorCase) {
    overThreshold = true;
    reasons.push({
      code: "licensor_case",
      outcome: "review",
      detail: "The organization's access was decided by the licensor; so is any widening of it.",
    });
  }

  if (facts.relatedCases) {
    // A case that resembles one the licensor must decide is decided the same way: by two approvers.
    if (facts.relatedCases.overThreshold) overThreshold = true;
    reasons.push({
      code: "related_organization",
      outcome: "review",
      // The same words whatever the other case's state: the applicant learns nothing about it.
      detail: "This application resembles another organization's case; a reviewer looks at both.",
    });
  }
  if (facts.deniedPartyMatch) {
    reasons.push({
      code: "denied_party_match",
      outcome: "review",
      // The applicant is not told which list or party: screening is for reviewers to judge.
      detail: "Applications are screened against trade restriction lists; a reviewer looks at this one.",
    });
  }
  const use = facts.intendedUse.toLowerCase();
  for (const category of family.aupCategories) {
    if (category.phrases.some((phrase) => namesPhrase(use, phrase))) {
      reasons.push({
        code: "aup_category_named",
        outcome: "review",
        category: category.id,
        detail: `The intended use mentions a subject of the Acceptable Use Policy, section ${category.section} (${category.title}).`,
      });
    }
  }

  const outcome: PolicyOutcome = reasons.some((r) => r.outcome === "reject")
    ? "reject"
    : reasons.length > 0
      ? "review"
      : "approve";
  return { outcome, reasons, requiredApprovals: overThreshold ? 2 : 1 };
}
