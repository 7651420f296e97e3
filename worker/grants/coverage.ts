/**
 * Whether a principal may use a model: the one answer every surface asks for (weights, signed
 * links, the Hub, inference, the model list). A grant covers the models its application applied
 * for, and a token may narrow that to a subset of its own; a model must be in both.
 */
import { AppError } from "../errors";

/** What a principal's models come from: its grant's, and its token's own subset (null: all of the grant's). */
export interface CoverageScope {
  grantModels: readonly string[];
  tokenModels: readonly string[] | null;
}

/** The answer for one model; a refusal says whose list left it out and what is covered. */
export type Coverage =
  | { covered: true }
  | {
      covered: false;
      /** `grant`: the organization's grant does not cover it; `token`: the token's own list does not. */
      by: "grant" | "token";
      model: string;
      coveredModels: string[];
      /** What to tell the caller, with how to get access. */
      detail: string;
    };

/** The models a principal may use: the grant's, in the grant's order, narrowed to the token's list. */
export function coveredModels(scope: CoverageScope): string[] {
  const { grantModels, tokenModels } = scope;
  return tokenModels === null ? [...grantModels] : grantModels.filter((m) => tokenModels.includes(m));
}

/** Whether `scope` covers `model`: it must be in the grant's models and in the token's, when it has its own. */
export function modelCoverage(scope: CoverageScope, model: string): Coverage {
  const inGrant = scope.grantModels.includes(model);
  if (inGrant && (scope.tokenModels === null || scope.tokenModels.includes(model))) return { covered: true };
  const covered = coveredModels(scope);
  const list = covered.length > 0 ? covered.join(", ") : "no models";
  const detail = !inGrant
    ? `Your organization's grant does not cover ${model}; it covers ${list}. To use more models, your organization's owner applies for them (sign in at /account).`
    : `This token does not cover ${model}; it covers ${list}. Mint a token that covers it with POST /v1/tokens, signed in as a member of your organization.`;
  return { covered: false, by: inGrant ? "token" : "grant", model, coveredModels: covered, detail };
}

/**
 * The 403 problem for a model outside the coverage, with `model`, `coveredModels` and `coverage`
 * (`grant` or `token`) as extensions; for the OpenAI-shaped surface, the error's code is
 * `model_not_covered` and its param `model` instead.
 */
export function notCoveredProblem(
  refusal: Extract<Coverage, { covered: false }>,
  shape: "problem" | "openai" = "problem",
): AppError {
  return new AppError("forbidden", refusal.detail, {
    extensions:
      shape === "openai"
        ? { openaiCode: "model_not_covered", param: "model" }
        : { model: refusal.model, coveredModels: refusal.coveredModels, coverage: refusal.by },
  });
}

/** Throws `notCoveredProblem` unless `scope` covers `model`. */
export function assertCovered(scope: CoverageScope, model: string, shape: "problem" | "openai" = "problem"): void {
  const answer = modelCoverage(scope, model);
  if (!answer.covered) throw notCoveredProblem(answer, shape);
}
