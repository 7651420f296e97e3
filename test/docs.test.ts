import { exports } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { HTTP_METHODS, type OpenApiDocument, schemaTokens } from "../worker/docs/openapi";
import { renderApiReference } from "../worker/docs/reference";

async function openApi(): Promise<OpenApiDocument> {
  const res = await exports.default.fetch("http://gw/openapi.json");
  expect(res.status).toBe(200);
  return (await res.json()) as OpenApiDocument;
}

function schemaText(schema: Parameters<typeof schemaTokens>[0]): string {
  return schemaTokens(schema)
    .map((t) => (typeof t === "string" ? t : "ref" in t ? `#${t.ref}` : t.note))
    .join("");
}

describe("GET /openapi.json", () => {
  it("is an OpenAPI 3.1.0 document that describes the license routes", async () => {
    const doc = await openApi();
    expect(doc.openapi).toBe("3.1.0");
    expect(doc.paths).toHaveProperty(["/v1/licenses/{family}", "get"]);
  });
});

describe("GET /docs", () => {
  it("is an HTML page listing every operation of the OpenAPI document", async () => {
    const doc = await openApi();
    const res = await exports.default.fetch("http://gw/docs");
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/html/);
    const html = await res.text();
    expect(html.startsWith("<!doctype html>")).toBe(true);
    expect(html).toContain("<code>/v1/licenses/{family}</code>");
    const operations = Object.entries(doc.paths ?? {}).flatMap(([path, item]) =>
      HTTP_METHODS.filter((m) => m in item).map((method) => ({ method, path })),
    );
    expect(operations.length).toBeGreaterThan(2);
    for (const { method, path } of operations) {
      expect(html, `${method} ${path}`).toContain(`${method.toUpperCase()} ${path.replaceAll("&", "&amp;")}`);
    }
  });

  it("shows parameters, request bodies and response schemas", async () => {
    const html = await (await exports.default.fetch("http://gw/docs")).text();
    expect(html).toMatch(/<h4>Parameters<\/h4>/);
    expect(html).toContain("<strong>200</strong>");
    expect(html).toContain('<a href="#schema-License">License</a>');
    expect(html).toContain('id="schema-License"');
    expect(html).toContain("mauRule: &quot;greater_than&quot;");
  });

  it("loads nothing from elsewhere and runs no script", async () => {
    const res = await exports.default.fetch("http://gw/docs");
    expect(res.headers.get("content-security-policy")).toContain("default-src 'none'");
    const html = await res.text();
    expect(html).not.toMatch(/<script|<link|\ssrc=|@import|url\(/i);
    expect(html).toMatch(/<main id="main">/);
    expect(html).toMatch(/<nav aria-label="Contents">/);
    expect(html).toMatch(/<meta name="viewport"/);
  });

  it("escapes text from the document", async () => {
    const evil = "<script>alert(1)</script>";
    const html = await renderApiReference({
      openapi: "3.1.0",
      info: { title: `API ${evil}`, version: "1" },
      paths: {
        "/x/{id}": {
          get: {
            tags: [evil],
            summary: evil,
            parameters: [{ name: "id", in: "path", required: true, description: evil, schema: { type: "string" } }],
            responses: {
              "200": {
                description: evil,
                content: { "application/json": { schema: { type: "string", enum: [evil] } } },
              },
            },
          },
        },
      },
    });
    expect(html).not.toContain("<script>");
    expect(html).toContain("&lt;script&gt;alert(1)&lt;/script&gt;");
  });
});

describe("schema rendering", () => {
  it("writes objects, optional fields, arrays, references, unions and constraints compactly", () => {
    const text = schemaText({
      type: "object",
      properties: {
        email: { type: "string", format: "email", maxLength: 200 },
        mau: { type: "integer", minimum: 0 },
        models: { type: "array", items: { $ref: "#/components/schemas/Model" }, minItems: 1 },
        note: { type: ["string", "null"], description: "Shown to the applicant" },
        kind: { anyOf: [{ const: "a" }, { const: "b" }] },
      },
      required: ["email", "models"],
    });
    expect(text).toBe(
      [
        "{",
        "  email: string (email, ≤ 200 chars)",
        "  mau?: integer (≥ 0)",
        "  models: #Model[] (≥ 1 items)",
        "  note?: string | null  // Shown to the applicant",
        '  kind?: "a" | "b"',
        "}",
      ].join("\n"),
    );
  });
});
