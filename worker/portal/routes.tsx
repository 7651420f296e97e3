/**
 * `/account`: the sign-in form without a session; with one, the member's organization (the one
 * `?organization=` names, else their oldest) as `GET /v1/organization` and `GET /v1/usage` answer
 * it, and their sessions.
 */
import { Hono } from "hono";
import { currentMember, membershipsOf, requireMember, roleAtLeast } from "../auth/members";
import { currentSession, describeSession, liveSessions } from "../auth/sessions";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { readRawBody } from "../http/router";
import { LicenseChange } from "../licenses/pages";
import { pendingReacceptances, REACCEPT_PATH, reacceptLicense } from "../licenses/reacceptance";
import { describeLicenseChanges, ReacceptanceForm, reacceptanceEvidence } from "../licenses/routes";
import { organizationOverview, quotaPeekFor } from "../organizations/overview";
import { Page } from "../pages/layout";
import { listMemberTokens, MAX_LIVE_TOKENS_PER_MEMBER } from "../tokens/service";
import { downloadsPerDay } from "../usage/downloads";
import { liveUsageFor } from "../usage/live";
import { organizationUsage } from "../usage/routes";
import { USAGE_GROUPS, type UsageGroup, usagePeriod } from "../usage/totals";
import { AccountPage, NoOrganizationPage, SignInPage } from "./pages";
import { PORTAL_SCRIPT } from "./script";

/** The portal's pages and script. */
export const portalRoutes = new Hono<HonoEnv>();

portalRoutes.get("/account", async (c) => {
  const signedIn = await currentSession(c);
  c.header("cache-control", "no-store");
  if (!signedIn) return c.html(<SignInPage />);
  const services = c.get("services");
  const { user, session } = signedIn;
  const sessions = (await liveSessions(services, user.id)).map((s) => describeSession(s, session.id));
  const all = await membershipsOf(services, user.id);
  const wanted = c.req.query("organization");
  const chosen = wanted ? all.find((m) => m.membership.organizationId === wanted) : all[0];
  if (!chosen) {
    return c.html(
      <NoOrganizationPage email={user.email} asked={wanted !== undefined} sessions={sessions} />,
      wanted ? 403 : 200,
    );
  }
  const member = { user, session, membership: chosen.membership, organizationId: chosen.membership.organizationId };
  const reader = { kind: "member" as const, organizationId: member.organizationId, member };
  const asked = c.req.query("usage");
  const groupBy: UsageGroup = USAGE_GROUPS.find((g) => g === asked) ?? "model";
  const period = usagePeriod(services.clock.now());
  // Tokens a page at a time, as `GET /v1/tokens` lists them: `?tokens=` is the page's cursor.
  const tokensCursor = c.req.query("tokens") || undefined;
  // Asked once for every view: the hours still open in the organization's quota object.
  const live = liveUsageFor(c.env, reader.organizationId);
  const [overview, usage, tokens, downloads, licenseChanges] = await Promise.all([
    organizationOverview(services, reader, quotaPeekFor(c.env, reader.organizationId), live),
    organizationUsage(services, reader.organizationId, groupBy, period, live),
    // Admins and owners see every member's tokens, as `GET /v1/tokens?all=true` lists them; a page
    // holds as many as one member may have live.
    listMemberTokens(services, member, {
      all: roleAtLeast(member.membership.role, "admin"),
      cursor: tokensCursor,
      limit: MAX_LIVE_TOKENS_PER_MEMBER,
    }),
    downloadsPerDay(services, reader.organizationId, period, live),
    pendingReacceptances(services.db, reader.organizationId),
  ]);
  const now = services.clock.now().toISOString();
  return c.html(
    <AccountPage
      overview={overview}
      role={chosen.membership.role}
      email={user.email}
      organizations={all.map((m) => ({ id: m.membership.organizationId, name: m.organizationName }))}
      usage={usage}
      sessions={sessions}
      tokens={tokens.tokens}
      tokensNext={tokens.nextCursor}
      tokensPaged={tokensCursor !== undefined}
      downloads={downloads}
      licenseChanges={licenseChanges.map((p) => ({
        id: p.id,
        family: p.family,
        acceptBy: p.acceptBy,
        overdue: p.acceptBy <= now,
        version: p.to.version,
      }))}
    />,
  );
});

/** What changed in the license, and the acceptance form for owners and admins. */
portalRoutes.get(REACCEPT_PATH, async (c) => {
  c.header("cache-control", "no-store");
  if (!(await currentSession(c))) return c.redirect("/account", 303);
  const member = await memberOfPage(c);
  const changes = await describeLicenseChanges(c.get("services"), member.organizationId);
  const canAccept = roleAtLeast(member.membership.role, "admin");
  const action = `${REACCEPT_PATH}/accept?organization=${encodeURIComponent(member.organizationId)}`;
  return c.html(
    <Page title="License changes">
      <h1>License changes</h1>
      {changes.length === 0 ? <p>Your organization has accepted every current license version.</p> : null}
      {changes.map((change) => (
        <LicenseChange change={change} canAccept={canAccept} action={action} />
      ))}
      <p>
        <a href="/account">Back to your account</a>
      </p>
    </Page>,
  );
});

/** The form on the license page: owners and admins accept a new version for the organization. */
portalRoutes.post(`${REACCEPT_PATH}/accept`, requireMember("admin"), async (c) => {
  const member = currentMember(c);
  // Read as every form is: within the size limit, and a body that does not parse is the caller's error.
  const body = (await readRawBody(c, { form: true })).value;
  const form: Record<string, unknown> =
    typeof body === "object" && body !== null ? (body as Record<string, unknown>) : {};
  const id = typeof form.id === "string" ? form.id : "";
  const parsed = ReacceptanceForm.safeParse({ licenseSha256: form.licenseSha256, aupSha256: form.aupSha256 });
  if (!parsed.success || !id || form.agree !== "yes") {
    throw new AppError("validation_failed", "Tick the box to accept the new version.", {
      errors: [{ field: "agree", message: "Required." }],
    });
  }
  await reacceptLicense(c.get("services"), member, { requirementId: id, ...parsed.data }, reacceptanceEvidence(c));
  return c.redirect(`${REACCEPT_PATH}?organization=${encodeURIComponent(member.organizationId)}`, 303);
});

/** The member a page is for: `?organization=` or their oldest membership. */
async function memberOfPage(c: Parameters<typeof currentSession>[0]) {
  const signedIn = await currentSession(c);
  if (!signedIn) throw new AppError("unauthorized", "Sign in at /account.");
  const all = await membershipsOf(c.get("services"), signedIn.user.id);
  const wanted = c.req.query("organization");
  const chosen = wanted ? all.find((m) => m.membership.organizationId === wanted) : all[0];
  if (!chosen) throw new AppError("forbidden", "You are not a member of that organization.");
  return { ...signedIn, membership: chosen.membership, organizationId: chosen.membership.organizationId };
}

portalRoutes.get("/assets/portal.js", (c) =>
  c.body(PORTAL_SCRIPT, 200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-cache" }),
);
