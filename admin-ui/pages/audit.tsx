import type { AuditVerification } from "../../worker/audit/log";
import type { listAuditEvents } from "../../worker/audit/routes";
import type { AdminIdentity } from "../../worker/auth/access";
import { formatTime } from "../../worker/pages/format";
import { FilterForm, TextFilter } from "../filters";
import { ConsolePage, type SignOut } from "../layout";
import { type Column, DataTable, NextPageLink } from "../table";

/** The audit filters a reviewer can set; each matches exactly. */
export interface AuditFilters {
  action: string;
  subjectType: string;
  subjectId: string;
  actor: string;
}

/** An event's subject, linked to its page where the console has one. */
function AuditSubject(props: { type: string; id: string }) {
  if (props.type === "application") return <a href={`/admin/applications/${props.id}`}>{props.id}</a>;
  if (props.type === "grant") return <a href={`/admin/grants/${props.id}`}>{props.id}</a>;
  return (
    <span>
      {props.type} {props.id}
    </span>
  );
}

/**
 * The columns every list of audit events starts with: its sequence number, when, who and what,
 * under the headers the page chooses for the last two.
 */
export function auditEventColumns(labels: { actor: string; action: string }): Column<{
  seq: number;
  at: string;
  actor: string;
  action: string;
}>[] {
  return [
    { label: "#", numeric: true, cell: (e) => e.seq },
    { label: "When", cell: (e) => formatTime(e.at) },
    { label: labels.actor, cell: (e) => e.actor },
    { label: labels.action, cell: (e) => e.action },
  ];
}

/** The audit log, newest first, under the chain's verification result. */
export function AuditPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  verification: AuditVerification;
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
          <code>{v.headHash.slice(0, 16)}…</code>)
          {v.anchored ? `, and match ${v.checkpoints} signed checkpoints.` : "; no signed checkpoints to compare with."}
        </p>
      ) : v.firstBroken ? (
        <p class="panel bad" id="chain-status" role="alert">
          <strong>Chain broken.</strong> Event #{v.firstBroken.seq} ({v.firstBroken.id}) fails:{" "}
          {v.firstBroken.problem.replaceAll("_", " ")}. The log may have been altered; treat events from there on as
          unproven.
        </p>
      ) : (
        <p class="panel bad" id="chain-status" role="alert">
          <strong>Checkpoints disagree.</strong> The chain links up to #{v.headSeq}, but the signed checkpoints say the
          log was{" "}
          {[v.truncated && "cut short", v.rewritten && "rewritten", v.forged && "given forged checkpoints"]
            .filter(Boolean)
            .join(", ")}
          . The log may have been altered; treat it as unproven.
        </p>
      )}
      <FilterForm label="Filter events" action="/admin/audit">
        <TextFilter label="Action" name="action" value={f.action} placeholder="application.decided" />
        <TextFilter label="Subject type" name="subjectType" value={f.subjectType} placeholder="application" />
        <TextFilter label="Subject id" name="subjectId" value={f.subjectId} />
        <TextFilter label="Actor" name="actor" value={f.actor} placeholder="reviewer:ann@example.com" />
      </FilterForm>
      <DataTable
        rows={props.events}
        empty={<p class="panel empty">No events match.</p>}
        columns={[
          ...auditEventColumns({ actor: "Actor", action: "Action" }),
          { label: "Subject", cell: (e) => <AuditSubject type={e.subjectType} id={e.subjectId} /> },
          { label: "Data", cell: (e) => <code>{JSON.stringify(e.data)}</code> },
        ]}
      />
      <NextPageLink href={props.nextHref} label="Older events" />
    </ConsolePage>
  );
}
