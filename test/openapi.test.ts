import { exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { newApp } from "../worker/app";
import { HTTP_METHODS, type OpenApiDocument, type OperationObject } from "../worker/docs/openapi";

async function openApi(): Promise<OpenApiDocument> {
  const res = await exports.default.fetch("http://gw/openapi.json");
  expect(res.status).toBe(200);
  return (await res.json()) as OpenApiDocument;
}

interface Op {
  method: string;
  path: string;
  operation: OperationObject;
}

function operations(doc: OpenApiDocument): Op[] {
  return Object.entries(doc.paths ?? {}).flatMap(([path, item]) =>
    HTTP_METHODS.flatMap((method) => {
      const operation = item[method] as OperationObject | undefined;
      return operation ? [{ method, path, operation }] : [];
    }),
  );
}

/** Every `$ref` string anywhere in `value`. */
function refs(value: unknown, out: string[] = []): string[] {
  if (Array.isArray(value)) for (const v of value) refs(v, out);
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k === "$ref" && typeof v === "string") out.push(v);
      else refs(v, out);
    }
  }
  return out;
}

/** Where a local JSON pointer (`#/components/schemas/X`) lands in `doc`, or undefined. */
function resolvePointer(doc: unknown, ref: string): unknown {
  if (!ref.startsWith("#/")) return undefined;
  let node: unknown = doc;
  for (const raw of ref.slice(2).split("/")) {
    const key = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
    if (!node || typeof node !== "object" || !Object.hasOwn(node, key)) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return node;
}

describe("OpenAPI document", () => {
  it("is OpenAPI 3.1 with info and paths", async () => {
    const doc = await openApi();
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    expect(doc.info.title).toBeTruthy();
    expect(doc.info.version).toBeTruthy();
    expect(Object.keys(doc.paths ?? {}).every((p) => p.startsWith("/"))).toBe(true);
  });

  it("names every operation with a unique camelCase operationId", async () => {
    const ops = operations(await openApi());
    expect(ops.length).toBeGreaterThan(60);
    const ids = ops.map((o) => o.operation.operationId);
    const missing = ops.filter((o) => !o.operation.operationId).map((o) => `${o.method} ${o.path}`);
    expect(missing).toEqual([]);
    for (const id of ids) expect(id).toMatch(/^[a-z][A-Za-z0-9]*$/);
    const duplicates = ids.filter((id, i) => ids.indexOf(id) !== i);
    expect(duplicates).toEqual([]);
  });

  it("derives operationIds from method and path where a route states none", async () => {
    const doc = await openApi();
    const op = (path: string, method: string) =>
      (doc.paths?.[path]?.[method] as OperationObject | undefined)?.operationId;
    expect(op("/admin/api/applications/{id}", "get")).toBe("getAdminApplicationsById");
    expect(op("/v1/chat/completions", "post")).toBe("postChatCompletions");
    expect(op("/api/models/{namespace}/{repo}", "get")).toBe("hubGetModelInfo");
  });

  it("puts the Access security scheme on every admin operation, and only known schemes anywhere", async () => {
    const doc = await openApi();
    const schemes = Object.keys(doc.components?.securitySchemes ?? {});
    expect(schemes).toEqual(expect.arrayContaining(["cloudflareAccess", "accessToken"]));
    const admin = operations(doc).filter((o) => o.path.startsWith("/admin/"));
    expect(admin.length).toBeGreaterThan(15);
    for (const { method, path, operation } of admin) {
      expect(operation.security, `${method} ${path}`).toContainEqual({ cloudflareAccess: [] });
    }
    for (const { operation } of operations(doc)) {
      for (const requirement of operation.security ?? []) {
        for (const name of Object.keys(requirement)) expect(schemes).toContain(name);
      }
    }
  });

  it("resolves every $ref, declares every path parameter and describes every response", async () => {
    const doc = await openApi();
    const unresolved = refs(doc).filter((ref) => resolvePointer(doc, ref) === undefined);
    expect(unresolved).toEqual([]);
    for (const { method, path, operation } of operations(doc)) {
      const where = `${method} ${path}`;
      const templated = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
      const declared = (operation.parameters ?? []).filter((p) => p.in === "path");
      expect(declared.map((p) => p.name).sort(), where).toEqual([...templated].sort());
      for (const p of declared) expect(p.required, `${where} ${p.name}`).toBe(true);
      for (const p of operation.parameters ?? []) expect(["path", "query", "header", "cookie"]).toContain(p.in);
      const responses = Object.entries(operation.responses ?? {});
      expect(responses.length, where).toBeGreaterThan(0);
      for (const [status, response] of responses) {
        expect(status, where).toMatch(/^([1-5]\d\d|[1-5]XX|default)$/);
        expect(response.description, `${where} ${status}`).toBeTruthy();
      }
    }
  });

  it("holds every public route: the Hub API, models, downloads, JWKS, health", async () => {
    const doc = await openApi();
    const has = (method: string, path: string) => expect(doc.paths?.[path], path).toHaveProperty(method);
    has("get", "/health");
    has("get", "/v1/models");
    has("get", "/v1/models/{model}");
    has("get", "/v1/download/{model}/{revision}/{path}");
    has("head", "/v1/download/{model}/{revision}/{path}");
    has("get", "/.well-known/jwks.json");
    has("get", "/api/whoami-v2");
    has("get", "/api/models/{namespace}/{repo}");
    has("get", "/api/models/{namespace}/{repo}/revision/{revision}");
    has("get", "/api/models/{namespace}/{repo}/tree/{revision}");
    has("get", "/api/models/{namespace}/{repo}/tree/{revision}/{path}");
    for (const kind of ["resolve", "raw"]) {
      has("get", `/{namespace}/{repo}/${kind}/{revision}/{path}`);
      has("head", `/{namespace}/{repo}/${kind}/{revision}/{path}`);
    }
  });

  it("leaves out no API route the app serves", async () => {
    const doc = await openApi();
    // The app's route table, in OpenAPI's spelling: `:name{pattern}?` → `{name}`.
    const documented = new Set(
      operations(doc).map((o) => `${o.method.toUpperCase()} ${o.path.replaceAll(/\{[^}]+\}/g, "{}")}`),
    );
    const isApi = (path: string) =>
      /^\/(v1|api|admin\/api|\.well-known|webhooks)\//.test(path) || /^\/:ns\/:repo\/(resolve|raw)\//.test(path);
    const served = newApp()
      .routes.filter((r) => r.method !== "ALL" && isApi(r.path))
      .map((r) => `${r.method} ${r.path.replaceAll(/:[A-Za-z]+(\{[^}]*\})?\??/g, "{}")}`);
    expect(served).toContain("GET /{}/{}/resolve/{}/{}");
    expect(served.length).toBeGreaterThan(60);
    // An optional trailing parameter is documented as two paths: with and without it.
    const missing = served.filter((route) => !documented.has(route) && !documented.has(route.replace(/\/\{\}$/, "")));
    expect([...new Set(missing)]).toEqual([]);
  });
});
