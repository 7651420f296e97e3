/**
 * The usage archive for operators: every raw row (a metered request, or a download) of one
 * organization's hour, as NDJSON — what an invoice line or an hour's totals in `usage_hours` are
 * the sum of. Rows come from the hour's archived parts in R2 and from the organization's quota
 * object, which holds the hour's rows until its parts are archived and for the retention after.
 * Read-only, so not audited (as the other admin reads are not).
 */
import { z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { adminRoute } from "../auth/admin-door";
import { organizations } from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses } from "../http/router";
import { ownProperty } from "../platform/untrusted";
import { quotaStub } from "../quota/org-quota";
import type { Services } from "../services";
import { type ArchiveKind, archivePrefix, hourOf, hourStart } from "./hours";

const ARCHIVE_KINDS = ["inference", "downloads"] as const satisfies readonly ArchiveKind[];

const ArchiveQuery = z.object({
  organization: z
    .string()
    .regex(/^[\w-]{1,64}$/, "An organization id: letters, digits, `_` and `-`, at most 64.")
    .openapi({ description: "The organization's id." }),
  hour: z
    .string()
    .regex(/^\d{4}-\d{2}-\d{2}T\d{2}$/, "An hour, UTC: `YYYY-MM-DDTHH`.")
    .refine((hour) => Number.isFinite(hourStart(hour)) && hourOf(hourStart(hour)) === hour, "No such hour.")
    .openapi({ description: "The hour, UTC, as `YYYY-MM-DDTHH`.", example: "2026-06-15T12" }),
  kind: z.enum(ARCHIVE_KINDS).openapi({ description: "Metered requests, or weight downloads." }),
});

const archiveRoute = adminRoute("admin", {
  method: "get",
  path: "/admin/api/usage/archive",
  summary: "Every raw usage row of one organization's hour, as NDJSON",
  description:
    "Needs the admin role. One JSON object a line, each row once (by `id`): the hour's archived parts " +
    "and what the organization's quota object still holds (an hour still open, or parts not yet archived). " +
    "Inference rows carry a ledger row's fields, downloads a download's; `usage_hours` and `download_hours` " +
    "are their sums.",
  request: { query: ArchiveQuery },
  responses: {
    200: {
      description: "The hour's rows, one JSON object a line",
      content: { "application/x-ndjson": { schema: z.string() } },
    },
    ...problemResponses(400, 404, 503),
  },
});

/** The `id` of an archived or held row's line. */
function rowId(line: string): string {
  const id = ownProperty(JSON.parse(line), "id");
  if (typeof id !== "string") throw new Error("usage row without an id");
  return id;
}

/** The keys of an organization's hour's archive objects of `kind`, oldest part first. */
async function archiveKeys(bucket: R2Bucket, organizationId: string, hour: string, kind: ArchiveKind) {
  const prefix = archivePrefix(organizationId, hour);
  const keys: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await bucket.list({ prefix, cursor });
    for (const o of page.objects) if (o.key.slice(prefix.length).startsWith(`${kind}-`)) keys.push(o.key);
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return keys.sort();
}

/** The NDJSON lines of one gzip-compressed archive object, read as they arrive. */
async function* objectLines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.pipeThrough(new DecompressionStream("gzip")).pipeThrough(new TextDecoderStream()).getReader();
  let rest = "";
  for (let next = await reader.read(); !next.done; next = await reader.read()) {
    const lines = (rest + next.value).split("\n");
    rest = lines.pop() ?? "";
    for (const line of lines) if (line) yield line;
  }
  if (rest) yield rest;
}

/**
 * Every row of `kind` of an organization's hour once, as NDJSON: the archived parts, streamed one
 * object after another, then what the quota object holds that the archive does not. The object
 * is asked first: a part it archives and prunes meanwhile is then in the listing that follows,
 * whereas listing first could miss it in both. Throws `service_unavailable` when the object
 * cannot be reached (the archive alone could lack the hour's newest rows).
 */
export async function hourRows(
  env: Env,
  organizationId: string,
  hour: string,
  kind: ArchiveKind,
): Promise<ReadableStream<Uint8Array>> {
  let held: string[];
  try {
    held = await quotaStub(env, organizationId).rawUsage(hour, kind);
  } catch (error) {
    throw new AppError("service_unavailable", "The organization's quota object could not be reached.", {
      cause: error,
    });
  }
  const keys = await archiveKeys(env.USAGE_ARCHIVE, organizationId, hour, kind);
  const seen = new Set<string>();
  const encoder = new TextEncoder();
  async function* lines(): AsyncGenerator<string> {
    for (const key of keys) {
      const object = await env.USAGE_ARCHIVE.get(key);
      if (!object) continue;
      for await (const line of objectLines(object.body)) {
        const id = rowId(line);
        if (seen.has(id)) continue;
        seen.add(id);
        yield line;
      }
    }
    for (const line of held) {
      const id = rowId(line);
      if (seen.has(id)) continue;
      seen.add(id);
      yield line;
    }
  }
  const source = lines();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await source.next();
      if (next.done) controller.close();
      else controller.enqueue(encoder.encode(`${next.value}\n`));
    },
    async cancel() {
      await source.return(undefined);
    },
  });
}

/** Whether an organization exists. */
async function organizationExists(services: Pick<Services, "db">, id: string): Promise<boolean> {
  const [org] = await services.db.select({ id: organizations.id }).from(organizations).where(eq(organizations.id, id));
  return org !== undefined;
}

/** The usage archive's export, mounted behind the admin door. */
export const usageArchiveRoutes = newRouter().openapi(archiveRoute, async (c) => {
  const { organization, hour, kind } = c.req.valid("query");
  if (!(await organizationExists(c.get("services"), organization))) {
    throw new AppError("not_found", "No such organization.");
  }
  const body = await hourRows(c.env, organization, hour, kind);
  return c.body(body, 200, {
    "content-type": "application/x-ndjson",
    "content-disposition": `attachment; filename="usage-${organization}-${hour}-${kind}.ndjson"`,
    "cache-control": "no-store",
  }) as never;
});
