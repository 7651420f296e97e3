import { measurementMonth } from "../evaluate";
import { noticeWithDuties } from "../notice";
import type { FamilyModel, LicenseDuty, LicenseFamily } from "../types";
import { llama2 } from "./llama-2";

/** What one Llama 3.x community license differs in; everything else its versions share. */
export interface MetaLlama3Terms {
  id: string;
  displayName: string;
  licenseName: string;
  /** The version release date (YYYY-MM-DD) the licence's §2 test is pinned to. */
  releaseDate: string;
  /** The §1.b.iii notice, verbatim. */
  notice: string;
  /** The §1.b.i attribution to display: "Built with …". */
  builtWith: string;
  /** The §1.b.i prefix a derived model's name must begin with. */
  namePrefix: string;
  models: readonly FamilyModel[];
}

/**
 * A Llama 3.x community license as a family: §2's test of more than 700 million monthly active
 * users (affiliates included) in the calendar month before the version's release date, §1.b.i's
 * attribution and naming duties, and the Acceptable Use Policy's four groups, which these versions
 * keep from Llama 2's. Export lists are the gateway's own and the same for every family.
 */
export function metaLlama3Family(terms: MetaLlama3Terms): LicenseFamily {
  const duties: LicenseDuty[] = [
    {
      id: "attribution",
      section: "1.b.i",
      text: `Prominently display "${terms.builtWith}" on a related website, user interface, blog post, about page or product documentation of anything you distribute or make available that contains or uses the models.`,
    },
    {
      id: "model_naming",
      section: "1.b.i",
      text: `Begin the name of any AI model you create, train, fine-tune or otherwise improve with the models, and distribute or make available, with "${terms.namePrefix}".`,
    },
    {
      id: "notice",
      section: "1.b.iii",
      text: "Keep this NOTICE and a copy of the license agreement with every copy of the models you distribute.",
    },
  ];
  return {
    id: terms.id,
    displayName: terms.displayName,
    licenseName: terms.licenseName,
    licensor: "Meta Platforms, Inc.",
    releaseDate: terms.releaseDate,
    mau: {
      threshold: 700_000_000,
      rule: "greater_than",
      includesAffiliates: true,
      measuredMonth: measurementMonth(terms.releaseDate),
    },
    exportReviewCountries: llama2.exportReviewCountries,
    embargoedCountries: llama2.embargoedCountries,
    aupCategories: llama2.aupCategories,
    noticeText: noticeWithDuties(terms.notice, duties),
    duties,
    reapplyCooldownDays: 30,
    models: terms.models,
  };
}
