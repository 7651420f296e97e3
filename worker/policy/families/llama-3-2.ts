import { metaLlama3Family } from "./meta-llama-3";

/**
 * Llama 3.2 Community License Agreement, released 25 September 2024: §2 measures August 2024.
 * Its Acceptable Use Policy does not license the multimodal (vision) models to individuals
 * domiciled in, or companies with a principal place of business in, the European Union; the text
 * models are licensed there. End users of products built on them are not affected.
 */
export const llama32 = metaLlama3Family({
  id: "llama-3.2",
  displayName: "Llama 3.2",
  licenseName: "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
  releaseDate: "2024-09-25",
  notice:
    "Llama 3.2 is licensed under the Llama 3.2 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
  builtWith: "Built with Llama",
  namePrefix: "Llama",
  models: [
    {
      id: "llama-3.2-1b",
      displayName: "Llama 3.2 1B",
      parameters: "1B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.2-1B",
    },
    {
      id: "llama-3.2-1b-instruct",
      displayName: "Llama 3.2 1B Instruct",
      parameters: "1B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.2-1B-Instruct",
    },
    {
      id: "llama-3.2-3b",
      displayName: "Llama 3.2 3B",
      parameters: "3B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.2-3B",
    },
    {
      id: "llama-3.2-3b-instruct",
      displayName: "Llama 3.2 3B Instruct",
      parameters: "3B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.2-3B-Instruct",
    },
    {
      id: "llama-3.2-11b-vision",
      displayName: "Llama 3.2 11B Vision",
      parameters: "11B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.2-11B-Vision",
      excludedRegions: ["EU"],
    },
    {
      id: "llama-3.2-11b-vision-instruct",
      displayName: "Llama 3.2 11B Vision Instruct",
      parameters: "11B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.2-11B-Vision-Instruct",
      excludedRegions: ["EU"],
    },
    {
      id: "llama-3.2-90b-vision",
      displayName: "Llama 3.2 90B Vision",
      parameters: "90B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.2-90B-Vision",
      excludedRegions: ["EU"],
    },
    {
      id: "llama-3.2-90b-vision-instruct",
      displayName: "Llama 3.2 90B Vision Instruct",
      parameters: "90B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.2-90B-Vision-Instruct",
      excludedRegions: ["EU"],
    },
  ],
});
