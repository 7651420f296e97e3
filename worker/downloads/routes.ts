import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { MAX_LINK_TTL_SECONDS } from "../config";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { assertCovered } from "../grants/coverage";
import { newRouter, problemResponses } from "../http/router";
import { REACCEPT_WARNING_HEADER } from "../licenses/reacceptance";
import { currentLicenseVersion, documentText, licenseVersionById } from "../licenses/store";
import { findModel } from "../policy/families";
import { exportRefusal } from "../screening/use-country";
import { requireAccessToken } from "../tokens/middleware";
import type { TokenPrincipal } from "../tokens/service";
import { resolveRevisionWithFiles } from "./catalog";
import { planDownloadLink, recordDownloadLink, signDownloadLinks } from "./links";
import { type BundledText, downloadScript } from "./script";
import { serveDownload } from "./serve";
import { publicDownloadJwks } from "./signing";

/** The model a token may download, or the problem why not (unknown: 404; outside its coverage or export rules: 403). */
function downloadableModel(c: Context<HonoEnv>, principal: TokenPrincipal, modelId: string) {
  const found = findModel(modelId);
  if (!found) throw new AppError("not_found", `No model named ${modelId}.`);
  assertCovered(principal, found.model.id);
  const refusal = exportRefusal(c.get("services"), {
    family: found.family,
    organizationId: principal.organizationId,
    surface: "downloads",
    request: c.req.raw,
    waitUntil: (work) => c.executionCtx.waitUntil(work),
  });
  if (refusal) throw refusal;
  return found;
}

/**
 * Everything a manifest or a download script is made of: the revision, its files, and the
 * freshly signed link that opens each, for a model `downloadableModel` allowed.
 */
async function linkedRevision(
  c: Context<HonoEnv>,
  modelId: string,
  query: { revision?: string | undefined; ttl?: number | undefined },
) {
  const principal = c.get("principal") as TokenPrincipal;
  const services = c.get("services");
  const plan = planDownloadLink(services, principal, modelId, query.ttl);
  const found = await resolveRevisionWithFiles(services.db, modelId, query.revision, (revisionIds) =>
    recordDownloadLink(services.db, plan, revisionIds),
  );
  if (!found) throw new AppError("not_found", `No revision ${query.revision ?? "main"} of ${modelId}.`);
  const { revision, files } = found;
  return { revision, files, links: await signDownloadLinks(services, plan, revision.id, files) };
}

const ManifestQuery = z.object({
  revision: z.string().max(64).optional().openapi({ description: "A revision id or `main` (default)." }),
  ttl: z.coerce
    .number()
    .int()
    .min(60)
    .max(MAX_LINK_TTL_SECONDS)
    .optional()
    .openapi({ description: "Link lifetime in seconds (default from configuration, at most 24 hours)." }),
});
const ModelParam = z.object({ model: z.string().min(1).max(64).openapi({ example: "llama-2-7b" }) });

const ManifestSchema = z
  .object({
    model: z.string(),
    family: z.string(),
    revision: z.string(),
    expiresAt: z.string().openapi({ description: "When every link in this manifest stops working." }),
    downloadsAllowed: z.number().int().openapi({
      description: "Whole downloads each link allows, counted in bytes: ranges and resumes draw on `maxBytes`.",
    }),
    totalBytes: z.number().int(),
    files: z.array(
      z.object({
        path: z.string(),
        size: z.number().int(),
        sha256: z.string(),
        url: z.string(),
        maxBytes: z
          .number()
          .int()
          .openapi({ description: "Bytes the link may serve of this file in all, probes included." }),
      }),
    ),
    notice: z.string(),
    license: z
      .object({
        version: z.number().int(),
        sha256: z.string(),
        url: z.string(),
        aupSha256: z.string(),
        aupUrl: z.string(),
      })
      .openapi({ description: "The license version the organization accepted, which these files are used under." }),
  })
  .openapi("Manifest");

const manifestRoute = createRoute({
  method: "get",
  path: "/v1/models/{model}/manifest",
  tags: ["Weights"],
  summary: "Every file of a model revision with its size, sha256 and a signed download link",
  security: [{ accessToken: [] }],
  middleware: [requireAccessToken("download")] as const,
  request: { params: ModelParam, query: ManifestQuery },
  responses: {
    200: { description: "The manifest", content: { "application/json": { schema: ManifestSchema } } },
    ...problemResponses(401, 403, 404),
  },
});

const scriptRoute = createRoute({
  method: "get",
  path: "/v1/models/{model}/download.sh",
  tags: ["Weights"],
  summary: "A POSIX shell script that downloads, resumes and verifies a revision",
  security: [{ accessToken: [] }],
  middleware: [requireAccessToken("download")] as const,
  request: { params: ModelParam, query: ManifestQuery },
  responses: {
    200: { description: "The script", content: { "text/x-shellscript": { schema: z.string() } } },
    ...problemResponses(401, 403, 404),
  },
});

/**
 * The license version a download carries: the one the organization accepted for its grant (a
 * newer version it has yet to accept is not its license), else the family's current one.
 */
async function acceptedLicense(c: Context<HonoEnv>, family: string) {
  const { db } = c.get("services");
  const principal = c.get("principal") as TokenPrincipal;
  if (principal.reacceptBy) c.header(REACCEPT_WARNING_HEADER, principal.reacceptBy);
  const accepted = principal.licenseVersionId ? await licenseVersionById(db, principal.licenseVersionId) : undefined;
  return accepted ?? (await currentLicenseVersion(db, family));
}

async function bundledTexts(
  c: Context<HonoEnv>,
  family: string,
  notice: string,
  paths: Set<string>,
): Promise<BundledText[]> {
  const { db } = c.get("services");
  const license = await acceptedLicense(c, family);
  const texts: BundledText[] = [{ path: "NOTICE", text: `${notice}\n` }];
  if (license) {
    texts.push({ path: "LICENSE", text: (await documentText(db, license.licenseSha256)) ?? "" });
    texts.push({ path: "USE_POLICY.md", text: (await documentText(db, license.aupSha256)) ?? "" });
  }
  return texts.filter((t) => !paths.has(t.path));
}

export const downloadRoutes = newRouter();

downloadRoutes.get("/.well-known/jwks.json", async (c) => {
  c.header("cache-control", "public, max-age=300");
  return c.json(await publicDownloadJwks(c.get("services").config));
});

downloadRoutes
  .openapi(manifestRoute, async (c) => {
    const services = c.get("services");
    const { model, family } = downloadableModel(c, c.get("principal") as TokenPrincipal, c.req.valid("param").model);
    // Independent reads: the license's lookup overlaps the revision's and the link's.
    const [{ revision, links }, license] = await Promise.all([
      linkedRevision(c, model.id, c.req.valid("query")),
      acceptedLicense(c, family.id),
    ]);
    c.header("cache-control", "no-store");
    return c.json(
      {
        model: model.id,
        family: family.id,
        revision: revision.id,
        expiresAt: links.expiresAt,
        downloadsAllowed: links.downloadsAllowed,
        totalBytes: revision.totalBytes,
        files: links.files,
        notice: family.noticeText,
        license: {
          version: license?.version ?? 0,
          sha256: license?.licenseSha256 ?? "",
          url: `${services.config.publicBaseUrl}/v1/licenses/${family.id}/versions/${license?.version ?? 0}/text`,
          aupUrl: `${services.config.publicBaseUrl}/v1/licenses/${family.id}/versions/${license?.version ?? 0}/aup`,
          aupSha256: license?.aupSha256 ?? "",
        },
      },
      200,
    );
  })
  .openapi(scriptRoute, async (c) => {
    const { model, family } = downloadableModel(c, c.get("principal") as TokenPrincipal, c.req.valid("param").model);
    const { revision, files, links } = await linkedRevision(c, model.id, c.req.valid("query"));
    const texts = await bundledTexts(c, family.id, family.noticeText, new Set(files.map((f) => f.path)));
    const script = downloadScript({
      model: model.id,
      revision: revision.id,
      expiresAt: links.expiresAt,
      downloadsAllowed: links.downloadsAllowed,
      files: links.files,
      texts,
    });
    return c.body(script, 200, {
      "content-type": "text/x-shellscript; charset=utf-8",
      "content-disposition": `attachment; filename="download-${model.id}.sh"`,
      "cache-control": "no-store",
    });
  });

downloadRoutes.on(["GET", "HEAD"], "/v1/download/:model/:revision/:path{.+}", (c) =>
  serveDownload(c, c.req.param("model"), c.req.param("revision"), c.req.param("path")),
);
