import type { readCaseFile } from "../../worker/admin/cases";
import type { commentView } from "../../worker/admin/comments";
import { countryName } from "../../worker/applications/countries";
import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import { formatCount, formatTime, STATUS_WORDS } from "../../worker/pages/format";
import { SCREENING_MATCH_ACTION } from "../../worker/screening/case";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable } from "../table";
import { auditEventColumns } from "./audit";

/** A screening match as the case's audit trail records it (`worker/screening/case.ts`). */
interface RecordedMatch {
  screened: string;
  name: string;
  matchedName: string;
  source: string;
  country: string | null;
}

/** The matches of one `application.screening_match` event; anything unexpected is left out. */
function screeningMatchesOf(data: unknown): RecordedMatch[] {
  const matches = (data as { matches?: unknown } | null)?.matches;
  if (!Array.isArray(matches)) return [];
  return matches.filter(
    (m): m is RecordedMatch =>
      typeof m === "object" && m !== null && typeof m.name === "string" && typeof m.source === "string",
  );
}

type CaseFile = Awaited<ReturnType<typeof readCaseFile>>;
type Comment = ReturnType<typeof commentView>;

const DECISION_WORDS = { approve: "Approved", reject: "Rejected", request_info: "Asked for information" } as const;

/** The decision form, shaped by what this reviewer may do on this case now. */
function DecisionForm(props: { admin: AdminIdentity; file: CaseFile }) {
  const { admin, file } = props;
  const app = file.application;
  if (!holdsRole(admin, "approver")) {
    return <p class="panel">Deciding needs the approver role. You can read the case and comment on it.</p>;
  }
  if (app.status !== "pending_review" && app.status !== "info_requested") {
    return <p class="panel">This case is closed ({STATUS_WORDS[app.status]}); there is nothing to decide.</p>;
  }
  if (file.conflictOfInterest) {
    return (
      <p class="panel" id="conflict-of-interest">
        You are party to this case: your e-mail or its domain is the applicant's. Another approver must decide it; you
        can read it.
      </p>
    );
  }
  const mine = file.approvals.find((a) => a.reviewer === admin.email);
  const waiting = app.status === "info_requested";
  return (
    <form
      id="decision"
      data-api={`/admin/api/applications/${app.id}/decision`}
      data-done="reload"
      data-success="Decision recorded."
      aria-describedby="decision-help"
    >
      <p id="decision-help" class="muted">
        {app.requiredApprovals > 1
          ? `This case needs ${app.requiredApprovals} approvals from different approvers in one round.`
          : "One approval decides this case."}{" "}
        {waiting ? "The applicant has been asked for information; you can only reject until they answer." : ""}
      </p>
      {mine ? (
        <p class="panel" id="own-approval">
          You approved this case on {formatTime(mine.at)}. The next approval must come from another approver.
        </p>
      ) : null}
      <fieldset>
        <legend>Decision</legend>
        {mine || waiting ? null : (
          <label class="choice">
            <input type="radio" name="decision" value="approve" required /> Approve
          </label>
        )}
        <label class="choice">
          <input type="radio" name="decision" value="reject" required /> Reject
        </label>
        {waiting ? null : (
          <label class="choice">
            <input type="radio" name="decision" value="request_info" required /> Request more information
          </label>
        )}
      </fieldset>
      <div class="form-row">
        <label for="decision-reason">Reason</label>
        <textarea id="decision-reason" name="reason" required maxlength={4000} />
      </div>
      <label class="choice">
        <input type="checkbox" name="visibleToApplicant" checked /> Show the reason to the applicant
      </label>
      <p>
        <button type="submit">Record decision</button> <output data-form-status />
      </p>
    </form>
  );
}

/** A case file: the submission, the evidence, history, reviewers' comments and the decision. */
/** What made two cases resemble each other, in a reviewer's words. */
const RESEMBLANCE_WORDS = new Map([
  ["name", "same name"],
  ["website", "same website"],
  ["email_domain", "same e-mail domain"],
]);

/**
 * This case beside every case it resembles: a resemblance is not proof that two applicants are
 * one organization, so the reviewer compares what each declared.
 */
function RelatedCases(props: { file: CaseFile }) {
  const app = props.file.application;
  const rows: [string, (c: CaseFile["relatedCases"][number] | CaseFile["application"]) => string][] = [
    ["Organization", (c) => c.organizationName],
    ["Website", (c) => c.website ?? "—"],
    ["Country", (c) => c.country],
    ["Contact", (c) => c.contactEmail],
    ["Declared MAU", (c) => c.declaredMau.toLocaleString("en-US")],
    ["Approvals needed", (c) => String(c.requiredApprovals)],
    ["Submitted", (c) => formatTime(c.createdAt)],
  ];
  return (
    <section aria-labelledby="related-heading" class="panel">
      <h2 id="related-heading" style="margin-top:0">
        Related cases of other organizations
      </h2>
      <p class="muted">
        Linked because they resemble this one. A resemblance is not proof of identity: compare before deciding.
      </p>
      <table id="related-cases">
        <thead>
          <tr>
            <th scope="col"> </th>
            <th scope="col">This case</th>
            {props.file.relatedCases.map((r) => (
              <th scope="col">
                <a href={`/admin/applications/${r.id}`}>{r.id}</a>{" "}
                <span class={`badge ${r.status}`}>{STATUS_WORDS[r.status]}</span>
                <br />
                <span class="muted">
                  {r.reasons.map((reason) => RESEMBLANCE_WORDS.get(reason) ?? reason).join(", ")}
                </span>
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map(([label, value]) => (
            <tr>
              <th scope="row">{label}</th>
              <td>{value(app)}</td>
              {props.file.relatedCases.map((r) => (
                <td>{value(r)}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

export function CasePage(props: { admin: AdminIdentity; signOut: SignOut; file: CaseFile; comments: Comment[] }) {
  const { file, admin } = props;
  const screeningMatches = file.auditEvents
    .filter((e) => e.action === SCREENING_MATCH_ACTION)
    .flatMap((e) => screeningMatchesOf(e.data));
  const app = file.application;
  return (
    <ConsolePage title={`${app.organizationName} · case`} section="queue" admin={admin} signOut={props.signOut}>
      <p>
        <a href="/admin">← Queue</a>
      </p>
      <h1>
        {app.organizationName} <span class={`badge ${app.status}`}>{STATUS_WORDS[app.status]}</span>
      </h1>
      <section aria-labelledby="approvals-heading" class="panel">
        <h2 id="approvals-heading" style="margin-top:0">
          Approvals: {file.approvals.length} of {app.requiredApprovals} (round {app.reviewRound})
        </h2>
        {file.approvals.length === 0 ? (
          <p class="empty">No approvals yet in this round.</p>
        ) : (
          <ul id="approvals">
            {file.approvals.map((a) => (
              <li>
                {a.reviewer}
                {a.reviewer === admin.email ? " (you)" : ""}, {formatTime(a.at)}
              </li>
            ))}
          </ul>
        )}
        {app.policyReasons.length > 0 ? (
          <>
            <h3>Why it is in review</h3>
            <ul>
              {app.policyReasons.map((r) => (
                <li>
                  <span class="flag">{r.code.replaceAll("_", " ")}</span> {r.detail}
                </li>
              ))}
            </ul>
          </>
        ) : null}
      </section>

      <section aria-labelledby="decide-heading">
        <h2 id="decide-heading">Decide</h2>
        <DecisionForm admin={admin} file={file} />
      </section>

      <div class="grid">
        <section aria-labelledby="submission-heading">
          <h2 id="submission-heading">What the applicant submitted</h2>
          <dl class="facts">
            <dt>Organization</dt>
            <dd>{app.organizationName}</dd>
            <dt>Website</dt>
            <dd>{app.website ? app.website : "—"}</dd>
            <dt>Country</dt>
            <dd>
              {countryName(app.country)} ({app.country})
            </dd>
            <dt>Contact</dt>
            <dd>
              {app.contactName}, {app.contactEmail}
            </dd>
            <dt>Declared MAU</dt>
            <dd>{formatCount(app.declaredMau)} (June 2023, affiliates included)</dd>
            <dt>Models</dt>
            <dd>{app.models.join(", ")}</dd>
            <dt>Family</dt>
            <dd>{app.family}</dd>
            <dt>Submitted</dt>
            <dd>{formatTime(app.createdAt)}</dd>
            <dt>Case id</dt>
            <dd>
              <code>{app.id}</code>
            </dd>
          </dl>
          <h3>Intended use</h3>
          <p style="white-space:pre-wrap">{app.intendedUse}</p>
          {app.applicantResponse ? (
            <>
              <h3>Applicant's answer to the request for information</h3>
              <p style="white-space:pre-wrap">{app.applicantResponse}</p>
            </>
          ) : null}
          {app.applicantMessage ? (
            <>
              <h3>Message shown to the applicant</h3>
              <p>{app.applicantMessage}</p>
            </>
          ) : null}
        </section>

        <section aria-labelledby="evidence-heading">
          <h2 id="evidence-heading">License acceptance</h2>
          {file.acceptances.length === 0 ? (
            <p class="empty">No acceptance recorded.</p>
          ) : (
            file.acceptances.map((a) => (
              <dl class="facts panel">
                <dt>License version</dt>
                <dd>
                  <code>{a.licenseVersionId}</code>
                </dd>
                <dt>License sha256</dt>
                <dd>
                  <code>{a.licenseSha256}</code>
                </dd>
                <dt>AUP sha256</dt>
                <dd>
                  <code>{a.aupSha256}</code>
                </dd>
                <dt>Accepted by</dt>
                <dd>
                  {a.confirmedAt
                    ? `${a.confirmedByEmail ?? "—"} (${a.confirmedByUserId ?? "no user"}), confirming with the mailed link`
                    : "Whoever submitted: no confirmation recorded (an acceptance from before confirmations were acceptances, or an owner's request for more models)"}
                </dd>
                {a.confirmedAt ? (
                  <>
                    <dt>Confirmed</dt>
                    <dd>{formatTime(a.confirmedAt)}</dd>
                    <dt>Confirmed from IP</dt>
                    <dd>{a.confirmedIp ?? "—"}</dd>
                    <dt>Country (edge)</dt>
                    <dd>{a.confirmedCountry ?? "—"}</dd>
                    <dt>User agent</dt>
                    <dd>{a.confirmedUserAgent ?? "—"}</dd>
                  </>
                ) : null}
                <dt>Submitted</dt>
                <dd>{formatTime(a.acceptedAt)}</dd>
                <dt>Submitted from IP</dt>
                <dd>{a.ip ?? "—"}</dd>
                <dt>Country (edge)</dt>
                <dd>{a.country ?? "—"}</dd>
                <dt>User agent</dt>
                <dd>{a.userAgent ?? "—"}</dd>
              </dl>
            ))
          )}
          <h2 id="earlier-heading">Earlier cases of this organization</h2>
          {file.earlierCases.length === 0 ? (
            <p class="empty">None.</p>
          ) : (
            <ul aria-labelledby="earlier-heading">
              {file.earlierCases.map((e) => (
                <li>
                  <a href={`/admin/applications/${e.id}`}>{formatTime(e.createdAt)}</a> {e.family}, {e.contactEmail}:{" "}
                  <span class={`badge ${e.status}`}>{STATUS_WORDS[e.status]}</span>
                </li>
              ))}
            </ul>
          )}
          {file.grant ? (
            <>
              <h2>Grant</h2>
              <p>
                <a href={`/admin/grants/${file.grant.id}`}>{file.grant.id}</a>{" "}
                <span class={`badge ${file.grant.status}`}>{file.grant.status}</span>
              </p>
            </>
          ) : null}
        </section>
      </div>

      {file.relatedCases.length > 0 ? <RelatedCases file={file} /> : null}

      <section aria-labelledby="comments-heading">
        <h2 id="comments-heading">Comments between reviewers</h2>
        <p class="muted">The applicant never sees these.</p>
        {props.comments.length === 0 ? (
          <p class="empty">No comments yet.</p>
        ) : (
          props.comments.map((comment) => (
            <article class="comment">
              <p class="muted">
                {comment.reviewer}, {formatTime(comment.createdAt)}
              </p>
              <p>{comment.body}</p>
            </article>
          ))
        )}
        {props.file.conflictOfInterest ? (
          // The comment would be refused (`conflict_of_interest`): a party does not argue its own case.
          <p class="panel" id="comment-conflict">
            You are party to this case, so its comments are left to the other reviewers.
          </p>
        ) : (
          <form
            data-api={`/admin/api/applications/${app.id}/comments`}
            data-done="reload"
            data-success="Comment added."
          >
            <div class="form-row">
              <label for="comment-body">Add a comment</label>
              <textarea id="comment-body" name="body" required maxlength={4000} />
            </div>
            <button type="submit" class="secondary">
              Add comment
            </button>{" "}
            <output data-form-status />
          </form>
        )}
      </section>

      {screeningMatches.length > 0 ? (
        <section aria-labelledby="screening-heading">
          <h2 id="screening-heading">Denied-party screening</h2>
          <p class="panel bad" role="status">
            The applicant's names match {screeningMatches.length === 1 ? "a party" : "parties"} on the screening list:
            the case waits for a reviewer. The applicant is not told which list or party.
          </p>
          <DataTable
            rows={screeningMatches}
            caption="Listed parties the organization's or contact's name matched"
            columns={[
              { label: "Applicant's name", cell: (m) => m.screened },
              { label: "Listed party", cell: (m) => m.name },
              { label: "Matched name or alias", cell: (m) => m.matchedName },
              { label: "List", cell: (m) => m.source },
              { label: "Country", cell: (m) => (m.country ? countryName(m.country) : "—") },
            ]}
          />
        </section>
      ) : null}

      <section aria-labelledby="history-heading">
        <h2 id="history-heading">Decisions</h2>
        <DataTable
          rows={file.decisions}
          empty={<p class="empty">No decisions yet.</p>}
          columns={[
            { label: "When", cell: (d) => formatTime(d.createdAt) },
            { label: "Round", cell: (d) => d.reviewRound },
            { label: "Reviewer", cell: (d) => d.reviewerEmail },
            { label: "Decision", cell: (d) => DECISION_WORDS[d.decision] },
            {
              label: "Reason",
              cell: (d) => (
                <>
                  {d.reason} <span class="muted">{d.visibleToApplicant ? "(shown to applicant)" : "(internal)"}</span>
                </>
              ),
            },
          ]}
        />
      </section>

      <section aria-labelledby="trail-heading">
        <h2 id="trail-heading">Audit trail</h2>
        <DataTable
          rows={file.auditEvents}
          empty={<p class="empty">No events yet.</p>}
          columns={auditEventColumns({ actor: "Who", action: "What" })}
        />
      </section>
    </ConsolePage>
  );
}
