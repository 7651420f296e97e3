import type { AdminIdentity } from "../../worker/admin/access";
import type { ChainVerification } from "../../worker/audit/log";
import type { listAuditEvents } from "../../worker/audit/routes";
import { formatTime } from "../format";
import { ConsolePage, type SignOut } from "../layout";

/** The audit filters a reviewer can set; each matches exactly. */
export interface AuditFilters {
  action: string;
  subjectType: string;
  subjectId: string;
  actor: string;
}

/** The audit log, newest first, under the chain's verification result. */
export function AuditPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  verification: ChainVerification;
  events: Awaited<ReturnType<typeof listAuditEvents>>["items"];
  filters: AuditFilters;
  nextHref: string | null;
}) {
  const v = props.verification;
  const f = props.filters;
  return (
    <ConsolePage title="Audit log" section="audit" admin={props.admin} signOut={props.signOut}>
      <h1>Audit log</h1>
      {v.ok ? (
        <p class="panel ok" id="chain-status" role="status">
          <strong>Chain verified.</strong> All {v.checked} events hash-link correctly up to #{v.headSeq} (head{" "}
          <code>{v.headHash.slice(0, 16)}…</code>).
        </p>
      ) : (
        <p class="panel bad" id="chain-status" role="alert">
          <strong>Chain broken.</strong> Event #{v.firstBroken?.seq} ({v.firstBroken?.id}) fails:{" "}
          {v.firstBroken?.problem.replaceAll("_", " ")}. The log may have been altered; treat events from there on as
          unproven.
        </p>
      )}
      <search aria-label="Filter events">
        <form class="filters" method="get" action="/admin/audit">
          <label>
            Action
            <input type="text" name="action" value={f.action} placeholder="application.decided" />
          </label>
          <label>
            Subject type
            <input type="text" name="subjectType" value={f.subjectType} placeholder="application" />
          </label>
          <label>
            Subject id
            <input type="text" name="subjectId" value={f.subjectId} />
          </label>
          <label>
            Actor
            <input type="text" name="actor" value={f.actor} placeholder="reviewer:ann@example.com" />
          </label>
          <button type="submit">Filter</button>
        </form>
      </search>
      {props.events.length === 0 ? (
        <p class="panel empty">No events match.</p>
      ) : (
        <div class="table-wrap">
          <table class="stack">
            <thead>
              <tr>
                <th scope="col" class="num">
                  #
                </th>
                <th scope="col">When</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">Subject</th>
                <th scope="col">Data</th>
              </tr>
            </thead>
            <tbody>
              {props.events.map((e) => (
                <tr>
                  <td data-label="#" class="num">
                    {e.seq}
                  </td>
                  <td data-label="When">{formatTime(e.at)}</td>
                  <td data-label="Actor">{e.actor}</td>
                  <td data-label="Action">{e.action}</td>
                  <td data-label="Subject">
                    {e.subjectType === "application" ? (
                      <a href={`/admin/applications/${e.subjectId}`}>{e.subjectId}</a>
                    ) : e.subjectType === "grant" ? (
                      <a href={`/admin/grants/${e.subjectId}`}>{e.subjectId}</a>
                    ) : (
                      <span>
                        {e.subjectType} {e.subjectId}
                      </span>
                    )}
                  </td>
                  <td data-label="Data">
                    <code>{JSON.stringify(e.data)}</code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {props.nextHref ? (
        <p>
          <a href={props.nextHref}>Older events</a>
        </p>
      ) : null}
    </ConsolePage>
  );
}
