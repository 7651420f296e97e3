import { type AdminIdentity, holdsRole } from "../../worker/admin/access";
import type { grantTokens, grantTokenUsage, recentGrantDownloads } from "../../worker/admin/usage";
import type { Grant } from "../../worker/db/schema";
import { formatBytes, formatCount, formatTime } from "../format";
import { ConsolePage, type SignOut } from "../layout";

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

/** Every grant, newest first, with how much each has downloaded. */
export function GrantsPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  rows: GrantRow[];
  status: string;
  organization: string;
  nextHref: string | null;
}) {
  return (
    <ConsolePage title="Grants" section="grants" admin={props.admin} signOut={props.signOut}>
      <h1>Grants and tokens</h1>
      <search aria-label="Filter grants">
        <form class="filters" method="get" action="/admin/grants">
          <label>
            Status
            <select name="status">
              {["", "active", "suspended", "revoked"].map((s) => (
                <option value={s} selected={s === props.status}>
                  {s === "" ? "Any" : s}
                </option>
              ))}
            </select>
          </label>
          <label>
            Organization
            <input type="search" name="organization" value={props.organization} data-search autocomplete="off" />
          </label>
          <button type="submit">Filter</button>
        </form>
      </search>
      {props.rows.length === 0 ? (
        <p class="panel empty">No grants match.</p>
      ) : (
        <div class="table-wrap">
          <table class="stack">
            <thead>
              <tr>
                <th scope="col">Organization</th>
                <th scope="col">Family</th>
                <th scope="col">Status</th>
                <th scope="col">Granted</th>
                <th scope="col" class="num">
                  Downloads
                </th>
                <th scope="col" class="num">
                  Served
                </th>
              </tr>
            </thead>
            <tbody>
              {props.rows.map((g) => (
                <tr>
                  <td data-label="Organization">
                    <a href={`/admin/grants/${g.id}`} data-row-link>
                      {g.organizationName}
                    </a>
                    <div class="muted">{g.contactEmail}</div>
                  </td>
                  <td data-label="Family">{g.family}</td>
                  <td data-label="Status">
                    <span class={`badge ${g.status}`}>{g.status}</span>
                  </td>
                  <td data-label="Granted">{formatTime(g.createdAt)}</td>
                  <td data-label="Downloads" class="num">
                    {formatCount(g.downloads.requests)}
                  </td>
                  <td data-label="Served" class="num">
                    {formatBytes(g.downloads.bytes)}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {props.nextHref ? (
        <p>
          <a href={props.nextHref}>Next page</a>
        </p>
      ) : null}
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

/** One grant: who holds it, its tokens, what it downloaded, and the controls the reviewer's role allows. */
export function GrantPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  grant: GrantRow & { licenseVersionId: string; updatedAt: string };
  tokens: Awaited<ReturnType<typeof grantTokens>>;
  downloads: Awaited<ReturnType<typeof recentGrantDownloads>>;
  usage: Awaited<ReturnType<typeof grantTokenUsage>>;
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
        {props.tokens.length === 0 ? (
          <p class="empty">The licensee has created no tokens yet.</p>
        ) : (
          <div class="table-wrap">
            <table class="stack">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Prefix</th>
                  <th scope="col">Scopes</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">State</th>
                </tr>
              </thead>
              <tbody>
                {props.tokens.map((t) => (
                  <tr>
                    <td data-label="Name">{t.name}</td>
                    <td data-label="Prefix">
                      <code>{t.prefix}…</code>
                    </td>
                    <td data-label="Scopes">{t.scopes.join(", ")}</td>
                    <td data-label="Created">{formatTime(t.createdAt)}</td>
                    <td data-label="Expires">{t.expiresAt ? formatTime(t.expiresAt) : "never"}</td>
                    <td data-label="State">{t.revokedAt ? `revoked ${formatTime(t.revokedAt)}` : "live"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <p class="muted">
          Licensees revoke their own tokens on their status page; suspending the grant stops them all.{" "}
          <a href={`/admin/usage?organization=${encodeURIComponent(grant.organizationId)}`}>Downloads per day</a>
        </p>
      </section>

      <section aria-labelledby="downloads-heading">
        <h2 id="downloads-heading">Downloads</h2>
        {props.downloads.length === 0 ? (
          <p class="empty">Nothing downloaded yet.</p>
        ) : (
          <div class="table-wrap">
            <table class="stack">
              <caption>The {props.downloads.length} most recent requests</caption>
              <thead>
                <tr>
                  <th scope="col">When</th>
                  <th scope="col">Model</th>
                  <th scope="col">File</th>
                  <th scope="col">Token</th>
                  <th scope="col" class="num">
                    Bytes
                  </th>
                  <th scope="col">Result</th>
                </tr>
              </thead>
              <tbody>
                {props.downloads.map((d) => (
                  <tr>
                    <td data-label="When">{formatTime(d.at)}</td>
                    <td data-label="Model">{d.model}</td>
                    <td data-label="File">
                      <code>{d.path}</code>
                    </td>
                    <td data-label="Token">{d.tokenName ?? d.tokenId}</td>
                    <td data-label="Bytes" class="num">
                      {formatBytes(d.bytesServed)}
                    </td>
                    <td data-label="Result">
                      {d.status} {d.complete ? "complete" : "cut short"}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section aria-labelledby="usage-heading">
        <h2 id="usage-heading">Inference usage</h2>
        {props.usage.length === 0 ? (
          <p class="empty">No inference calls yet.</p>
        ) : (
          <div class="table-wrap">
            <table class="stack">
              <thead>
                <tr>
                  <th scope="col">Token</th>
                  <th scope="col">Model</th>
                  <th scope="col" class="num">
                    Calls
                  </th>
                  <th scope="col" class="num">
                    Tokens
                  </th>
                  <th scope="col">Last call</th>
                </tr>
              </thead>
              <tbody>
                {props.usage.map((u) => (
                  <tr>
                    <td data-label="Token">{u.tokenName ?? u.tokenId}</td>
                    <td data-label="Model">{u.model}</td>
                    <td data-label="Calls" class="num">
                      {formatCount(u.requests)}
                    </td>
                    <td data-label="Tokens" class="num">
                      {formatCount(u.totalTokens)}
                    </td>
                    <td data-label="Last call">{formatTime(u.lastAt)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </ConsolePage>
  );
}
