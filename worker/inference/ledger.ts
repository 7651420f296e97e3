import type { UsageMessage } from "../billing/queue";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in; billing fields start at their defaults. */
export type UsageRecord = Omit<
  UsageRow,
  "createdAt" | "billedAt" | "billingState" | "billingAttempts" | "billingError"
>;

/**
 * Appends one request's usage to the ledger and, when billing is on, queues it for Stripe. The row
 * is written first: if the queue send fails, the reconciler finds the row still pending and sends
 * it later, so usage is never lost between the two.
 */
export async function recordUsage(
  services: Pick<Services, "db" | "clock" | "log">,
  record: UsageRecord,
  billingQueue?: Queue<UsageMessage>,
): Promise<void> {
  await services.db.insert(usageLedger).values({ ...record, createdAt: services.clock.now().toISOString() });
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
