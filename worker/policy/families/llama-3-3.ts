import { metaLlama3Family } from "./meta-llama-3";

/** Llama 3.3 Community License Agreement, released 6 December 2024: §2 measures November 2024. */
export const llama33 = metaLlama3Family({
  id: "llama-3.3",
  displayName: "Llama 3.3",
  licenseName: "LLAMA 3.3 COMMUNITY LICENSE AGREEMENT",
  releaseDate: "2024-12-06",
  notice:
    "Llama 3.3 is licensed under the Llama 3.3 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
  builtWith: "Built with Llama",
  namePrefix: "Llama",
  models: [
    {
      id: "llama-3.3-70b-instruct",
      displayName: "Llama 3.3 70B Instruct",
      parameters: "70B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.3-70B-Instruct",
    },
  ],
});
