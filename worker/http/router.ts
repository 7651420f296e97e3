import { OpenAPIHono, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError, type FieldError } from "../errors";

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

/** A form's fields as an object; dotted names nest, repeated names become lists. */
export function formToObject(form: FormData): Record<string, unknown> {
  // Form fields use dotted names (`organization.country`) and repeat for arrays (`models`).
  const out: Record<string, unknown> = {};
  for (const [name, value] of form.entries()) {
    if (typeof value !== "string") continue;
    const path = name.split(".");
    let node = out;
    for (const key of path.slice(0, -1)) {
      const next = node[key];
      if (typeof next !== "object" || next === null || Array.isArray(next)) node[key] = {};
      node = node[key] as Record<string, unknown>;
    }
    const leaf = path.at(-1) as string;
    const existing = node[leaf];
    if (existing === undefined) node[leaf] = value;
    else node[leaf] = Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  return out;
}

/**
 * Reads and validates a JSON or form-encoded body against a schema. A wrong content type is 415,
 * unparseable JSON is `malformed_body`, a schema failure is `validation_failed` with field errors.
 * `fromForm` converts form strings (checkboxes, numbers) into the JSON shape first.
 */
export async function readBody<S extends z.ZodType>(
  c: Context<HonoEnv>,
  schema: S,
  options: { form?: boolean; fromForm?: (raw: Record<string, unknown>) => unknown } = {},
): Promise<z.output<S>> {
  const type = (c.req.header("content-type") ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
  let raw: unknown;
  if (type === "application/json") {
    try {
      raw = await c.req.json();
    } catch {
      throw new AppError("malformed_body", "The body is not valid JSON.");
    }
  } else if (options.form && (type === "application/x-www-form-urlencoded" || type === "multipart/form-data")) {
    let form: FormData;
    try {
      form = await c.req.formData();
    } catch {
      throw new AppError("malformed_body", "The form body could not be parsed.");
    }
    const object = formToObject(form);
    raw = options.fromForm ? options.fromForm(object) : object;
  } else {
    const accepted = options.form ? "application/json or application/x-www-form-urlencoded" : "application/json";
    throw new AppError("unsupported_media_type", `Send the body as ${accepted}.`);
  }
  const result = schema.safeParse(raw);
  if (!result.success) {
    throw new AppError("validation_failed", "The request body is invalid.", { errors: fieldErrors(result.error) });
  }
  return result.data;
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
