import type { AdminIdentity } from "../../worker/admin/access";
import type { listReviewQueue } from "../../worker/admin/cases";
import { countryName } from "../../worker/applications/countries";
import { formatAge, formatCount, STATUS_WORDS } from "../format";
import { ConsolePage, type SignOut } from "../layout";

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
      <search aria-label="Filter cases">
        <form class="filters" method="get" action="/admin">
          <label>
            Status
            <select name="status">
              {QUEUE_FILTERS.map((s) => (
                <option value={s} selected={s === props.status}>
                  {s === "all" ? "All cases" : STATUS_WORDS[s]}
                </option>
              ))}
            </select>
          </label>
          <label>
            Organization or e-mail
            <input type="search" name="q" id="q" value={props.q} data-search autocomplete="off" />
          </label>
          <button type="submit">Filter</button>
        </form>
      </search>
      <p class="muted">
        Keys: <kbd>/</kbd> search, <kbd>j</kbd>/<kbd>k</kbd> next and previous case, <kbd>Enter</kbd> open.
      </p>
      {queue.items.length === 0 ? (
        <p class="panel empty">
          No cases match. {props.status === "pending_review" ? "Nothing is waiting for review." : ""}
        </p>
      ) : (
        <div class="table-wrap">
          <table class="stack">
            <caption>
              {queue.items.length} case{queue.items.length === 1 ? "" : "s"}, oldest first
            </caption>
            <thead>
              <tr>
                <th scope="col">Organization</th>
                <th scope="col">Waiting</th>
                <th scope="col" class="num">
                  Declared MAU
                </th>
                <th scope="col">Country</th>
                <th scope="col">Why in review</th>
                <th scope="col">Approvals</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {queue.items.map((item) => {
                const mine = item.approvals.some((a) => a.reviewer === admin.email);
                return (
                  <tr>
                    <td data-label="Organization">
                      <a href={`/admin/applications/${item.id}`} data-row-link>
                        {item.organization}
                      </a>
                      <div class="muted">{item.contactEmail}</div>
                    </td>
                    <td data-label="Waiting">{formatAge(item.ageSeconds)}</td>
                    <td data-label="Declared MAU" class="num">
                      {formatCount(item.declaredMau)}
                    </td>
                    <td data-label="Country">
                      <abbr title={countryName(item.country)}>{item.country}</abbr>
                    </td>
                    <td data-label="Why in review">
                      {item.policyReasons.length === 0 ? (
                        <span class="muted">—</span>
                      ) : (
                        item.policyReasons.map((r) => (
                          <span class="flag" title={r.detail}>
                            {r.code.replaceAll("_", " ")}
                          </span>
                        ))
                      )}
                    </td>
                    <td data-label="Approvals">
                      {item.approvals.length} of {item.requiredApprovals}
                      {item.approvals.length > 0 ? (
                        <div class="muted">
                          {item.approvals.map((a) => a.reviewer).join(", ")}
                          {mine ? " (you)" : ""}
                        </div>
                      ) : null}
                    </td>
                    <td data-label="Status">
                      <span class={`badge ${item.status}`}>{STATUS_WORDS[item.status]}</span>
                    </td>
                  </tr>
                );
              })}
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
