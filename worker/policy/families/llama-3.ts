import { metaLlama3Family } from "./meta-llama-3";

/** Meta Llama 3 Community License Agreement, released 18 April 2024: §2 measures March 2024. */
export const llama3 = metaLlama3Family({
  id: "llama-3",
  displayName: "Llama 3",
  licenseName: "META LLAMA 3 COMMUNITY LICENSE AGREEMENT",
  releaseDate: "2024-04-18",
  notice:
    "Meta Llama 3 is licensed under the Meta Llama 3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
  builtWith: "Built with Meta Llama 3",
  namePrefix: "Llama 3",
  models: [
    {
      id: "llama-3-8b",
      displayName: "Llama 3 8B",
      parameters: "8B",
      variant: "base",
      hubRepo: "meta-llama/Meta-Llama-3-8B",
    },
    {
      id: "llama-3-8b-instruct",
      displayName: "Llama 3 8B Instruct",
      parameters: "8B",
      variant: "chat",
      hubRepo: "meta-llama/Meta-Llama-3-8B-Instruct",
    },
    {
      id: "llama-3-70b",
      displayName: "Llama 3 70B",
      parameters: "70B",
      variant: "base",
      hubRepo: "meta-llama/Meta-Llama-3-70B",
    },
    {
      id: "llama-3-70b-instruct",
      displayName: "Llama 3 70B Instruct",
      parameters: "70B",
      variant: "chat",
      hubRepo: "meta-llama/Meta-Llama-3-70B-Instruct",
    },
  ],
});
