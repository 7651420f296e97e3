import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { abuseBrake, clientIp } from "../http/middleware";
import { newRouter, problemResponses, readBody, readRawBody, validateBody } from "../http/router";
import { requireLicense } from "../licenses/routes";
import { documentText } from "../licenses/store";
import { deliverDueMail } from "../mail/outbox";
import { APPLICANT_SCRIPT } from "../pages/applicant-script";
import { listAccessTokens } from "../tokens/service";
import { ApplicationForm, type FormValues, RepeatApplicationPage, StatusPage } from "./pages";
import {
  ApplicationInput,
  ApplicationStatusSchema,
  applicationFromForm,
  InfoResponseInput,
  SubmissionResult,
} from "./schemas";
import { answerInformationRequest, applicantView, applicationBySecret, capability } from "./status";
import { submitApplication } from "./submit";

/** A browser form post that wants a page back rather than JSON. */
function wantsPage(c: Context<HonoEnv>): boolean {
  const type = c.req.header("content-type") ?? "";
  return !type.startsWith("application/json") && (c.req.header("accept") ?? "").includes("text/html");
}

function noStore(c: Context<HonoEnv>) {
  // Status pages carry a secret in their address: keep them out of caches and referrers.
  c.header("cache-control", "no-store");
  c.header("referrer-policy", "no-referrer");
}

function evidence(c: Context<HonoEnv>) {
  const cf = c.req.raw.cf as { country?: string } | undefined;
  return { ip: clientIp(c.req), country: cf?.country ?? null, userAgent: c.req.header("user-agent") ?? null };
}

async function renderForm(
  c: Context<HonoEnv>,
  familyId: string,
  extra: { values?: FormValues; errors?: AppError } = {},
) {
  const { db } = c.get("services");
  const { family, version } = await requireLicense(db, familyId);
  const [licenseText, aupText] = await Promise.all([
    documentText(db, version.licenseSha256),
    documentText(db, version.aupSha256),
  ]);
  return c.html(
    <ApplicationForm
      family={family}
      licenseSha256={version.licenseSha256}
      licenseText={licenseText ?? ""}
      aupText={aupText ?? ""}
      placeholder={version.licenseSource === "placeholder"}
      values={extra.values}
      errors={extra.errors?.errors}
      problem={extra.errors && !extra.errors.errors ? extra.errors.message : undefined}
    />,
    extra.errors ? extra.errors.status : 200,
  );
}

const submitRoute = createRoute({
  method: "post",
  path: "/v1/applications",
  tags: ["Applications"],
  summary: "Apply for access to a model family under its license",
  description:
    "JSON or form-encoded (dotted names such as `organization.country`). The license policy decides at once: approved, pending_review or rejected. A repeat application by the same organization and e-mail while a case is open returns that case (200, `duplicate: true`) and e-mails a fresh status link to the contact.",
  middleware: [abuseBrake()] as const,
  request: {
    body: {
      // Documented by reference only: the handler's `readBody` parses JSON and form posts alike
      // (forms need converting first), so the router must not validate or gate the body itself.
      content: {
        "application/json": { schema: { $ref: "#/components/schemas/ApplicationInput" } },
        "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/ApplicationInput" } },
      },
      required: true,
    },
  },
  responses: {
    201: { description: "A new case", content: { "application/json": { schema: SubmissionResult } } },
    200: { description: "The existing open case", content: { "application/json": { schema: SubmissionResult } } },
    ...problemResponses(400, 409, 413, 415, 429),
  },
});

const IdParam = z.object({ id: z.string().min(1).max(64) });
const TokenQuery = z.object({
  token: z
    .string()
    .optional()
    .openapi({ description: "The status capability, when not sent as `Authorization: Bearer`." }),
});

const statusRoute = createRoute({
  method: "get",
  path: "/v1/applications/{id}",
  tags: ["Applications"],
  summary: "Where an application stands (with its status capability)",
  request: { params: IdParam, query: TokenQuery },
  responses: {
    200: { description: "The case", content: { "application/json": { schema: ApplicationStatusSchema } } },
    ...problemResponses(404),
  },
});

const respondRoute = createRoute({
  method: "post",
  path: "/v1/applications/{id}/response",
  tags: ["Applications"],
  summary: "Answer a reviewer's request for information",
  middleware: [abuseBrake()] as const,
  request: {
    params: IdParam,
    query: TokenQuery,
    body: {
      content: {
        "application/json": { schema: { $ref: "#/components/schemas/ApplicationInfoResponse" } },
        "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/ApplicationInfoResponse" } },
      },
      required: true,
    },
  },
  responses: {
    200: {
      description: "The case, back in review",
      content: { "application/json": { schema: ApplicationStatusSchema } },
    },
    ...problemResponses(400, 404, 409, 415),
  },
});

function publicView(view: Awaited<ReturnType<typeof applicantView>>) {
  return {
    id: view.id,
    family: view.family,
    organization: view.organization,
    status: view.status,
    reasons: view.reasons,
    message: view.message,
    next: view.next,
    reapplyAfter: view.reapplyAfter,
    submittedAt: view.submittedAt,
    updatedAt: view.updatedAt,
    grant: view.grant,
  };
}

export const applicationRoutes = newRouter();
applicationRoutes.openAPIRegistry.register("ApplicationInput", ApplicationInput);
applicationRoutes.openAPIRegistry.register("ApplicationInfoResponse", InfoResponseInput);

applicationRoutes.get("/apply/:family", abuseBrake(), (c) => renderForm(c, c.req.param("family")));

applicationRoutes
  .openapi(submitRoute, async (c) => {
    const services = c.get("services");
    const page = wantsPage(c);
    const body = await readRawBody(c, { form: true });
    let input: ApplicationInput;
    try {
      input = validateBody(body, ApplicationInput, applicationFromForm);
    } catch (error) {
      if (page && body.kind === "form" && error instanceof AppError && error.code === "validation_failed") {
        const values = body.value;
        // A browser's form post gets the form back, filled in, with the errors; API clients get problem+json.
        const page = await renderForm(c, typeof values.family === "string" ? values.family : "", {
          values,
          errors: error,
        });
        return page as never;
      }
      throw error;
    }
    const outcome = await submitApplication(services, input, evidence(c));
    c.executionCtx.waitUntil(deliverDueMail(services));
    if (page) {
      if (outcome.statusUrl)
        return c.redirect(outcome.statusUrl.replace(services.config.publicBaseUrl, ""), 303) as never;
      return c.html(<RepeatApplicationPage familyName={input.family} />, 200) as never;
    }
    return c.json(outcome, outcome.duplicate ? 200 : 201);
  })
  .openapi(statusRoute, async (c) => {
    noStore(c);
    const services = c.get("services");
    const app = await applicationBySecret(services, c.req.valid("param").id, capability(c));
    return c.json(publicView(await applicantView(services, app)), 200);
  })
  .openapi(respondRoute, async (c) => {
    noStore(c);
    const services = c.get("services");
    const token = capability(c);
    const app = await applicationBySecret(services, c.req.valid("param").id, token);
    const { message } = await readBody(c, InfoResponseInput, { form: true });
    await answerInformationRequest(services, app, message);
    if (wantsPage(c))
      return c.redirect(`/applications/${app.id}?token=${encodeURIComponent(token ?? "")}`, 303) as never;
    const fresh = await applicationBySecret(services, app.id, token);
    return c.json(publicView(await applicantView(services, fresh)), 200);
  });

applicationRoutes.get("/applications/:id", async (c) => {
  noStore(c);
  const services = c.get("services");
  const token = capability(c) ?? "";
  const app = await applicationBySecret(services, c.req.param("id"), token);
  const view = await applicantView(services, app);
  const tokens = view.grant?.status === "active" ? await listAccessTokens(services, app) : [];
  return c.html(<StatusPage view={view} token={token} baseUrl={services.config.publicBaseUrl} tokens={tokens} />);
});

// The status page's script: a file of its own rather than inline, so it is cached and a
// content-security policy can later forbid inline scripts.
applicationRoutes.get("/assets/applicant.js", (c) => {
  c.header("cache-control", "public, max-age=300");
  return c.body(APPLICANT_SCRIPT, 200, { "content-type": "text/javascript; charset=utf-8" });
});
