/**
 * Screening's admin operations, mounted behind the admin door: load the denied-party list (admins),
 * see which list is in force, and see organizations used from a country other than the one they
 * declared (reviewers).
 */
import { z } from "@hono/zod-openapi";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { AppError } from "../errors";
import { readBodyText } from "../http/body";
import { newRouter, problemResponses } from "../http/router";
import { addDays } from "../platform/clock";
import { countryMismatchFlags } from "./country-flags";
import { parseScreeningList } from "./csv";
import { loadScreeningList, screeningListStanding } from "./list";

/** The largest list a request may carry (the whole Consolidated Screening List is about 20 MB). */
const MAX_LIST_BYTES = 64 * 1024 * 1024;

const ListStandingSchema = z
  .object({
    entries: z.number().int(),
    loadedAt: z.string().nullable(),
    sources: z.array(z.object({ source: z.string(), entries: z.number().int() })),
  })
  .openapi("ScreeningListStanding");

const loadListRoute = adminRoute("admin", {
  method: "put",
  path: "/admin/api/screening/list",
  summary: "Replace the denied-party screening list",
  description:
    "Needs the admin role. The body is a CSV in the shape of the US Consolidated Screening List: a header row with " +
    "at least `name` and `source`, and `alt_names` (semicolon-separated), `addresses` or `country` where known. " +
    "The list replaces the one in force in one step, audited as `screening.list_loaded`.",
  request: {
    body: { required: true, content: { "text/csv": { schema: z.string() } } },
  },
  responses: {
    200: {
      description: "What was loaded",
      content: {
        "application/json": {
          schema: z
            .object({
              entries: z.number().int(),
              names: z.number().int(),
              sources: z.array(z.string()),
              sha256: z.string(),
              loadedAt: z.string(),
            })
            .openapi("ScreeningListLoad"),
        },
      },
    },
    ...problemResponses(400, 413, 415),
  },
});

const listStandingRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/screening/list",
  summary: "The denied-party screening list in force",
  responses: {
    200: { description: "Its size and sources", content: { "application/json": { schema: ListStandingSchema } } },
  },
});

const countryFlagsRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/flags/countries",
  summary: "Organizations used from a country other than the one they declared",
  description:
    "Counts, per organization and observed country, the days in the window on which its tokens were used " +
    "(downloads, the Hub API, inference) from that country; `refused` when requests from it were refused as " +
    "`export_restricted`. The first such day of each country is also in the audit log as `export.country_mismatch`.",
  request: {
    query: z.object({
      days: z.coerce
        .number()
        .int()
        .min(1)
        .max(366)
        .default(30)
        .openapi({ description: "The window, in days (default 30)." }),
    }),
  },
  responses: {
    200: {
      description: "Flagged organizations, most days first",
      content: {
        "application/json": {
          schema: z
            .object({
              since: z.string(),
              organizations: z.array(
                z.object({
                  organizationId: z.string(),
                  organizationName: z.string(),
                  declaredCountry: z.string(),
                  mismatchDays: z.number().int(),
                  countries: z.array(
                    z.object({
                      country: z.string(),
                      days: z.number().int(),
                      firstSeenAt: z.string(),
                      lastDay: z.string(),
                      refused: z.boolean(),
                    }),
                  ),
                }),
              ),
            })
            .openapi("CountryFlags"),
        },
      },
    },
    ...problemResponses(400),
  },
});

/** Screening's admin routes. */
export const screeningAdminRoutes = newRouter()
  .openapi(loadListRoute, async (c) => {
    const type = c.req.header("content-type")?.split(";")[0]?.trim().toLowerCase();
    if (type !== "text/csv") throw new AppError("unsupported_media_type", "Send the list as `text/csv`.");
    const text = await readBodyText(c.req.raw, MAX_LIST_BYTES);
    const report = await loadScreeningList(
      c.get("services"),
      parseScreeningList(text),
      text,
      `reviewer:${currentAdmin(c).email}`,
    );
    return c.json(report, 200);
  })
  .openapi(listStandingRoute, async (c) => c.json(await screeningListStanding(c.get("services")), 200))
  .openapi(countryFlagsRoute, async (c) => {
    const services = c.get("services");
    const since = addDays(services.clock.now(), 1 - c.req.valid("query").days)
      .toISOString()
      .slice(0, 10);
    return c.json({ since, organizations: await countryMismatchFlags(services, since) }, 200);
  });
