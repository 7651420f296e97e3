import { z } from "@hono/zod-openapi";
import { modelRegionRefusals, modelsLicensedTo } from "../policy/evaluate";
import { findFamily } from "../policy/families";
import { COUNTRY_CODES } from "./countries";

const trimmed = (max: number) => z.string().trim().min(1, "Required.").max(max, `At most ${max} characters.`);

/** An http(s) URL, or nothing: forms send an empty string for an empty field. */
const website = z
  .union([
    z.literal("").transform(() => undefined),
    z.url({ protocol: /^https?$/, error: "Must be an http(s) URL." }).max(300),
  ])
  .optional();

/** The body of `POST /v1/applications`, as JSON or form-encoded with dotted field names. */
export const ApplicationInput = z
  .strictObject({
    family: z.string().min(1).max(64).openapi({ example: "llama-2" }),
    organization: z.strictObject({
      name: trimmed(200).openapi({ example: "Acme Robotics GmbH" }),
      website,
      country: z
        .string()
        .transform((v) => v.trim().toUpperCase())
        .refine((v) => COUNTRY_CODES.has(v), "Must be an ISO 3166-1 alpha-2 country code.")
        .openapi({ example: "DE" }),
    }),
    contact: z.strictObject({
      name: trimmed(200),
      email: z
        .email("Must be an e-mail address.")
        .max(254)
        .transform((v) => v.toLowerCase()),
    }),
    intendedUse: trimmed(4000).refine((v) => v.length >= 10, "Describe the intended use in at least 10 characters."),
    declaredMau: z
      .number({ error: "Must be a whole number." })
      .int("Must be a whole number.")
      .min(0, "Cannot be negative.")
      .max(100_000_000_000, "Implausibly large.")
      .openapi({
        description:
          "Monthly active users of all products and services of the organization and its affiliates in the calendar month before the family's release date (June 2023 for Llama 2, June 2024 for Llama 3.1: `GET /v1/licenses/{family}` names it as `mauMeasuredMonth`).",
        example: 120_000,
      }),
    models: z.array(z.string().min(1).max(64)).max(20).optional().openapi({
      description:
        "The models applied for (default: all of the family's). A model the license does not grant in the organization's country (Llama 3.2's vision models in the European Union) is refused with `validation_failed` on `models`.",
    }),
    licenseSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, "Must be the lower-case hex sha256 of the license text you accepted."),
    aupSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, "Must be the lower-case hex sha256 of the Acceptable Use Policy you accepted.")
      .optional()
      .openapi({
        description:
          "The sha256 of the Acceptable Use Policy accepted (`GET /v1/licenses/{family}` names it). Checked when given; needed when a version changed the policy alone, since the license's hash then names two versions.",
      }),
    acceptLicense: z.literal(true, { error: "You must accept the license." }),
    acceptAup: z.literal(true, { error: "You must accept the Acceptable Use Policy." }),
  })
  .superRefine((input, ctx) => {
    // Some models are not licensed to organizations of some regions: such a request is refused
    // here, naming each model and why, before anything is stored or mailed.
    const family = findFamily(input.family);
    const country = input.organization?.country;
    if (!family || typeof country !== "string" || !COUNTRY_CODES.has(country)) return;
    const refusals = modelRegionRefusals(family, country, input.models ?? family.models.map((m) => m.id));
    if (refusals.length === 0) return;
    const licensed = modelsLicensedTo(family, country).map((m) => m.id);
    ctx.addIssue({
      code: "custom",
      path: ["models"],
      message: input.models
        ? refusals.map((r) => r.detail).join(" ")
        : `Not every ${family.displayName} model is licensed in ${country}: choose from ${licensed.join(", ")}.`,
    });
  })
  .openapi("ApplicationInput");

export type ApplicationInput = z.output<typeof ApplicationInput>;

/**
 * Turns a form post into the JSON shape: checkboxes to booleans, digits to numbers, a single
 * `models` value to a list. Anything odd is left as it is, so that validation names it.
 */
export function applicationFromForm(raw: Record<string, unknown>): unknown {
  const out: Record<string, unknown> = { ...raw };
  for (const key of ["acceptLicense", "acceptAup"]) {
    if (out[key] === "on" || out[key] === "true") out[key] = true;
  }
  const mau = typeof out.declaredMau === "string" ? out.declaredMau.replace(/[\s,_]/g, "") : out.declaredMau;
  if (typeof mau === "string" && /^\d{1,15}$/.test(mau)) out.declaredMau = Number(mau);
  if (typeof out.models === "string") out.models = [out.models];
  return out;
}

export const PolicyReasonSchema = z.object({
  code: z.string(),
  outcome: z.enum(["review", "reject"]),
  detail: z.string(),
});

export const SubmissionResult = z
  .object({
    id: z.string(),
    status: z.literal("awaiting_verification"),
    confirmBy: z.string().openapi({ description: "When the link mailed to the contact stops working." }),
    statusApiUrl: z.string(),
  })
  .openapi("ApplicationSubmission");

/**
 * The body of `POST /v1/applications/confirm`. Confirming is the contact's acceptance of the
 * license, so it states which texts are accepted, as submitting does: their hashes, which must be
 * the application's license version's (the link's page and mail name them).
 */
export const ConfirmInput = z
  .strictObject({
    token: z
      .string()
      .min(1)
      .max(200)
      .openapi({ description: "The token of the link mailed to the contact (`mge_…`)." }),
    licenseSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, "Must be the lower-case hex sha256 of the license text you accept.")
      .openapi({
        description:
          "The sha256 of the license text accepted on the organization's behalf: the application's license version's, which the link's page and mail name (`stale_license` otherwise).",
      }),
    aupSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/, "Must be the lower-case hex sha256 of the Acceptable Use Policy you accept.")
      .openapi({ description: "The sha256 of the Acceptable Use Policy accepted, as for `licenseSha256`." }),
  })
  .openapi({
    description:
      "The mailed link's token and the hashes of the texts its contact accepts for the organization: confirming is the acceptance.",
  });

export const ConfirmationResult = z
  .object({
    applicationId: z.string(),
    status: z.enum(["approved", "pending_review", "info_requested", "rejected"]),
    statusUrl: z.string().openapi({ description: "The status page with a fresh capability (30 days)." }),
    duplicate: z.boolean(),
  })
  .openapi("ApplicationConfirmationResult");

export const DraftStatusSchema = z
  .object({
    id: z.string(),
    family: z.string(),
    status: z.literal("awaiting_verification"),
    next: z.string(),
    submittedAt: z.string(),
    confirmBy: z.string(),
  })
  .openapi("ApplicationAwaitingVerification");

export const ApplicationStatusSchema = z
  .object({
    id: z.string(),
    family: z.string(),
    organization: z.object({ name: z.string(), country: z.string() }),
    status: z.enum(["approved", "pending_review", "info_requested", "rejected"]),
    reasons: z.array(PolicyReasonSchema),
    message: z.string().nullable().openapi({ description: "What a reviewer chose to tell the applicant." }),
    next: z.string().openapi({ description: "What happens next, in words." }),
    reapplyAfter: z.string().nullable(),
    submittedAt: z.string(),
    updatedAt: z.string(),
    grant: z.object({ id: z.string(), status: z.enum(["active", "suspended", "revoked"]) }).nullable(),
  })
  .openapi("ApplicationStatus");

export const InfoResponseInput = z.strictObject({ message: trimmed(4000) }).openapi("ApplicationInfoResponse");
