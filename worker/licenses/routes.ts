import { createRoute, z } from "@hono/zod-openapi";
import { and, eq } from "drizzle-orm";
import type { Context } from "hono";
import { currentMember, OrganizationQuery, requireMember } from "../auth/members";
import { SESSION_SECURITY_SCHEME } from "../auth/routes";
import { licenseVersions } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { clientIp } from "../http/middleware";
import { newRouter, problemResponses, readBody } from "../http/router";
import { findFamily } from "../policy/families";
import { licenseChanges, pendingReacceptances, type ReacceptanceEvidence, reacceptLicense } from "./reacceptance";
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
    noticeText: z
      .string()
      .openapi({ description: "The NOTICE shipped with every download: the notice, then the duties." }),
    duties: z
      .array(z.object({ id: z.string(), section: z.string(), text: z.string() }))
      .openapi({ description: "What licensees must do beyond accepting the texts (attribution, naming)." }),
    models: z.array(
      z.object({
        id: z.string(),
        displayName: z.string(),
        hubRepo: z.string(),
        excludedRegions: z.array(z.string()).openapi({
          description: "Regions (`EU`) or countries whose organizations this model is not licensed to.",
        }),
      }),
    ),
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

const VersionParam = FamilyParam.extend({
  version: z.coerce.number().int().min(1).max(1_000_000).openapi({ example: 1 }),
});

const getVersionText = createRoute({
  method: "get",
  path: "/v1/licenses/{family}/versions/{version}/text",
  tags: ["Licenses"],
  summary: "The license text of one version",
  request: { params: VersionParam },
  responses: textResponses,
});

const getVersionAup = createRoute({
  method: "get",
  path: "/v1/licenses/{family}/versions/{version}/aup",
  tags: ["Licenses"],
  summary: "The Acceptable Use Policy text of one version",
  request: { params: VersionParam },
  responses: textResponses,
});

async function versionDocument(c: Context<HonoEnv>, kind: "licenseSha256" | "aupSha256") {
  const { db } = c.get("services");
  const { family, version } = c.req.param() as { family: string; version: string };
  const [row] = await db
    .select()
    .from(licenseVersions)
    .where(and(eq(licenseVersions.family, family), eq(licenseVersions.version, Number(version))));
  const sha256 = row?.[kind];
  const body = sha256 ? await documentText(db, sha256) : undefined;
  if (!sha256 || body === undefined) throw new AppError("not_found", `No version ${version} of ${family}'s license.`);
  return c.text(body, 200, { etag: `"${sha256}"`, "x-content-sha256": sha256 });
}

const VersionRef = z.object({ version: z.number().int(), licenseSha256: z.string(), aupSha256: z.string() });
const DiffLineSchema = z.object({ kind: z.enum(["same", "removed", "added"]), text: z.string() });

const LicenseChangeSchema = z
  .object({
    id: z.string(),
    grantId: z.string(),
    family: z.string(),
    acceptBy: z.string().openapi({ description: "From this instant downloads and inference stop until accepted." }),
    overdue: z.boolean(),
    requiredAt: z.string(),
    accepted: VersionRef.openapi({ description: "The version the organization accepted." }),
    current: VersionRef.openapi({ description: "The version to accept." }),
    diff: z.object({ license: z.array(DiffLineSchema), aup: z.array(DiffLineSchema) }),
  })
  .openapi("LicenseChange");

const session = [{ [SESSION_SECURITY_SCHEME]: [] }];

const listChangesRoute = createRoute({
  method: "get",
  path: "/v1/organization/license-changes",
  tags: ["Licenses"],
  summary: "License versions the organization must accept again, with what changed",
  description: "Any member (viewer and above). Each change carries a line diff of the license and the AUP.",
  security: session,
  middleware: [requireMember("viewer")] as const,
  request: { query: OrganizationQuery },
  responses: {
    200: {
      description: "Pending changes, earliest deadline first",
      content: { "application/json": { schema: z.object({ changes: z.array(LicenseChangeSchema) }) } },
    },
    ...problemResponses(401, 403),
  },
});

/** The hashes of the texts the member read and accepts. */
export const ReacceptanceForm = z
  .strictObject({
    licenseSha256: z.string().regex(/^[0-9a-f]{64}$/),
    aupSha256: z.string().regex(/^[0-9a-f]{64}$/),
  })
  .openapi("LicenseReacceptance");

const AcceptedSchema = z
  .object({
    id: z.string(),
    grantId: z.string(),
    licenseVersionId: z.string(),
    licenseSha256: z.string(),
    aupSha256: z.string(),
    acceptedAt: z.string(),
    acceptedByUserId: z.string(),
    country: z.string().nullable(),
  })
  .openapi("LicenseReaccepted");

const acceptChangeRoute = createRoute({
  method: "post",
  path: "/v1/organization/license-changes/{id}/accept",
  tags: ["Licenses"],
  summary: "Accept a new license version for the organization",
  description:
    "Owners and admins. Send the sha256 of the license and AUP texts accepted; they must be the new version's " +
    "(`stale_license` otherwise). The acceptance is recorded with its time, address, country and member, and the " +
    "grant's downloads and inference go on under the new version.",
  security: session,
  middleware: [requireMember("admin")] as const,
  request: {
    params: z.object({ id: z.string().min(1).max(64) }),
    query: OrganizationQuery,
    body: {
      required: true,
      content: { "application/json": { schema: { $ref: "#/components/schemas/LicenseReacceptance" } } },
    },
  },
  responses: {
    200: { description: "The acceptance", content: { "application/json": { schema: AcceptedSchema } } },
    ...problemResponses(400, 401, 403, 404, 409, 415),
  },
});

/** The evidence of an acceptance made by this request: address, country (Cloudflare's), user agent. */
export function reacceptanceEvidence(c: Context<HonoEnv>): ReacceptanceEvidence {
  const cf = c.req.raw.cf as { country?: unknown } | undefined;
  return {
    ip: clientIp(c.req),
    country: typeof cf?.country === "string" ? cf.country : null,
    userAgent: c.req.header("user-agent") ?? null,
  };
}

/** The organization's pending license changes with their diffs, as the API and the pages show them. */
export async function describeLicenseChanges(services: HonoEnv["Variables"]["services"], organizationId: string) {
  const pending = await pendingReacceptances(services.db, organizationId);
  const now = services.clock.now().toISOString();
  return Promise.all(
    pending.map(async (p) => ({
      id: p.id,
      grantId: p.grantId,
      family: p.family,
      acceptBy: p.acceptBy,
      overdue: p.acceptBy <= now,
      requiredAt: p.requiredAt,
      accepted: { version: p.from.version, licenseSha256: p.from.licenseSha256, aupSha256: p.from.aupSha256 },
      current: { version: p.to.version, licenseSha256: p.to.licenseSha256, aupSha256: p.to.aupSha256 },
      diff: await licenseChanges(services.db, p),
    })),
  );
}

/** A described license change, as `describeLicenseChanges` gives it. */
export type LicenseChangeView = Awaited<ReturnType<typeof describeLicenseChanges>>[number];

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
        duties: family.duties.map((d) => ({ id: d.id, section: d.section, text: d.text })),
        models: family.models.map((m) => ({
          id: m.id,
          displayName: m.displayName,
          hubRepo: m.hubRepo,
          excludedRegions: [...(m.excludedRegions ?? [])],
        })),
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
  })
  .openapi(getVersionText, (c) => versionDocument(c, "licenseSha256"))
  .openapi(getVersionAup, (c) => versionDocument(c, "aupSha256"))
  .openapi(listChangesRoute, async (c) => {
    const changes = await describeLicenseChanges(c.get("services"), currentMember(c).organizationId);
    c.header("cache-control", "no-store");
    return c.json({ changes }, 200);
  })
  .openapi(acceptChangeRoute, async (c) => {
    const form = await readBody(c, ReacceptanceForm);
    const accepted = await reacceptLicense(
      c.get("services"),
      currentMember(c),
      { requirementId: c.req.valid("param").id, ...form },
      reacceptanceEvidence(c),
    );
    return c.json(
      {
        id: accepted.id,
        grantId: accepted.grantId,
        licenseVersionId: accepted.licenseVersionId,
        licenseSha256: accepted.licenseSha256 ?? "",
        aupSha256: accepted.aupSha256 ?? "",
        acceptedAt: accepted.acceptedAt ?? "",
        acceptedByUserId: accepted.acceptedByUserId ?? "",
        country: accepted.country,
      },
      200,
    );
  });

licenseRoutes.openAPIRegistry.register("LicenseReacceptance", ReacceptanceForm);
