import { and, asc, eq, lte } from "drizzle-orm";
import type { Database } from "../db/client";
import { mailOutbox } from "../db/schema";
import type { Clock } from "../platform/clock";
import type { IdGenerator } from "../platform/ids";
import type { Logger } from "../platform/logger";
import type { Mailer, OutgoingMail } from "./mailer";

/** How long a delivery attempt holds a message before another worker may try it. */
const LEASE_MS = 5 * 60_000;
/** After this many failed attempts a message is marked `failed` and shown to operators. */
export const MAX_MAIL_ATTEMPTS = 12;

/** Delay before attempt `n + 1`: 1, 2, 4 … minutes, at most an hour. */
export function retryDelayMs(attempts: number): number {
  return Math.min(60 * 60_000, 60_000 * 2 ** Math.max(0, attempts - 1));
}

/**
 * The insert that queues a mail. Put it in the same `db.batch()` as the state change the mail
 * reports, so that the change and its notice are written together or not at all.
 */
export function enqueueMail(deps: { db: Database; ids: IdGenerator; clock: Clock }, mail: OutgoingMail) {
  const now = deps.clock.now().toISOString();
  return deps.db.insert(mailOutbox).values({
    id: deps.ids.id("mail"),
    to: mail.to,
    subject: mail.subject,
    text: mail.text,
    status: "pending",
    attempts: 0,
    nextAttemptAt: now,
    createdAt: now,
  });
}

/** What one delivery run did. */
export interface DeliveryReport {
  sent: number;
  retried: number;
  failed: number;
}

/**
 * Delivers due mail from the outbox. Each message is claimed with a conditional update (a lease)
 * before it is sent, so overlapping runs (cron and a request's `waitUntil`) do not send it twice;
 * a failure schedules the next attempt with backoff, and nothing is ever deleted.
 */
export async function deliverDueMail(
  deps: { db: Database; clock: Clock; mailer: Mailer; log: Logger },
  limit = 25,
): Promise<DeliveryReport> {
  const now = deps.clock.now();
  const due = await deps.db
    .select()
    .from(mailOutbox)
    .where(and(eq(mailOutbox.status, "pending"), lte(mailOutbox.nextAttemptAt, now.toISOString())))
    .orderBy(asc(mailOutbox.nextAttemptAt))
    .limit(limit);
  const report: DeliveryReport = { sent: 0, retried: 0, failed: 0 };
  for (const message of due) {
    const lease = new Date(now.getTime() + LEASE_MS).toISOString();
    const claimed = await deps.db
      .update(mailOutbox)
      .set({ nextAttemptAt: lease })
      .where(and(eq(mailOutbox.id, message.id), eq(mailOutbox.nextAttemptAt, message.nextAttemptAt)))
      .returning({ id: mailOutbox.id });
    if (claimed.length === 0) continue;
    try {
      await deps.mailer.send({ to: message.to, subject: message.subject, text: message.text });
      await deps.db
        .update(mailOutbox)
        .set({
          status: "sent",
          sentAt: deps.clock.now().toISOString(),
          attempts: message.attempts + 1,
          lastError: null,
        })
        .where(eq(mailOutbox.id, message.id));
      report.sent++;
    } catch (error) {
      const attempts = message.attempts + 1;
      const giveUp = attempts >= MAX_MAIL_ATTEMPTS;
      await deps.db
        .update(mailOutbox)
        .set({
          attempts,
          status: giveUp ? "failed" : "pending",
          lastError: String(error instanceof Error ? error.message : error).slice(0, 500),
          nextAttemptAt: new Date(deps.clock.now().getTime() + retryDelayMs(attempts)).toISOString(),
        })
        .where(eq(mailOutbox.id, message.id));
      deps.log.warn("mail delivery failed", { mailId: message.id, attempts, giveUp });
      if (giveUp) report.failed++;
      else report.retried++;
    }
  }
  return report;
}
