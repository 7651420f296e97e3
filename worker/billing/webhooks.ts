import { eq } from "drizzle-orm";
import type Stripe from "stripe";
import { type AuditEntry, writeAudited } from "../audit/log";
import { type BillingAccount, type BillingStatus, billingAccounts, stripeEvents } from "../db/schema";
import { AppError } from "../errors";
import { paymentFailedEvents } from "../events/record";
import type { Services } from "../services";
import { stripeClient, webhookCrypto } from "./stripe";

/** How far a webhook's signed timestamp may be from now (Stripe's default). */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

/**
 * Verifies a webhook's raw body against each configured signing secret (several while a secret
 * is rotated). Any failure — no header, a wrong secret, a bad signature, a timestamp outside the
 * tolerance — is one 400, and nothing is changed.
 */
export async function verifyWebhook(
  services: Pick<Services, "config" | "clock">,
  body: string,
  signature: string | undefined,
): Promise<Stripe.Event> {
  const stripe = stripeClient(services.config.billing);
  const secrets = services.config.billing.webhookSecrets;
  if (!stripe || secrets.length === 0)
    throw new AppError("service_unavailable", "Billing is not configured on this gateway.");
  if (!signature) throw new AppError("invalid_signature", "The Stripe-Signature header is missing.");
  // Milliseconds: the SDK divides by 1000 itself.
  const receivedAt = services.clock.now().getTime();
  for (const secret of secrets) {
    try {
      return await stripe.webhooks.constructEventAsync(
        body,
        signature,
        secret,
        WEBHOOK_TOLERANCE_SECONDS,
        webhookCrypto,
        receivedAt,
      );
    } catch {
      // Try the next secret.
    }
  }
  throw new AppError("invalid_signature", "The webhook signature does not verify with any configured secret.");
}

const SUBSCRIPTION_STATUS: Record<string, BillingStatus> = {
  active: "active",
  trialing: "active",
  past_due: "past_due",
  unpaid: "unpaid",
  canceled: "canceled",
  incomplete: "incomplete",
  incomplete_expired: "canceled",
  paused: "unpaid",
};

function customerOf(object: unknown): string | undefined {
  const customer = (object as { customer?: unknown })?.customer;
  if (typeof customer === "string") return customer;
  if (customer && typeof customer === "object" && typeof (customer as { id?: unknown }).id === "string")
    return (customer as { id: string }).id;
  return undefined;
}

/** The subscription an invoice bills, in the API versions before and after it moved under `parent`. */
function invoiceSubscription(invoice: unknown): string | undefined {
  const object = invoice as {
    subscription?: unknown;
    parent?: { subscription_details?: { subscription?: unknown } | null } | null;
  };
  const id = object.subscription ?? object.parent?.subscription_details?.subscription;
  if (typeof id === "string") return id;
  if (id && typeof id === "object" && typeof (id as { id?: unknown }).id === "string") return (id as { id: string }).id;
  return undefined;
}

/**
 * The account after an event, or undefined when the event changes nothing: an unknown type, an
 * event about another subscription of the customer than the account's (unless it is a live one
 * that replaces it), or one older than an event of its kind already applied. Stripe does not promise order, so each kind moves only forward in
 * event time, and the status, which both kinds set, follows the newer of the two: a renewal's
 * `subscription.updated` that comes after the newer `payment_failed` does not make the account
 * active again, nor an old `invoice.paid` after a newer `past_due`. After a cancellation only a
 * subscription (a new one) makes the account active again, never an invoice.
 */
export function applyBillingEvent(
  account: BillingAccount,
  event: Pick<Stripe.Event, "type" | "created" | "data">,
  at: string,
): BillingAccount | undefined {
  const eventTime = new Date(event.created * 1000).toISOString();
  const failedSince = (status: BillingStatus) => (status === "active" ? null : (account.paymentFailedAt ?? eventTime));
  const ours = (subscription: string | undefined) =>
    subscription === undefined ||
    account.stripeSubscriptionId === null ||
    subscription === account.stripeSubscriptionId;
  switch (event.type) {
    case "customer.subscription.updated":
    case "customer.subscription.deleted": {
      if (event.created < account.subscriptionEventCreated) return undefined;
      const subscription = event.data.object as { id: string; status: string };
      const deleted = event.type === "customer.subscription.deleted";
      // Another subscription of the customer replaces the account's once it is live; its end, or
      // the end of an old one, says nothing about the account's own.
      if (!ours(subscription.id) && (deleted || SUBSCRIPTION_STATUS[subscription.status] !== "active"))
        return undefined;
      const status = deleted
        ? "canceled"
        : event.created < account.invoiceEventCreated
          ? account.status
          : (SUBSCRIPTION_STATUS[subscription.status] ?? account.status);
      return {
        ...account,
        status,
        stripeSubscriptionId: subscription.id,
        paymentFailedAt: failedSince(status),
        subscriptionEventCreated: event.created,
        updatedAt: at,
      };
    }
    case "invoice.payment_failed":
    case "invoice.paid": {
      if (event.created < account.invoiceEventCreated) return undefined;
      if (!ours(invoiceSubscription(event.data.object))) return undefined;
      const paid = event.type === "invoice.paid";
      const status =
        account.status === "canceled" || event.created < account.subscriptionEventCreated
          ? account.status
          : paid
            ? "active"
            : "past_due";
      return {
        ...account,
        status,
        paymentFailedAt: failedSince(status),
        invoiceEventCreated: event.created,
        updatedAt: at,
      };
    }
    default:
      return undefined;
  }
}

/** The fields an event changed, each `{from, to}`; `updatedAt` moves with every write and is left out. */
function accountChanges(before: BillingAccount, after: BillingAccount): Record<string, { from: unknown; to: unknown }> {
  const changes: Record<string, { from: unknown; to: unknown }> = {};
  for (const field of Object.keys(after) as (keyof BillingAccount)[]) {
    if (field !== "updatedAt" && before[field] !== after[field])
      changes[field] = { from: before[field], to: after[field] };
  }
  return changes;
}

/** What handling an event did. */
export type WebhookResult = "applied" | "ignored" | "duplicate";

/**
 * Applies a verified event once: the event id is recorded in the same atomic write as its effect,
 * so a redelivered event finds its id taken and changes nothing, and a failure part-way leaves
 * neither behind (Stripe redelivers it).
 */
export async function handleBillingEvent(services: Services, event: Stripe.Event): Promise<WebhookResult> {
  const customer = customerOf(event.data.object);
  const alreadySeen = async () =>
    (await services.db.select({ id: stripeEvents.id }).from(stripeEvents).where(eq(stripeEvents.id, event.id))).length >
    0;
  try {
    return await applyOnce();
  } catch (error) {
    // Two deliveries of one event at the same moment: the second finds the id taken.
    if (String(error).includes("UNIQUE constraint failed") && (await alreadySeen())) return "duplicate";
    throw error;
  }

  async function applyOnce() {
    return writeAudited<WebhookResult>(services, async () => {
      const [seen] = await services.db.select().from(stripeEvents).where(eq(stripeEvents.id, event.id));
      if (seen) return { statements: [], events: [], result: "duplicate" };
      const at = services.clock.now().toISOString();
      const record = services.db
        .insert(stripeEvents)
        .values({ id: event.id, type: event.type, created: event.created, receivedAt: at });
      const [account] = customer
        ? await services.db.select().from(billingAccounts).where(eq(billingAccounts.stripeCustomerId, customer))
        : [];
      const next = account ? applyBillingEvent(account, event, at) : undefined;
      if (!account || !next) return { statements: [record], events: [], result: "ignored" };
      const audit: AuditEntry =
        next.status !== account.status
          ? {
              actor: "stripe",
              action: "billing.status_changed",
              subjectType: "organization",
              subjectId: account.organizationId,
              data: { from: account.status, to: next.status, event: event.id, type: event.type },
            }
          : {
              // Every write to the account is evidence, not only a change of status: a new
              // subscription id, or the event time that decides which later events still apply.
              actor: "stripe",
              action: "billing.account_updated",
              subjectType: "organization",
              subjectId: account.organizationId,
              data: { changes: accountChanges(account, next), event: event.id, type: event.type },
            };
      return {
        statements: [
          record,
          services.db
            .update(billingAccounts)
            .set(next)
            .where(eq(billingAccounts.organizationId, account.organizationId)),
          ...paymentFailedEvents(services, next, event),
        ],
        events: [audit],
        result: "applied",
      };
    });
  }
}
