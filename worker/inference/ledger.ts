import type { UsageMessage } from "../billing/queue";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in; billing fields start at their defaults. */
export type UsageRecord = Omit<
  UsageRow,
  "createdAt" | "billedAt" | "billingState" | "billingAttempts" | "billingError"
>;

/** Attempts at writing a ledger row before it is given up to the error log. */
const WRITE_ATTEMPTS = 4;

/**
 * Appends one request's usage to the ledger and, when billing is on, queues it for Stripe. The row
 * is written first: if the queue send fails, the reconciler finds the row still pending and sends
 * it later, so usage is never lost between the two. A failed write is retried (a row that did land
 * despite the error is recognised by its id); a row that cannot be written at all is logged whole,
 * at error level, so that it can be replayed.
 */
export async function recordUsage(
  services: Pick<Services, "db" | "clock" | "log">,
  record: UsageRecord,
  billingQueue?: Queue<UsageMessage>,
  retryDelayMs = 100,
): Promise<void> {
  const row = { ...record, createdAt: services.clock.now().toISOString() };
  for (let attempt = 1; ; attempt++) {
    try {
      await services.db.insert(usageLedger).values(row).onConflictDoNothing({ target: usageLedger.id });
      break;
    } catch (error) {
      if (attempt >= WRITE_ATTEMPTS) {
        services.log.error("usage row not written", { row, error: String(error) });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs * 2 ** (attempt - 1)));
    }
  }
  if (!billingQueue) return;
  try {
    await billingQueue.send({ ledgerId: record.id });
  } catch (error) {
    services.log.warn("usage row not queued; the reconciler will send it", {
      ledgerId: record.id,
      error: String(error),
    });
  }
}
