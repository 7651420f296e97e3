import { getTableColumns } from "drizzle-orm";
import { queueLedgerRows, type UsageMessage } from "../billing/queue";
import { chunked, D1_MAX_PARAMETERS } from "../db/limits";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in; billing fields start at their defaults. */
export type UsageRecord = Omit<
  UsageRow,
  "createdAt" | "billedAt" | "billingState" | "billingAttempts" | "billingError"
>;

/** Parameters one ledger row can bind: one per column at most. */
const LEDGER_COLUMNS = Object.keys(getTableColumns(usageLedger)).length;

/** Attempts at writing a ledger row directly before it is given up to the error log. */
const WRITE_ATTEMPTS = 4;

/**
 * Appends usage rows to the ledger in one D1 batch (a row whose id is already there is left as
 * it is, so a repeated write changes nothing) and, when billing is on, queues them for Stripe.
 * The rows are written first: if the queue send fails, the reconciler finds them still pending
 * and sends them later, so usage is never lost between the two.
 */
export async function writeUsageRows(
  services: Pick<Services, "db" | "log">,
  rows: readonly (UsageRecord & { createdAt: string })[],
  billingQueue?: Queue<UsageMessage>,
): Promise<void> {
  if (rows.length === 0) return;
  // Several rows per statement, within D1's 100 bound parameters per statement.
  const perStatement = Math.max(1, Math.floor(D1_MAX_PARAMETERS / LEDGER_COLUMNS));
  const [first, ...rest] = chunked(rows, perStatement).map((chunk) =>
    services.db.insert(usageLedger).values(chunk).onConflictDoNothing({ target: usageLedger.id }),
  );
  if (first) await services.db.batch([first, ...rest]);
  if (!billingQueue) return;
  await queueLedgerRows(
    billingQueue,
    rows.map((row) => row.id),
    (ledgerIds, error) =>
      services.log.warn("usage rows not queued; the reconciler will send them", { ledgerIds, error: String(error) }),
  );
}

/**
 * Appends one request's usage straight to the ledger: the path for a row whose quota object
 * could not take it. A failed write is retried; a row that cannot be written at all is logged
 * whole, at error level, so that it can be replayed.
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
      await writeUsageRows(services, [row], billingQueue);
      return;
    } catch (error) {
      if (attempt >= WRITE_ATTEMPTS) {
        services.log.error("usage row not written", { row, error: String(error) });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs * 2 ** (attempt - 1)));
    }
  }
}
