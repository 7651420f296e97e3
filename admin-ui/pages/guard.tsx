import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import type { GuardFlagRow, GuardFlagSummary } from "../../worker/guard/flags";
import type { GuardPolicy } from "../../worker/guard/policy";
import { GUARD_MODES } from "../../worker/guard/settings";
import { formatCount, formatTime } from "../../worker/pages/format";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable } from "../table";

/** One organization opened on the page: its policy and latest flags. */
export interface GuardOrganizationView {
  organizationId: string;
  policy: GuardPolicy;
  flags: GuardFlagRow[];
}

function categoriesText(categories: readonly { code: string; count: number }[]): string {
  return categories.map((c) => `${c.code} ×${c.count}`).join(", ") || "—";
}

/** The reviewer's confirmation of a proposed suspension: the existing grant suspend route. */
function SuspendGrant(props: { grantId: string; organizationName: string }) {
  const id = `suspend-${props.grantId}`;
  return (
    <form
      class="panel"
      data-api={`/admin/api/grants/${encodeURIComponent(props.grantId)}/suspend`}
      data-confirm={`Suspend grant ${props.grantId} of ${props.organizationName}?`}
      data-done="reload"
      data-success="Suspended."
    >
      <div class="form-row">
        <label for={id}>Reason to suspend grant {props.grantId} (sent to the licensee and recorded)</label>
        <textarea id={id} name="reason" required maxlength={4000}>
          Repeated acceptable-use flags from the content policy check.
        </textarea>
      </div>
      <button type="submit" class="danger">
        Suspend grant
      </button>{" "}
      <output data-form-status />
    </form>
  );
}

/** An organization's screening mode; admins change it. */
function PolicyForm(props: { view: GuardOrganizationView; editable: boolean }) {
  const { policy, organizationId } = props.view;
  const source = policy.custom ? "set by an admin" : "the deployment's default";
  if (!props.editable) {
    return (
      <p>
        Mode <strong>{policy.mode}</strong> ({source}); samples {policy.storeSamples ? "kept" : "not kept"}; answers{" "}
        {policy.screenResponses ? "screened" : "not screened"}. Changing it needs the admin role.
      </p>
    );
  }
  return (
    <form
      class="panel"
      data-api={`/admin/api/organizations/${encodeURIComponent(organizationId)}/guard`}
      data-method="PUT"
      data-done="reload"
      data-success="Saved; in force within 5 seconds."
    >
      <p class="muted">Now: {source}.</p>
      <div class="form-row">
        <label for="guard-mode">Mode</label>
        <select id="guard-mode" name="mode">
          {GUARD_MODES.map((mode) => (
            <option value={mode} selected={mode === policy.mode}>
              {mode}
            </option>
          ))}
        </select>
      </div>
      <div class="form-row">
        <label>
          <input type="checkbox" name="storeSamples" checked={policy.storeSamples} /> The organization allows keeping
          flagged text
        </label>
      </div>
      <div class="form-row">
        <label>
          <input type="checkbox" name="screenResponses" checked={policy.screenResponses} /> Screen answers too (streamed
          ones after they end, flagged only)
        </label>
      </div>
      <button type="submit">Save</button> <output data-form-status />
    </form>
  );
}

/** The guard model's flags per organization, the suspensions they propose, and one organization's flags. */
export function GuardPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  configured: boolean;
  threshold: number;
  summaries: GuardFlagSummary[];
  selected: GuardOrganizationView | undefined;
}) {
  const mayEdit = holdsRole(props.admin, "admin");
  const maySuspend = holdsRole(props.admin, "approver");
  const proposed = props.summaries.filter((s) => s.suspensionProposed);
  return (
    <ConsolePage title="Content policy flags" section="guard" admin={props.admin} signOut={props.signOut}>
      <h1>Content policy flags</h1>
      {props.configured ? null : (
        <p class="muted">No guard model is configured (GUARD_BACKEND): no requests are screened.</p>
      )}
      <p class="muted">
        Organizations flagged in the last 30 days.{" "}
        {props.threshold > 0
          ? `${props.threshold} flags in 24 hours propose a suspension.`
          : "Suspensions are never proposed (GUARD_SUSPEND_THRESHOLD is 0)."}
      </p>
      <DataTable
        rows={props.summaries}
        empty={<p class="empty">No flags.</p>}
        columns={[
          {
            label: "Organization",
            cell: (s) => (
              <a href={`/admin/guard?organization=${encodeURIComponent(s.organizationId)}`}>{s.organizationName}</a>
            ),
          },
          { label: "Flags", numeric: true, cell: (s) => formatCount(s.flags) },
          { label: "Last 24 h", numeric: true, cell: (s) => formatCount(s.flagsLast24h) },
          { label: "Blocked", numeric: true, cell: (s) => formatCount(s.blocked) },
          { label: "Categories", cell: (s) => categoriesText(s.categories) },
          { label: "Last", cell: (s) => formatTime(s.lastAt) },
          {
            label: "Proposal",
            cell: (s) => (s.suspensionProposed ? <span class="badge bad">suspend</span> : <span class="muted">—</span>),
          },
        ]}
      />
      {proposed.length > 0 ? (
        <section aria-labelledby="proposals">
          <h2 id="proposals">Proposed suspensions</h2>
          {proposed.map((s) =>
            s.activeGrants.length === 0 ? (
              <p>{s.organizationName}: no active grant left.</p>
            ) : maySuspend ? (
              s.activeGrants.map((grantId) => <SuspendGrant grantId={grantId} organizationName={s.organizationName} />)
            ) : (
              <p>
                {s.organizationName}: confirming a suspension needs the approver role (grants{" "}
                {s.activeGrants.join(", ")}).
              </p>
            ),
          )}
        </section>
      ) : null}
      {props.selected ? (
        <section aria-labelledby="organization">
          <h2 id="organization">Organization {props.selected.organizationId}</h2>
          <PolicyForm view={props.selected} editable={mayEdit} />
          <DataTable
            rows={props.selected.flags}
            empty={<p class="empty">No flags in the last 30 days.</p>}
            columns={[
              { label: "When", cell: (f) => formatTime(f.createdAt) },
              { label: "Stage", cell: (f) => f.stage },
              { label: "Action", cell: (f) => f.action },
              { label: "Categories", cell: (f) => f.categories.join(", ") || "—" },
              { label: "Model", cell: (f) => f.model },
              { label: "Sample", cell: (f) => f.sample ?? <span class="muted">not kept</span> },
            ]}
          />
        </section>
      ) : null}
    </ConsolePage>
  );
}
