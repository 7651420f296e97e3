import { and, eq, inArray } from "drizzle-orm";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { billingIntervals, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { type BillingOutcome, billIntervals, billLedgerRows } from "./meter";
import { stripeBreaker, stripeClient } from "./stripe";

/**
 * A usage-queue message: one billing interval (an organization's closed part of an hour) or one
 * ledger row (a request recorded on its own) to bill.
 */
export type UsageMessage = { intervalId: string; ledgerId?: undefined } | { ledgerId: string; intervalId?: undefined };

/** The longest id a message may name: ids are a prefix and a UUID, or an organization, hour and part. */
const MAX_BILLED_ID_LENGTH = 256;

const isBilledId = (id: unknown): id is string =>
  typeof id === "string" && id.length > 0 && id.length <= MAX_BILLED_ID_LENGTH;

/**
 * A message's body as a `UsageMessage`, or undefined when it is not one: exactly one of
 * `intervalId` and `ledgerId`, a non-empty string. Only the gateway sends to the queue, but a body
 * of another shape (another version's, a message sent by hand from the dashboard) must not throw
 * in the middle of a batch, which would have every good message of it retried, then dead-lettered.
 */
export function usageMessageOf(body: unknown): UsageMessage | undefined {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return undefined;
  const intervalId = Object.hasOwn(body, "intervalId") ? (body as { intervalId: unknown }).intervalId : undefined;
  const ledgerId = Object.hasOwn(body, "ledgerId") ? (body as { ledgerId: unknown }).ledgerId : undefined;
  if (isBilledId(intervalId) && ledgerId === undefined) return { intervalId };
  if (isBilledId(ledgerId) && intervalId === undefined) return { ledgerId };
  return undefined;
}

/**
 * The batch's messages that are usage messages, each with its id; the others are acknowledged
 * (retrying cannot mend a body) and logged, so an operator sees them.
 */
function wellFormed(batch: MessageBatch<UsageMessage>, services: Pick<Services, "log">) {
  const messages: { message: Message<UsageMessage>; id: string; body: UsageMessage }[] = [];
  for (const message of batch.messages) {
    const body = usageMessageOf(message.body as unknown);
    if (body) messages.push({ message, id: body.intervalId ?? body.ledgerId, body });
    else {
      message.ack();
      services.log.error("malformed usage message dropped", {
        queue: batch.queue,
        messageId: message.id,
        body: String(JSON.stringify(message.body ?? null)).slice(0, 200),
      });
    }
  }
  return messages;
}

export const USAGE_QUEUE_NAME = "modelgate-usage";
export const USAGE_DLQ_NAME = "modelgate-usage-dlq";

/** Messages in one `sendBatch`, the Queues limit. */
const MESSAGES_PER_SEND = 100;

/**
 * Puts ledger rows on the usage queue, in batches of what one send may carry. A batch that fails
 * goes to `onFailure` when given (its rows stay pending, and the reconciler queues them within
 * minutes), and otherwise fails the call.
 */
export async function queueLedgerRows(
  queue: Queue<UsageMessage>,
  ledgerIds: readonly string[],
  onFailure?: (ledgerIds: string[], error: unknown) => void,
): Promise<void> {
  for (const ids of chunked(ledgerIds, MESSAGES_PER_SEND)) {
    try {
      await queue.sendBatch(ids.map((ledgerId) => ({ body: { ledgerId } })));
    } catch (error) {
      if (!onFailure) throw error;
      onFailure(ids, error);
    }
  }
}

/** Seconds before a failed message comes back: 10 s, 20 s, 40 s … at most 10 minutes. */
export function retryDelaySeconds(attempts: number): number {
  return Math.min(600, 10 * 2 ** Math.max(0, attempts - 1));
}

/**
 * Consumes the usage queue: bills the batch's rows and acknowledges each message whose row
 * reached a final state; the rest are retried with backoff (while Stripe's breaker is open, not
 * before it lets calls through again), and after the queue's last retry go to the dead-letter
 * queue.
 */
export async function consumeUsageBatch(batch: MessageBatch<UsageMessage>, services: Services): Promise<void> {
  const stripe = stripeClient(services.config.billing);
  if (!stripe) {
    // Billing was switched off while messages were queued: keep the rows pending for later.
    batch.ackAll();
    return;
  }
  const messages = wellFormed(batch, services);
  const intervals = [...new Set(messages.flatMap((m) => (m.body.intervalId ? [m.body.intervalId] : [])))];
  const rows = [...new Set(messages.flatMap((m) => (m.body.ledgerId ? [m.body.ledgerId] : [])))];
  const breaker = stripeBreaker(services.config.billing);
  const outcomes = new Map<string, BillingOutcome>();
  if (intervals.length)
    for (const [id, o] of await billIntervals(services, stripe, intervals, breaker)) outcomes.set(id, o);
  if (rows.length) for (const [id, o] of await billLedgerRows(services, stripe, rows, breaker)) outcomes.set(id, o);
  // Rows held back by an open breaker come back no sooner than it lets calls through again.
  const reopensAt = breaker.reopensAt;
  const coolOffSeconds =
    reopensAt === undefined ? 0 : Math.ceil(Math.max(0, reopensAt - services.clock.now().getTime()) / 1000);
  for (const { message, id } of messages) {
    if (outcomes.get(id) === "retry")
      message.retry({ delaySeconds: Math.max(coolOffSeconds, retryDelaySeconds(message.attempts)) });
    else message.ack();
  }
}

/**
 * Consumes the dead-letter queue: intervals and rows are marked `dead` for operators, never
 * dropped. A malformed message is acknowledged and logged, as on the usage queue.
 */
export async function consumeDeadLetters(batch: MessageBatch<UsageMessage>, services: Services): Promise<void> {
  const messages = wellFormed(batch, services);
  const intervals = [...new Set(messages.flatMap((m) => (m.body.intervalId ? [m.body.intervalId] : [])))];
  const rows = [...new Set(messages.flatMap((m) => (m.body.ledgerId ? [m.body.ledgerId] : [])))];
  for (const chunk of chunked(intervals, D1_IDS_PER_STATEMENT)) {
    await services.db
      .update(billingIntervals)
      .set({ state: "dead" })
      .where(and(inArray(billingIntervals.id, chunk), eq(billingIntervals.state, "pending")));
  }
  for (const chunk of chunked(rows, D1_IDS_PER_STATEMENT)) {
    await services.db
      .update(usageLedger)
      .set({ billingState: "dead" })
      .where(and(inArray(usageLedger.id, chunk), eq(usageLedger.billingState, "pending")));
  }
  services.log.error("usage dead-lettered", { intervals: intervals.length, rows: rows.length });
  for (const { message } of messages) message.ack();
}

/** Puts billing intervals on the usage queue, as `queueLedgerRows` does rows. */
export async function queueIntervals(
  queue: Queue<UsageMessage>,
  intervalIds: readonly string[],
  onFailure?: (intervalIds: string[], error: unknown) => void,
): Promise<void> {
  for (const ids of chunked(intervalIds, MESSAGES_PER_SEND)) {
    try {
      await queue.sendBatch(ids.map((intervalId) => ({ body: { intervalId } })));
    } catch (error) {
      if (!onFailure) throw error;
      onFailure(ids, error);
    }
  }
}
