import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import type { BillableKind, BillingFailure, outboxStates, retryingBillables } from "../../worker/billing/outbox";
import type { BillingStatus } from "../../worker/db/schema";
import { formatAge, formatCount, formatTime } from "../../worker/pages/format";
import { ConsolePage, type SignOut } from "../layout";
import { DataTable } from "../table";

/** An organization's billing account as the console shows it, standing worked out for now. */
export interface AccountStanding {
  organizationId: string;
  organization: string;
  plan: string;
  status: BillingStatus;
  stripeCustomerId: string;
  stripeSubscriptionId: string | null;
  paymentFailedAt: string | null;
  /** When inference stops (or stopped) for lack of payment; null while payment is in order. */
  suspendedSince: string | null;
  suspended: boolean;
}

const STATUS_WORDS: Record<BillingStatus, string> = {
  active: "active",
  past_due: "past due",
  unpaid: "unpaid",
  canceled: "canceled",
  incomplete: "incomplete",
};

/** A billing status badge; a suspension outranks the Stripe status it follows from. */
export function BillingBadge(props: { status: BillingStatus; suspended: boolean }) {
  if (props.suspended) return <span class="badge bad">suspended</span>;
  return <span class={`badge ${props.status}`}>{STATUS_WORDS[props.status]}</span>;
}

/** What a failed payment means for inference: the end of the grace period, or the suspension. */
export function PaymentStanding(props: {
  paymentFailedAt: string | null;
  suspendedSince: string | null;
  suspended: boolean;
}) {
  if (!props.paymentFailedAt || !props.suspendedSince) return <>Payment in order.</>;
  return (
    <>
      Payment failed {formatTime(props.paymentFailedAt)};{" "}
      {props.suspended
        ? `inference suspended since ${formatTime(props.suspendedSince)}.`
        : `grace period ends ${formatTime(props.suspendedSince)}, when inference stops unless paid.`}
    </>
  );
}

/** What each billing state means, in the order the backlog lists them. */
const STATE_MEANINGS = {
  pending: "Waiting to be sent to Stripe.",
  dead: "Dead letter: the queue gave up after its retries. Kept for resending, never dropped.",
  expired: "Older than Stripe accepts (35 days) before it could be sent. Flagged, never dropped.",
  sent: "Accepted by Stripe.",
  skipped: "Nothing to bill (no tokens, or no such organization).",
} as const;

type State = keyof typeof STATE_MEANINGS;

/** `n` of a kind, counted in words: "1 hourly interval", "3 rows". */
function counted(n: number, kind: BillableKind): string {
  const noun = kind === "interval" ? "hourly interval" : "row";
  return `${formatCount(n)} ${noun}${n === 1 ? "" : "s"}`;
}

/** The kinds that have any, in words and joined: "2 hourly intervals and 1 row"; empty when none has. */
function countedKinds(counts: Record<BillableKind, number>): { text: string; total: number } {
  const parts = (["interval", "row"] as const).filter((k) => counts[k] > 0).map((k) => counted(counts[k], k));
  return { text: parts.join(" and "), total: counts.interval + counts.row };
}

/**
 * The billing outbox — hourly intervals (one pair of meter events per organization and closed
 * part of an hour) and ledger rows billed one by one — by state, what failed, and accounts in arrears.
 */
export function BillingPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  enabled: boolean;
  now: Date;
  states: Awaited<ReturnType<typeof outboxStates>>;
  retrying: Awaited<ReturnType<typeof retryingBillables>>;
  failures: BillingFailure[];
  arrears: AccountStanding[];
}) {
  const byState = (kind: BillableKind, state: State) =>
    props.states.find((s) => s.kind === kind && s.state === state) ?? {
      kind,
      state,
      rows: 0,
      requests: 0,
      oldest: null,
    };
  const both = (state: State) => ({ interval: byState("interval", state).rows, row: byState("row", state).rows });
  const pending = countedKinds(both("pending"));
  const pendingOldest = [byState("interval", "pending").oldest, byState("row", "pending").oldest]
    .filter((at): at is string => at !== null)
    .sort()[0];
  const retrying = props.retrying.interval.rows + props.retrying.row.rows;
  const dead = countedKinds(both("dead"));
  const neverBilled = countedKinds({
    interval: both("dead").interval + both("expired").interval,
    row: both("dead").row + both("expired").row,
  });
  const unsentCalls = byState("interval", "pending").requests + byState("row", "pending").requests;
  const age = (iso: string) => formatAge((props.now.getTime() - Date.parse(iso)) / 1000);
  const meaning = (kind: BillableKind, state: State) =>
    state === "pending" && props.retrying[kind].rows > 0
      ? `${STATE_MEANINGS.pending} ${formatCount(props.retrying[kind].rows)} retrying after a failure.`
      : STATE_MEANINGS[state];
  const states = Object.keys(STATE_MEANINGS) as State[];
  return (
    <ConsolePage title="Billing" section="billing" admin={props.admin} signOut={props.signOut}>
      <h1>Billing</h1>
      {!props.enabled ? (
        <p class="panel" id="billing-off" role="status">
          <strong>Billing is off.</strong> This gateway has no Stripe key (<code>STRIPE_SECRET_KEY</code>), so no usage
          is sent to Stripe and no organization is billed or suspended for non-payment. Usage is still metered:{" "}
          {formatCount(unsentCalls)} call{unsentCalls === 1 ? " is" : "s are"} in the ledger, unsent.
        </p>
      ) : (
        <>
          <section aria-labelledby="outbox-heading">
            <h2 id="outbox-heading">Usage on its way to Stripe</h2>
            <p class={`panel ${neverBilled.total > 0 ? "bad" : "ok"}`} id="outbox-status">
              {pending.total === 0 || !pendingOldest
                ? "Nothing is waiting to be sent."
                : `${pending.text} waiting to be sent, the oldest written ${age(pendingOldest)} ago; ${formatCount(retrying)} of them retrying after a failure. Stripe refuses usage older than 35 days.`}{" "}
              {neverBilled.total > 0
                ? `${neverBilled.text} ${neverBilled.total === 1 ? "was" : "were"} never billed (dead letters and expired ones, below).`
                : "Nothing has failed for good."}
            </p>
            <DataTable
              rows={states.map((state) => byState("interval", state))}
              caption="Billing intervals by billing state (one per organization and closed interval of USAGE_INTERVAL_MINUTES)"
              columns={[
                { label: "State", cell: (s) => s.state },
                { label: "Meaning", cell: (s) => meaning("interval", s.state) },
                { label: "Intervals", numeric: true, cell: (s) => formatCount(s.rows) },
                { label: "Requests", numeric: true, cell: (s) => formatCount(s.requests) },
                { label: "Oldest written", cell: (s) => formatTime(s.oldest) },
              ]}
            />
            <DataTable
              rows={states.map((state) => byState("row", state))}
              caption="Usage-ledger rows by billing state (requests billed one by one: older gateways, or a quota object out of reach)"
              columns={[
                { label: "State", cell: (s) => s.state },
                { label: "Meaning", cell: (s) => meaning("row", s.state) },
                { label: "Rows", numeric: true, cell: (s) => formatCount(s.rows) },
                { label: "Oldest written", cell: (s) => formatTime(s.oldest) },
              ]}
            />
          </section>

          <section aria-labelledby="failures-heading">
            <h2 id="failures-heading">What keeps failing</h2>
            <p class="muted">
              Intervals and rows Stripe did not accept: retrying, dead letters and expired ones, with the last error.
              Newest first.
            </p>
            <DataTable
              rows={props.failures}
              caption={`The ${props.failures.length} most recent`}
              empty={<p class="empty">None: everything Stripe was sent, it accepted.</p>}
              columns={[
                { label: "Kind", cell: (r) => (r.kind === "interval" ? "hourly interval" : "ledger row") },
                { label: "Id", cell: (r) => <code>{r.id}</code> },
                {
                  label: "Organization",
                  cell: (r) => (
                    <a href={`/admin/grants?organization=${encodeURIComponent(r.organizationId)}`}>
                      {r.organization ?? r.organizationId}
                    </a>
                  ),
                },
                { label: "Model", cell: (r) => r.model ?? "all of the hour's" },
                { label: "Requests", numeric: true, cell: (r) => formatCount(r.requests) },
                { label: "Tokens", numeric: true, cell: (r) => formatCount(r.promptTokens + r.completionTokens) },
                { label: "Attempts", numeric: true, cell: (r) => formatCount(r.attempts) },
                {
                  label: "State",
                  cell: (r) => {
                    const state = r.state === "pending" ? "retrying" : r.state === "dead" ? "dead letter" : r.state;
                    return <span class={`badge ${r.state === "pending" ? "retrying" : r.state}`}>{state}</span>;
                  },
                },
                { label: "Last error", cell: (r) => r.error ?? "—" },
                {
                  label: "Usage of",
                  cell: (r) =>
                    r.kind === "interval" ? `the hour from ${formatTime(`${r.hour}:00`)}` : formatTime(r.createdAt),
                },
              ]}
            />
          </section>

          {dead.total > 0 &&
            (holdsRole(props.admin, "admin") ? (
              <form
                class="panel"
                id="resend-dead"
                data-api="/admin/api/billing/outbox/resend"
                data-confirm={`Send ${dead.text} (dead letters) to Stripe again?`}
                data-done="reload"
                data-success="Queued again."
              >
                <p>
                  {dead.text} dead-lettered: once the cause is fixed, send them again. Stripe takes each meter event
                  once, so nothing is billed twice.
                </p>
                <button type="submit">Send dead letters again</button> <output data-form-status />
              </form>
            ) : (
              <p class="muted">Sending dead letters again needs the admin role.</p>
            ))}

          <section aria-labelledby="arrears-heading">
            <h2 id="arrears-heading">Organizations whose payment is not in order</h2>
            <DataTable
              rows={props.arrears}
              empty={<p class="empty">None: every billing account is active.</p>}
              columns={[
                {
                  label: "Organization",
                  cell: (a) => (
                    <a href={`/admin/grants?organization=${encodeURIComponent(a.organizationId)}`}>{a.organization}</a>
                  ),
                },
                { label: "Plan", cell: (a) => a.plan },
                { label: "Status", cell: (a) => <BillingBadge status={a.status} suspended={a.suspended} /> },
                { label: "Inference", cell: (a) => <PaymentStanding {...a} /> },
                { label: "Stripe customer", cell: (a) => <code>{a.stripeCustomerId}</code> },
              ]}
            />
          </section>
        </>
      )}
    </ConsolePage>
  );
}
