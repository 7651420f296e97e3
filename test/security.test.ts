/**
 * The gateway from an attacker's side, across surfaces: data that tries to reach
 * `Object.prototype`, the admin API's one door walked operation by operation from the published
 * OpenAPI document, the headers every HTML page carries, and the cost of anonymous pages.
 */
import { env } from "cloudflare:workers";
import { generateKeyPair } from "jose";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { DEV_ACCESS_COOKIE } from "../worker/auth/access";
import { ADMIN_ROLES, type AdminRole, readConfig } from "../worker/config";
import { HTTP_METHODS, type OpenApiDocument, type OperationObject } from "../worker/docs/openapi";
import { formToObject } from "../worker/http/router";
import { ownProperty, parseUntrustedJson } from "../worker/platform/untrusted";
import { accessClaims, adminToken, signAccessClaims } from "./helpers/access";
import { seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

/** Every operation of the published document, with its path and method. */
async function operations(gateway: Gateway) {
  const res = await gateway.request("/openapi.json");
  expect(res.status).toBe(200);
  const doc = (await res.json()) as OpenApiDocument;
  const out: { path: string; method: string; op: OperationObject & { "x-required-role"?: AdminRole } }[] = [];
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of HTTP_METHODS) {
      const op = (item as Record<string, OperationObject | undefined>)[method];
      if (op) out.push({ path, method, op });
    }
  }
  return out;
}

/** A concrete URL for a templated path: every parameter filled with a harmless value. */
function concrete(path: string): string {
  return path.replace(/\{[^}]+\}/g, "x1");
}

async function expectProblem(res: Response, status: number, code: string, what: string) {
  expect(res.status, what).toBe(status);
  expect(res.headers.get("content-type"), what).toContain("application/problem+json");
  expect(((await res.json()) as { code: string }).code, what).toBe(code);
}

describe("security: untrusted keys never reach Object.prototype", () => {
  const prototypeNames = Object.getOwnPropertyNames(Object.prototype).sort();

  afterEach(() => {
    // A failing test must not leave the isolate poisoned for the tests after it.
    for (const name of Object.getOwnPropertyNames(Object.prototype)) {
      if (!prototypeNames.includes(name)) delete (Object.prototype as Record<string, unknown>)[name];
    }
  });

  it("turns dotted form names into objects without prototypes and refuses prototype keys", () => {
    const form = new FormData();
    form.append("organization.name", "Acme");
    form.append("models", "a");
    form.append("models", "b");
    const object = formToObject(form);
    expect(Object.getPrototypeOf(object)).toBeNull();
    expect(object).toEqual({ organization: { name: "Acme" }, models: ["a", "b"] });
    for (const name of ["__proto__.polluted", "constructor.prototype.polluted", "a.__proto__", "prototype"]) {
      const bad = new FormData();
      bad.append(name, "yes");
      expect(() => formToObject(bad), name).toThrow(/not allowed/);
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it("refuses JSON documents holding prototype keys at any depth", () => {
    expect(() => parseUntrustedJson('{"a":{"b":[{"__proto__":{"x":1}}]}}')).toThrow(/not allowed/);
    expect(() => parseUntrustedJson('{"constructor":{"prototype":{"x":1}}}')).toThrow(/not allowed/);
    expect(parseUntrustedJson('{"a":[1,{"b":"__proto__"}]}')).toEqual({ a: [1, { b: "__proto__" }] });
  });

  it("reads optional properties of decoded data only when the data itself holds them", () => {
    const inherited = Object.create({ groups: ["modelgate-admins"] }) as object;
    expect(ownProperty(inherited, "groups")).toBeUndefined();
    expect(ownProperty({ groups: ["x"] }, "groups")).toEqual(["x"]);
    expect(ownProperty(null, "groups")).toBeUndefined();
    expect(ownProperty("text", "length")).toBeUndefined();
  });

  it("does not make a role-less Access user an admin even when Object.prototype was polluted", async () => {
    const gateway = testGateway();
    const token = await adminToken({ email: "nobody@example.com", role: null });
    const proto = Object.prototype as Record<string, unknown>;
    proto.custom = { groups: ["modelgate-admins"] };
    proto.groups = ["modelgate-admins"];
    try {
      await expectProblem(
        await gateway.request("/admin/api/me", { headers: { "cf-access-jwt-assertion": token } }),
        403,
        "forbidden",
        "role-less user over a polluted prototype",
      );
    } finally {
      delete proto.custom;
      delete proto.groups;
    }
  });

  it("answers every body-reading operation's poisoned JSON and form posts with a 4xx and leaves Object.prototype clean", async () => {
    const gateway = testGateway();
    const admin = await adminToken({ email: "root@example.com", role: "admin" });
    const targets = (await operations(gateway)).filter(({ op }) => op.requestBody);
    // The public form and the completion routes read bodies too, whether or not documented.
    const paths = new Set(targets.map(({ path, method }) => `${method} ${path}`));
    for (const extra of ["post /v1/applications", "post /v1/chat/completions", "post /v1/completions"]) {
      if (!paths.has(extra)) {
        const [method, path] = extra.split(" ") as [string, string];
        targets.push({ path, method, op: {} });
      }
    }
    expect(targets.length).toBeGreaterThanOrEqual(10);
    const json = JSON.stringify({ family: "llama-2" }).replace(
      "{",
      '{"__proto__":{"polluted":"json","custom":{"groups":["modelgate-admins"]}},"constructor":{"prototype":{"polluted":"json"}},',
    );
    const form =
      "__proto__.polluted=form&__proto__.custom.groups=modelgate-admins&constructor.prototype.polluted=form&family=llama-2";
    for (const { path, method } of targets) {
      for (const [type, body] of [
        ["application/json", json],
        ["application/x-www-form-urlencoded", form],
      ] as const) {
        const res = await gateway.request(concrete(path), {
          method: method.toUpperCase(),
          headers: {
            "content-type": type,
            "cf-access-jwt-assertion": admin,
            authorization: "Bearer mg_not_a_real_token",
          },
          body,
        });
        const what = `${method.toUpperCase()} ${path} (${type}) answered ${res.status}`;
        expect(res.status, what).toBeGreaterThanOrEqual(400);
        expect(res.status, what).toBeLessThan(500);
      }
    }
    expect(Object.getOwnPropertyNames(Object.prototype).sort()).toEqual(prototypeNames);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(({} as Record<string, unknown>).custom).toBeUndefined();
    // And the body readers still work for everyone afterwards.
    const nobody = await adminToken({ email: "nobody@example.com", role: null });
    await expectProblem(
      await gateway.request("/admin/api/me", { headers: { "cf-access-jwt-assertion": nobody } }),
      403,
      "forbidden",
      "role-less user after the poisoned posts",
    );
  });

  it("refuses a poisoned application post as malformed_body, not as a server error", async () => {
    const gateway = testGateway();
    for (const [type, body] of [
      ["application/x-www-form-urlencoded", "__proto__.x=1"],
      ["application/x-www-form-urlencoded", "constructor.prototype.x=1"],
      ["application/json", '{"organization":{"__proto__":{"x":1}}}'],
    ] as const) {
      await expectProblem(
        await gateway.request("/v1/applications", { method: "POST", headers: { "content-type": type }, body }),
        400,
        "malformed_body",
        `${type} ${body}`,
      );
    }
  });
});

describe("security: request bodies are counted while they are read", () => {
  it("refuses a chunked application body past the limit without reading it all", async () => {
    const gateway = testGateway();
    let pulled = 0;
    const chunk = new TextEncoder().encode(`"${"a".repeat(16 * 1024)}",`);
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        pulled += 1;
        if (pulled > 1000) controller.close();
        else controller.enqueue(chunk);
      },
    });
    const res = await gateway.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body,
      duplex: "half",
    } as RequestInit);
    await expectProblem(res, 413, "payload_too_large", "chunked body over the limit");
    expect(pulled).toBeLessThan(20);
  });

  it("refuses a declared length over the limit before reading", async () => {
    const gateway = testGateway();
    const res = await gateway.request("/v1/applications", {
      method: "POST",
      headers: { "content-type": "application/json", "content-length": String(10 * 1024 * 1024) },
      body: "{}",
    });
    await expectProblem(res, 413, "payload_too_large", "declared length over the limit");
  });
});

describe("security: the admin API is one guarded door", () => {
  let gateway: Gateway;
  beforeEach(() => {
    gateway = testGateway();
  });

  /** A valid Access token for someone whose highest role is just below `role` (none below reviewer). */
  async function tokenBelow(role: AdminRole): Promise<string> {
    const below = ADMIN_ROLES[ADMIN_ROLES.indexOf(role) - 1] ?? null;
    return adminToken({ email: `below-${role}@example.com`, role: below });
  }

  it("walks every admin operation of /openapi.json: 401 without or with a forged token, 403 below its role or cross-site", async () => {
    const { privateKey } = await generateKeyPair("ES256");
    const forged = await signAccessClaims(accessClaims({ role: "admin" }), { key: privateKey });
    const admin = await adminToken({ email: "root@example.com", role: "admin" });
    const ops = (await operations(gateway)).filter(({ path }) => path.startsWith("/admin/api/"));
    // The surface as it stands: a route added outside `adminRoute` would miss its role below.
    expect(ops.length).toBeGreaterThanOrEqual(20);
    for (const must of [
      "/admin/api/billing/outbox",
      "/admin/api/organizations/{id}/limits",
      "/admin/api/audit/verify",
    ]) {
      expect(
        ops.some(({ path }) => path === must),
        must,
      ).toBe(true);
    }
    for (const { path, method, op } of ops) {
      const name = `${method.toUpperCase()} ${path}`;
      const role = op["x-required-role"];
      expect(role, `${name} declares its role`).toBeOneOf([...ADMIN_ROLES]);
      expect(op.security, `${name} names the Access scheme`).toEqual([{ cloudflareAccess: [] }]);
      const url = concrete(path);
      const init = (headers: Record<string, string>): RequestInit => ({
        method: method.toUpperCase(),
        headers: { "content-type": "application/json", ...headers },
        ...(method === "get" || method === "head" ? {} : { body: "{}" }),
      });
      await expectProblem(await gateway.request(url, init({})), 401, "unauthorized", `${name} without a token`);
      await expectProblem(
        await gateway.request(url, init({ "cf-access-jwt-assertion": forged })),
        401,
        "unauthorized",
        `${name} with a forged token`,
      );
      await expectProblem(
        await gateway.request(url, init({ "cf-access-jwt-assertion": await tokenBelow(role as AdminRole) })),
        403,
        "forbidden",
        `${name} below its role`,
      );
      if (method !== "get" && method !== "head") {
        await expectProblem(
          await gateway.request(
            url,
            init({ "cf-access-jwt-assertion": admin, origin: "https://evil.example", "sec-fetch-site": "cross-site" }),
          ),
          403,
          "cross_site_request",
          `${name} cross-site`,
        );
      }
    }
  });

  it("guards admin paths that no operation claims", async () => {
    for (const method of ["GET", "POST", "DELETE"]) {
      await expectProblem(
        await gateway.request("/admin/api/not-a-route", { method }),
        401,
        "unauthorized",
        `${method} unclaimed`,
      );
    }
  });
});

describe("security: HTML pages carry security headers", () => {
  it("sets a CSP without framing, no-referrer and nosniff on applicant pages, and keeps stricter page policies", async () => {
    const gateway = testGateway();
    await seedLicense(gateway.services);
    const form = await gateway.request("/apply/llama-2");
    expect(form.headers.get("content-type")).toContain("text/html");
    const csp = form.headers.get("content-security-policy") ?? "";
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("object-src 'none'");
    expect(form.headers.get("referrer-policy")).toBe("no-referrer");
    expect(form.headers.get("x-content-type-options")).toBe("nosniff");
    expect(form.headers.get("x-frame-options")).toBe("DENY");

    const docs = await gateway.request("/docs");
    expect(docs.headers.get("content-security-policy")).toContain("default-src 'none'");
    expect(docs.headers.get("referrer-policy")).toBe("no-referrer");

    const json = await gateway.request("/health");
    expect(json.headers.get("content-security-policy")).toBeNull();
  });
});

describe("security: anonymous documentation pages are built once", () => {
  it("builds the OpenAPI document once per isolate, however often /docs and /openapi.json are asked for", async () => {
    const gateway = testGateway();
    const build = vi.spyOn(gateway.app, "getOpenAPI31Document");
    const first = await (await gateway.request("/docs")).text();
    for (let i = 0; i < 5; i += 1) {
      expect(await (await gateway.request("/docs")).text()).toBe(first);
      expect((await gateway.request("/openapi.json")).status).toBe(200);
    }
    expect(build).toHaveBeenCalledTimes(1);
  });
});

describe("security: the local sign-in exists only when asked for, on a loopback origin", () => {
  it("answers 404 for /admin/dev-login and ignores the dev cookie without DEV_LOGIN=1, though an inline JWKS is trusted", async () => {
    const gateway = testGateway(undefined, { DEV_LOGIN: "" });
    await expectProblem(await gateway.request("/admin/dev-login"), 404, "not_found", "dev login page");
    const token = await adminToken({ email: "root@example.com", role: "admin" });
    await expectProblem(
      await gateway.request("/admin/api/me", { headers: { cookie: `${DEV_ACCESS_COOKIE}=${token}` } }),
      401,
      "unauthorized",
      "dev cookie without DEV_LOGIN",
    );
  });

  it("serves the sign-in page with DEV_LOGIN=1 on a loopback origin", async () => {
    const gateway = testGateway(undefined, { DEV_LOGIN: "1", PUBLIC_BASE_URL: "http://localhost:8787" });
    const res = await gateway.request("/admin/dev-login");
    expect(res.status).toBe(200);
  });

  it("refuses DEV_LOGIN=1 on a public origin instead of opening the sign-in page there", () => {
    for (const origin of ["https://gateway.example.com", "http://127.evil.example", "http://10.0.0.1"]) {
      expect(() => readConfig({ ...env, DEV_LOGIN: "1", PUBLIC_BASE_URL: origin }), origin).toThrow(/DEV_LOGIN/);
    }
    expect(() => readConfig({ ...env, DEV_LOGIN: "yes" })).toThrow(/DEV_LOGIN/);
    expect(readConfig({ ...env, DEV_LOGIN: "1", PUBLIC_BASE_URL: "http://127.0.0.1:9000" }).access.devLogin).toBe(true);
    expect(readConfig({ ...env, DEV_LOGIN: "" }).access.devLogin).toBe(false);
  });
});
