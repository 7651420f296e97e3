/**
 * `/account`: the sign-in form without a session; with one, the member's organization (the one
 * `?organization=` names, else their oldest) as `GET /v1/organization` and `GET /v1/usage` answer
 * it, and their sessions.
 */
import { Hono } from "hono";
import { membershipsOf, roleAtLeast } from "../auth/members";
import { currentSession, describeSession, liveSessions } from "../auth/sessions";
import type { HonoEnv } from "../env";
import { organizationOverview, quotaPeekFor } from "../organizations/overview";
import { listMemberTokens } from "../tokens/service";
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
  // Asked once for every view: the hours still open in the organization's quota object.
  const live = liveUsageFor(c.env, reader.organizationId);
  const [overview, usage, tokens, downloads] = await Promise.all([
    organizationOverview(services, reader, quotaPeekFor(c.env, reader.organizationId), live),
    organizationUsage(services, reader.organizationId, groupBy, period, live),
    // Admins and owners see every member's tokens, as `GET /v1/tokens?all=true` lists them.
    listMemberTokens(services, member, roleAtLeast(member.membership.role, "admin")),
    downloadsPerDay(services, reader.organizationId, period, live),
  ]);
  return c.html(
    <AccountPage
      overview={overview}
      role={chosen.membership.role}
      email={user.email}
      organizations={all.map((m) => ({ id: m.membership.organizationId, name: m.organizationName }))}
      usage={usage}
      sessions={sessions}
      tokens={tokens}
      downloads={downloads}
    />,
  );
});

portalRoutes.get("/assets/portal.js", (c) =>
  c.body(PORTAL_SCRIPT, 200, { "content-type": "text/javascript; charset=utf-8", "cache-control": "no-cache" }),
);
