/**
 * The parts of an OpenAPI 3.1 document the reference page reads, and a compact, TypeScript-like
 * rendering of its JSON Schemas. Only what the page shows is typed; anything else is ignored.
 */

/** A JSON Schema (2020-12, as OpenAPI 3.1 embeds it), loosely typed. */
export interface JsonSchema {
  $ref?: string;
  type?: string | string[];
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  items?: JsonSchema;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  format?: string;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  minItems?: number;
  maxItems?: number;
  default?: unknown;
  description?: string;
}

export interface MediaTypeObject {
  schema?: JsonSchema;
}

export interface ParameterObject {
  name: string;
  in: string;
  required?: boolean;
  description?: string;
  schema?: JsonSchema;
}

export interface OperationObject {
  operationId?: string;
  tags?: string[];
  summary?: string;
  description?: string;
  deprecated?: boolean;
  parameters?: ParameterObject[];
  requestBody?: { description?: string; required?: boolean; content?: Record<string, MediaTypeObject> };
  responses?: Record<string, { description?: string; content?: Record<string, MediaTypeObject> }>;
  security?: Record<string, string[]>[];
}

export interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string; description?: string };
  tags?: { name: string; description?: string }[];
  paths?: Record<string, Record<string, OperationObject | unknown>>;
  components?: { schemas?: Record<string, JsonSchema>; securitySchemes?: Record<string, unknown> };
}

export const HTTP_METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"] as const;

/** One operation with where it lives. */
export interface Operation {
  method: (typeof HTTP_METHODS)[number];
  path: string;
  operation: OperationObject;
}

/** Operations grouped by their first tag, tags in the document's order, then first appearance. */
export function operationsByTag(
  doc: OpenApiDocument,
): { tag: string; description?: string; operations: Operation[] }[] {
  const groups = new Map<string, Operation[]>();
  for (const tag of doc.tags ?? []) groups.set(tag.name, []);
  for (const [path, item] of Object.entries(doc.paths ?? {})) {
    for (const method of HTTP_METHODS) {
      const operation = item[method] as OperationObject | undefined;
      if (!operation) continue;
      const tag = operation.tags?.[0] ?? "Other";
      const list = groups.get(tag) ?? [];
      list.push({ method, path, operation });
      groups.set(tag, list);
    }
  }
  return [...groups]
    .filter(([, operations]) => operations.length > 0)
    .map(([tag, operations]) => ({
      tag,
      description: doc.tags?.find((t) => t.name === tag)?.description,
      operations,
    }));
}

/** A piece of rendered schema: text, a link to a named schema, or a muted note. */
export type SchemaToken = string | { ref: string } | { note: string };

/** The component name a `$ref` points at. */
export function refName(ref: string): string {
  return decodeURIComponent(ref.split("/").at(-1) ?? ref);
}

const INDENT = "  ";

function constraints(schema: JsonSchema): string {
  const out: string[] = [];
  if (schema.format) out.push(schema.format);
  const range = (min?: number, max?: number, unit = "") =>
    min !== undefined && max !== undefined
      ? `${min}–${max}${unit}`
      : min !== undefined
        ? `≥ ${min}${unit}`
        : max !== undefined
          ? `≤ ${max}${unit}`
          : undefined;
  const length = range(schema.minLength, schema.maxLength, " chars");
  if (length) out.push(length);
  const value = range(schema.minimum ?? schema.exclusiveMinimum, schema.maximum ?? schema.exclusiveMaximum);
  if (value) out.push(value);
  const items = range(schema.minItems, schema.maxItems, " items");
  if (items) out.push(items);
  if (schema.pattern) out.push(`/${schema.pattern}/`);
  if (schema.default !== undefined) out.push(`default ${JSON.stringify(schema.default)}`);
  return out.length ? ` (${out.join(", ")})` : "";
}

function joined(parts: SchemaToken[][], separator: string): SchemaToken[] {
  return parts.flatMap((part, i) => (i === 0 ? part : [separator, ...part]));
}

function objectTokens(schema: JsonSchema, depth: number): SchemaToken[] {
  const properties = Object.entries(schema.properties ?? {});
  if (properties.length === 0) {
    if (schema.additionalProperties && typeof schema.additionalProperties === "object") {
      return ["{ [key: string]: ", ...schemaTokens(schema.additionalProperties, depth), " }"];
    }
    return ["object"];
  }
  const required = new Set(schema.required ?? []);
  const pad = INDENT.repeat(depth + 1);
  const out: SchemaToken[] = ["{\n"];
  for (const [name, property] of properties) {
    out.push(`${pad}${name}${required.has(name) ? "" : "?"}: `, ...schemaTokens(property, depth + 1));
    if (property.description) out.push({ note: `  // ${property.description.replace(/\s+/g, " ")}` });
    out.push("\n");
  }
  out.push(`${INDENT.repeat(depth)}}`);
  return out;
}

/**
 * Renders a schema as compact, TypeScript-like text: `{ name: string, tags?: string[] }`, unions
 * with `|`, constraints in parentheses, named schemas as references. `depth` is the indentation.
 */
export function schemaTokens(schema: JsonSchema | undefined, depth = 0): SchemaToken[] {
  if (!schema || typeof schema !== "object") return ["any"];
  if (schema.$ref) return [{ ref: refName(schema.$ref) }];
  if (schema.const !== undefined) return [JSON.stringify(schema.const)];
  if (schema.enum) return [schema.enum.map((v) => JSON.stringify(v)).join(" | ")];
  const union = schema.anyOf ?? schema.oneOf;
  if (union)
    return joined(
      union.map((s) => schemaTokens(s, depth)),
      " | ",
    );
  if (schema.allOf)
    return joined(
      schema.allOf.map((s) => schemaTokens(s, depth)),
      " & ",
    );

  const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : [];
  if (types.length === 0) return schema.properties ? objectTokens(schema, depth) : ["any"];
  return joined(
    types.map((type): SchemaToken[] => {
      if (type === "object") return objectTokens(schema, depth);
      if (type === "array") {
        const item = schemaTokens(schema.items, depth);
        const wrap = item.some((t) => typeof t === "string" && t.includes(" | "));
        return [
          ...(wrap ? ["(", ...item, ")"] : item),
          "[]",
          constraints({ minItems: schema.minItems, maxItems: schema.maxItems }),
        ];
      }
      if (type === "null") return ["null"];
      return [`${type}${constraints(schema)}`];
    }),
    " | ",
  );
}
