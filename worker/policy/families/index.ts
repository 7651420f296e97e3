import type { LicenseFamily } from "../types";
import { llama2 } from "./llama-2";

/** Every license family the gateway knows, by id. */
export const FAMILIES: ReadonlyMap<string, LicenseFamily> = new Map([[llama2.id, llama2]]);

/** The family with this id, or undefined. */
export function findFamily(id: string): LicenseFamily | undefined {
  return FAMILIES.get(id);
}
