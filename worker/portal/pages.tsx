/**
 * The applicant's portal at `/account`, rendered on the server. Every figure is the one the JSON
 * API answers (`GET /v1/organization`, `GET /v1/usage`, `GET /v1/tokens`); the forms post to the
 * same JSON API through `/assets/portal.js`.
 */
import type { Child } from "hono/jsx";
import type { MemberRole } from "../db/schema";
import type { organizationOverview } from "../organizations/overview";
import { DailyBarChart, daysBetween } from "../pages/chart";
import { formatBytes, formatCount, formatTime } from "../pages/format";
import { Page } from "../pages/layout";
import type { DownloadDay } from "../usage/downloads";
import { tokensPerDay, USAGE_GROUPS, type UsageDay, type UsageGroup, type UsageGroupTotal } from "../usage/totals";

/** Where the portal's forms send their requests: the JSON API of sign-in, members and tokens. */
export const PORTAL_ENDPOINTS = {
  emailLink: "/v1/auth/email-link",
  signOut: "/v1/auth/sign-out",
  signOutEverywhere: "/v1/auth/sign-out-everywhere",
  sessions: "/v1/auth/sessions",
  invitations: "/v1/organization/invitations",
  tokens: "/v1/tokens",
} as const;

/** The portal's script. */
export const PORTAL_SCRIPT_PATH = "/assets/portal.js";

const PORTAL_STYLES = `
main{max-width:64rem}
.portal-nav{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.5rem 0 1rem;padding:0;list-style:none}
.table-wrap{overflow-x:auto}.table-wrap:focus-visible{outline:3px solid #ff9e1b}
.chart{max-width:100%;height:auto;display:block;margin:.5rem 0}
.muted,.empty{color:var(--muted)}
.form-status{color:var(--ok)}.form-error{color:var(--bad)}
.choices{display:flex;flex-wrap:wrap;gap:.25rem 1.25rem}.choices .check{margin-top:.5rem}
.row{display:flex;flex-wrap:wrap;gap:.5rem 1rem}.row>div{flex:1 1 10rem}
`;

type Overview = Awaited<ReturnType<typeof organizationOverview>>;

/** A session as the portal lists it. */
export interface SessionRow {
  id: string;
  createdAt: string;
  lastSeenAt: string;
  expiresAt: string;
  ip: string | null;
  userAgent: string | null;
  current: boolean;
}

/** The sign-in page: an address, and a link mailed to it. */
export function SignInPage() {
  return (
    <Page title="Sign in" script={PORTAL_SCRIPT_PATH}>
      <h1>Sign in to your organization</h1>
      <p>
        Enter the address you applied or were invited with. We mail you a link that signs you in; it works once, within
        15 minutes.
      </p>
      {/* A plain form post: the endpoint takes forms, and answers a browser with a page. */}
      <form method="post" action={PORTAL_ENDPOINTS.emailLink}>
        <label for="signin-email">Work e-mail</label>
        <input id="signin-email" name="email" type="email" autocomplete="email" required />
        <button type="submit">Mail me a sign-in link</button>
      </form>
      <p class="hint">
        No organization yet? <a href="/apply/llama-2">Apply for access</a>.
      </p>
    </Page>
  );
}

/** Signed in, but no member of any organization (or not of the one asked for). */
export function NoOrganizationPage(props: { email: string; asked: boolean; sessions: SessionRow[] }) {
  return (
    <Page title="Your account" script={PORTAL_SCRIPT_PATH}>
      <h1>Your account</h1>
      <p>
        Signed in as <strong>{props.email}</strong>.{" "}
        {props.asked
          ? "You are not a member of that organization."
          : "You are not a member of any organization yet: apply for access, or ask an admin of yours to invite you."}
      </p>
      <Sessions sessions={props.sessions} />
    </Page>
  );
}

/** A table that scrolls sideways on a narrow screen: a named region keyboards can focus to scroll it. */
function Scroll(props: { label: string; children: Child }) {
  return (
    <section class="table-wrap" aria-label={props.label} tabindex={0}>
      {props.children}
    </section>
  );
}

function Status(props: { status: string }) {
  return <span class={`status ${props.status}`}>{props.status.replaceAll("_", " ")}</span>;
}

function Applications(props: { overview: Overview }) {
  const { applications, grants } = props.overview;
  return (
    <section aria-labelledby="applications-h">
      <h2 id="applications-h">Applications and access</h2>
      {applications.length === 0 ? (
        <p class="empty">No applications yet.</p>
      ) : (
        <Scroll label="Applications">
          <table id="applications">
            <thead>
              <tr>
                <th scope="col">Application</th>
                <th scope="col">Family</th>
                <th scope="col">Models</th>
                <th scope="col">Status</th>
                <th scope="col">Submitted</th>
                <th scope="col">Decided</th>
              </tr>
            </thead>
            <tbody>
              {applications.map((a) => (
                <tr>
                  <td>
                    <code>{a.id}</code>
                  </td>
                  <td>{a.family}</td>
                  <td>{a.models.join(", ")}</td>
                  <td>
                    <Status status={a.status} />
                  </td>
                  <td>{formatTime(a.createdAt)}</td>
                  <td>{formatTime(a.decidedAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Scroll>
      )}
      {grants.length === 0 ? (
        <p class="empty">No access granted yet.</p>
      ) : (
        <ul id="grants">
          {grants.map((g) => (
            <li>
              <strong>{g.family}</strong>: {g.models.join(", ") || "no models"} — <Status status={g.status} />
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function QuotaAndBilling(props: { overview: Overview }) {
  const { quota, billing } = props.overview;
  const minute = (value: number | null, limit: number) =>
    value === null ? `${formatCount(limit)} a minute` : `${formatCount(value)} of ${formatCount(limit)}`;
  return (
    <section aria-labelledby="quota-h">
      <h2 id="quota-h">Quota and billing</h2>
      <dl class="facts" id="quota">
        <dt>Plan</dt>
        <dd>{quota.plan}</dd>
        <dt>Requests left this minute</dt>
        <dd>{minute(quota.remainingRequestsThisMinute, quota.requestsPerMinute)}</dd>
        <dt>Tokens left this minute</dt>
        <dd>{minute(quota.remainingTokensThisMinute, quota.tokensPerMinute)}</dd>
        <dt>Tokens left in {quota.month}</dt>
        <dd>
          {formatCount(quota.monthTokensRemaining)} of {formatCount(quota.monthlyTokenBudget)} (used{" "}
          {formatCount(quota.monthTokensUsed)})
        </dd>
        <dt>Billing</dt>
        <dd id="billing-standing">
          {!billing.enabled
            ? "Not billed on this gateway."
            : billing.suspended
              ? `Suspended since ${formatTime(billing.suspendedSince)}: inference is stopped until payment succeeds.`
              : billing.status
                ? `${billing.plan ?? "plan"}: ${billing.status}${billing.paymentFailedAt ? ` (payment failed ${formatTime(billing.paymentFailedAt)})` : ""}`
                : "No billing account yet: one opens with the first metered call."}
        </dd>
        <dt>This month</dt>
        <dd>
          {formatCount(billing.usage.requests)} {billing.usage.requests === 1 ? "call" : "calls"},{" "}
          {formatCount(billing.usage.totalTokens)} tokens
        </dd>
      </dl>
    </section>
  );
}

function Members(props: { overview: Overview; role: MemberRole }) {
  const { members, invitations } = props.overview;
  const admin = props.role === "admin" || props.role === "owner";
  return (
    <section aria-labelledby="members-h">
      <h2 id="members-h">Members</h2>
      <Scroll label="Members">
        <table id="members">
          <thead>
            <tr>
              <th scope="col">E-mail</th>
              <th scope="col">Name</th>
              <th scope="col">Role</th>
              <th scope="col">Since</th>
            </tr>
          </thead>
          <tbody>
            {members.map((m) => (
              <tr>
                <td>{m.email}</td>
                <td>{m.name ?? ""}</td>
                <td>{m.role}</td>
                <td>{formatTime(m.since)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </Scroll>
      {admin && invitations ? (
        <>
          <h3>Pending invitations</h3>
          {invitations.length === 0 ? (
            <p class="empty">None.</p>
          ) : (
            <ul id="invitations">
              {invitations.map((i) => (
                <li>
                  {i.email} as {i.role}, until {formatTime(i.expiresAt)}
                </li>
              ))}
            </ul>
          )}
          <form id="invite" data-api={PORTAL_ENDPOINTS.invitations} data-done="reload" data-success="Invitation sent.">
            <div class="row">
              <div>
                <label for="invite-email">Invite by e-mail</label>
                <input id="invite-email" name="email" type="email" required />
              </div>
              <div>
                <label for="invite-role">Role</label>
                <select id="invite-role" name="role">
                  <option value="developer">developer</option>
                  <option value="viewer">viewer</option>
                  <option value="admin">admin</option>
                </select>
              </div>
            </div>
            <button type="submit">Send invitation</button>
            <p data-form-status role="status" />
          </form>
        </>
      ) : null}
    </section>
  );
}

/** A token as the portal lists it (`GET /v1/tokens`). */
export interface TokenRow {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  models: string[] | null;
  expiresAt: string | null;
  revokedAt: string | null;
  member: { id: string; email: string | null } | null;
}

function Tokens(props: {
  overview: Overview;
  role: MemberRole;
  tokens: TokenRow[];
  /** The cursor of the page after this one, or null on the last. */
  next: string | null;
  /** Whether this is a later page than the newest. */
  paged: boolean;
}) {
  const grant = props.overview.grants.find((g) => g.status === "active");
  const canMint = grant !== undefined && props.role !== "viewer";
  const organization = props.overview.organization.id;
  const page = (cursor?: string) =>
    `/account?${new URLSearchParams({ organization, ...(cursor ? { tokens: cursor } : {}) })}#tokens-h`;
  return (
    <section aria-labelledby="tokens-h">
      <h2 id="tokens-h">Access tokens</h2>
      <p class="muted">
        {props.role === "admin" || props.role === "owner" ? "Every member's tokens." : "Your tokens."}
      </p>
      <Scroll label="Access tokens">
        <table id="token-list" data-endpoint={PORTAL_ENDPOINTS.tokens}>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Token</th>
              <th scope="col">Scopes</th>
              <th scope="col">Models</th>
              <th scope="col">Member</th>
              <th scope="col">Expires</th>
              <th scope="col">State</th>
            </tr>
          </thead>
          <tbody>
            {props.tokens.length === 0 ? (
              <tr id="no-tokens">
                <td colspan={7} class="empty">
                  No tokens yet.
                </td>
              </tr>
            ) : null}
            {props.tokens.map((t) => (
              <tr data-token-row={t.id}>
                <td>{t.name}</td>
                <td>
                  <code>{t.prefix}…</code>
                </td>
                <td>{t.scopes.join(", ")}</td>
                <td>{t.models ? t.models.join(", ") : "all of the grant"}</td>
                <td>{t.member ? (t.member.email ?? t.member.id) : "(organization token)"}</td>
                <td>{t.expiresAt ? t.expiresAt.slice(0, 10) : "never"}</td>
                <td>
                  {t.revokedAt ? (
                    "Revoked"
                  ) : (
                    <button
                      type="button"
                      class="danger small"
                      data-revoke-token={t.id}
                      data-token-name={t.name}
                      aria-label={`Revoke ${t.name}`}
                    >
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Scroll>
      {props.next || props.paged ? (
        <ul class="portal-nav" id="token-pages" aria-label="More tokens">
          {props.paged ? (
            <li>
              <a href={page()}>Newest tokens</a>
            </li>
          ) : null}
          {props.next ? (
            <li>
              <a href={page(props.next)}>Older tokens</a>
            </li>
          ) : null}
        </ul>
      ) : null}
      <p id="token-list-status" role="status" />
      {canMint ? (
        <form
          id="mint-token"
          data-api={PORTAL_ENDPOINTS.tokens}
          data-secret-field="token"
          data-success="Token created. Copy it now: it is not shown again."
        >
          <h3>Create a token</h3>
          <label for="token-name">Name</label>
          <input id="token-name" name="name" type="text" required maxlength={100} />
          <fieldset>
            <legend>Scopes</legend>
            <div class="choices">
              <label class="check">
                <input type="checkbox" name="scopes" value="inference" data-list checked /> inference
              </label>
              <label class="check">
                <input type="checkbox" name="scopes" value="download" data-list /> download
              </label>
            </div>
          </fieldset>
          <fieldset>
            <legend>Models (none ticked: every model of the grant)</legend>
            <div class="choices">
              {grant.models.map((m) => (
                <label class="check">
                  <input type="checkbox" name="models" value={m} data-list data-omit-empty /> {m}
                </label>
              ))}
            </div>
          </fieldset>
          <label for="token-expiry">Expires in (days)</label>
          <input
            id="token-expiry"
            name="expiresInDays"
            type="number"
            min={1}
            max={366}
            value="90"
            inputmode="numeric"
          />
          <div class="row">
            <div>
              <label for="token-rpm">Requests a minute (optional)</label>
              <input id="token-rpm" name="limits.requestsPerMinute" type="number" min={1} inputmode="numeric" />
            </div>
            <div>
              <label for="token-tpm">Tokens a minute (optional)</label>
              <input id="token-tpm" name="limits.tokensPerMinute" type="number" min={1} inputmode="numeric" />
            </div>
            <div>
              <label for="token-month">Tokens a month (optional)</label>
              <input id="token-month" name="limits.monthlyTokenBudget" type="number" min={1} inputmode="numeric" />
            </div>
          </div>
          <button type="submit">Create token</button>
          <p data-form-status role="status" />
          <div id="new-token" class="panel secret" hidden tabindex={-1}>
            <p>
              Your new token (shown once): <code id="new-token-value" />
            </p>
          </div>
        </form>
      ) : (
        <p class="hint">
          {grant ? "Viewers cannot create tokens." : "Tokens can be created once access is granted and active."}
        </p>
      )}
    </section>
  );
}

/** The usage part of the portal: one grouping at a time, a chart of tokens per day, tables and CSV links. */
export interface UsageView {
  groupBy: UsageGroup;
  from: string;
  to: string;
  days: UsageDay[];
  groups: UsageGroupTotal[];
  organizationId: string;
}

const GROUP_NAMES: Record<UsageGroup, string> = { model: "model", member: "member", token: "token" };
const COLUMN_NAMES: Record<UsageGroup, string> = { model: "Model", member: "Member", token: "Token" };

function Usage(props: { usage: UsageView }) {
  const { usage } = props;
  const perDay = tokensPerDay(usage.days);
  const points = daysBetween(usage.from, usage.to).map((day) => ({ day, value: perDay.get(day) ?? 0 }));
  const csv = (groupBy: UsageGroup) =>
    `/v1/usage?${new URLSearchParams({ groupBy, from: usage.from, to: usage.to, format: "csv", organization: usage.organizationId })}`;
  const view = (groupBy: UsageGroup) =>
    `/account?${new URLSearchParams({ organization: usage.organizationId, usage: groupBy })}#usage-h`;
  return (
    <section aria-labelledby="usage-h">
      <h2 id="usage-h">Usage</h2>
      <p class="muted">
        Inference from {usage.from} to {usage.to} (UTC), by {GROUP_NAMES[usage.groupBy]}.
      </p>
      <ul class="portal-nav" aria-label="Group usage by">
        {USAGE_GROUPS.map((g) => (
          <li>
            {g === usage.groupBy ? (
              <strong aria-current="true">By {GROUP_NAMES[g]}</strong>
            ) : (
              <a href={view(g)}>By {GROUP_NAMES[g]}</a>
            )}
          </li>
        ))}
      </ul>
      <DailyBarChart id="usage-chart" title="Tokens per day" points={points} format={formatCount} />
      {usage.groups.length === 0 ? (
        <p class="empty">No inference in this period.</p>
      ) : (
        <>
          <Scroll label="Usage totals">
            <table id="usage-groups">
              <caption>Totals by {GROUP_NAMES[usage.groupBy]}</caption>
              <thead>
                <tr>
                  <th scope="col">{COLUMN_NAMES[usage.groupBy]}</th>
                  <th scope="col">Calls</th>
                  <th scope="col">Prompt tokens</th>
                  <th scope="col">Completion tokens</th>
                  <th scope="col">Total tokens</th>
                </tr>
              </thead>
              <tbody>
                {usage.groups.map((g) => (
                  <tr data-usage-key={g.key}>
                    <th scope="row">{g.label}</th>
                    <td>{formatCount(g.requests)}</td>
                    <td>{formatCount(g.promptTokens)}</td>
                    <td>{formatCount(g.completionTokens)}</td>
                    <td>{formatCount(g.totalTokens)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </Scroll>
          <Scroll label="Usage per day">
            <table id="usage-days">
              <caption>Per day</caption>
              <thead>
                <tr>
                  <th scope="col">Day</th>
                  <th scope="col">{COLUMN_NAMES[usage.groupBy]}</th>
                  <th scope="col">Calls</th>
                  <th scope="col">Total tokens</th>
                </tr>
              </thead>
              <tbody>
                {usage.days.map((d) => (
                  <tr>
                    <td>{d.day}</td>
                    <td>{d.label}</td>
                    <td>{formatCount(d.requests)}</td>
                    <td>{formatCount(d.totalTokens)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </Scroll>
        </>
      )}
      <p>
        Export as CSV:{" "}
        {USAGE_GROUPS.map((g, i) => (
          <>
            {i > 0 ? ", " : null}
            <a href={csv(g)} download>
              by {GROUP_NAMES[g]}
            </a>
          </>
        ))}
        .
      </p>
    </section>
  );
}

function Downloads(props: { downloads: DownloadDay[]; from: string; to: string }) {
  return (
    <section aria-labelledby="downloads-h">
      <h2 id="downloads-h">Downloads</h2>
      <p class="muted">
        Weights served from {props.from} to {props.to} (UTC).
      </p>
      {props.downloads.length === 0 ? (
        <p class="empty">No downloads in this period.</p>
      ) : (
        <Scroll label="Downloads per day">
          <table id="downloads">
            <thead>
              <tr>
                <th scope="col">Day</th>
                <th scope="col">Model</th>
                <th scope="col">Requests</th>
                <th scope="col">Completed</th>
                <th scope="col">Served</th>
              </tr>
            </thead>
            <tbody>
              {props.downloads.map((d) => (
                <tr>
                  <td>{d.day}</td>
                  <td>{d.model}</td>
                  <td>{formatCount(d.requests)}</td>
                  <td>{formatCount(d.completed)}</td>
                  <td>{formatBytes(d.bytes)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Scroll>
      )}
    </section>
  );
}

function Sessions(props: { sessions: SessionRow[] }) {
  return (
    <section aria-labelledby="sessions-h">
      <h2 id="sessions-h">Your sessions</h2>
      <Scroll label="Your sessions">
        <table id="sessions">
          <thead>
            <tr>
              <th scope="col">Signed in</th>
              <th scope="col">Last seen</th>
              <th scope="col">From</th>
              <th scope="col">Browser</th>
              <th scope="col">
                <span class="visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {props.sessions.map((s) => (
              <tr>
                <td>
                  {formatTime(s.createdAt)}
                  {s.current ? " (this one)" : ""}
                </td>
                <td>{formatTime(s.lastSeenAt)}</td>
                <td>{s.ip ?? "—"}</td>
                <td>{s.userAgent ?? "—"}</td>
                <td>
                  {s.current ? null : (
                    <form
                      data-api={`${PORTAL_ENDPOINTS.sessions}/${encodeURIComponent(s.id)}`}
                      data-method="DELETE"
                      data-done="reload"
                    >
                      <button
                        type="submit"
                        class="small"
                        aria-label={`End the session from ${formatTime(s.createdAt)}`}
                      >
                        End
                      </button>
                      <span data-form-status role="status" />
                    </form>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Scroll>
      <div class="row">
        <form method="post" action={PORTAL_ENDPOINTS.signOut}>
          <button type="submit">Sign out</button>
        </form>
        <form id="sign-out-everywhere" method="post" action={PORTAL_ENDPOINTS.signOutEverywhere}>
          <button type="submit" class="danger">
            Sign out everywhere
          </button>
        </form>
      </div>
    </section>
  );
}

/** The organization's page for a signed-in member. */
export function AccountPage(props: {
  overview: Overview;
  role: MemberRole;
  email: string;
  organizations: { id: string; name: string }[];
  usage: UsageView;
  sessions: SessionRow[];
  tokens: TokenRow[];
  /** The cursor of the next page of tokens, or null when these are the last. */
  tokensNext?: string | null;
  /** Whether the tokens shown are a later page than the newest. */
  tokensPaged?: boolean;
  downloads: DownloadDay[];
  /** Pending license changes: new versions the organization must accept, with their deadlines. */
  licenseChanges?: { id: string; family: string; acceptBy: string; overdue: boolean; version: number }[];
}) {
  const { overview } = props;
  const org = overview.organization;
  return (
    <Page title={org.name} script={PORTAL_SCRIPT_PATH}>
      <style dangerouslySetInnerHTML={{ __html: PORTAL_STYLES }} />
      <div id="portal" data-organization={org.id}>
        <h1>{org.name}</h1>
        <p>
          Signed in as <strong>{props.email}</strong>, {props.role}.
          {org.verifiedDomains.length > 0 ? ` Verified domains: ${org.verifiedDomains.join(", ")}.` : ""}
        </p>
        {props.licenseChanges && props.licenseChanges.length > 0 ? (
          <section class="notice" id="license-changes" aria-label="License changes">
            {props.licenseChanges.map((change) => (
              <p>
                {change.overdue ? "Access stopped: " : "Action needed: "}
                version {change.version} of the {change.family} license must be accepted
                {change.overdue ? "." : ` by ${change.acceptBy}.`}{" "}
                <a href={`/account/license?${new URLSearchParams({ organization: org.id })}`}>See what changed</a>
              </p>
            ))}
          </section>
        ) : null}
        {props.organizations.length > 1 ? (
          <nav aria-label="Your organizations">
            <ul class="portal-nav">
              {props.organizations.map((o) => (
                <li>
                  {o.id === org.id ? (
                    <strong aria-current="page">{o.name}</strong>
                  ) : (
                    <a href={`/account?${new URLSearchParams({ organization: o.id })}`}>{o.name}</a>
                  )}
                </li>
              ))}
            </ul>
          </nav>
        ) : null}
        <nav aria-label="On this page">
          <ul class="portal-nav">
            <li>
              <a href="#applications-h">Applications</a>
            </li>
            <li>
              <a href="#quota-h">Quota</a>
            </li>
            <li>
              <a href="#members-h">Members</a>
            </li>
            <li>
              <a href="#tokens-h">Tokens</a>
            </li>
            <li>
              <a href="#usage-h">Usage</a>
            </li>
            <li>
              <a href="#downloads-h">Downloads</a>
            </li>
            <li>
              <a href="#sessions-h">Sessions</a>
            </li>
          </ul>
        </nav>
        <Applications overview={overview} />
        <QuotaAndBilling overview={overview} />
        <Members overview={overview} role={props.role} />
        <Tokens
          overview={overview}
          role={props.role}
          tokens={props.tokens}
          next={props.tokensNext ?? null}
          paged={props.tokensPaged ?? false}
        />
        <Usage usage={props.usage} />
        <Downloads downloads={props.downloads} from={props.usage.from} to={props.usage.to} />
        <Sessions sessions={props.sessions} />
      </div>
    </Page>
  );
}
