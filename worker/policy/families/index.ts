import type { FamilyModel, LicenseFamily } from "../types";
import { llama2 } from "./llama-2";
import { llama3 } from "./llama-3";
import { llama31 } from "./llama-3-1";
import { llama32 } from "./llama-3-2";
import { llama33 } from "./llama-3-3";

/** Every license family the gateway knows, by id. Adding one is adding its data file here. */
export const FAMILIES: ReadonlyMap<string, LicenseFamily> = new Map(
  [llama2, llama3, llama31, llama32, llama33].map((family) => [family.id, family]),
);

/** The family with this id, or undefined. */
export function findFamily(id: string): LicenseFamily | undefined {
  return FAMILIES.get(id);
}

/** A model and the family it belongs to, by model id. */
export function findModel(modelId: string): { family: LicenseFamily; model: FamilyModel } | undefined {
  for (const family of FAMILIES.values()) {
    const model = family.models.find((m) => m.id === modelId);
    if (model) return { family, model };
  }
  return undefined;
}

/** A model by the Hugging Face repository id it is served as (case-insensitive, like the Hub). */
export function findModelByHubRepo(repo: string): { family: LicenseFamily; model: FamilyModel } | undefined {
  const wanted = repo.toLowerCase();
  for (const family of FAMILIES.values()) {
    const model = family.models.find((m) => m.hubRepo.toLowerCase() === wanted);
    if (model) return { family, model };
  }
  return undefined;
}
