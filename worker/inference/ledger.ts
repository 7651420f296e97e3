import { getTableColumns, getTableName } from "drizzle-orm";
import { queueLedgerRows, type UsageMessage } from "../billing/queue";
import { chunked, D1_MAX_PARAMETERS } from "../db/limits";
import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in; billing fields start at their defaults. */
export type UsageRecord = Omit<
  UsageRow,
  "createdAt" | "billedAt" | "billingState" | "billingAttempts" | "billingError"
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
const BOOLEANS = new Set<string>(INSERTED.filter((field) => COLUMNS[field].dataType === "boolean"));
/** Rows per statement, within D1's bound-parameter limit. */
const ROWS_PER_STATEMENT = Math.floor(D1_MAX_PARAMETERS / INSERTED.length);

/**
 * The insert of `rows` rows, built once per size. The ledger is the one table written on every
 * request, so its insert skips the query builder: the same statement, without building it anew.
 */
const insertSql = new Map<number, string>();
function insertOf(rows: number): string {
  let sql = insertSql.get(rows);
  if (!sql) {
    const tuple = `(${INSERTED.map(() => "?").join(",")})`;
    sql = `insert into "${getTableName(usageLedger)}" (${INSERTED.map((f) => `"${COLUMNS[f].name}"`).join(",")}) values ${Array(rows).fill(tuple).join(",")} on conflict ("${COLUMNS.id.name}") do nothing`;
    insertSql.set(rows, sql);
  }
  return sql;
}

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
  const d1 = services.db.$client;
  const statements = chunked(rows, ROWS_PER_STATEMENT).map((chunk) => {
    const values: unknown[] = [];
    for (const row of chunk) {
      for (const field of INSERTED) {
        const value = row[field];
        values.push(BOOLEANS.has(field) ? (value ? 1 : 0) : (value ?? null));
      }
    }
    return d1.prepare(insertOf(chunk.length)).bind(...values);
  });
  await d1.batch(statements);
  if (!billingQueue) return;
  await queueLedgerRows(
    billingQueue,
    rows.map((row) => row.id),
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
  services: Pick<Services, "db" | "clock" | "log">,
  records: readonly (UsageRecord & { createdAt?: string })[],
  billingQueue?: Queue<UsageMessage>,
  retryDelayMs = 100,
): Promise<void> {
  const createdAt = services.clock.now().toISOString();
  const rows = records.map((r) => ({ ...r, createdAt: r.createdAt ?? createdAt }));
  for (let attempt = 1; ; attempt++) {
    try {
      await writeUsageRows(services, rows, billingQueue);
      return;
    } catch (error) {
      if (attempt >= WRITE_ATTEMPTS) {
        for (const row of rows) services.log.error("usage row not written", { row, error: String(error) });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs * 2 ** (attempt - 1)));
    }
  }
}
