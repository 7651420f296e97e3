import { eq } from "drizzle-orm";
import type Stripe from "stripe";
import { type AuditEntry, writeAudited } from "../audit/log";
import type { BillingConfig } from "../config";
import { type BillingAccount, type BillingStatus, billingAccounts, stripeEvents } from "../db/schema";
import { AppError } from "../errors";
import { paymentFailedEvents } from "../events/record";
import { readBodyText, refuseDeclaredOverLimit } from "../http/body";
import type { Services } from "../services";
import { stripeClient, webhookCrypto } from "./stripe";

/** How far a webhook's signed timestamp may be from now, either way (Stripe's default). */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

/**
 * The largest webhook body read. A Stripe event carries one object (and its changed attributes),
 * its lists cut to their first page: a few KiB, tens for a large invoice, well under 1 MiB. Half a
 * MiB leaves that room many times over, while a flood of unsigned bodies costs an isolate no more.
 */
export const MAX_WEBHOOK_BODY_BYTES = 512 * 1024;

/**
 * Reads and verifies a webhook request, refusing all it can before reading the body: billing off
 * (503), a declared length over `MAX_WEBHOOK_BODY_BYTES` (413), no `Stripe-Signature` header (400),
 * so a caller without a signature never gets a body buffered. The body is then read counted, cut
 * at the limit whether or not a length was declared.
 */
export async function readWebhook(
  services: Pick<Services, "config" | "clock">,
  request: Request,
): Promise<Stripe.Event> {
  billingWebhookSetup(services.config.billing);
  refuseDeclaredOverLimit(request, MAX_WEBHOOK_BODY_BYTES);
  const signature = request.headers.get("stripe-signature") ?? undefined;
  if (!signature) throw new AppError("invalid_signature", "The Stripe-Signature header is missing.");
  return verifyWebhook(services, await readBodyText(request, MAX_WEBHOOK_BODY_BYTES), signature);
}

/** The Stripe client and signing secrets webhooks are verified with; 503 while billing is off. */
function billingWebhookSetup(config: BillingConfig) {
  const stripe = stripeClient(config);
  if (!stripe || config.webhookSecrets.length === 0)
    throw new AppError("service_unavailable", "Billing is not configured on this gateway.");
  return { stripe, secrets: config.webhookSecrets };
}

/**
 * The timestamp a `Stripe-Signature` header signs, read as the SDK reads it (the last `t=`
 * element, `parseInt`), so the one checked here is the one the signature covers; NaN when none.
 */
function signedTimestamp(signature: string): number {
  let timestamp = Number.NaN;
  for (const item of signature.split(",")) {
    const [key, value] = item.split("=");
    if (key === "t") timestamp = Number.parseInt(value ?? "", 10);
  }
  return timestamp;
}

/**
 * Verifies a webhook's raw body against each configured signing secret (several while a secret
 * is rotated). Any failure — no header, a wrong secret, a bad signature, a timestamp outside the
 * tolerance either way — is one 400, and nothing is changed. The SDK refuses only a timestamp too
 * old; one ahead of the gateway's clock is refused here, or a signature made for the future (a
 * leaked secret, a skewed signer) would stay replayable until then.
 */
export async function verifyWebhook(
  services: Pick<Services, "config" | "clock">,
  body: string,
  signature: string | undefined,
): Promise<Stripe.Event> {
  const { stripe, secrets } = billingWebhookSetup(services.config.billing);
  if (!signature) throw new AppError("invalid_signature", "The Stripe-Signature header is missing.");
  // Milliseconds: the SDK divides by 1000 itself.
  const receivedAt = services.clock.now().getTime();
  const signedAt = signedTimestamp(signature);
  if (Number.isFinite(signedAt) && Math.abs(Math.floor(receivedAt / 1000) - signedAt) > WEBHOOK_TOLERANCE_SECONDS)
    throw new AppError("invalid_signature", "The webhook signature's timestamp is outside the tolerance.");
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
  } | null;
  const id = object?.subscription ?? object?.parent?.subscription_details?.subscription;
  if (typeof id === "string") return id;
  if (id && typeof id === "object" && typeof (id as { id?: unknown }).id === "string") return (id as { id: string }).id;
  return undefined;
}

/** The subscription a subscription event is about, its status and the prices it bills. */
function subscriptionOf(object: unknown): { id: string; status: string; prices: Set<string> } | undefined {
  const subscription = object as { id?: unknown; status?: unknown; items?: { data?: unknown } | null } | null;
  if (typeof subscription?.id !== "string") return undefined;
  const items = Array.isArray(subscription.items?.data) ? (subscription.items.data as unknown[]) : [];
  const prices = new Set<string>();
  for (const item of items) {
    const price = (item as { price?: unknown } | null)?.price;
    if (typeof price === "string") prices.add(price);
    else if (price && typeof price === "object" && typeof (price as { id?: unknown }).id === "string")
      prices.add((price as { id: string }).id);
  }
  return { id: subscription.id, status: typeof subscription.status === "string" ? subscription.status : "", prices };
}

/** Statuses a subscription never leaves: Stripe starts a new subscription rather than revive one. */
const ENDED_STATUSES = new Set(["canceled", "incomplete_expired"]);

/** The subscription an event ends, if it ends one: a deletion, or an update to a status it never leaves. */
export function endedSubscription(event: Pick<Stripe.Event, "type" | "data">): string | undefined {
  if (event.type !== "customer.subscription.updated" && event.type !== "customer.subscription.deleted")
    return undefined;
  const subscription = subscriptionOf(event.data.object);
  if (!subscription) return undefined;
  return event.type === "customer.subscription.deleted" || ENDED_STATUSES.has(subscription.status)
    ? subscription.id
    : undefined;
}

/**
 * The price sets the gateway subscribes an account of `plan` to (`ensureBillingAccount` creates a
 * subscription with one item per price of the family's plan): a subscription carrying all of one
 * set bills the gateway's meters, and is the gateway's kind. A plan without prices has none.
 */
export function gatewayPriceSets(config: Pick<BillingConfig, "plans">, plan: string): string[][] {
  return Object.values(config.plans)
    .filter((p) => p.plan === plan && p.prices.length > 0)
    .map((p) => p.prices);
}

/**
 * Whether a subscription is one the account would adopt were it live: of the gateway's kind (it
 * carries all of one of the plan's price sets), and the account's own has ended, or it has none.
 */
function adoptable(
  account: Pick<BillingAccount, "stripeSubscriptionId" | "status">,
  subscription: { id: string; prices: ReadonlySet<string> },
  planPrices: readonly (readonly string[])[],
): boolean {
  const tracked = account.stripeSubscriptionId;
  // Only an event that ends the tracked subscription makes an account `canceled`.
  const trackedEnded = account.status === "canceled";
  return (
    subscription.id !== tracked &&
    (tracked === null || trackedEnded) &&
    planPrices.some((prices) => prices.every((p) => subscription.prices.has(p)))
  );
}

/** What the gateway knows beside the account when it applies an event. */
export interface BillingEventContext {
  /** The account's plan's price sets (`gatewayPriceSets`): what makes a subscription the gateway's kind. */
  planPrices: readonly (readonly string[])[];
  /** Whether an earlier event ended the event's subscription (`endedSubscription`): then it is final. */
  subscriptionEnded: boolean;
}

/**
 * The account after an event, or undefined when the event changes nothing. Stripe does not promise
 * order, so each kind of event moves only forward in event time, and the status, which both kinds
 * set, follows the newer of the two: a renewal's `subscription.updated` that comes after the newer
 * `payment_failed` does not make the account active again, nor an old `invoice.paid` after a newer
 * `past_due`. After a cancellation only a subscription (a new one) makes the account active again,
 * never an invoice.
 *
 * Only the account's own subscription counts. A customer may have others (an add-on, a one-off
 * invoice, a subscription an operator made by hand) whose payments say nothing about the metered
 * one, so an invoice of another subscription, or of none, changes nothing while the account tracks
 * one; another subscription never changes the status nor clears a failure of the tracked one. A
 * subscription is adopted only when it is the gateway's kind (it carries the plan's metered prices)
 * and live, and the tracked one has ended (or none is tracked): it is then the one usage is
 * invoiced through. An ended subscription is final: an event about it after its end — Stripe's
 * `created` is whole seconds, so an update of the same second may arrive after the deletion — is
 * ignored whatever its time.
 */
export function applyBillingEvent(
  account: BillingAccount,
  event: Pick<Stripe.Event, "type" | "created" | "data">,
  at: string,
  context: BillingEventContext,
): BillingAccount | undefined {
  const eventTime = new Date(event.created * 1000).toISOString();
  const failedSince = (status: BillingStatus) => (status === "active" ? null : (account.paymentFailedAt ?? eventTime));
  const tracked = account.stripeSubscriptionId;
  const trackedEnded = account.status === "canceled";
  switch (event.type) {
    case "customer.subscription.updated":
    case "customer.subscription.deleted": {
      const subscription = subscriptionOf(event.data.object);
      if (!subscription || context.subscriptionEnded) return undefined;
      if (event.created < account.subscriptionEventCreated) return undefined;
      const deleted = event.type === "customer.subscription.deleted";
      if (subscription.id === tracked) {
        if (trackedEnded) return undefined;
        const status = deleted
          ? "canceled"
          : event.created < account.invoiceEventCreated
            ? account.status
            : (SUBSCRIPTION_STATUS[subscription.status] ?? account.status);
        return {
          ...account,
          status,
          paymentFailedAt: failedSince(status),
          subscriptionEventCreated: event.created,
          updatedAt: at,
        };
      }
      const live = !deleted && SUBSCRIPTION_STATUS[subscription.status] === "active";
      if (!live || !adoptable(account, subscription, context.planPrices)) return undefined;
      // Adopted: its own standing, not the ended one's (nor its invoices').
      return {
        ...account,
        status: "active",
        stripeSubscriptionId: subscription.id,
        paymentFailedAt: null,
        subscriptionEventCreated: event.created,
        updatedAt: at,
      };
    }
    case "invoice.payment_failed":
    case "invoice.paid": {
      if (event.created < account.invoiceEventCreated) return undefined;
      if (tracked !== null && invoiceSubscription(event.data.object) !== tracked) return undefined;
      const paid = event.type === "invoice.paid";
      const status =
        trackedEnded || event.created < account.subscriptionEventCreated
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
 * neither behind (Stripe redelivers it). The record names the subscription the event ended, if
 * any, so that no later event revives it.
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

  /** Whether an event already recorded ended the subscription this event is about. */
  async function subscriptionEnded(): Promise<boolean> {
    if (event.type !== "customer.subscription.updated" && event.type !== "customer.subscription.deleted") return false;
    const subscription = subscriptionOf(event.data.object);
    if (!subscription) return false;
    const [ended] = await services.db
      .select({ id: stripeEvents.id })
      .from(stripeEvents)
      .where(eq(stripeEvents.endedSubscription, subscription.id))
      .limit(1);
    return ended !== undefined;
  }

  async function applyOnce() {
    return writeAudited<WebhookResult>(services, async () => {
      const [seen] = await services.db.select().from(stripeEvents).where(eq(stripeEvents.id, event.id));
      if (seen) return { statements: [], events: [], result: "duplicate" };
      const at = services.clock.now().toISOString();
      const record = services.db.insert(stripeEvents).values({
        id: event.id,
        type: event.type,
        created: event.created,
        receivedAt: at,
        endedSubscription: endedSubscription(event) ?? null,
      });
      const [account] = customer
        ? await services.db.select().from(billingAccounts).where(eq(billingAccounts.stripeCustomerId, customer))
        : [];
      if (!account) return { statements: [record], events: [], result: "ignored" };
      const planPrices = gatewayPriceSets(services.config.billing, account.plan);
      const next = applyBillingEvent(account, event, at, {
        planPrices,
        subscriptionEnded: await subscriptionEnded(),
      });
      if (!next) {
        // The end of a subscription the account would adopt is evidence, and written with an
        // audit event: the chain is then the lock that orders it against that subscription's
        // adoption, so the two arriving together cannot both be planned on the state before the
        // other, leaving the account active on an ended subscription.
        const ended = endedSubscription(event);
        const candidate = ended ? subscriptionOf(event.data.object) : undefined;
        const events: AuditEntry[] =
          candidate && adoptable(account, candidate, planPrices)
            ? [
                {
                  actor: "stripe",
                  action: "billing.subscription_ended",
                  subjectType: "organization",
                  subjectId: account.organizationId,
                  data: { subscription: candidate.id, event: event.id, type: event.type },
                },
              ]
            : [];
        return { statements: [record], events, result: "ignored" };
      }
      const audit: AuditEntry =
        next.status !== account.status
          ? {
              actor: "stripe",
              action: "billing.status_changed",
              subjectType: "organization",
              subjectId: account.organizationId,
              data: {
                from: account.status,
                to: next.status,
                event: event.id,
                type: event.type,
                // A subscription adopted in place of an ended one: which one the account follows now.
                ...(next.stripeSubscriptionId !== account.stripeSubscriptionId
                  ? { subscription: { from: account.stripeSubscriptionId, to: next.stripeSubscriptionId } }
                  : {}),
              },
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
