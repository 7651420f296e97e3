import type { FamilyModel, LicenseFamily } from "../types";
import { llama2 } from "./llama-2";

/** Every license family the gateway knows, by id. */
export const FAMILIES: ReadonlyMap<string, LicenseFamily> = new Map([[llama2.id, llama2]]);

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
