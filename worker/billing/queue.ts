import { inArray } from "drizzle-orm";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { usageLedger } from "../db/schema";
import type { Services } from "../services";
import { billLedgerRows } from "./meter";
import { stripeBreaker, stripeClient } from "./stripe";

/** A usage-queue message: one ledger row to bill. */
export interface UsageMessage {
  ledgerId: string;
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
  const ids = [...new Set(batch.messages.map((m) => m.body.ledgerId))];
  const breaker = stripeBreaker(services.config.billing);
  const outcomes = await billLedgerRows(services, stripe, ids, breaker);
  // Rows held back by an open breaker come back no sooner than it lets calls through again.
  const reopensAt = breaker.reopensAt;
  const coolOffSeconds =
    reopensAt === undefined ? 0 : Math.ceil(Math.max(0, reopensAt - services.clock.now().getTime()) / 1000);
  for (const message of batch.messages) {
    if (outcomes.get(message.body.ledgerId) === "retry")
      message.retry({ delaySeconds: Math.max(coolOffSeconds, retryDelaySeconds(message.attempts)) });
    else message.ack();
  }
}

/** Consumes the dead-letter queue: the rows are marked `dead` for operators, never dropped. */
export async function consumeDeadLetters(batch: MessageBatch<UsageMessage>, services: Services): Promise<void> {
  const ids = [...new Set(batch.messages.map((m) => m.body.ledgerId))];
  for (const chunk of chunked(ids, D1_IDS_PER_STATEMENT)) {
    await services.db.update(usageLedger).set({ billingState: "dead" }).where(inArray(usageLedger.id, chunk));
  }
  services.log.error("usage rows dead-lettered", { count: ids.length });
  batch.ackAll();
}
