import { OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError, type FieldError } from "../errors";
import { isPrototypeKey, PrototypeKeyError, parseUntrustedJson } from "../platform/untrusted";
import { readBodyText } from "./body";

/** Maps zod issues to the problem document's `errors`. */
export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((issue) => ({
    field: issue.path.map(String).join(".") || "(body)",
    message: issue.message,
  }));
}

/** A feature router: validation failures of params, query or body become `validation_failed`. */
export function newRouter() {
  return new OpenAPIHono<HonoEnv>({
    defaultHook: (result) => {
      if (!result.success) {
        throw new AppError("validation_failed", `The request's ${result.target} is invalid.`, {
          errors: fieldErrors(result.error),
        });
      }
    },
  });
}

/**
 * A form's fields as an object; dotted names nest (`organization.country`), repeated names become
 * lists (`models`). Field names are the caller's: every object made here has no prototype, and a
 * name segment that names prototype machinery (`__proto__`, `constructor`, `prototype`) is refused
 * as `malformed_body` rather than walked into.
 */
export function formToObject(form: FormData): Record<string, unknown> {
  const out: Record<string, unknown> = Object.create(null);
  for (const [name, value] of form.entries()) {
    if (typeof value !== "string") continue;
    const path = name.split(".");
    const refused = path.find(isPrototypeKey);
    if (refused !== undefined) {
      throw new AppError("malformed_body", `The form field name "${name}" is not allowed.`);
    }
    let node = out;
    for (const key of path.slice(0, -1)) {
      const next = Object.hasOwn(node, key) ? node[key] : undefined;
      if (typeof next !== "object" || next === null || Array.isArray(next)) node[key] = Object.create(null);
      node = node[key] as Record<string, unknown>;
    }
    const leaf = path.at(-1) as string;
    const existing = Object.hasOwn(node, leaf) ? node[leaf] : undefined;
    if (existing === undefined) node[leaf] = value;
    else node[leaf] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  return out;
}

/** Largest request body the JSON and form routes read (inference bodies have their own limit). */
export const MAX_FORM_BODY_BYTES = 64 * 1024;

/** A request body as read off the wire, before validation. */
export type RawBody = { kind: "json"; value: unknown } | { kind: "form"; value: Record<string, unknown> };

/**
 * Reads a JSON or (with `form`) form-encoded body, at most `MAX_FORM_BODY_BYTES`. A wrong content
 * type is 415, a larger body 413, unparseable JSON or a form that cannot be parsed, or any key
 * naming prototype machinery, `malformed_body`.
 */
export async function readRawBody(c: Context<HonoEnv>, options: { form?: boolean } = {}): Promise<RawBody> {
  const contentType = c.req.header("content-type") ?? "";
  const type = contentType.split(";")[0]?.trim().toLowerCase() ?? "";
  if (type === "application/json") {
    const text = await readBodyText(c.req.raw, MAX_FORM_BODY_BYTES);
    try {
      return { kind: "json", value: parseUntrustedJson(text) };
    } catch (error) {
      if (error instanceof PrototypeKeyError) throw new AppError("malformed_body", error.message);
      throw new AppError("malformed_body", "The body is not valid JSON.");
    }
  }
  if (options.form && (type === "application/x-www-form-urlencoded" || type === "multipart/form-data")) {
    const text = await readBodyText(c.req.raw, MAX_FORM_BODY_BYTES);
    let form: FormData;
    try {
      form = await new Response(text, { headers: { "content-type": contentType } }).formData();
    } catch {
      throw new AppError("malformed_body", "The form body could not be parsed.");
    }
    return { kind: "form", value: formToObject(form) };
  }
  const accepted = options.form ? "application/json or application/x-www-form-urlencoded" : "application/json";
  throw new AppError("unsupported_media_type", `Send the body as ${accepted}.`);
}

/**
 * Validates a body read by `readRawBody` against a schema: a failure is `validation_failed` with
 * field errors. `fromForm` converts form strings (checkboxes, numbers) into the JSON shape first.
 */
export function validateBody<S extends z.ZodType>(
  body: RawBody,
  schema: S,
  fromForm?: (raw: Record<string, unknown>) => unknown,
): z.output<S> {
  const raw = body.kind === "form" && fromForm ? fromForm(body.value) : body.value;
  const result = schema.safeParse(raw);
  if (!result.success) {
    throw new AppError("validation_failed", "The request body is invalid.", { errors: fieldErrors(result.error) });
  }
  return result.data;
}

/** Reads and validates a JSON or form-encoded body: `readRawBody`, then `validateBody`. */
export async function readBody<S extends z.ZodType>(
  c: Context<HonoEnv>,
  schema: S,
  options: { form?: boolean; fromForm?: (raw: Record<string, unknown>) => unknown } = {},
): Promise<z.output<S>> {
  return validateBody(await readRawBody(c, options), schema, options.fromForm);
}

/** The shared OpenAPI description of a problem response. */
export const ProblemSchema = z
  .object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    code: z.string(),
    detail: z.string(),
    requestId: z.string().optional(),
    errors: z.array(z.object({ field: z.string(), message: z.string() })).optional(),
  })
  .openapi("Problem");

/** OpenAPI response entries for the given problem statuses. */
export function problemResponses(...statuses: number[]) {
  const out: Record<
    number,
    { description: string; content: { "application/problem+json": { schema: typeof ProblemSchema } } }
  > = {};
  for (const status of statuses) {
    out[status] = { description: "Problem", content: { "application/problem+json": { schema: ProblemSchema } } };
  }
  return out;
}
