import type { LicenseFamily } from "../types";

/**
 * Llama 2 Community License Agreement, released 18 July 2023.
 *
 * §2: licensees whose products or services (with their affiliates') had greater than 700 million
 * monthly active users in the calendar month before the release date must request a license from
 * Meta, granted at its sole discretion. The AUP categories follow the four groups of the Llama 2
 * Acceptable Use Policy; the phrases only route a case to a human, they never decide it.
 */
export const llama2: LicenseFamily = {
  id: "llama-2",
  displayName: "Llama 2",
  licenseName: "LLAMA 2 Community License Agreement",
  licensor: "Meta Platforms, Inc.",
  releaseDate: "2023-07-18",
  mau: {
    threshold: 700_000_000,
    rule: "greater_than",
    includesAffiliates: true,
    measuredMonth: "2023-06",
  },
  exportReviewCountries: ["BY", "CN", "HK", "MM", "MO", "NI", "RU", "SY", "VE"],
  embargoedCountries: ["CU", "IR", "KP"],
  aupCategories: [
    {
      id: "unlawful_activity",
      section: "1",
      title: "Violating the law or others' rights",
      phrases: [
        "child sexual",
        "human trafficking",
        "money laundering",
        "malware",
        "ransomware",
        "hacking",
        "surveillance of",
        "unauthorized access",
        "piracy",
        "discriminat",
      ],
    },
    {
      id: "risk_of_harm",
      section: "2",
      title: "Activities with a risk of death or bodily harm",
      phrases: [
        "military",
        "warfare",
        "weapon",
        "munitions",
        "nuclear",
        "espionage",
        "explosive",
        "illegal drugs",
        "controlled substances",
        "critical infrastructure",
        "self-harm",
        "suicide",
        "incite",
      ],
    },
    {
      id: "deception",
      section: "3",
      title: "Deceiving or misleading others",
      phrases: [
        "fraud",
        "disinformation",
        "misinformation",
        "spam",
        "impersonat",
        "fake reviews",
        "astroturf",
        "defamat",
        "pass off as human",
        "without disclosing",
      ],
    },
    {
      id: "undisclosed_dangers",
      section: "4",
      title: "Failing to disclose known dangers of the AI system",
      phrases: ["hide that it is ai", "not disclose ai", "conceal the use of ai"],
    },
  ],
  noticeText:
    "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms, Inc. All Rights Reserved.",
  duties: [],
  reapplyCooldownDays: 30,
  models: [
    {
      id: "llama-2-7b",
      displayName: "Llama 2 7B",
      parameters: "7B",
      variant: "base",
      hubRepo: "meta-llama/Llama-2-7b-hf",
    },
    {
      id: "llama-2-7b-chat",
      displayName: "Llama 2 7B Chat",
      parameters: "7B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-2-7b-chat-hf",
    },
    {
      id: "llama-2-13b",
      displayName: "Llama 2 13B",
      parameters: "13B",
      variant: "base",
      hubRepo: "meta-llama/Llama-2-13b-hf",
    },
    {
      id: "llama-2-13b-chat",
      displayName: "Llama 2 13B Chat",
      parameters: "13B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-2-13b-chat-hf",
    },
    {
      id: "llama-2-70b",
      displayName: "Llama 2 70B",
      parameters: "70B",
      variant: "base",
      hubRepo: "meta-llama/Llama-2-70b-hf",
    },
    {
      id: "llama-2-70b-chat",
      displayName: "Llama 2 70B Chat",
      parameters: "70B",
      variant: "chat",
      hubRepo: "meta-llama/Llama-2-70b-chat-hf",
    },
  ],
};
