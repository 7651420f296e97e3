import type { grantTokens, grantTokenUsage, recentGrantDownloads } from "../../worker/admin/usage";
import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import type { billingStanding } from "../../worker/billing/routes";
import { type BillingAccount, type BillingStatus, GRANT_STATUSES, type Grant } from "../../worker/db/schema";
import { formatBytes, formatCount, formatTime } from "../../worker/pages/format";
import type { EffectiveLimits } from "../../worker/quota/limits";
import { FilterForm, SelectFilter, TextFilter } from "../filters";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable, NextPageLink, OrganizationCell } from "../table";
import { BillingBadge, PaymentStanding } from "./billing";

/** A grant as listed, with its download totals. */
export interface GrantRow {
  id: string;
  applicationId: string;
  organizationId: string;
  organizationName: string;
  contactEmail: string;
  family: string;
  status: Grant["status"];
  statusReason: string | null;
  createdAt: string;
  downloads: { requests: number; bytes: number; lastAt: string | null };
}

/** A listed grant: its organization's billing standing too, when billing is on and it has an account. */
export type ListedGrant = GrantRow & { billing?: { status: BillingStatus; suspended: boolean } | undefined };

/** Every grant, newest first, with how much each has downloaded and, when billing is on, how it pays. */
export function GrantsPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  rows: ListedGrant[];
  billingEnabled: boolean;
  status: string;
  organization: string;
  nextHref: string | null;
}) {
  return (
    <ConsolePage title="Grants" section="grants" admin={props.admin} signOut={props.signOut}>
      <h1>Grants and tokens</h1>
      <FilterForm label="Filter grants" action="/admin/grants">
        <SelectFilter
          label="Status"
          name="status"
          value={props.status}
          options={["", ...GRANT_STATUSES].map((s) => ({ value: s, label: s === "" ? "Any" : s }))}
        />
        <TextFilter label="Organization" name="organization" value={props.organization} kind="search" />
      </FilterForm>
      <DataTable
        rows={props.rows}
        empty={<p class="panel empty">No grants match.</p>}
        columns={[
          {
            label: "Organization",
            cell: (g) => (
              <OrganizationCell href={`/admin/grants/${g.id}`} name={g.organizationName} contact={g.contactEmail} />
            ),
          },
          { label: "Family", cell: (g) => g.family },
          { label: "Status", cell: (g) => <span class={`badge ${g.status}`}>{g.status}</span> },
          { label: "Granted", cell: (g) => formatTime(g.createdAt) },
          { label: "Downloads", numeric: true, cell: (g) => formatCount(g.downloads.requests) },
          { label: "Served", numeric: true, cell: (g) => formatBytes(g.downloads.bytes) },
          ...(props.billingEnabled
            ? [
                {
                  label: "Billing",
                  cell: (g: ListedGrant) =>
                    g.billing ? <BillingBadge {...g.billing} /> : <span class="muted">no account yet</span>,
                },
              ]
            : []),
        ]}
      />
      <NextPageLink href={props.nextHref} />
    </ConsolePage>
  );
}

/** One status change form: a reason, a confirmation, a JSON call. */
function GrantAction(props: {
  grantId: string;
  action: "suspend" | "reinstate" | "revoke";
  label: string;
  confirm: string;
}) {
  const id = `reason-${props.action}`;
  return (
    <form
      class="panel"
      data-api={`/admin/api/grants/${props.grantId}/${props.action}`}
      data-confirm={props.confirm}
      data-done="reload"
      data-success="Done."
    >
      <div class="form-row">
        <label for={id}>Reason to {props.action} (sent to the licensee and recorded)</label>
        <textarea id={id} name="reason" required maxlength={4000} />
      </div>
      <button type="submit" class={props.action === "reinstate" ? "" : "danger"}>
        {props.label}
      </button>{" "}
      <output data-form-status />
    </form>
  );
}

const LIMIT_FIELDS = [
  { name: "requestsPerMinute", label: "Requests per minute", max: 1_000_000 },
  { name: "tokensPerMinute", label: "Tokens per minute", max: 1_000_000_000 },
  { name: "monthlyTokenBudget", label: "Tokens per calendar month (UTC)", max: 1_000_000_000_000 },
] as const;

/** The organization's quota limits; admins may change them (in force at once). */
function InferenceLimits(props: { limits: EffectiveLimits; editable: boolean }) {
  const { limits } = props;
  const source = limits.custom ? `plan ${limits.plan}` : "the gateway's defaults";
  if (!props.editable) {
    return (
      <p id="limits">
        {formatCount(limits.requestsPerMinute)} requests and {formatCount(limits.tokensPerMinute)} tokens per minute,{" "}
        {formatCount(limits.monthlyTokenBudget)} tokens per month ({source}). Changing them needs the admin role.
      </p>
    );
  }
  return (
    <form
      class="panel"
      id="limits"
      data-api={`/admin/api/organizations/${encodeURIComponent(limits.organizationId)}/limits`}
      data-method="PUT"
      data-done="reload"
      data-success="Saved; in force at once."
    >
      <p class="muted">Now: {source}. Applies to every grant and token of the organization.</p>
      <div class="form-row">
        <label for="limits-plan">Plan name</label>
        <input id="limits-plan" name="plan" required maxlength={64} value={limits.plan} />
      </div>
      {LIMIT_FIELDS.map((f) => (
        <div class="form-row">
          <label for={`limits-${f.name}`}>{f.label}</label>
          <input
            id={`limits-${f.name}`}
            name={f.name}
            type="number"
            required
            min={1}
            max={f.max}
            step={1}
            value={String(limits[f.name])}
          />
        </div>
      ))}
      <button type="submit">Save limits</button> <output data-form-status />
    </form>
  );
}

/** The organization's plan, Stripe ids, payment standing and this month's metered usage. */
function OrganizationBilling(props: {
  standing: Awaited<ReturnType<typeof billingStanding>>;
  account: BillingAccount | undefined;
}) {
  const { standing, account } = props;
  if (!standing.enabled) return <p class="muted">Billing is off on this gateway: usage is metered, not billed.</p>;
  if (!account) {
    return (
      <p class="empty">No billing account yet: one is opened at Stripe with the organization's first billed call.</p>
    );
  }
  const usage = standing.usage;
  return (
    <dl class="facts" id="billing">
      <dt>Plan</dt>
      <dd>{account.plan}</dd>
      <dt>Status</dt>
      <dd>
        <BillingBadge status={account.status} suspended={standing.suspended} />{" "}
        <PaymentStanding
          paymentFailedAt={standing.paymentFailedAt}
          suspendedSince={standing.suspendedSince}
          suspended={standing.suspended}
        />
      </dd>
      <dt>Stripe customer</dt>
      <dd>
        <code>{account.stripeCustomerId}</code>
      </dd>
      <dt>Subscription</dt>
      <dd>{account.stripeSubscriptionId ? <code>{account.stripeSubscriptionId}</code> : "none (metered only)"}</dd>
      <dt>This month</dt>
      <dd>
        {formatCount(usage.requests)} calls, {formatCount(usage.totalTokens)} tokens;{" "}
        {formatCount(usage.unbilledRequests)} still waiting to be sent to Stripe
      </dd>
    </dl>
  );
}

/** One grant: who holds it, its tokens, what it downloaded, and the controls the reviewer's role allows. */
export function GrantPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  grant: GrantRow & { licenseVersionId: string; updatedAt: string };
  tokens: Awaited<ReturnType<typeof grantTokens>>;
  downloads: Awaited<ReturnType<typeof recentGrantDownloads>>;
  usage: Awaited<ReturnType<typeof grantTokenUsage>>;
  billing: Awaited<ReturnType<typeof billingStanding>>;
  billingAccount: BillingAccount | undefined;
  limits: EffectiveLimits;
}) {
  const { grant, admin } = props;
  const approver = holdsRole(admin, "approver");
  const isAdmin = holdsRole(admin, "admin");
  return (
    <ConsolePage title={`${grant.organizationName} · grant`} section="grants" admin={admin} signOut={props.signOut}>
      <p>
        <a href="/admin/grants">← Grants</a>
      </p>
      <h1>
        {grant.organizationName} <span class={`badge ${grant.status}`}>{grant.status}</span>
      </h1>
      <dl class="facts">
        <dt>Grant</dt>
        <dd>
          <code>{grant.id}</code>
        </dd>
        <dt>Family</dt>
        <dd>{grant.family}</dd>
        <dt>Application</dt>
        <dd>
          <a href={`/admin/applications/${grant.applicationId}`}>{grant.applicationId}</a>
        </dd>
        <dt>Contact</dt>
        <dd>{grant.contactEmail}</dd>
        <dt>License version</dt>
        <dd>
          <code>{grant.licenseVersionId}</code>
        </dd>
        <dt>Granted</dt>
        <dd>{formatTime(grant.createdAt)}</dd>
        <dt>Last change</dt>
        <dd>
          {formatTime(grant.updatedAt)}
          {grant.statusReason ? `: ${grant.statusReason}` : ""}
        </dd>
      </dl>

      <section aria-labelledby="controls-heading">
        <h2 id="controls-heading">Access</h2>
        {grant.status === "revoked" ? (
          <p class="panel">Revoked. Revocation is final.</p>
        ) : !approver ? (
          <p class="panel">Suspending needs the approver role; revoking needs the admin role.</p>
        ) : (
          <div class="grid">
            {grant.status === "active" ? (
              <GrantAction
                grantId={grant.id}
                action="suspend"
                label="Suspend access"
                confirm={`Suspend ${grant.organizationName}'s access? Downloads and tokens stop working until reinstated.`}
              />
            ) : (
              <GrantAction
                grantId={grant.id}
                action="reinstate"
                label="Reinstate access"
                confirm={`Reinstate ${grant.organizationName}'s access?`}
              />
            )}
            {isAdmin ? (
              <GrantAction
                grantId={grant.id}
                action="revoke"
                label="Revoke for good"
                confirm={`Revoke ${grant.organizationName}'s grant for good? This cannot be undone; they must delete the materials.`}
              />
            ) : (
              <p class="panel">Revoking needs the admin role.</p>
            )}
          </div>
        )}
      </section>

      <section aria-labelledby="tokens-heading">
        <h2 id="tokens-heading">Personal access tokens</h2>
        <DataTable
          rows={props.tokens}
          empty={<p class="empty">The licensee has created no tokens yet.</p>}
          columns={[
            { label: "Name", cell: (t) => t.name },
            { label: "Prefix", cell: (t) => <code>{t.prefix}…</code> },
            { label: "Scopes", cell: (t) => t.scopes.join(", ") },
            { label: "Created", cell: (t) => formatTime(t.createdAt) },
            { label: "Expires", cell: (t) => (t.expiresAt ? formatTime(t.expiresAt) : "never") },
            { label: "State", cell: (t) => (t.revokedAt ? `revoked ${formatTime(t.revokedAt)}` : "live") },
          ]}
        />
        <p class="muted">
          Licensees revoke their own tokens on their status page; suspending the grant stops them all.{" "}
          <a href={`/admin/usage?organization=${encodeURIComponent(grant.organizationId)}`}>Downloads per day</a>
        </p>
      </section>

      <section aria-labelledby="downloads-heading">
        <h2 id="downloads-heading">Downloads</h2>
        <DataTable
          rows={props.downloads}
          caption="Per hour (UTC), token and model, the latest hours first"
          empty={<p class="empty">Nothing downloaded yet.</p>}
          columns={[
            { label: "Hour", cell: (d) => `${d.hour.replace("T", " ")}:00` },
            { label: "Model", cell: (d) => d.model },
            { label: "Token", cell: (d) => d.tokenName ?? d.tokenId },
            { label: "Requests", numeric: true, cell: (d) => formatCount(d.requests) },
            { label: "Complete", numeric: true, cell: (d) => formatCount(d.completeRequests) },
            { label: "Errors", numeric: true, cell: (d) => formatCount(d.errorRequests) },
            { label: "Bytes", numeric: true, cell: (d) => formatBytes(d.bytesServed) },
            { label: "Last", cell: (d) => formatTime(d.lastAt) },
          ]}
        />
      </section>

      <section aria-labelledby="usage-heading">
        <h2 id="usage-heading">Inference usage</h2>
        <DataTable
          rows={props.usage}
          empty={<p class="empty">No inference calls yet.</p>}
          columns={[
            { label: "Token", cell: (u) => u.tokenName ?? u.tokenId },
            { label: "Model", cell: (u) => u.model },
            { label: "Calls", numeric: true, cell: (u) => formatCount(u.requests) },
            { label: "Tokens", numeric: true, cell: (u) => formatCount(u.totalTokens) },
            { label: "Last call", cell: (u) => formatTime(u.lastAt) },
          ]}
        />
      </section>

      <section aria-labelledby="billing-heading">
        <h2 id="billing-heading">Billing</h2>
        <OrganizationBilling standing={props.billing} account={props.billingAccount} />
      </section>

      <section aria-labelledby="limits-heading">
        <h2 id="limits-heading">Inference limits</h2>
        <InferenceLimits limits={props.limits} editable={isAdmin} />
        <p>
          <a href={`/admin/guard?organization=${encodeURIComponent(grant.organizationId)}`}>
            Content policy screening and flags
          </a>
        </p>
      </section>
    </ConsolePage>
  );
}
