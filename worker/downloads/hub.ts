/**
 * A Hugging Face Hub–compatible surface over the catalog, so `@huggingface/hub`, the `hf` CLI
 * (`huggingface-cli` in 0.x) and `huggingface_hub` (`HF_ENDPOINT=…`) download gated weights
 * unchanged, and `hf auth login` accepts a modelgate token. Errors carry the Hub's
 * `X-Error-Code` header, which the Python client maps to its exceptions (`GatedRepo`,
 * `RepoNotFound`, `RevisionNotFound`, `EntryNotFound`).
 */
import type { Context } from "hono";
import { bearerToken } from "../auth/bearer";
import type { ModelFile } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError, type ProblemCode, problemResponse } from "../errors";
import { modelCoverage } from "../grants/coverage";
import { newRouter } from "../http/router";
import { findModelByHubRepo } from "../policy/families";
import type { FamilyModel, LicenseFamily } from "../policy/types";
import { exportRefusal } from "../screening/use-country";
import { tokenProblem } from "../tokens/middleware";
import { checkAccessToken, type TokenPrincipal, type TokenRefusal } from "../tokens/service";
import { findRevisionFile, listRevisionFiles, type Revision, resolveRevision } from "./catalog";
import { issueDownloadLinks } from "./links";
import { isFilePath, isHubTrue, isRepoId, isRevision } from "./names";
import { whoAmI } from "./whoami";

type HubErrorCode = "GatedRepo" | "RepoNotFound" | "RevisionNotFound" | "EntryNotFound";

/**
 * A header value from text that may carry what a client sent (a repo id, a path): every byte
 * outside printable ASCII, and `%` itself, is percent-encoded, so CR, LF, NUL or Unicode can
 * neither split the header nor make the runtime refuse it.
 */
function headerSafe(text: string): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    out +=
      byte >= 0x20 && byte < 0x7f && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

const PROBLEM_OF_STATUS = { 401: "unauthorized", 403: "forbidden", 404: "not_found" } as const;

/** What a Hub error may carry beyond its message. */
interface HubErrorOptions {
  /**
   * The Hub's own wording for the `error` member and `X-Error-Message`, when it differs from the
   * detail: `huggingface_hub` tells some errors apart by that exact text.
   */
  hubMessage?: string;
  extensions?: Record<string, unknown>;
  /** The problem code, when it is not the status's own (`export_restricted`). */
  problemCode?: ProblemCode;
}

/**
 * A Hub error as a problem document, with the `X-Error-Code` and `X-Error-Message` headers Hub
 * clients read and the `error` member `huggingface_hub` shows.
 */
function hubError(
  c: Context<HonoEnv>,
  status: 401 | 403 | 404,
  code: HubErrorCode | null,
  message: string,
  options: HubErrorOptions = {},
): Response {
  const hubMessage = options.hubMessage ?? message;
  const headers: Record<string, string> = { "x-error-message": headerSafe(hubMessage) };
  if (code) headers["x-error-code"] = code;
  if (status === 401) headers["www-authenticate"] = 'Bearer realm="modelgate"';
  const error = new AppError(options.problemCode ?? PROBLEM_OF_STATUS[status], message, {
    headers,
    extensions: { ...options.extensions, error: hubMessage },
  });
  const response = problemResponse(error, new URL(c.req.url).pathname, c.get("requestId"));
  if (c.req.method === "HEAD") return new Response(null, { status, headers: response.headers });
  return response;
}

/**
 * Refuses a repo id, revision or path no repository can have, the way the Hub names what it does
 * not hold. The answer does not repeat the input: it was not a name.
 */
function malformedName(c: Context<HonoEnv>, repo: string, revision: string, path?: string): Response | undefined {
  if (!isRepoId(repo)) return hubError(c, 404, "RepoNotFound", "Repository not found: not a valid repo id.");
  if (!isRevision(revision)) return hubError(c, 404, "RevisionNotFound", "Revision not found: not a valid revision.");
  if (path !== undefined && !isFilePath(path)) {
    return hubError(c, 404, "EntryNotFound", "Entry not found: not a valid file path.");
  }
  return undefined;
}

/**
 * A refused token, said the way the Hub says it for a gated repo (401 without a live token, 403
 * with one that may not download) and with the reason: the token-wide wording every surface
 * uses, and for a token without the download scope, that scope by name.
 */
function refusedToken(c: Context<HonoEnv>, repo: string, refusal: TokenRefusal): Response {
  if (refusal === "scope") {
    return hubError(
      c,
      403,
      "GatedRepo",
      `Access to ${repo} is restricted and this token lacks the download scope. Mint a token with the download scope (POST /v1/tokens, signed in at /account).`,
      { extensions: { requiredScope: "download" } },
    );
  }
  if (refusal === "missing") {
    return hubError(
      c,
      401,
      "GatedRepo",
      `Access to ${repo} is restricted. Send a modelgate token with the download scope, prefixed hf_ (HF_TOKEN=hf_mg_... or --token hf_mg_...).`,
    );
  }
  const problem = tokenProblem(refusal, "download", c.get("services").config.publicBaseUrl);
  return hubError(
    c,
    problem.status === 401 ? 401 : 403,
    "GatedRepo",
    `Access to ${repo} is restricted. ${problem.message}`,
    refusal === "reacceptance_required" ? { problemCode: problem.code, extensions: problem.extensions } : {},
  );
}

interface HubTarget {
  principal: TokenPrincipal;
  family: LicenseFamily;
  model: FamilyModel;
  revision: Revision;
}

/**
 * Resolves a repo and revision for a token the way the Hub does for gated repos: unknown repo
 * 404, no live token 401, a token that may not download the repo's model 403 `GatedRepo`, saying
 * why: the scope, the grant, or the coverage of the grant or token.
 */
async function hubTarget(
  c: Context<HonoEnv>,
  repo: string,
  revision: string,
  path?: string,
): Promise<HubTarget | Response> {
  const malformed = malformedName(c, repo, revision, path);
  if (malformed) return malformed;
  const found = findModelByHubRepo(repo);
  if (!found) return hubError(c, 404, "RepoNotFound", `Repository ${repo} not found.`);
  const services = c.get("services");
  const check = await checkAccessToken(services, bearerToken(c.req.header("authorization")), "download");
  if (!check.ok) return refusedToken(c, repo, check.refusal);
  const coverage = modelCoverage(check.principal, found.model.id);
  if (!coverage.covered) return hubError(c, 403, "GatedRepo", coverage.detail);
  const refusal = exportRefusal(services, {
    family: found.family,
    organizationId: check.principal.organizationId,
    surface: "hub",
    request: c.req.raw,
    waitUntil: (work) => c.executionCtx.waitUntil(work),
  });
  if (refusal) {
    return hubError(c, 403, "GatedRepo", refusal.message, {
      problemCode: refusal.code,
      extensions: refusal.extensions,
    });
  }
  const rev = await resolveRevision(services.db, found.model.id, revision === "HEAD" ? "main" : revision);
  if (!rev) return hubError(c, 404, "RevisionNotFound", `Revision ${revision} of ${repo} not found.`);
  return { principal: check.principal, ...found, revision: rev };
}

function sibling(file: ModelFile) {
  return { rfilename: file.path, size: file.size, lfs: { sha256: file.sha256, size: file.size, pointerSize: 134 } };
}

async function modelInfo(c: Context<HonoEnv>, repo: string, revision: string) {
  const target = await hubTarget(c, repo, revision);
  if (target instanceof Response) return target;
  const files = await listRevisionFiles(c.get("services").db, target.revision.id);
  return c.json({
    _id: target.revision.id,
    id: target.model.hubRepo,
    modelId: target.model.hubRepo,
    author: target.model.hubRepo.split("/")[0],
    sha: target.revision.id,
    lastModified: target.revision.createdAt,
    createdAt: target.revision.createdAt,
    private: false,
    gated: "manual",
    disabled: false,
    downloads: 0,
    likes: 0,
    pipeline_tag: "text-generation",
    library_name: "transformers",
    tags: ["text-generation", target.family.id],
    cardData: { license: target.family.id.replace("-", ""), extra_gated_prompt: target.family.licenseName },
    siblings: files.map(sibling),
  });
}

/** Tree entries under `prefix`: files, and with `recursive=false` the directories one level down. */
function treeEntries(files: ModelFile[], prefix: string, recursive: boolean) {
  const base = prefix ? `${prefix.replace(/\/+$/, "")}/` : "";
  const entries: Record<string, unknown>[] = [];
  const directories = new Set<string>();
  for (const file of files) {
    if (!file.path.startsWith(base)) continue;
    const rest = file.path.slice(base.length);
    const slash = rest.indexOf("/");
    if (!recursive && slash >= 0) {
      directories.add(base + rest.slice(0, slash));
      continue;
    }
    if (recursive) {
      const parts = rest.split("/").slice(0, -1);
      for (let i = 1; i <= parts.length; i++) directories.add(base + parts.slice(0, i).join("/"));
    }
    entries.push({
      type: "file",
      oid: file.sha256.slice(0, 40),
      size: file.size,
      path: file.path,
      lfs: { oid: file.sha256, size: file.size, pointerSize: 134 },
    });
  }
  const dirs = [...directories].sort().map((path) => ({ type: "directory", oid: "0".repeat(40), size: 0, path }));
  return [...dirs, ...entries];
}

/**
 * `resolve`: a redirect to a signed link for the file, with the headers Hub clients read
 * (`X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`). The link is same-origin, so clients keep
 * their `Authorization` header; the link itself does not need it.
 */
async function resolveFile(c: Context<HonoEnv>, repo: string, revision: string, path: string) {
  const target = await hubTarget(c, repo, revision, path);
  if (target instanceof Response) return target;
  const services = c.get("services");
  const file = await findRevisionFile(services.db, target.revision.id, path);
  if (!file) return hubError(c, 404, "EntryNotFound", `${path} does not exist at revision ${target.revision.id}.`);
  const links = await issueDownloadLinks(services, target.principal, target.model.id, target.revision.id, [file]);
  const link = links.files[0] as { url: string };
  return new Response(null, {
    status: 302,
    headers: {
      location: link.url,
      "x-repo-commit": target.revision.id,
      etag: `"${file.sha256}"`,
      "x-linked-etag": `"${file.sha256}"`,
      "x-linked-size": String(file.size),
      "content-length": "0",
      "cache-control": "no-store",
    },
  });
}

/** The Hub's answer to a missing or refused token at `whoami-v2`, which its clients match on. */
const INVALID_CREDENTIALS = "Invalid credentials in Authorization header";

/** `whoami-v2`: the token's user, organization and reach; 401 in the Hub's words for any refused token. */
async function whoAmIRoute(c: Context<HonoEnv>) {
  const result = await whoAmI(c.get("services"), bearerToken(c.req.header("authorization")));
  if (!result.ok) {
    const reason = tokenProblem(result.refusal, "download").message;
    return hubError(c, 401, null, `${INVALID_CREDENTIALS}: ${reason}`, { hubMessage: INVALID_CREDENTIALS });
  }
  return c.json(result.answer, 200, { "cache-control": "no-store" });
}

export const hubRoutes = newRouter();

hubRoutes.get("/api/whoami-v2", whoAmIRoute);

hubRoutes.get("/api/models/:ns/:repo", (c) => modelInfo(c, `${c.req.param("ns")}/${c.req.param("repo")}`, "main"));
hubRoutes.get("/api/models/:ns/:repo/revision/:revision", (c) =>
  modelInfo(c, `${c.req.param("ns")}/${c.req.param("repo")}`, c.req.param("revision")),
);
// `[\s\S]`, not `.`: a path with an encoded line break still reaches these routes, whose answer
// carries the Hub's error code, instead of falling through to a generic 404.
hubRoutes.get("/api/models/:ns/:repo/tree/:revision/:path{[\\s\\S]*}?", async (c) => {
  // A directory may be asked for with a trailing slash; the root is no path at all.
  const prefix = (c.req.param("path") ?? "").replace(/\/+$/, "");
  const repo = `${c.req.param("ns")}/${c.req.param("repo")}`;
  const target = await hubTarget(c, repo, c.req.param("revision"), prefix === "" ? undefined : prefix);
  if (target instanceof Response) return target;
  const files = await listRevisionFiles(c.get("services").db, target.revision.id);
  // `expand` adds last commits and security scans, which the catalog does not hold: entries are
  // the same either way.
  return c.json(treeEntries(files, prefix, isHubTrue(c.req.query("recursive"))));
});
hubRoutes.on(["GET", "HEAD"], "/:ns/:repo/resolve/:revision/:path{[\\s\\S]+}", (c) =>
  resolveFile(c, `${c.req.param("ns")}/${c.req.param("repo")}`, c.req.param("revision"), c.req.param("path")),
);
hubRoutes.on(["GET", "HEAD"], "/:ns/:repo/raw/:revision/:path{[\\s\\S]+}", (c) =>
  resolveFile(c, `${c.req.param("ns")}/${c.req.param("repo")}`, c.req.param("revision"), c.req.param("path")),
);
