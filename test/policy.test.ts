import { describe, expect, it } from "vitest";
import { evaluateApplication, measurementMonth } from "../worker/policy/evaluate";
import { llama2 } from "../worker/policy/families/llama-2";

const clean = { country: "DE", declaredMau: 1_000, intendedUse: "Customer support assistant for our shop." };

describe("llama-2 policy data", () => {
  it("pins the MAU test to June 2023, the month before the 2023-07-18 release", () => {
    expect(llama2.releaseDate).toBe("2023-07-18");
    expect(measurementMonth(llama2.releaseDate)).toBe("2023-06");
    expect(llama2.mau.measuredMonth).toBe(measurementMonth(llama2.releaseDate));
    expect(llama2.mau).toMatchObject({ threshold: 700_000_000, rule: "greater_than", includesAffiliates: true });
  });

  it("lists 7B, 13B and 70B, base and chat", () => {
    expect(llama2.models.map((m) => m.id).sort()).toEqual(
      ["llama-2-13b", "llama-2-13b-chat", "llama-2-70b", "llama-2-70b-chat", "llama-2-7b", "llama-2-7b-chat"].sort(),
    );
  });

  it("carries the redistribution notice verbatim", () => {
    expect(llama2.noticeText).toBe(
      "Llama 2 is licensed under the LLAMA 2 Community License, Copyright (c) Meta Platforms, Inc. All Rights Reserved.",
    );
  });

  it("measures January releases against December of the year before", () => {
    expect(measurementMonth("2024-01-05")).toBe("2023-12");
  });
});

describe("evaluateApplication", () => {
  it.each([
    [0, "approve"],
    [1, "approve"],
    [699_999_999, "approve"],
    [700_000_000, "approve"],
    [700_000_001, "review"],
    [3_000_000_000, "review"],
  ] as const)("declared MAU %d → %s", (declaredMau, outcome) => {
    const decision = evaluateApplication({ ...clean, declaredMau }, llama2);
    expect(decision.outcome).toBe(outcome);
    if (outcome === "review") {
      expect(decision.reasons.map((r) => r.code)).toEqual(["mau_over_threshold"]);
      expect(decision.requiredApprovals).toBe(2);
    } else {
      expect(decision.reasons).toEqual([]);
      expect(decision.requiredApprovals).toBe(1);
    }
  });

  it("sends a missing or invalid MAU figure to review, never approves it", () => {
    for (const declaredMau of [undefined, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      const decision = evaluateApplication({ ...clean, declaredMau }, llama2);
      expect(decision.outcome).toBe("review");
      expect(decision.reasons.map((r) => r.code)).toEqual(["mau_not_declared"]);
    }
  });

  it("sends export-review countries to review, in any letter case", () => {
    for (const country of ["CN", "ru", "Hk"]) {
      const decision = evaluateApplication({ ...clean, country }, llama2);
      expect(decision.outcome).toBe("review");
      expect(decision.reasons.map((r) => r.code)).toEqual(["export_review_country"]);
      expect(decision.requiredApprovals).toBe(1);
    }
  });

  it("rejects embargoed countries even when other reasons would only review", () => {
    const decision = evaluateApplication({ country: "KP", declaredMau: 900_000_000, intendedUse: "weapons" }, llama2);
    expect(decision.outcome).toBe("reject");
    expect(decision.reasons.map((r) => r.code)).toEqual([
      "embargoed_country",
      "mau_over_threshold",
      "aup_category_named",
    ]);
  });

  it("names the AUP category an intended use mentions", () => {
    const cases: [string, string][] = [
      ["Targeting support for military drones", "risk_of_harm"],
      ["Generating fake reviews for products", "deception"],
      ["Bots that impersonate real people", "deception"],
      ["Writing ransomware", "unlawful_activity"],
      ["Chat agents that hide that it is AI from users", "undisclosed_dangers"],
    ];
    for (const [intendedUse, category] of cases) {
      const decision = evaluateApplication({ ...clean, intendedUse }, llama2);
      expect(decision.outcome, intendedUse).toBe("review");
      expect(
        decision.reasons.map((r) => r.category),
        intendedUse,
      ).toContain(category);
    }
  });

  it("matches phrases only at word starts", () => {
    // "spam" inside "spamalot" would match at a word start; "fraud" inside "antifraud" must not.
    const decision = evaluateApplication({ ...clean, intendedUse: "Antifraud analytics dashboard" }, llama2);
    expect(decision.outcome).toBe("approve");
  });

  it("reports several reasons together", () => {
    const decision = evaluateApplication(
      { country: "CN", declaredMau: 800_000_000, intendedUse: "spam filtering research" },
      llama2,
    );
    expect(decision.outcome).toBe("review");
    expect(decision.reasons.map((r) => r.code)).toEqual([
      "export_review_country",
      "mau_over_threshold",
      "aup_category_named",
    ]);
    expect(decision.requiredApprovals).toBe(2);
  });

  it("sends an organization whose earlier grant was revoked to review", () => {
    const decision = evaluateApplication({ ...clean, priorRevocation: true }, llama2);
    expect(decision.outcome).toBe("review");
    expect(decision.reasons.map((r) => r.code)).toEqual(["prior_revocation"]);
  });

  it("is pure: the same facts give the same decision", () => {
    const facts = { country: "CN", declaredMau: 800_000_000, intendedUse: "fraud detection" };
    expect(evaluateApplication(facts, llama2)).toEqual(evaluateApplication(facts, llama2));
  });
});
