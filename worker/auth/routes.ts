/**
 * Signing in and out: asking for a sign-in link, the page the link opens and the post that uses
 * it, and the signed-in person's sessions. Session routes need a session but no organization;
 * every write refuses cross-site requests (a session cookie travels with any site's form post).
 */
import { createRoute, z } from "@hono/zod-openapi";
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { abuseBrake, assertSameSite } from "../http/middleware";
import { newRouter, problemResponses, readBody } from "../http/router";
import { deliverDueMail } from "../mail/outbox";
import { noStore, wantsPage, withRefusalPage } from "../pages/refusal";
import { SignInConfirmPage, SignInLinkSentPage, SignInRequestPage } from "../pages/sign-in";
import {
  clearSessionCookie,
  currentSession,
  describeSession,
  liveSessions,
  SESSION_COOKIE,
  sessionRequest,
  setSessionCookie,
} from "./sessions";
import { completeSignIn, endSessions, requestSignInLink } from "./sign-in";

/** The OpenAPI security scheme of routes a signed-in person calls with their session cookie. */
export const SESSION_SECURITY_SCHEME = "session";

const EmailLinkInput = z
  .strictObject({ email: z.string().trim().min(3).max(254).email() })
  .openapi("SignInLinkRequest");

const SignInForm = z.strictObject({ token: z.string().min(1).max(200) }).openapi("SignInForm");

const Accepted = z.object({ message: z.string() }).openapi("SignInLinkAccepted");

const SessionSchema = z
  .object({
    id: z.string(),
    createdAt: z.string(),
    lastSeenAt: z.string(),
    expiresAt: z.string(),
    ip: z.string().nullable(),
    userAgent: z.string().nullable(),
    current: z.boolean().openapi({ description: "Whether this is the session of the request." }),
  })
  .openapi("Session");

const Ended = z.object({ revoked: z.number().int() }).openapi("SessionsEnded");

const sessionSecurity = [{ [SESSION_SECURITY_SCHEME]: [] }];

const ACCEPTED_MESSAGE =
  "If this address belongs to a member of an organization, a sign-in link is on its way. It works once, for 15 minutes.";

const emailLinkRoute = createRoute({
  method: "post",
  path: "/v1/auth/email-link",
  tags: ["Account"],
  summary: "Mail a sign-in link",
  description:
    "Always 202 with the same body: whether the address is known is not said. A link (single use, 15 minutes) is mailed only to a user with a live membership, at most 5 an hour per address. JSON or form-encoded.",
  middleware: [abuseBrake()] as const,
  request: {
    body: {
      content: {
        "application/json": { schema: { $ref: "#/components/schemas/SignInLinkRequest" } },
        "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/SignInLinkRequest" } },
      },
      required: true,
    },
  },
  responses: {
    202: { description: "Accepted", content: { "application/json": { schema: Accepted } } },
    ...problemResponses(400, 413, 415, 429),
  },
});

const signInPageRoute = createRoute({
  method: "get",
  path: "/auth/sign-in",
  tags: ["Account"],
  summary: "The sign-in page",
  description:
    "Without a token: a form asking for the address to mail a link to. With the token of a mailed link: a page whose button signs in. Loading it never uses the link (mail scanners load links).",
  request: { query: z.object({ token: z.string().max(200).optional() }) },
  responses: { 200: { description: "The page", content: { "text/html": { schema: z.string() } } } },
});

const signInRoute = createRoute({
  method: "post",
  path: "/auth/sign-in",
  tags: ["Account"],
  summary: "Use a sign-in link",
  description:
    "Form field `token`: the mailed link's secret, used once. Starts a session (`__Host-mg_session` cookie) and redirects to `/account`. Used, expired and unknown links are one 401.",
  middleware: [abuseBrake()] as const,
  request: {
    body: {
      // By reference: the handler reads the form itself (`readBody`), so the router must not.
      content: { "application/x-www-form-urlencoded": { schema: { $ref: "#/components/schemas/SignInForm" } } },
      required: true,
    },
  },
  responses: {
    303: { description: "Signed in; on to /account" },
    ...problemResponses(400, 401, 403, 415, 429),
  },
});

const listSessionsRoute = createRoute({
  method: "get",
  path: "/v1/auth/sessions",
  tags: ["Account"],
  summary: "Your live sessions",
  security: sessionSecurity,
  responses: {
    200: {
      description: "Live sessions, newest first",
      content: { "application/json": { schema: z.object({ sessions: z.array(SessionSchema) }) } },
    },
    ...problemResponses(401),
  },
});

const deleteSessionRoute = createRoute({
  method: "delete",
  path: "/v1/auth/sessions/{id}",
  tags: ["Account"],
  summary: "End one of your sessions",
  security: sessionSecurity,
  request: { params: z.object({ id: z.string().min(1).max(64) }) },
  responses: {
    200: { description: "The session ended", content: { "application/json": { schema: Ended } } },
    ...problemResponses(400, 401, 403, 404),
  },
});

const signOutRoute = createRoute({
  method: "post",
  path: "/v1/auth/sign-out",
  tags: ["Account"],
  summary: "Sign out: end this session",
  description:
    "Ends the request's session and clears its cookie. A browser's form post is redirected to the sign-in page.",
  security: sessionSecurity,
  responses: {
    200: { description: "Signed out", content: { "application/json": { schema: Ended } } },
    303: { description: "Signed out; on to the sign-in page" },
    ...problemResponses(403),
  },
});

const signOutEverywhereRoute = createRoute({
  method: "post",
  path: "/v1/auth/sign-out-everywhere",
  tags: ["Account"],
  summary: "Sign out everywhere: end all your sessions",
  security: sessionSecurity,
  responses: {
    200: { description: "Signed out everywhere", content: { "application/json": { schema: Ended } } },
    303: { description: "Signed out; on to the sign-in page" },
    ...problemResponses(401, 403),
  },
});

/** The request's session, or 401. */
async function signedIn(c: Context<HonoEnv>) {
  const found = await currentSession(c);
  if (!found) throw new AppError("unauthorized", "Sign in with a link mailed to you: POST /v1/auth/email-link.");
  return found;
}

/** Sign-in and session routes, mounted at `/` by the app. */
export const authRoutes = newRouter();
authRoutes.openAPIRegistry.register("SignInLinkRequest", EmailLinkInput);
authRoutes.openAPIRegistry.register("SignInForm", SignInForm);
authRoutes.openAPIRegistry.registerComponent("securitySchemes", SESSION_SECURITY_SCHEME, {
  type: "apiKey",
  in: "cookie",
  name: SESSION_COOKIE,
  description:
    "The session a mailed sign-in or invitation link started; state-changing calls must come from this site.",
});

authRoutes
  .openapi(emailLinkRoute, async (c) => {
    const services = c.get("services");
    const page = wantsPage(c);
    const { email } = await readBody(c, EmailLinkInput, { form: true });
    // Answered before the address is looked up: neither the answer nor its timing depends on it.
    c.executionCtx.waitUntil(
      requestSignInLink(services, email)
        .then((issued) => (issued ? deliverDueMail(services) : undefined))
        .catch((error: unknown) => services.log.error("sign-in link failed", { error: String(error) })),
    );
    if (page) return c.html(SignInLinkSentPage(), 202) as never;
    return c.json({ message: ACCEPTED_MESSAGE }, 202);
  })
  .openapi(signInPageRoute, (c) => {
    noStore(c);
    const { token } = c.req.valid("query");
    return c.html(token ? SignInConfirmPage({ token }) : SignInRequestPage(), 200);
  })
  .openapi(signInRoute, (c) =>
    withRefusalPage(c, "This sign-in link cannot be used", async () => {
      assertSameSite(c);
      noStore(c);
      const services = c.get("services");
      const { token } = await readBody(c, SignInForm, { form: true });
      const signed = await completeSignIn(services, token, sessionRequest(c));
      setSessionCookie(c, signed.secret, signed.expiresAt);
      return c.redirect("/account", 303);
    }),
  )
  .openapi(listSessionsRoute, async (c) => {
    const { session, user } = await signedIn(c);
    const sessions = await liveSessions(c.get("services"), user.id);
    return c.json({ sessions: sessions.map((s) => describeSession(s, session.id)) }, 200);
  })
  .openapi(deleteSessionRoute, async (c) => {
    assertSameSite(c);
    const { session, user } = await signedIn(c);
    const { id } = c.req.valid("param");
    const revoked = await endSessions(c.get("services"), user, { sessionId: id });
    if (revoked === 0) throw new AppError("not_found", "You have no live session with that id.");
    if (id === session.id) clearSessionCookie(c);
    return c.json({ revoked }, 200);
  })
  .openapi(signOutRoute, async (c) => {
    assertSameSite(c);
    const found = await currentSession(c);
    const revoked = found ? await endSessions(c.get("services"), found.user, { sessionId: found.session.id }) : 0;
    clearSessionCookie(c);
    if (wantsPage(c)) return c.redirect("/auth/sign-in", 303) as never;
    return c.json({ revoked }, 200);
  })
  .openapi(signOutEverywhereRoute, async (c) => {
    assertSameSite(c);
    const { user } = await signedIn(c);
    const revoked = await endSessions(c.get("services"), user, "all");
    clearSessionCookie(c);
    if (wantsPage(c)) return c.redirect("/auth/sign-in", 303) as never;
    return c.json({ revoked }, 200);
  });
