import { and, asc, eq, lte, SQL, sql } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { isFreeMailDomain } from "../auth/free-mail";
import type { Database } from "../db/client";
import { mailOutbox } from "../db/schema";
import type { Clock } from "../platform/clock";
import type { IdGenerator } from "../platform/ids";
import type { Logger } from "../platform/logger";
import { canonicalEmail } from "./mailbox";
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
 * How much mail the gateway queues for one address and for one domain within a window. The public
 * form lets anyone name any address, so without a ceiling the gateway could be made to mail a
 * stranger, or a whole company, again and again under its own name. The domain limit protects a
 * company's domain; free-mail domains are shared by millions of unrelated people, so only the
 * per-address limit (and the form's per-network brake) applies to them.
 */
export const MAIL_SEND_LIMITS = { perAddress: 5, perDomain: 50, windowMs: 60 * 60_000 } as const;

/** A header value must stay one line: a CR or LF in it would start a header of its own. */
function assertOneLine(name: string, value: string): void {
  if (/[\r\n]/.test(value)) throw new Error(`mail ${name} spans lines: ${JSON.stringify(value.slice(0, 80))}`);
}

/**
 * The insert that queues a mail, or records it as `suppressed` with the reason when one is given
 * (a text, or an SQL expression worked out as the row is inserted, null when there is none).
 * Put it in the same `db.batch()` as the state change the mail reports, so that the change and its
 * notice are written together or not at all.
 */
export function enqueueMail(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  mail: OutgoingMail,
  suppressedBecause: string | SQL | null = null,
) {
  assertOneLine("recipient", mail.to);
  assertOneLine("subject", mail.subject);
  const now = deps.clock.now().toISOString();
  return deps.db.insert(mailOutbox).values({
    id: deps.ids.id("mail"),
    to: mail.to,
    ...recipientOf(mail.to),
    subject: mail.subject,
    text: mail.text,
    status:
      suppressedBecause instanceof SQL
        ? sql`case when ${suppressedBecause} is null then 'pending' else 'suppressed' end`
        : suppressedBecause
          ? "suppressed"
          : "pending",
    attempts: 0,
    nextAttemptAt: now,
    lastError: suppressedBecause,
    createdAt: now,
  });
}

/** The mailbox (however spelt) and the domain a message goes to, as the send limits count them. */
function recipientOf(to: string): { mailbox: string; toDomain: string } {
  const address = to.trim().toLowerCase();
  return { mailbox: canonicalEmail(address), toDomain: address.slice(address.lastIndexOf("@") + 1) };
}

/**
 * The statement that queues a mail within `MAIL_SEND_LIMITS`: counted from the outbox over the
 * last window (suppressed mail does not count), a message over either limit is recorded as
 * `suppressed`, with the limit as its reason, and never sent. Being over a limit is not the
 * sender's error: what the mail reports still happens. The count and the insert are one SQL
 * statement, which D1 runs alone, so however many requests queue mail for one mailbox at once, no
 * more than the limit go out. Returned in a list, as the other statements of a batch are.
 */
export async function enqueueMailWithinLimits(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  mail: OutgoingMail,
  limits: { perAddress: number; perDomain: number; windowMs: number } = MAIL_SEND_LIMITS,
): Promise<BatchItem<"sqlite">[]> {
  const { mailbox, toDomain } = recipientOf(mail.to);
  const now = deps.clock.now();
  const since = new Date(now.getTime() - limits.windowMs).toISOString();
  const hours = limits.windowMs / 3_600_000;
  const window = hours === 1 ? "an hour" : `${hours} hours`;
  const toAddress = `send limit: ${limits.perAddress} messages to this address within ${window}`;
  const toCompany = `send limit: ${limits.perDomain} messages to ${toDomain} within ${window}`;
  // Free-mail domains are shared by millions of unrelated people: only the per-address limit.
  const domainLimit = isFreeMailDomain(toDomain) ? Number.MAX_SAFE_INTEGER : limits.perDomain;
  const recent = (column: typeof mailOutbox.mailbox | typeof mailOutbox.toDomain, value: string) =>
    sql`(select count(*) from ${mailOutbox} where ${column} = ${value} and ${mailOutbox.status} != 'suppressed' and ${mailOutbox.createdAt} >= ${since})`;
  const reason = sql`case when ${recent(mailOutbox.mailbox, mailbox)} >= ${limits.perAddress} then ${toAddress} when ${recent(mailOutbox.toDomain, toDomain)} >= ${domainLimit} then ${toCompany} end`;
  return [enqueueMail(deps, mail, reason)];
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
