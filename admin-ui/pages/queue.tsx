import type { listReviewQueue } from "../../worker/admin/cases";
import { countryName } from "../../worker/applications/countries";
import type { AdminIdentity } from "../../worker/auth/access";
import { formatAge, formatCount, STATUS_WORDS } from "../../worker/pages/format";
import { FilterForm, SelectFilter, TextFilter } from "../filters";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable, NextPageLink, OrganizationCell } from "../table";

type Queue = Awaited<ReturnType<typeof listReviewQueue>>;

/** The status filter's choices; `all` lists every case. */
export const QUEUE_FILTERS = ["pending_review", "info_requested", "approved", "rejected", "all"] as const;
export type QueueFilter = (typeof QUEUE_FILTERS)[number];

/** The review queue: open cases oldest first, with what a reviewer triages by. */
export function QueuePage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  queue: Queue;
  status: QueueFilter;
  q: string;
  nextHref: string | null;
}) {
  const { queue, admin } = props;
  return (
    <ConsolePage title="Review queue" section="queue" admin={admin} signOut={props.signOut}>
      <h1>Review queue</h1>
      <FilterForm label="Filter cases" action="/admin">
        <SelectFilter
          label="Status"
          name="status"
          value={props.status}
          options={QUEUE_FILTERS.map((s) => ({ value: s, label: s === "all" ? "All cases" : (STATUS_WORDS[s] ?? s) }))}
        />
        <TextFilter label="Organization or e-mail" name="q" value={props.q} kind="search" />
      </FilterForm>
      <p class="muted">
        Keys: <kbd>/</kbd> search, <kbd>j</kbd>/<kbd>k</kbd> next and previous case, <kbd>Enter</kbd> open.
      </p>
      <DataTable
        rows={queue.items}
        caption={`${queue.items.length} case${queue.items.length === 1 ? "" : "s"}, oldest first`}
        empty={
          <p class="panel empty">
            No cases match. {props.status === "pending_review" ? "Nothing is waiting for review." : ""}
          </p>
        }
        columns={[
          {
            label: "Organization",
            cell: (item) => (
              <OrganizationCell
                href={`/admin/applications/${item.id}`}
                name={item.organization}
                contact={item.contactEmail}
              />
            ),
          },
          { label: "Waiting", cell: (item) => formatAge(item.ageSeconds) },
          { label: "Declared MAU", numeric: true, cell: (item) => formatCount(item.declaredMau) },
          { label: "Country", cell: (item) => <abbr title={countryName(item.country)}>{item.country}</abbr> },
          {
            label: "Why in review",
            cell: (item) =>
              item.policyReasons.length === 0 ? (
                <span class="muted">—</span>
              ) : (
                item.policyReasons.map((r) => (
                  <span class="flag" title={r.detail}>
                    {r.code.replaceAll("_", " ")}
                  </span>
                ))
              ),
          },
          {
            label: "Approvals",
            cell: (item) => (
              <>
                {item.approvals.length} of {item.requiredApprovals}
                {item.approvals.length > 0 ? (
                  <div class="muted">
                    {item.approvals.map((a) => a.reviewer).join(", ")}
                    {item.approvals.some((a) => a.reviewer === admin.email) ? " (you)" : ""}
                  </div>
                ) : null}
              </>
            ),
          },
          {
            label: "Status",
            cell: (item) => <span class={`badge ${item.status}`}>{STATUS_WORDS[item.status]}</span>,
          },
        ]}
      />
      <NextPageLink href={props.nextHref} />
    </ConsolePage>
  );
}
