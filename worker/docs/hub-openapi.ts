/**
 * The Hugging Face Hub–compatible API (`worker/downloads/hub.ts`) in the OpenAPI document. Those
 * routes are plain Hono handlers shaped by what Hub clients send, not zod-validated routes, so
 * their operations are registered here, beside the document, rather than derived from them.
 * Paths use the Hub's own names; `{path}` may hold `/` (a file in a subfolder), which OpenAPI
 * path templates cannot say, so each description does.
 */
import { type OpenAPIHono, z } from "@hono/zod-openapi";
import { ProblemSchema } from "../http/router";

type Registry = OpenAPIHono["openAPIRegistry"];

const TAG = "Hugging Face Hub";

const RepoParams = z.object({
  namespace: z.string().openapi({ description: "The repo's namespace, e.g. `meta-llama`", example: "meta-llama" }),
  repo: z.string().openapi({ description: "The repo's name, e.g. `Llama-2-7b-hf`", example: "Llama-2-7b-hf" }),
});
const RevisionParams = RepoParams.extend({
  revision: z.string().openapi({ description: "`main` or a revision id (the catalog's commit sha)" }),
});
const FileParams = RevisionParams.extend({
  path: z.string().openapi({ description: "The file's path in the repo; may contain `/`" }),
});

const HubError = {
  description: "A Hub error: problem document with the `X-Error-Code` header Hub clients map to their exceptions",
  headers: {
    "X-Error-Code": {
      description: "`GatedRepo`, `RepoNotFound`, `RevisionNotFound` or `EntryNotFound`",
      schema: { type: "string" as const },
    },
  },
  content: { "application/problem+json": { schema: ProblemSchema } },
};
const hubErrors = { 401: HubError, 403: HubError, 404: HubError };

const Sibling = z.object({ rfilename: z.string(), size: z.number().int().optional() }).passthrough();
const ModelInfo = z
  .object({
    id: z.string(),
    modelId: z.string().optional(),
    sha: z.string().describe("The revision id"),
    gated: z.union([z.boolean(), z.string()]).optional(),
    siblings: z.array(Sibling),
  })
  .passthrough()
  .openapi("HubModelInfo");
const TreeEntry = z
  .object({
    type: z.enum(["file", "directory"]),
    oid: z.string(),
    size: z.number().int(),
    path: z.string(),
    lfs: z.object({ oid: z.string(), size: z.number().int(), pointerSize: z.number().int() }).optional(),
  })
  .openapi("HubTreeEntry");
const WhoAmI = z
  .object({
    type: z.literal("user"),
    name: z.string(),
    fullname: z.string(),
    orgs: z.array(z.object({ type: z.literal("org"), id: z.string(), name: z.string(), fullname: z.string() })),
    auth: z.object({
      type: z.literal("access_token"),
      accessToken: z.object({ displayName: z.string(), role: z.string() }).passthrough(),
    }),
  })
  .passthrough()
  .openapi("HubWhoAmI");

const fileHeaders = {
  "X-Repo-Commit": { description: "The revision id", schema: { type: "string" as const } },
  "X-Linked-Etag": { description: "The file's sha256, quoted", schema: { type: "string" as const } },
  "X-Linked-Size": { description: "The file's size in bytes", schema: { type: "string" as const } },
  Location: { description: "A signed download link on this origin (relative)", schema: { type: "string" as const } },
};

/** Registers every operation of the Hub-compatible API in `registry`. */
export function registerHubOperations(registry: Registry): void {
  const security = [{ accessToken: [] }];
  registry.registerPath({
    method: "get",
    path: "/api/whoami-v2",
    operationId: "hubWhoAmI",
    tags: [TAG],
    summary: "Who a token is (`hf auth login`, `HfApi().whoami()`)",
    security,
    responses: {
      200: {
        description: "The token's user, organization and role",
        content: { "application/json": { schema: WhoAmI } },
      },
      401: HubError,
    },
  });
  registry.registerPath({
    method: "get",
    path: "/api/models/{namespace}/{repo}",
    operationId: "hubGetModelInfo",
    tags: [TAG],
    summary: "A model repo's info at `main`, with its files (`model_info`, `snapshot_download`)",
    security,
    request: { params: RepoParams },
    responses: {
      200: { description: "The repo's info", content: { "application/json": { schema: ModelInfo } } },
      ...hubErrors,
    },
  });
  registry.registerPath({
    method: "get",
    path: "/api/models/{namespace}/{repo}/revision/{revision}",
    operationId: "hubGetModelInfoAtRevision",
    tags: [TAG],
    summary: "A model repo's info at a revision",
    security,
    request: { params: RevisionParams },
    responses: {
      200: { description: "The repo's info", content: { "application/json": { schema: ModelInfo } } },
      ...hubErrors,
    },
  });
  const treeQuery = z.object({
    recursive: z
      .string()
      .optional()
      .openapi({ description: "`true`/`True`/`1`: every file under the folder, not only its children" }),
    expand: z.string().optional().openapi({ description: "Accepted and ignored: entries are the same either way" }),
  });
  const tree = {
    200: { description: "The folder's entries", content: { "application/json": { schema: z.array(TreeEntry) } } },
    ...hubErrors,
  };
  registry.registerPath({
    method: "get",
    path: "/api/models/{namespace}/{repo}/tree/{revision}",
    operationId: "hubListRepoTree",
    tags: [TAG],
    summary: "The files at a repo's root (`list_repo_files`, `listFiles`)",
    security,
    request: { params: RevisionParams, query: treeQuery },
    responses: tree,
  });
  registry.registerPath({
    method: "get",
    path: "/api/models/{namespace}/{repo}/tree/{revision}/{path}",
    operationId: "hubListRepoTreeAtPath",
    tags: [TAG],
    summary: "The files in a repo's folder",
    security,
    request: { params: FileParams, query: treeQuery },
    responses: tree,
  });
  for (const [kind, id] of [
    ["resolve", "hubResolveFile"],
    ["raw", "hubRawFile"],
  ] as const) {
    for (const method of ["get", "head"] as const) {
      registry.registerPath({
        method,
        path: `/{namespace}/{repo}/${kind}/{revision}/{path}`,
        operationId: method === "get" ? id : `${id}Head`,
        tags: [TAG],
        summary:
          method === "get"
            ? `A file of a repo (\`hf_hub_download\`${kind === "raw" ? ", `fileExists`" : ""}): a redirect to a signed link`
            : "A file's metadata, as `hf_hub_download` asks first",
        security,
        request: { params: FileParams },
        responses: {
          302: {
            description: "Redirect to a signed download link; the headers describe the file",
            headers: fileHeaders,
          },
          ...hubErrors,
        },
      });
    }
  }
}
