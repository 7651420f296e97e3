/**
 * The reviewer console, mounted at `/admin`: pages rendered on the server from the same functions
 * the admin JSON API uses, plus one small script that sends the console's forms to that API. Who
 * may see a page is decided exactly as for the API (the Access JWT, verified by `adminIdentity`);
 * what a page offers follows the reviewer's roles, and the API checks them again on every call.
 */
import { and, eq } from "drizzle-orm";
import { Hono } from "hono";
import { deleteCookie, setCookie } from "hono/cookie";
import { decodeJwt } from "jose";
import { listInferenceBackends } from "../worker/admin/backends";
import { listReviewQueue, readCaseFile } from "../worker/admin/cases";
import { caseComments, commentView } from "../worker/admin/comments";
import { listGrantsPage } from "../worker/admin/grants";
import {
  downloadsPerDay,
  downloadTotalsByGrant,
  grantedOrganizations,
  grantTokens,
  grantTokenUsage,
  recentGrantDownloads,
  tokensPerDay,
} from "../worker/admin/usage";
import { deferredTo } from "../worker/audit/anchor";
import { verifyAuditLog } from "../worker/audit/log";
import { listAuditEvents } from "../worker/audit/routes";
import {
  type AdminIdentity,
  adminIdentity,
  DEV_ACCESS_COOKIE,
  devSignInEnabled,
  verifyAccessToken,
} from "../worker/auth/access";
import { accountsInArrears, billingAccountsOf, paymentStanding } from "../worker/billing/accounts";
import { billingFailures, outboxStates, retryingBillables } from "../worker/billing/outbox";
import { billingStanding } from "../worker/billing/routes";
import { billingEnabled } from "../worker/config";
import { type APPLICATION_STATUSES, applications, GRANT_STATUSES, grants, organizations } from "../worker/db/schema";
import type { HonoEnv } from "../worker/env";
import { AppError } from "../worker/errors";
import { guardQueue } from "../worker/guard/queue";
import { refuseCrossSite } from "../worker/http/middleware";
import { daysBetween } from "../worker/pages/chart";
import { FAMILIES } from "../worker/policy/families";
import { effectiveLimits } from "../worker/quota/limits";
import type { SignOut } from "./layout";
import { AuditPage } from "./pages/audit";
import { BackendsPage } from "./pages/backends";
import { BillingPage } from "./pages/billing";
import { CasePage } from "./pages/case";
import { GrantPage, GrantsPage } from "./pages/grants";
import { GuardPage } from "./pages/guard";
import { QUEUE_FILTERS, type QueueFilter, QueuePage } from "./pages/queue";
import { DevSignInPage, NotSignedInPage } from "./pages/sign-in";
import { UsagePage } from "./pages/usage";
import { CONSOLE_SCRIPT } from "./script";
import { CONSOLE_STYLES } from "./styles";

/** Days the usage charts cover, today included. */
const USAGE_DAYS = 30;

/**
 * What the console's pages may load: only our own script and stylesheet, nothing from elsewhere,
 * no framing. Inline `style` attributes are allowed; inline scripts are not.
 */
const CONSOLE_CSP =
  "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/** The reviewer of a console request, set by the sign-in middleware. */
function reviewer(c: { get(key: "admin"): AdminIdentity | undefined }): AdminIdentity {
  const admin = c.get("admin");
  if (!admin) throw new Error("console page served without a signed-in reviewer");
  return admin;
}

/** How the reviewer signs out: our dev cookie locally, Access's own logout in production. */
function signOutOf(c: { get(key: "services"): HonoEnv["Variables"]["services"] }): SignOut {
  return devSignInEnabled(c.get("services").config) ? { kind: "dev" } : { kind: "access" };
}

/** `?key=value` for the non-empty entries, for filter and pagination links. */
function queryString(params: Record<string, string | null | undefined>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value) search.set(key, value);
  const text = search.toString();
  return text ? `?${text}` : "";
}

const consoleApp = new Hono<HonoEnv>();

consoleApp.use("*", async (c, next) => {
  await next();
  c.header("content-security-policy", CONSOLE_CSP);
  c.header("x-content-type-options", "nosniff");
  if (!c.res.headers.has("cache-control")) c.header("cache-control", "no-store");
});
// The sign-in and sign-out forms change state (a cookie) and must come from this site too.
consoleApp.use("*", refuseCrossSite());

consoleApp.get("/assets/console.css", (c) => {
  c.header("cache-control", "public, max-age=300");
  return c.body(CONSOLE_STYLES, 200, { "content-type": "text/css; charset=utf-8" });
});
consoleApp.get("/assets/console.js", (c) => {
  c.header("cache-control", "public, max-age=300");
  return c.body(CONSOLE_SCRIPT, 200, { "content-type": "text/javascript; charset=utf-8" });
});

// Local sign-in: only while the gateway trusts an inline dev JWKS; otherwise these paths do not exist.
consoleApp.get("/dev-login", (c) => {
  if (!devSignInEnabled(c.get("services").config)) throw new AppError("not_found", "No such page.");
  return c.html(<DevSignInPage />);
});
consoleApp.post("/dev-login", async (c) => {
  const { config, clock, log } = c.get("services");
  if (!devSignInEnabled(config)) throw new AppError("not_found", "No such page.");
  const form = await c.req.parseBody();
  const token = typeof form.token === "string" ? form.token.trim() : "";
  let identity: AdminIdentity;
  try {
    identity = await verifyAccessToken(token, { config, clock, log });
  } catch (error) {
    if (!(error instanceof AppError)) throw error;
    return c.html(<DevSignInPage error="That is not a valid Access token for this gateway." />, 401);
  }
  if (identity.roles.length === 0) {
    return c.html(<DevSignInPage error={`${identity.email} holds no reviewer role.`} />, 403);
  }
  const expires = decodeJwt(token).exp ?? 0;
  setCookie(c, DEV_ACCESS_COOKIE, token, {
    path: "/",
    httpOnly: true,
    secure: true,
    sameSite: "Strict",
    maxAge: Math.max(1, expires - Math.floor(clock.now().getTime() / 1000)),
  });
  return c.redirect("/admin", 303);
});
consoleApp.post("/sign-out", (c) => {
  deleteCookie(c, DEV_ACCESS_COOKIE, { path: "/", secure: true });
  return c.redirect(devSignInEnabled(c.get("services").config) ? "/admin/dev-login" : "/cdn-cgi/access/logout", 303);
});

// Every other console page needs a reviewer; without one, a page that says how to sign in.
consoleApp.use("*", async (c, next) => {
  const devMode = devSignInEnabled(c.get("services").config);
  try {
    await adminIdentity(c);
  } catch (error) {
    if (error instanceof AppError && (error.code === "unauthorized" || error.code === "forbidden")) {
      const status = error.code === "unauthorized" ? 401 : 403;
      return c.html(<NotSignedInPage status={status} detail={error.message} devSignIn={devMode} />, status);
    }
    throw error;
  }
  await next();
});

consoleApp.get("/", async (c) => {
  const requested = c.req.query("status") ?? "pending_review";
  const status: QueueFilter = (QUEUE_FILTERS as readonly string[]).includes(requested)
    ? (requested as QueueFilter)
    : "pending_review";
  const q = (c.req.query("q") ?? "").trim().slice(0, 200);
  const cursor = c.req.query("cursor");
  const queue = await listReviewQueue(c.get("services"), {
    status: status === "all" ? undefined : (status as (typeof APPLICATION_STATUSES)[number]),
    q: q || undefined,
    cursor,
    limit: 50,
  });
  const nextHref = queue.nextCursor ? `/admin${queryString({ status, q, cursor: queue.nextCursor })}` : null;
  return c.html(
    <QueuePage admin={reviewer(c)} signOut={signOutOf(c)} queue={queue} status={status} q={q} nextHref={nextHref} />,
  );
});

consoleApp.get("/applications/:id", async (c) => {
  const { db } = c.get("services");
  const id = c.req.param("id");
  const [file, comments] = await Promise.all([readCaseFile(db, id, reviewer(c)), caseComments(db, id)]);
  return c.html(
    <CasePage admin={reviewer(c)} signOut={signOutOf(c)} file={file} comments={comments.map(commentView)} />,
  );
});

consoleApp.get("/grants", async (c) => {
  const { db, clock, config } = c.get("services");
  const requested = c.req.query("status") ?? "";
  const status = (GRANT_STATUSES as readonly string[]).includes(requested)
    ? (requested as (typeof GRANT_STATUSES)[number])
    : undefined;
  const organization = (c.req.query("organization") ?? "").trim().slice(0, 200);
  const page = await listGrantsPage(db, {
    status,
    organization: organization || undefined,
    cursor: c.req.query("cursor"),
    limit: 50,
  });
  const enabled = billingEnabled(config);
  const [totals, accounts] = await Promise.all([
    downloadTotalsByGrant(
      db,
      page.items.map((g) => g.id),
    ),
    enabled ? billingAccountsOf(db, [...new Set(page.items.map((g) => g.organizationId))]) : new Map(),
  ]);
  const now = clock.now();
  const rows = page.items.map((g) => {
    const account = accounts.get(g.organizationId);
    return {
      ...g,
      downloads: totals.get(g.id) ?? { requests: 0, bytes: 0, lastAt: null },
      billing: account && {
        status: account.status,
        suspended: paymentStanding(account, config.billing.graceDays, now).suspended,
      },
    };
  });
  const nextHref = page.nextCursor
    ? `/admin/grants${queryString({ status, organization, cursor: page.nextCursor })}`
    : null;
  return c.html(
    <GrantsPage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      rows={rows}
      billingEnabled={enabled}
      status={status ?? ""}
      organization={organization}
      nextHref={nextHref}
    />,
  );
});

consoleApp.get("/grants/:id", async (c) => {
  const services = c.get("services");
  const { db } = services;
  const id = c.req.param("id");
  const [row] = await db
    .select({ grant: grants, organizationName: organizations.name, contactEmail: applications.contactEmail })
    .from(grants)
    .innerJoin(organizations, eq(organizations.id, grants.organizationId))
    .innerJoin(applications, eq(applications.id, grants.applicationId))
    .where(and(eq(grants.id, id)));
  if (!row) throw new AppError("not_found", `No grant ${id}.`);
  const organizationId = row.grant.organizationId;
  const [tokens, downloads, totals, usage, accounts, limits] = await Promise.all([
    grantTokens(db, id),
    recentGrantDownloads(db, id),
    downloadTotalsByGrant(db, [id]),
    grantTokenUsage(db, id),
    billingAccountsOf(db, [organizationId]),
    effectiveLimits(services, organizationId),
  ]);
  const account = accounts.get(organizationId);
  const billing = await billingStanding(services, organizationId, null, account ?? null);
  return c.html(
    <GrantPage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      grant={{
        ...row.grant,
        organizationName: row.organizationName,
        contactEmail: row.contactEmail,
        downloads: totals.get(id) ?? { requests: 0, bytes: 0, lastAt: null },
      }}
      tokens={tokens}
      downloads={downloads}
      usage={usage}
      billing={billing}
      billingAccount={account}
      limits={limits}
    />,
  );
});

consoleApp.get("/usage", async (c) => {
  const { db, clock } = c.get("services");
  const today = clock.now().toISOString().slice(0, 10);
  const since = new Date(Date.parse(`${today}T00:00:00Z`) - (USAGE_DAYS - 1) * 86_400_000).toISOString().slice(0, 10);
  const organizationId = (c.req.query("organization") ?? "").slice(0, 100);
  const model = (c.req.query("model") ?? "").slice(0, 100);
  const filter = { organizationId: organizationId || undefined, model: model || undefined, since };
  const [organizationsWithGrants, rows, tokenRows] = await Promise.all([
    grantedOrganizations(db),
    downloadsPerDay(db, filter),
    tokensPerDay(db, filter),
  ]);
  const models = [...FAMILIES.values()].flatMap((family) => family.models.map((m) => m.id));
  return c.html(
    <UsagePage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      organizations={organizationsWithGrants}
      models={models}
      organizationId={organizationId}
      model={model}
      days={daysBetween(since, today)}
      rows={rows}
      tokenRows={tokenRows}
    />,
  );
});

consoleApp.get("/billing", async (c) => {
  const { db, clock, config } = c.get("services");
  const [states, retrying, failures, arrears] = await Promise.all([
    outboxStates(db),
    retryingBillables(db),
    billingFailures(db, 50),
    accountsInArrears(db),
  ]);
  const now = clock.now();
  return c.html(
    <BillingPage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      enabled={billingEnabled(config)}
      now={now}
      states={states}
      retrying={retrying}
      failures={failures}
      arrears={arrears.map(({ account, organization }) => ({
        ...account,
        organization,
        ...paymentStanding(account, config.billing.graceDays, now),
      }))}
    />,
  );
});

consoleApp.get("/inference-servers", async (c) => {
  const list = await listInferenceBackends(c.get("services"));
  const models = [...FAMILIES.values()].flatMap((family) => family.models.map((m) => m.id));
  return c.html(<BackendsPage admin={reviewer(c)} signOut={signOutOf(c)} list={list} models={models} />);
});

consoleApp.get("/guard", async (c) => {
  const organizationId = (c.req.query("organization") ?? "").trim().slice(0, 64) || undefined;
  const queue = await guardQueue(c.get("services"), c.env, { days: 30, organizationId, withPolicy: true });
  return c.html(
    <GuardPage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      configured={queue.configured}
      threshold={queue.threshold}
      summaries={queue.organizations}
      selected={queue.selected}
    />,
  );
});

consoleApp.get("/audit", async (c) => {
  const services = c.get("services");
  const { db } = services;
  // The chain and the signed checkpoints, as `GET /admin/api/audit/verify` judges them: a log cut
  // short or re-hashed by someone able to write to D1 still links up, and only the checkpoints tell.
  const anchor = services.auditAnchor && deferredTo(services.auditAnchor, c.executionCtx);
  const filters = {
    action: (c.req.query("action") ?? "").trim().slice(0, 100),
    subjectType: (c.req.query("subjectType") ?? "").trim().slice(0, 50),
    subjectId: (c.req.query("subjectId") ?? "").trim().slice(0, 100),
    actor: (c.req.query("actor") ?? "").trim().slice(0, 320),
  };
  const [verification, page] = await Promise.all([
    verifyAuditLog({ ...services, auditAnchor: anchor }),
    listAuditEvents(db, {
      action: filters.action || undefined,
      subjectType: filters.subjectType || undefined,
      subjectId: filters.subjectId || undefined,
      actor: filters.actor || undefined,
      cursor: c.req.query("cursor"),
      limit: 50,
    }),
  ]);
  const nextHref = page.nextCursor ? `/admin/audit${queryString({ ...filters, cursor: page.nextCursor })}` : null;
  return c.html(
    <AuditPage
      admin={reviewer(c)}
      signOut={signOutOf(c)}
      verification={verification}
      events={page.items}
      filters={filters}
      nextHref={nextHref}
    />,
  );
});

/** The console router; `worker/app.ts` mounts it at `/admin`. */
export const adminConsoleRoutes = consoleApp;
