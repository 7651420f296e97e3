/**
 * Hourly usage: what an organization's quota object folds its raw rows into, writes to D1 and
 * archives to R2. Rows are gathered in *parts*, one per billing interval (`USAGE_INTERVAL_MINUTES`,
 * an hour by default, so normally one part per hour): opened by the interval's first row and closed
 * when the interval is over (plus a grace, `graceMs`); a row recorded in an interval already closed
 * (a stream settled from its last checkpoint, a clock behind the object's) opens a further part,
 * closed the same way. A part's totals only grow while it is open and never change once closed, so:
 * - D1 holds each part's totals per model, grant and token as absolute values (`usage_hours`,
 *   `download_hours`): a write repeated after a crash or a retry changes nothing;
 * - Stripe gets one meter event per closed part and price dimension, whose identifier names the
 *   part (`billing_intervals`): a resend is recorded once;
 * - R2 holds each closed part's rows once, under a key named after the part (`archiveKey`).
 */
import { getTableColumns, getTableName } from "drizzle-orm";
import { billingIntervals, downloadHours, usageHours, usageLedger } from "../db/schema";
import type { LedgerRow } from "../inference/ledger";

/** The longest a part stays open after its interval ends, for requests recorded at its last moment. */
export const CLOSE_GRACE_MS = 120_000;

const HOUR_MS = 3_600_000;

/** How long a part of an interval of `intervalMs` stays open after it: a sixth of it, at most `CLOSE_GRACE_MS`. */
export function graceMs(intervalMs: number): number {
  return Math.min(CLOSE_GRACE_MS, Math.floor(intervalMs / 6));
}

/** The start of the billing interval of `intervalMs` that holds `at` (epoch ms). */
export function intervalStart(at: number, intervalMs: number): number {
  return Math.floor(at / intervalMs) * intervalMs;
}

/** The hour (`YYYY-MM-DDTHH`, UTC) of an ISO time or of epoch milliseconds. */
export function hourOf(at: string | number): string {
  return (typeof at === "number" ? new Date(at).toISOString() : at).slice(0, 13);
}

/** When an hour (`YYYY-MM-DDTHH`) starts, in epoch milliseconds. */
export function hourStart(hour: string): number {
  return Date.parse(`${hour}:00:00.000Z`);
}

/** When every part of `hour` may have closed: the hour's end plus the longest grace. */
export function closesAt(hour: string): number {
  return hourStart(hour) + HOUR_MS + CLOSE_GRACE_MS;
}

/** Inference counts of one model, grant and token in one part. */
export interface InferenceCounts {
  requests: number;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  errorRequests: number;
  partialRequests: number;
  latencyMsSum: number;
  lastAt: string;
}

/** A weight download as the organization's quota object records it. */
export interface DownloadRow {
  id: string;
  organizationId: string;
  jti: string;
  grantId: string;
  tokenId: string;
  model: string;
  revisionId: string;
  path: string;
  status: number;
  rangeStart: number | null;
  rangeEnd: number | null;
  bytesServed: number;
  complete: boolean;
  at: string;
}

/** Download counts of one grant, token and model in one part. */
export interface DownloadCounts {
  requests: number;
  completeRequests: number;
  errorRequests: number;
  bytesServed: number;
  lastAt: string;
}

/**
 * One part of one hour, as the quota object keeps it while it is open and until it is archived.
 * Keys of the maps are `inferenceKey` / `downloadKey` JSON: names come from rows, so never an
 * object's own property names.
 */
export interface UsagePart {
  organizationId: string;
  hour: string;
  /** The start (epoch ms) of the billing interval the part gathers rows of; within `hour`. */
  interval: number;
  /** When (object clock) the part closes: its interval's end plus the grace. */
  closesAt: number;
  /** The part's id: when (by the object's clock, base 36) its first row was folded. */
  part: string;
  inference: Map<string, InferenceCounts>;
  downloads: Map<string, DownloadCounts>;
  /** Raw rows folded into the part. */
  rows: number;
  /** Whether D1 lacks the part's latest totals. */
  dirty: boolean;
  /** When (object clock) D1 last took the part's totals; the part's opening until then. */
  syncedAt: number;
  /** Final: D1 has its totals and its billing interval. */
  closed: boolean;
  /**
   * Whether rows of a commit sent again (its first answer lost) went into it: a row may be in it
   * twice, and its rows are checked by id before it closes.
   */
  recheck?: boolean;
}

export function inferenceKey(row: Pick<LedgerRow, "model" | "grantId" | "tokenId">): string {
  return JSON.stringify([row.model, row.grantId, row.tokenId]);
}

export function downloadKey(row: Pick<DownloadRow, "grantId" | "tokenId" | "model">): string {
  return JSON.stringify([row.grantId, row.tokenId, row.model]);
}

/** Adds one inference row to a part's totals. */
export function addInference(part: UsagePart, row: LedgerRow): void {
  const key = inferenceKey(row);
  let c = part.inference.get(key);
  if (!c) {
    c = {
      requests: 0,
      promptTokens: 0,
      completionTokens: 0,
      totalTokens: 0,
      errorRequests: 0,
      partialRequests: 0,
      latencyMsSum: 0,
      lastAt: row.createdAt,
    };
    part.inference.set(key, c);
  }
  c.requests++;
  c.promptTokens += row.promptTokens;
  c.completionTokens += row.completionTokens;
  c.totalTokens += row.totalTokens;
  if (row.status >= 400) c.errorRequests++;
  if (row.partial) c.partialRequests++;
  c.latencyMsSum += row.latencyMs;
  if (row.createdAt > c.lastAt) c.lastAt = row.createdAt;
  part.rows++;
  part.dirty = true;
}

/**
 * Takes one inference row, added before, out of a part's totals: a row the part is not the home of
 * (`UsageBook` keeps each request's row in one place). `lastAt` stays: the row is recorded at the
 * same time where it does count, in the same hour.
 */
export function removeInference(part: UsagePart, row: LedgerRow): void {
  const c = part.inference.get(inferenceKey(row));
  if (!c) return;
  c.requests--;
  c.promptTokens -= row.promptTokens;
  c.completionTokens -= row.completionTokens;
  c.totalTokens -= row.totalTokens;
  if (row.status >= 400) c.errorRequests--;
  if (row.partial) c.partialRequests--;
  c.latencyMsSum -= row.latencyMs;
  part.rows--;
  part.dirty = true;
}

/** Adds one download to a part's totals. */
export function addDownload(part: UsagePart, row: DownloadRow): void {
  const key = downloadKey(row);
  let c = part.downloads.get(key);
  if (!c) {
    c = { requests: 0, completeRequests: 0, errorRequests: 0, bytesServed: 0, lastAt: row.at };
    part.downloads.set(key, c);
  }
  c.requests++;
  if (row.complete) c.completeRequests++;
  if (row.status >= 400) c.errorRequests++;
  c.bytesServed += row.bytesServed;
  if (row.at > c.lastAt) c.lastAt = row.at;
  part.rows++;
  part.dirty = true;
}

/** A part's billable totals: what its billing interval carries. */
export function billableTotals(part: Pick<UsagePart, "inference">) {
  let requests = 0;
  let promptTokens = 0;
  let completionTokens = 0;
  for (const c of part.inference.values()) {
    requests += c.requests;
    promptTokens += c.promptTokens;
    completionTokens += c.completionTokens;
  }
  return { requests, promptTokens, completionTokens };
}

/** The billing interval of a part: `<organization>:<hour>:<part>`, the stem of its meter-event identifiers. */
export function intervalId(part: Pick<UsagePart, "organizationId" | "hour" | "part">): string {
  return `${part.organizationId}:${part.hour}:${part.part}`;
}

/**
 * Where a closed part's rows are archived: `usage/v1/<organization>/<YYYY>/<MM>/<DD>/<HH>/<kind>-<part>.ndjson.gz`,
 * so that one organization's hour is one listing (`archivePrefix`).
 */
export function archiveKey(part: Pick<UsagePart, "organizationId" | "hour" | "part">, kind: ArchiveKind): string {
  return `${archivePrefix(part.organizationId, part.hour)}${kind}-${part.part}.ndjson.gz`;
}

export type ArchiveKind = "inference" | "downloads";

/** The archive's objects of one organization's hour all start with this. */
export function archivePrefix(organizationId: string, hour: string): string {
  const [day, hh] = hour.split("T") as [string, string];
  return `usage/v1/${encodeURIComponent(organizationId)}/${day.replaceAll("-", "/")}/${hh}/`;
}

/** NDJSON lines gzip-compressed. */
export async function gzipLines(lines: readonly string[]): Promise<Uint8Array> {
  const body = new Blob(lines.map((line) => `${line}\n`)).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(body).arrayBuffer());
}

/** The lines of a gzip-compressed NDJSON object. */
export async function gunzipLines(body: ReadableStream<Uint8Array> | ArrayBuffer | Uint8Array): Promise<string[]> {
  const stream = body instanceof ReadableStream ? body : new Blob([body]).stream();
  const text = await new Response(stream.pipeThrough(new DecompressionStream("gzip"))).text();
  return text.split("\n").filter((line) => line.length > 0);
}

const USAGE = getTableColumns(usageHours);
const DOWNLOADS = getTableColumns(downloadHours);
const INTERVALS = getTableColumns(billingIntervals);

const INFERENCE_FIELDS = [
  "organizationId",
  "hour",
  "model",
  "grantId",
  "tokenId",
  "part",
  "requests",
  "promptTokens",
  "completionTokens",
  "totalTokens",
  "errorRequests",
  "partialRequests",
  "latencyMsSum",
  "lastAt",
  "updatedAt",
] as const satisfies readonly (keyof typeof USAGE)[];

const DOWNLOAD_FIELDS = [
  "organizationId",
  "hour",
  "grantId",
  "tokenId",
  "model",
  "part",
  "requests",
  "completeRequests",
  "errorRequests",
  "bytesServed",
  "lastAt",
  "updatedAt",
] as const satisfies readonly (keyof typeof DOWNLOADS)[];

const KEY_FIELDS = new Set(["organizationId", "hour", "model", "grantId", "tokenId", "part"]);

/**
 * An upsert of many rows through one JSON parameter (`json_each`): a row already there takes the
 * new values, unless they are older (fewer requests: a part's counts only grow while it is open);
 * `final` values, a part's totals as it closes, are taken as they are.
 */
function upsertSql(
  table: string,
  columns: Record<string, { name: string }>,
  fields: readonly string[],
  keys: readonly string[],
  final = false,
): string {
  const name = (f: string) => `"${columns[f]?.name}"`;
  const updates = fields.filter((f) => !KEY_FIELDS.has(f)).map((f) => `${name(f)} = excluded.${name(f)}`);
  return (
    `insert into "${table}" (${fields.map(name).join(", ")}) ` +
    `select ${fields.map((_, i) => `value ->> ${i}`).join(", ")} from json_each(?) where true ` +
    `on conflict (${keys.map(name).join(", ")}) do update set ${updates.join(", ")}` +
    (final ? "" : ` where excluded.${name("requests")} >= "${table}".${name("requests")}`)
  );
}

const USAGE_KEYS = ["organizationId", "hour", "model", "grantId", "tokenId", "part"];

export const UPSERT_USAGE_HOURS = upsertSql(getTableName(usageHours), USAGE, INFERENCE_FIELDS, USAGE_KEYS);

/**
 * A closing part's totals, taken as they are: they are its last, and may be fewer than it had
 * while open, when rows it held were recorded in the ledger too (`UsageBook`).
 */
export const FINAL_USAGE_HOURS = upsertSql(getTableName(usageHours), USAGE, INFERENCE_FIELDS, USAGE_KEYS, true);

export const UPSERT_DOWNLOAD_HOURS = upsertSql(getTableName(downloadHours), DOWNLOADS, DOWNLOAD_FIELDS, [
  "organizationId",
  "hour",
  "grantId",
  "tokenId",
  "model",
  "part",
]);

/** A billing interval, written once: a repeated close finds it there and leaves it as it is. */
export const INSERT_INTERVAL = `insert into "${getTableName(billingIntervals)}" (${[
  "id",
  "organizationId",
  "hour",
  "requests",
  "promptTokens",
  "completionTokens",
  "state",
  "createdAt",
]
  .map((f) => `"${INTERVALS[f as keyof typeof INTERVALS].name}"`)
  .join(", ")}) values (?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing`;

const LEDGER = getTableColumns(usageLedger);

/**
 * The ids of an organization's (`?1`) rows in `usage_ledger` recorded from `?2` until `?3` (ISO
 * times): rows an isolate wrote there when it could not tell whether the quota object took them.
 * Read through the index on billing state and time, every state named so that the window is one
 * range of it for each; the organization is filtered after (`+` keeps SQLite off its own index,
 * which would read every row the organization ever had in the ledger).
 */
export const LEDGER_IDS_RECORDED = `select "${LEDGER.id.name}" from "${getTableName(usageLedger)}" where "${
  LEDGER.billingState.name
}" in (${LEDGER.billingState.enumValues.map((state) => `'${state}'`).join(", ")}) and "${
  LEDGER.createdAt.name
}" >= ?2 and "${LEDGER.createdAt.name}" < ?3 and +"${LEDGER.organizationId.name}" = ?1`;

/** A part's `usage_hours` rows as the JSON parameter of `UPSERT_USAGE_HOURS`. */
export function usageHourRows(part: UsagePart, updatedAt: string): string {
  const rows: unknown[][] = [];
  for (const [key, c] of part.inference) {
    const [model, grantId, tokenId] = JSON.parse(key) as [string, string, string];
    rows.push([
      part.organizationId,
      part.hour,
      model,
      grantId,
      tokenId,
      part.part,
      c.requests,
      c.promptTokens,
      c.completionTokens,
      c.totalTokens,
      c.errorRequests,
      c.partialRequests,
      c.latencyMsSum,
      c.lastAt,
      updatedAt,
    ]);
  }
  return JSON.stringify(rows);
}

/** A part's `download_hours` rows as the JSON parameter of `UPSERT_DOWNLOAD_HOURS`. */
export function downloadHourRows(part: UsagePart, updatedAt: string): string {
  const rows: unknown[][] = [];
  for (const [key, c] of part.downloads) {
    const [grantId, tokenId, model] = JSON.parse(key) as [string, string, string];
    rows.push([
      part.organizationId,
      part.hour,
      grantId,
      tokenId,
      model,
      part.part,
      c.requests,
      c.completeRequests,
      c.errorRequests,
      c.bytesServed,
      c.lastAt,
      updatedAt,
    ]);
  }
  return JSON.stringify(rows);
}

/**
 * The D1 statements that record a part: its totals and, when it closes, its billing interval
 * (only when it billed tokens), in one batch so that the interval never exists without the
 * totals it sums.
 */
export function partStatements(
  d1: D1Database,
  part: UsagePart,
  closing: boolean,
  now: number,
  /** When the interval is written, by the wall clock (the object's clock may run ahead of it). */
  writtenAt = now,
): D1PreparedStatement[] {
  const updatedAt = new Date(now).toISOString();
  const statements: D1PreparedStatement[] = [];
  if (part.inference.size) {
    statements.push(d1.prepare(closing ? FINAL_USAGE_HOURS : UPSERT_USAGE_HOURS).bind(usageHourRows(part, updatedAt)));
  }
  if (part.downloads.size) statements.push(d1.prepare(UPSERT_DOWNLOAD_HOURS).bind(downloadHourRows(part, updatedAt)));
  if (closing) {
    const totals = billableTotals(part);
    if (totals.promptTokens + totals.completionTokens > 0) {
      statements.push(
        d1
          .prepare(INSERT_INTERVAL)
          .bind(
            intervalId(part),
            part.organizationId,
            part.hour,
            totals.requests,
            totals.promptTokens,
            totals.completionTokens,
            "pending",
            new Date(writtenAt).toISOString(),
          ),
      );
    }
  }
  return statements;
}
