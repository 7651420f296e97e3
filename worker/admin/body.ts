import type { OpenAPIHono, z } from "@hono/zod-openapi";
import type { HonoEnv } from "../env";

/**
 * Describes a JSON request body in the OpenAPI document by reference, without letting
 * `@hono/zod-openapi` install its own body validator. Admin handlers read bodies with `readBody()`
 * after the role check, so that every body error (415 for a form post, `malformed_body`,
 * `validation_failed` with field errors) comes from the one place that shapes them for the whole
 * gateway. The schema itself is registered on the router with `registerBodySchema`.
 */
export function documentedJsonBody(schema: z.ZodType, name: string) {
  return {
    required: true,
    description: schema.description ?? name,
    content: { "application/json": { schema: { $ref: `#/components/schemas/${name}` } } },
  };
}

/** Registers a request body schema under `name` so `documentedJsonBody` references resolve. */
export function registerBodySchema<R extends OpenAPIHono<HonoEnv>>(router: R, name: string, schema: z.ZodType): R {
  router.openAPIRegistry.register(name, schema);
  return router;
}
