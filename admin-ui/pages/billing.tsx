import { type AdminIdentity, holdsRole } from "../../worker/auth/access";
import type { failedLedgerRows, outboxStates, retryingRows } from "../../worker/billing/outbox";
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

/** What each ledger state means, in the order the backlog lists them. */
const STATE_MEANINGS = {
  pending: "Waiting to be sent to Stripe.",
  dead: "Dead letter: the queue gave up after its retries. Kept for resending, never dropped.",
  expired: "Older than Stripe accepts (35 days) before it could be sent. Flagged, never dropped.",
  sent: "Accepted by Stripe.",
  skipped: "Nothing to bill (no tokens, or no such organization).",
} as const;

type State = keyof typeof STATE_MEANINGS;

/** The usage ledger's backlog on its way to Stripe, the rows that failed, and accounts in arrears. */
export function BillingPage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  enabled: boolean;
  now: Date;
  states: Awaited<ReturnType<typeof outboxStates>>;
  retrying: Awaited<ReturnType<typeof retryingRows>>;
  failures: Awaited<ReturnType<typeof failedLedgerRows>>;
  arrears: AccountStanding[];
}) {
  const byState = (state: State) => props.states.find((s) => s.state === state) ?? { state, rows: 0, oldest: null };
  const pending = byState("pending");
  const neverBilled = byState("dead").rows + byState("expired").rows;
  const age = (iso: string) => formatAge((props.now.getTime() - Date.parse(iso)) / 1000);
  return (
    <ConsolePage title="Billing" section="billing" admin={props.admin} signOut={props.signOut}>
      <h1>Billing</h1>
      {!props.enabled ? (
        <p class="panel" id="billing-off" role="status">
          <strong>Billing is off.</strong> This gateway has no Stripe key (<code>STRIPE_SECRET_KEY</code>), so no usage
          is sent to Stripe and no organization is billed or suspended for non-payment. Usage is still metered:{" "}
          {formatCount(pending.rows)} call{pending.rows === 1 ? " is" : "s are"} in the ledger, unsent.
        </p>
      ) : (
        <>
          <section aria-labelledby="outbox-heading">
            <h2 id="outbox-heading">Usage on its way to Stripe</h2>
            <p class={`panel ${neverBilled > 0 ? "bad" : "ok"}`} id="outbox-status">
              {pending.rows === 0 || !pending.oldest
                ? "Nothing is waiting to be sent."
                : `${formatCount(pending.rows)} row${pending.rows === 1 ? "" : "s"} waiting to be sent, the oldest written ${age(pending.oldest)} ago; ${formatCount(props.retrying.rows)} of them retrying after a failure. Stripe refuses usage older than 35 days.`}{" "}
              {neverBilled > 0
                ? `${formatCount(neverBilled)} row${neverBilled === 1 ? " was" : "s were"} never billed (dead letters and expired rows, below).`
                : "Nothing has failed for good."}
            </p>
            <DataTable
              rows={(Object.keys(STATE_MEANINGS) as State[]).map(byState)}
              caption="Usage-ledger rows by billing state"
              columns={[
                { label: "State", cell: (s) => s.state },
                {
                  label: "Meaning",
                  cell: (s) =>
                    s.state === "pending" && props.retrying.rows > 0
                      ? `${STATE_MEANINGS.pending} ${formatCount(props.retrying.rows)} retrying after a failure.`
                      : STATE_MEANINGS[s.state],
                },
                { label: "Rows", numeric: true, cell: (s) => formatCount(s.rows) },
                { label: "Oldest written", cell: (s) => formatTime(s.oldest) },
              ]}
            />
          </section>

          <section aria-labelledby="failures-heading">
            <h2 id="failures-heading">What keeps failing</h2>
            <p class="muted">
              Rows Stripe did not accept: retrying, dead letters and expired rows, with the last error. Newest first.
            </p>
            <DataTable
              rows={props.failures}
              caption={`The ${props.failures.length} most recent`}
              empty={<p class="empty">None: every row Stripe was sent, it accepted.</p>}
              columns={[
                { label: "Ledger row", cell: (r) => <code>{r.id}</code> },
                {
                  label: "Organization",
                  cell: (r) => (
                    <a href={`/admin/grants?organization=${encodeURIComponent(r.organizationId)}`}>
                      {r.organization ?? r.organizationId}
                    </a>
                  ),
                },
                { label: "Model", cell: (r) => r.model },
                { label: "Tokens", numeric: true, cell: (r) => formatCount(r.totalTokens) },
                { label: "Attempts", numeric: true, cell: (r) => formatCount(r.attempts) },
                {
                  label: "State",
                  cell: (r) => {
                    const state = r.state === "pending" ? "retrying" : r.state === "dead" ? "dead letter" : r.state;
                    return <span class={`badge ${r.state === "pending" ? "retrying" : r.state}`}>{state}</span>;
                  },
                },
                { label: "Last error", cell: (r) => r.error ?? "—" },
                { label: "Started", cell: (r) => formatTime(r.startedAt) },
              ]}
            />
          </section>

          {byState("dead").rows > 0 &&
            (holdsRole(props.admin, "admin") ? (
              <form
                class="panel"
                id="resend-dead"
                data-api="/admin/api/billing/outbox/resend"
                data-confirm={`Send ${byState("dead").rows} dead-lettered row(s) to Stripe again?`}
                data-done="reload"
                data-success="Queued again."
              >
                <p>
                  {formatCount(byState("dead").rows)} dead-lettered row{byState("dead").rows === 1 ? "" : "s"}: once the
                  cause is fixed, send them again. Stripe takes each row once, so nothing is billed twice.
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
