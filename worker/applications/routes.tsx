import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import { currentMember, requireMember } from "../auth/members";
import { setSessionCookie } from "../auth/sessions";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { abuseBrake, assertSameSite, clientIp } from "../http/middleware";
import { newRouter, problemResponses, readBody, readRawBody, validateBody } from "../http/router";
import { describeLicenseChanges, requireLicense } from "../licenses/routes";
import { documentText } from "../licenses/store";
import { deliverDueMail } from "../mail/outbox";
import { findFamily } from "../policy/families";
import { type Confirmation, confirmApplication, confirmationTerms } from "./confirm";
import { requestMoreModels } from "./more-models";
import { ApplicationForm, CheckEmailPage, ConfirmPage, type FormValues, LinkFailedPage, StatusPage } from "./pages";
import {
  ApplicationInput,
  ApplicationStatusSchema,
  applicationFromForm,
  ConfirmationResult,
  ConfirmInput,
  DraftStatusSchema,
  InfoResponseInput,
  PolicyReasonSchema,
  SubmissionResult,
} from "./schemas";
import { answerInformationRequest, applicantView, applicationBySecret, capability } from "./status";
import { pendingDraft, submitApplication } from "./submit";

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
      aupSha256={version.aupSha256}
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
    "JSON or form-encoded (dotted names such as `organization.country`). The application is recorded as `awaiting_verification` and a single-use link (24 h) is mailed to the contact; the license policy decides once the contact confirms the address (`POST /v1/applications/confirm`). The organization is then the contact's own (a membership or a verified e-mail domain), or a new one they own — never one found by name.",
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
    201: {
      description: "Recorded; waiting for the contact to confirm the address",
      content: { "application/json": { schema: SubmissionResult } },
    },
    ...problemResponses(400, 409, 413, 415, 429),
  },
});

const confirmRoute = createRoute({
  method: "post",
  path: "/v1/applications/confirm",
  tags: ["Applications"],
  summary: "Accept the license and confirm an application's contact address with the mailed link's token",
  description:
    "Uses the single-use token of the mailed link, and is the contact's acceptance of the license on the organization's behalf: `licenseSha256` and `aupSha256` state the texts accepted, and must be those of the application's license version, which the link's page and mail name (`409 stale_license` otherwise, with the version's hashes and texts' URLs; missing, `400 validation_failed`); a refusal leaves the link usable. The acceptance is recorded with the submission's and the confirmation's address, country, user agent and time, and the proven contact. The policy decides; the answer carries the status page (with a fresh capability, valid 30 days) and signs the contact in (`Set-Cookie`). When the organization already has an open or approved case for the family, that case is shown (`duplicate: true`).",
  middleware: [abuseBrake()] as const,
  request: {
    body: {
      content: {
        "application/json": { schema: { $ref: "#/components/schemas/ApplicationConfirmation" } },
        "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/ApplicationConfirmation" } },
      },
      required: true,
    },
  },
  responses: {
    200: { description: "The decided case", content: { "application/json": { schema: ConfirmationResult } } },
    ...problemResponses(400, 401, 409, 415, 429),
  },
});

const ModelRequestInput = z
  .strictObject({
    family: z.string().min(1).max(64).default("llama-2"),
    models: z.array(z.string().min(1).max(100)).min(1).max(50),
  })
  .openapi("ModelRequest");

const modelRequestRoute = createRoute({
  method: "post",
  path: "/v1/organization/model-requests",
  tags: ["Organization"],
  summary: "Ask for more of a family's models than the organization's grant covers",
  description:
    "A signed-in owner. The license policy decides on the facts of the organization's approved case: approved at once (the grant then covers the models too) or sent to reviewers where the policy says so. The grant keeps covering what it covered meanwhile.",
  middleware: [abuseBrake(), requireMember("owner")] as const,
  request: {
    body: {
      content: { "application/json": { schema: { $ref: "#/components/schemas/ModelRequest" } } },
      required: true,
    },
  },
  responses: {
    201: {
      description: "The request, as decided or waiting for review",
      content: {
        "application/json": {
          schema: z.object({
            applicationId: z.string(),
            status: z.enum(["approved", "pending_review", "rejected"]),
            models: z.array(z.string()),
            reasons: z.array(PolicyReasonSchema),
          }),
        },
      },
    },
    ...problemResponses(400, 401, 403, 409, 415),
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
    200: {
      description: "The case (with its capability), or one still waiting for its contact to confirm (without)",
      content: { "application/json": { schema: z.union([ApplicationStatusSchema, DraftStatusSchema]) } },
    },
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
applicationRoutes.openAPIRegistry.register("ApplicationConfirmation", ConfirmInput);
applicationRoutes.openAPIRegistry.register("ModelRequest", ModelRequestInput);

/** What anyone with a pending application's id may know: that it waits, and until when. */
function draftView(draft: { id: string; family: string; createdAt: string; expiresAt: string }) {
  return {
    id: draft.id,
    family: draft.family,
    status: "awaiting_verification" as const,
    next: "Confirm the contact address with the link we mailed to it; the application is decided then.",
    submittedAt: draft.createdAt,
    confirmBy: draft.expiresAt,
  };
}

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
      const familyName = findFamily(input.family)?.displayName ?? input.family;
      return c.html(<CheckEmailPage familyName={familyName} confirmBy={outcome.confirmBy} />, 201) as never;
    }
    return c.json(outcome, 201);
  })
  .openapi(confirmRoute, async (c) => {
    noStore(c);
    // It signs the caller in: another site's form posting someone's link would sign its visitor in
    // as that someone (the page's twin below refuses it too).
    assertSameSite(c);
    const services = c.get("services");
    const { token, ...accepted } = await readBody(c, ConfirmInput, { form: true });
    const confirmed = await confirmApplication(services, token, accepted, evidence(c));
    c.executionCtx.waitUntil(deliverDueMail(services));
    setSessionCookie(c, confirmed.session.secret, confirmed.session.expiresAt);
    const { session: _session, ...result } = confirmed;
    return c.json(result, 200);
  })
  .openapi(modelRequestRoute, async (c) => {
    const services = c.get("services");
    const { family, models } = await readBody(c, ModelRequestInput);
    const outcome = await requestMoreModels(services, currentMember(c), family, models, evidence(c));
    return c.json(outcome, 201);
  })
  .openapi(statusRoute, async (c) => {
    noStore(c);
    const services = c.get("services");
    const { id } = c.req.valid("param");
    const draft = await pendingDraft(services, id);
    if (draft) return c.json(draftView(draft), 200);
    const app = await applicationBySecret(services, id, capability(c));
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

/**
 * The confirmation link's page: what confirming accepts, and a button, since a GET must never use a
 * single-use link up. With `problem`, the page again after a post it refused (the link still works).
 */
async function renderConfirmPage(c: Context<HonoEnv>, token: string, problem?: AppError) {
  noStore(c);
  let terms: Awaited<ReturnType<typeof confirmationTerms>>;
  try {
    terms = await confirmationTerms(c.get("services"), token);
  } catch (error) {
    if (!(error instanceof AppError) || error.code !== "unauthorized") throw error;
    return c.html(
      <LinkFailedPage detail={error.message} retry={{ href: "/account", label: "Sign in to your account" }} />,
      error.status,
    );
  }
  return c.html(
    <ConfirmPage terms={terms} token={token} action="/applications/confirm" problem={problem?.message} />,
    problem ? problem.status : 200,
  );
}

applicationRoutes.get("/applications/confirm", (c) => renderConfirmPage(c, c.req.query("token") ?? ""));

applicationRoutes.post("/applications/confirm", abuseBrake(), async (c) => {
  noStore(c);
  assertSameSite(c);
  const services = c.get("services");
  const body = await readRawBody(c, { form: true });
  let confirmed: Confirmation;
  try {
    const { token, ...accepted } = validateBody(body, ConfirmInput);
    confirmed = await confirmApplication(services, token, accepted, evidence(c));
  } catch (error) {
    if (!(error instanceof AppError)) throw error;
    // A form that did not state the page's texts: the page again, saying so. The link still works.
    if (body.kind === "form" && (error.code === "stale_license" || error.code === "validation_failed")) {
      const token = typeof body.value.token === "string" ? body.value.token : "";
      return (await renderConfirmPage(
        c,
        token,
        error.code === "stale_license"
          ? error
          : new AppError("validation_failed", "Accept the license shown below with the button to confirm."),
      )) as never;
    }
    if (error.code !== "unauthorized" && error.code !== "reapply_cooldown") throw error;
    return c.html(
      <LinkFailedPage detail={error.message} retry={{ href: "/account", label: "Sign in to your account" }} />,
      error.status,
    );
  }
  c.executionCtx.waitUntil(deliverDueMail(services));
  setSessionCookie(c, confirmed.session.secret, confirmed.session.expiresAt);
  return c.redirect(confirmed.statusUrl.replace(services.config.publicBaseUrl, ""), 303);
});

applicationRoutes.get("/applications/:id", async (c) => {
  noStore(c);
  const services = c.get("services");
  const draft = await pendingDraft(services, c.req.param("id"));
  if (draft) {
    const familyName = findFamily(draft.family)?.displayName ?? draft.family;
    return c.html(<CheckEmailPage familyName={familyName} confirmBy={draft.expiresAt} />);
  }
  const token = capability(c) ?? "";
  const app = await applicationBySecret(services, c.req.param("id"), token);
  const view = await applicantView(services, app);
  const grantId = view.grant?.id;
  const licenseChanges = grantId
    ? (await describeLicenseChanges(services, app.organizationId)).filter((ch) => ch.grantId === grantId)
    : [];
  return c.html(
    <StatusPage view={view} token={token} baseUrl={services.config.publicBaseUrl} licenseChanges={licenseChanges} />,
  );
});
