import { z } from "@hono/zod-openapi";

/** A calendar day that exists (`2026-02-30` does not). */
export function isDay(value: string): boolean {
  const at = Date.parse(`${value}T00:00:00.000Z`);
  return !Number.isNaN(at) && new Date(at).toISOString().slice(0, 10) === value;
}

/** A UTC day in a query, `YYYY-MM-DD`, that exists. */
export const Day = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}$/, "Write the day as YYYY-MM-DD.")
  .refine(isDay, "No such day.");
