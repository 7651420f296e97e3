/**
 * The events queue (`modelgate-events`, and `-staging` beside it): webhook deliveries and
 * reviewers' chat messages, each attempted and retried with backoff by the consumer itself; and
 * its dead-letter queue, whose messages (a consumer that failed on every try) are marked given up.
 */
import { z } from "zod";
import type { Services } from "../services";
import { attemptDelivery, buryDeliveries, type DeliveryOptions } from "./deliveries";
import { buryReviewerChat, sendReviewerChat } from "./reviewers";
import { eventSettings } from "./settings";

/** The events queue's name, before an environment's suffix. */
export const EVENTS_QUEUE_NAME = "modelgate-events";

/** Whether a batch comes from the events queue or its dead-letter queue, in any environment. */
export function isEventsQueue(queue: string): boolean {
  return queue === EVENTS_QUEUE_NAME || queue.startsWith(`${EVENTS_QUEUE_NAME}-`);
}

const Message = z.union([
  z.strictObject({ delivery: z.string().min(1).max(100) }),
  z.strictObject({
    reviewerNotice: z.strictObject({ applicationId: z.string().min(1).max(100), kind: z.string().min(1).max(40) }),
  }),
]);

/** A consumer that fails unexpectedly (D1 unreachable) looks again this much later. */
const FAILURE_RETRY_SECONDS = 60;

/**
 * Consumes a batch of the events queue, or of its dead-letter queue when `batch.queue` ends in
 * `-dlq`. Messages are worked on together: each is one HTTP request at most.
 */
export async function consumeEventBatch(
  batch: MessageBatch<unknown>,
  env: Env,
  services: Services,
  options: DeliveryOptions = {},
): Promise<void> {
  const parsed = batch.messages.map((message) => ({ message, body: Message.safeParse(message.body) }));
  for (const { message, body } of parsed) {
    if (!body.success) {
      services.log.error("events queue: a message of unknown shape was dropped", { id: message.id });
      message.ack();
    }
  }
  const known = parsed.flatMap(({ message, body }) => (body.success ? [{ message, body: body.data }] : []));
  if (batch.queue.endsWith("-dlq")) {
    await buryDeliveries(
      services,
      known.flatMap(({ body }) => ("delivery" in body ? [body.delivery] : [])),
    );
    await buryReviewerChat(
      services,
      known.flatMap(({ body }) => ("reviewerNotice" in body ? [body.reviewerNotice] : [])),
    );
    services.log.error("events dead-lettered", { messages: known.length });
    for (const { message } of known) message.ack();
    return;
  }
  const settings = eventSettings(env);
  await Promise.all(
    known.map(async ({ message, body }) => {
      try {
        const outcome =
          "delivery" in body
            ? await attemptDelivery(services, settings.allowedHosts, body.delivery, options)
            : await sendReviewerChat(services, settings, body.reviewerNotice, options);
        if (outcome.retryInSeconds === undefined) message.ack();
        else message.retry({ delaySeconds: outcome.retryInSeconds });
      } catch (error) {
        services.log.error("events queue: an attempt failed", { id: message.id, error: String(error) });
        message.retry({ delaySeconds: FAILURE_RETRY_SECONDS });
      }
    }),
  );
}
