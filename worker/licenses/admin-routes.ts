/**
 * Loading a license version through the admin API (admins), as `npm run license:load` does from
 * a shell: optionally requiring every existing grant of the family to accept it by a deadline.
 */
import { z } from "@hono/zod-openapi";
import { currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { AppError } from "../errors";
import { newRouter, problemResponses } from "../http/router";
import { findFamily } from "../policy/families";
import { reacceptDeadline } from "./reacceptance";
import { loadLicenseVersion } from "./store";

const MAX_TEXT = 512 * 1024;

const NewLicenseVersion = z
  .strictObject({
    // Not trimmed: the hash is of the text exactly as the licensor published it. Text that is only
    // whitespace is refused (400 naming the field) where every load is planned, `planLicenseVersion`.
    license: z.string().min(1).max(MAX_TEXT),
    aup: z.string().min(1).max(MAX_TEXT),
    reacceptBy: z
      .string()
      .max(40)
      .optional()
      .openapi({
        description:
          "Existing grants must accept the new version by then: a date (`2027-01-31`, through the end of that day " +
          "UTC) or an ISO-8601 time. Absent: existing grants go on under the version they accepted.",
      }),
  })
  .openapi("NewLicenseVersion");

const loadVersionRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/licenses/{family}/versions",
  summary: "Load a license and AUP text pair as the family's next version",
  description:
    "Needs the admin role. A license or AUP that is empty or only whitespace is refused (400 `validation_failed` " +
    "naming the field). Texts already current change nothing (`created: false`). With `reacceptBy`, every " +
    "active or suspended grant of the family must accept the new version by then; each organization gets a " +
    "`license.reacceptance_required` event. Audited as `license.version_loaded`.",
  request: {
    params: z.object({ family: z.string().min(1).max(64) }),
    body: { required: true, content: { "application/json": { schema: NewLicenseVersion } } },
  },
  responses: {
    200: {
      description: "The family's current version",
      content: {
        "application/json": {
          schema: z
            .object({
              family: z.string(),
              version: z.number().int(),
              licenseSha256: z.string(),
              aupSha256: z.string(),
              created: z.boolean(),
              reacceptBy: z.string().nullable(),
              grantsToReaccept: z.number().int(),
            })
            .openapi("LoadedLicenseVersion"),
        },
      },
    },
    ...problemResponses(400, 404),
  },
});

/** The license admin operations, mounted behind the admin door. */
export const licenseAdminRoutes = newRouter().openapi(loadVersionRoute, async (c) => {
  const services = c.get("services");
  const familyId = c.req.param("family");
  const family = findFamily(familyId);
  if (!family) throw new AppError("not_found", `No license family named ${familyId}.`);
  const input = c.req.valid("json");
  let reacceptBy: string | undefined;
  if (input.reacceptBy !== undefined) {
    reacceptBy = reacceptDeadline(input.reacceptBy, services.clock.now());
    if (!reacceptBy) {
      const message = "A date (YYYY-MM-DD) or ISO-8601 time in the future.";
      throw new AppError("validation_failed", message, { errors: [{ field: "reacceptBy", message }] });
    }
  }
  const loaded = await loadLicenseVersion(services, {
    family: family.id,
    license: input.license,
    aup: input.aup,
    source: "official",
    actor: `reviewer:${currentAdmin(c).email}`,
    reacceptBy,
  });
  return c.json(
    {
      family: loaded.version.family,
      version: loaded.version.version,
      licenseSha256: loaded.version.licenseSha256,
      aupSha256: loaded.version.aupSha256,
      created: loaded.created,
      reacceptBy: loaded.created ? (reacceptBy ?? null) : null,
      grantsToReaccept: loaded.grantsToReaccept,
    },
    200,
  );
});
