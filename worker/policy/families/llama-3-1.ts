import { metaLlama3Family } from "./meta-llama-3";

/** Llama 3.1 Community License Agreement, released 23 July 2024: §2 measures June 2024. */
export const llama31 = metaLlama3Family({
  id: "llama-3.1",
  displayName: "Llama 3.1",
  licenseName: "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT",
  releaseDate: "2024-07-23",
  notice:
    "Llama 3.1 is licensed under the Llama 3.1 Community License, Copyright © Meta Platforms, Inc. All Rights Reserved.",
  builtWith: "Built with Llama",
  namePrefix: "Llama",
  models: [
    {
      id: "llama-3.1-8b",
      displayName: "Llama 3.1 8B",
      parameters: "8B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.1-8B",
    },
    {
      id: "llama-3.1-8b-instruct",
      displayName: "Llama 3.1 8B Instruct",
      parameters: "8B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.1-8B-Instruct",
    },
    {
      id: "llama-3.1-70b",
      displayName: "Llama 3.1 70B",
      parameters: "70B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.1-70B",
    },
    {
      id: "llama-3.1-70b-instruct",
      displayName: "Llama 3.1 70B Instruct",
      parameters: "70B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.1-70B-Instruct",
    },
    {
      id: "llama-3.1-405b",
      displayName: "Llama 3.1 405B",
      parameters: "405B",
      variant: "base",
      hubRepo: "meta-llama/Llama-3.1-405B",
    },
    {
      id: "llama-3.1-405b-instruct",
      displayName: "Llama 3.1 405B Instruct",
      parameters: "405B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-3.1-405B-Instruct",
    },
  ],
});
