import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../errors";
import { newRouter, problemResponses } from "../http/router";
import { findFamily } from "../policy/families";
import { currentLicenseVersion, documentText } from "./store";

const FamilyParam = z.object({
  family: z.string().min(1).max(64).openapi({ example: "llama-2" }),
});

export const LicenseSchema = z
  .object({
    family: z.string(),
    name: z.string(),
    licensor: z.string(),
    version: z.number().int(),
    releaseDate: z.string(),
    mauThreshold: z.number().int(),
    mauRule: z.literal("greater_than"),
    mauMeasuredMonth: z.string(),
    mauIncludesAffiliates: z.boolean(),
    licenseSha256: z.string(),
    aupSha256: z.string(),
    placeholderText: z.boolean(),
    noticeText: z.string(),
    models: z.array(z.object({ id: z.string(), displayName: z.string() })),
    links: z.object({ license: z.string(), aup: z.string(), apply: z.string() }),
  })
  .openapi("License");

const getLicense = createRoute({
  method: "get",
  path: "/v1/licenses/{family}",
  tags: ["Licenses"],
  summary: "The current license version of a model family",
  request: { params: FamilyParam },
  responses: {
    200: { description: "The current license", content: { "application/json": { schema: LicenseSchema } } },
    ...problemResponses(404),
  },
});

const textResponses = {
  200: { description: "The document text", content: { "text/plain": { schema: z.string() } } },
  ...problemResponses(404),
};

const getLicenseText = createRoute({
  method: "get",
  path: "/v1/licenses/{family}/text",
  tags: ["Licenses"],
  summary: "The current license text",
  request: { params: FamilyParam },
  responses: textResponses,
});

const getAupText = createRoute({
  method: "get",
  path: "/v1/licenses/{family}/aup",
  tags: ["Licenses"],
  summary: "The current Acceptable Use Policy text",
  request: { params: FamilyParam },
  responses: textResponses,
});

/** Loads a family and its current license version, or answers 404. */
export async function requireLicense(db: Parameters<typeof currentLicenseVersion>[0], familyId: string) {
  const family = findFamily(familyId);
  const version = family ? await currentLicenseVersion(db, family.id) : undefined;
  if (!family || !version) throw new AppError("not_found", `No license family named ${familyId}.`);
  return { family, version };
}

export const licenseRoutes = newRouter()
  .openapi(getLicense, async (c) => {
    const { family: familyId } = c.req.valid("param");
    const { family, version } = await requireLicense(c.get("services").db, familyId);
    const base = c.get("services").config.publicBaseUrl;
    return c.json(
      {
        family: family.id,
        name: family.licenseName,
        licensor: family.licensor,
        version: version.version,
        releaseDate: family.releaseDate,
        mauThreshold: family.mau.threshold,
        mauRule: family.mau.rule,
        mauMeasuredMonth: family.mau.measuredMonth,
        mauIncludesAffiliates: family.mau.includesAffiliates,
        licenseSha256: version.licenseSha256,
        aupSha256: version.aupSha256,
        placeholderText: version.licenseSource === "placeholder",
        noticeText: family.noticeText,
        models: family.models.map((m) => ({ id: m.id, displayName: m.displayName })),
        links: {
          license: `${base}/v1/licenses/${family.id}/text`,
          aup: `${base}/v1/licenses/${family.id}/aup`,
          apply: `${base}/apply/${family.id}`,
        },
      },
      200,
    );
  })
  .openapi(getLicenseText, async (c) => {
    const { db } = c.get("services");
    const { version } = await requireLicense(db, c.req.valid("param").family);
    const body = await documentText(db, version.licenseSha256);
    return c.text(body ?? "", 200, { etag: `"${version.licenseSha256}"`, "x-content-sha256": version.licenseSha256 });
  })
  .openapi(getAupText, async (c) => {
    const { db } = c.get("services");
    const { version } = await requireLicense(db, c.req.valid("param").family);
    const body = await documentText(db, version.aupSha256);
    return c.text(body ?? "", 200, { etag: `"${version.aupSha256}"`, "x-content-sha256": version.aupSha256 });
  });
