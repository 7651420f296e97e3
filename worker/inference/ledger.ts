import { getTableColumns, getTableName } from "drizzle-orm";
import { queueLedgerRows, type UsageMessage } from "../billing/queue";
import { chunked } from "../db/limits";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in; billing fields start at their defaults. */
export type UsageRecord = Omit<
  UsageRow,
  | "createdAt"
  | "billedAt"
  | "billingState"
  | "billingAttempts"
  | "billingError"
  | "billingAcceptedParts"
  | "aggregatedAt"
>;

/** The fields a new ledger row sets, in column order; billing fields take the table's defaults. */
const INSERTED = [
  "id",
  "organizationId",
  "grantId",
  "tokenId",
  "model",
  "backend",
  "endpoint",
  "stream",
  "promptTokens",
  "completionTokens",
  "totalTokens",
  "usageReported",
  "outcome",
  "partial",
  "status",
  "latencyMs",
  "startedAt",
  "createdAt",
] as const satisfies readonly (keyof UsageRecord | "createdAt")[];

const COLUMNS = getTableColumns(usageLedger);
const IS_BOOLEAN = INSERTED.map((field) => COLUMNS[field].dataType === "boolean");

/** A settled request's ledger row as it travels and waits to be written. */
export type LedgerRow = UsageRecord & { createdAt: string };

/**
 * A ledger row as JSON text: its inserted fields' values in column order, booleans as 0 and 1.
 * Rows travel as text (from the proxy through the quota object's storage to D1) because nothing
 * on the way reads them, and text is the cheapest thing to copy and store; D1 takes a whole batch
 * of them as one parameter.
 */
export function ledgerEntry(row: LedgerRow): string {
  const values: unknown[] = new Array(INSERTED.length);
  for (let i = 0; i < INSERTED.length; i++) {
    const value = row[INSERTED[i] as (typeof INSERTED)[number]];
    values[i] = IS_BOOLEAN[i] ? (value ? 1 : 0) : (value ?? null);
  }
  return JSON.stringify(values);
}

/** Ledger entries as one batch: the JSON array `writeUsageRows` takes. */
export function ledgerBatch(entries: readonly string[]): string {
  return `[${entries.join(",")}]`;
}

/** Several batches as one, without reading them. */
export function joinLedgerBatches(batches: readonly string[]): string {
  return ledgerBatch(batches.map((b) => b.slice(1, -1)).filter((inner) => inner.length > 0));
}

/**
 * The rows of a batch with their fields named: for the quota object's fold into hours, which reads
 * every row it is sent, the archive, logs and tests. Each row is filled in a loop, without the pairs
 * of field and value that building it from entries would allocate.
 */
export function ledgerRows(batch: string): LedgerRow[] {
  return (JSON.parse(batch) as unknown[][]).map((values) => {
    const row: Record<string, unknown> = {};
    for (let i = 0; i < INSERTED.length; i++) {
      row[INSERTED[i] as string] = IS_BOOLEAN[i] ? values[i] === 1 : values[i];
    }
    return row as unknown as LedgerRow;
  });
}

/** The id of a batch's first row, read without parsing the batch (ids are plain ASCII). */
export function firstLedgerId(batch: string): string | undefined {
  return /^\[\["([^"\\]+)"/.exec(batch)?.[1];
}

/**
 * The insert of a batch: one statement whose one parameter is the batch's JSON, which SQLite
 * unpacks itself (`json_each`), so a batch of any size costs one bound parameter.
 */
const INSERT_BATCH = `insert into "${getTableName(usageLedger)}" (${INSERTED.map((f) => `"${COLUMNS[f].name}"`).join(", ")}) select ${INSERTED.map((_, i) => `value ->> ${i}`).join(", ")} from json_each(?) where true on conflict ("${COLUMNS.id.name}") do nothing`;

/** D1 takes strings up to 2 MB; larger batches are split. */
const MAX_BATCH_CHARS = 500_000;
const ROWS_PER_SPLIT = 1_000;

/** Attempts at writing a ledger row directly before it is given up to the error log. */
const WRITE_ATTEMPTS = 4;

/**
 * Appends a batch of usage rows (`ledgerBatch` text) to the ledger (a row whose id is already
 * there is left as it is, so a repeated write changes nothing) and, when billing is on, queues
 * them for Stripe. The rows are written first: if the queue send fails, the reconciler finds
 * them still pending and sends them later, so usage is never lost between the two.
 */
export async function writeUsageRows(
  services: Pick<Services, "db" | "log">,
  batch: string,
  billingQueue?: Queue<UsageMessage>,
): Promise<void> {
  const d1 = services.db.$client;
  const parts =
    batch.length <= MAX_BATCH_CHARS
      ? [batch]
      : chunked(JSON.parse(batch) as unknown[], ROWS_PER_SPLIT).map((rows) => JSON.stringify(rows));
  const statements = parts.filter((part) => part !== "[]").map((part) => d1.prepare(INSERT_BATCH).bind(part));
  if (statements.length === 0) return;
  await d1.batch(statements);
  if (!billingQueue) return;
  await queueLedgerRows(
    billingQueue,
    (JSON.parse(batch) as unknown[][]).map((values) => values[0] as string),
    (ledgerIds, error) =>
      services.log.warn("usage rows not queued; the reconciler will send them", { ledgerIds, error: String(error) }),
  );
}

/**
 * Appends requests' usage straight to the ledger: the path for rows their quota object could not
 * take. A failed write is retried; rows that cannot be written at all are logged whole, at error
 * level, so that they can be replayed.
 */
export async function recordUsage(
  services: Pick<Services, "db" | "log">,
  batch: string,
  billingQueue?: Queue<UsageMessage>,
  retryDelayMs = 100,
): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await writeUsageRows(services, batch, billingQueue);
      return;
    } catch (error) {
      if (attempt >= WRITE_ATTEMPTS) {
        for (const row of ledgerRows(batch)) services.log.error("usage row not written", { row, error: String(error) });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs * 2 ** (attempt - 1)));
    }
  }
}
