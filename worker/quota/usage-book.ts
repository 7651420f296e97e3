/**
 * The usage rows an organization's quota object holds: settled requests (and downloads) from the
 * moment they are committed, folded into hourly parts (`worker/usage/hours.ts`), whose totals go to
 * D1 and whose closed parts go to Stripe (through `billing_intervals` and the usage queue) and to
 * the usage archive in R2. The raw rows stay in the object for `USAGE_RAW_RETENTION_HOURS` after
 * they are archived.
 *
 * Every step is safe to repeat and to be cut off at any point: folding moves a committed batch into
 * its part in one storage write (the batch, the part's totals and the raw key together), D1 takes
 * absolute totals, an interval is inserted once by its id, an archive object is written under its
 * part's own key, and a part is forgotten only once it is archived.
 *
 * Each request's row has one home, and is counted and billed there only. An isolate whose commit
 * failed cannot tell whether the object took it (a connection can drop after the object applied
 * the call): it sends it again, and if that fails too it writes the rows to `usage_ledger`, which
 * bills each row on its own and which the cron carries into the hour's `ledger` part. So before a
 * part closes (`keepOnce`), the rows it holds that the ledger holds too leave it: the ledger is
 * their home, as it is the only record that can be written without the object. A commit sent again
 * that the object took twice (it had restarted in between and forgot the first) marks its parts,
 * whose rows are then kept once by id. The ledger's rows are there by then: an isolate writes them
 * within seconds of the commit, and a part closes `graceMs` after its interval ends. Not so for a
 * row committed later than that (a part opened for an interval already over closes at the next
 * sync), which the ledger may then hold too; and a row taken twice lands in two parts if the first
 * closed in between, for the same reason.
 */
import { queueIntervals } from "../billing/queue";
import { billingEnabled } from "../config";
import { type LedgerRow, ledgerBatch, ledgerEntry, ledgerRows } from "../inference/ledger";
import { createServices, type Services } from "../services";
import {
  addDownload,
  addInference,
  archiveKey,
  billableTotals,
  type DownloadCounts,
  type DownloadRow,
  graceMs,
  gzipLines,
  hourOf,
  hourStart,
  type InferenceCounts,
  intervalId,
  intervalStart,
  LEDGER_IDS_RECORDED,
  partStatements,
  removeInference,
  type UsagePart,
} from "../usage/hours";

/** Committed inference rows not yet folded, one `ledgerBatch` text per commit (or legacy row objects). */
export const USAGE_PREFIX = "u:";
/**
 * The end of the key of a batch committed again after its first answer was lost: the object may
 * hold its rows twice (`UsagePart.recheck`).
 */
export const SENT_AGAIN = ":again";
/** Committed downloads not yet folded: JSON arrays of `DownloadRow`. */
export const DOWNLOAD_PREFIX = "dl:";
/** Parts not yet archived, `p:<hour>:<part>`. */
const PART_PREFIX = "p:";
/** Raw rows of a part, `raw:<hour>:<part>:<i|d>:<commit key>`. */
const RAW_PREFIX = "raw:";

/** Committed batches one fold takes; what it leaves goes in the next, which follows at once. */
const FOLD_KEYS = 200;
/** A fold takes no more batches once their text reaches this much. */
const FOLD_CHARS = 256 * 1024;
/** When D1 or R2 refuses, the work is tried again after this long. */
export const RETRY_MS = 5_000;
/** Raw keys one prune deletes. */
const PRUNE_KEYS = 1_000;
const HOUR_MS = 3_600_000;
/** `raw:<hour>:<part>:`: hours are 13 characters, part ids 9. */
const RAW_PART_PREFIX_LENGTH = RAW_PREFIX.length + 13 + 1 + 9 + 1;

/** What the organization's own usage views add to D1's figures: parts D1 has older totals of. */
export interface LiveParts {
  parts: {
    hour: string;
    part: string;
    inference: [string, InferenceCounts][];
    downloads: [string, DownloadCounts][];
  }[];
}

export class UsageBook {
  /** Parts not yet archived (open, or closed and waiting for R2), by `p:` key. */
  private parts = new Map<string, UsagePart>();
  /** The open part of each billing interval that has one, by the interval's start. */
  private open = new Map<number, UsagePart>();
  /**
   * Open parts D1 may hold the close of already: read back open after a restart, or whose close
   * went to D1 in a batch that failed (D1 may have committed it all the same). Their billing
   * interval may be written, and it is written once: once due, they take no more rows (`partFor`).
   */
  private maybeClosed = new WeakSet<UsagePart>();
  private organizationId: string | undefined;
  /** The newest part id handed out (epoch ms): ids only grow, so no hour has two parts of one id. */
  private lastPartAt = 0;
  /** When (object clock) the oldest archived raw rows pass the retention; undefined: none held. */
  private pruneAt: number | undefined;
  private services: Services | undefined;

  constructor(
    private readonly ctx: DurableObjectState,
    private readonly env: Env,
  ) {}

  /** Reads the parts back after a restart (inside the object's `blockConcurrencyWhile`). */
  async load(): Promise<void> {
    const stored = await this.ctx.storage.list<UsagePart>({ prefix: PART_PREFIX });
    for (const [key, part] of stored) {
      this.parts.set(key, part);
      if (!part.closed) {
        this.open.set(part.interval, part);
        this.maybeClosed.add(part);
      }
      this.organizationId ??= part.organizationId;
      this.lastPartAt = Math.max(this.lastPartAt, Number.parseInt(part.part, 36));
    }
    await this.notePrune(this.svc().config.usage.rawRetentionHours * HOUR_MS);
  }

  /** Whether anything is committed and not folded, or held and not finished. */
  async hasWork(): Promise<boolean> {
    if (this.parts.size > 0 || this.pruneAt !== undefined) return true;
    const [u, d] = await Promise.all([
      this.ctx.storage.list({ prefix: USAGE_PREFIX, limit: 1 }),
      this.ctx.storage.list({ prefix: DOWNLOAD_PREFIX, limit: 1 }),
    ]);
    return u.size > 0 || d.size > 0;
  }

  private svc(): Services {
    this.services ??= createServices(this.env, {}, { quota: this.ctx.id.toString() });
    return this.services;
  }

  private intervalMs(): number {
    return this.svc().config.usage.intervalMinutes * 60_000;
  }

  /**
   * The open part of the interval starting at `interval`, opened if there is none, or if the one
   * there is due to close and D1 may hold its close already (`maybeClosed`: the object stopped
   * before it stored the part as closed, or D1 failed the close after committing it): a billing
   * interval is written once, so a row folded into it now would be metered and never billed.
   */
  private partFor(organizationId: string, interval: number, now: number, touched: Set<UsagePart>): UsagePart {
    let part = this.open.get(interval);
    if (part && this.maybeClosed.has(part) && now >= part.closesAt) part = undefined;
    if (!part) {
      const length = this.intervalMs();
      this.lastPartAt = Math.max(now, this.lastPartAt + 1);
      part = {
        organizationId,
        hour: hourOf(interval),
        interval,
        closesAt: interval + length + graceMs(length),
        part: this.lastPartAt.toString(36).padStart(9, "0"),
        inference: new Map(),
        downloads: new Map(),
        rows: 0,
        dirty: false,
        syncedAt: now,
        closed: false,
      };
      this.open.set(interval, part);
      this.parts.set(partKey(part), part);
    }
    touched.add(part);
    return part;
  }

  /**
   * Folds committed batches into their intervals' open parts: each batch, the parts it changed and
   * its raw rows under the part in one storage write. A row counts in the interval (and hour) it
   * was recorded in (its `createdAt`), in that interval's open part, or a new part when the
   * interval's part is closed.
   * Returns whether batches are left for another fold.
   */
  async fold(now: number): Promise<boolean> {
    const [usage, downloads] = await Promise.all([
      this.ctx.storage.list<string | LedgerRow | LedgerRow[]>({ prefix: USAGE_PREFIX, limit: FOLD_KEYS }),
      this.ctx.storage.list<string>({ prefix: DOWNLOAD_PREFIX, limit: FOLD_KEYS }),
    ]);
    if (usage.size === 0 && downloads.size === 0) return false;
    const touched = new Set<UsagePart>();
    const puts: Record<string, unknown> = {};
    const folded: string[] = [];
    let chars = 0;
    for (const [key, value] of usage) {
      if (chars >= FOLD_CHARS) break;
      const text =
        typeof value === "string" ? value : ledgerBatch((Array.isArray(value) ? value : [value]).map(ledgerEntry));
      chars += text.length;
      const again = key.endsWith(SENT_AGAIN);
      const byInterval = new Map<number, LedgerRow[]>();
      for (const row of ledgerRows(text)) {
        const interval = intervalStart(Date.parse(row.createdAt), this.intervalMs());
        const rows = byInterval.get(interval) ?? [];
        rows.push(row);
        byInterval.set(interval, rows);
      }
      for (const [interval, rows] of byInterval) {
        const part = this.partFor(rows[0]?.organizationId as string, interval, now, touched);
        if (again) part.recheck = true;
        for (const row of rows) addInference(part, row);
        puts[`${RAW_PREFIX}${part.hour}:${part.part}:i:${key}`] =
          byInterval.size === 1 ? text : ledgerBatch(rows.map(ledgerEntry));
      }
      folded.push(key);
    }
    for (const [key, text] of downloads) {
      if (chars >= FOLD_CHARS) break;
      chars += text.length;
      const byInterval = new Map<number, DownloadRow[]>();
      for (const row of JSON.parse(text) as DownloadRow[]) {
        const interval = intervalStart(Date.parse(row.at), this.intervalMs());
        const rows = byInterval.get(interval) ?? [];
        rows.push(row);
        byInterval.set(interval, rows);
      }
      for (const [interval, rows] of byInterval) {
        const part = this.partFor(rows[0]?.organizationId as string, interval, now, touched);
        for (const row of rows) addDownload(part, row);
        puts[`${RAW_PREFIX}${part.hour}:${part.part}:d:${key}`] = byInterval.size === 1 ? text : JSON.stringify(rows);
      }
      folded.push(key);
    }
    for (const part of touched) {
      puts[partKey(part)] = part;
      this.organizationId ??= part.organizationId;
    }
    // Not awaited in between: the object coalesces the two into one atomic write.
    void this.ctx.storage.put(puts);
    void this.ctx.storage.delete(folded);
    return folded.length < usage.size + downloads.size || usage.size === FOLD_KEYS || downloads.size === FOLD_KEYS;
  }

  /**
   * Writes to D1 the totals of parts that changed (at most every `USAGE_SYNC_SECONDS` for an open
   * part, at once with `force`) and closes the parts whose hour is over: their final totals and
   * billing intervals in one batch, the intervals then queued for Stripe. Returns false when D1
   * refused (everything stays as it was, to be tried again).
   */
  async sync(now: number, force = false): Promise<boolean> {
    const services = this.svc();
    const syncMs = services.config.usage.syncMs;
    const due: { part: UsagePart; closing: boolean }[] = [];
    // Every part not closed: an interval's part that was due when rows came has one after it.
    for (const part of this.parts.values()) {
      if (part.closed) continue;
      const closing = now >= part.closesAt;
      if (closing || (part.dirty && (force || now - part.syncedAt >= syncMs))) due.push({ part, closing });
    }
    if (due.length === 0) return true;
    const d1 = this.env.DB;
    try {
      for (const { part, closing } of due) if (closing) await this.keepOnce(part);
      // Intervals are stamped by the wall clock: the reconciler judges a pending one's age by it.
      const writtenAt = Date.now();
      await d1.batch(due.flatMap(({ part, closing }) => partStatements(d1, part, closing, now, writtenAt)));
    } catch (error) {
      // A batch that failed may have committed (a connection lost after D1 applied it): the parts
      // it closed are closed again the same later, and take no more rows meanwhile.
      for (const { part, closing } of due) if (closing) this.maybeClosed.add(part);
      services.log.warn("usage totals not written to D1; kept and retried", {
        parts: due.length,
        error: String(error),
      });
      return false;
    }
    const puts: Record<string, UsagePart> = {};
    const closed: string[] = [];
    for (const { part, closing } of due) {
      part.dirty = false;
      part.syncedAt = now;
      if (closing) {
        part.closed = true;
        if (this.open.get(part.interval) === part) this.open.delete(part.interval);
        const totals = billableTotals(part);
        if (totals.promptTokens + totals.completionTokens > 0) closed.push(intervalId(part));
      }
      puts[partKey(part)] = part;
    }
    await this.ctx.storage.put(puts);
    if (closed.length && billingEnabled(services.config)) {
      await queueIntervals(this.env.USAGE_QUEUE, closed, (intervals, error) =>
        services.log.warn("billing intervals not queued; the reconciler will send them", {
          intervals,
          error: String(error),
        }),
      );
    }
    return true;
  }

  /**
   * Leaves in `part`, about to close, only the rows whose home it is: none that `usage_ledger`
   * holds too, and each row once when a commit sent again may have put it there twice. The rows
   * that leave go from its totals and its raw rows in one storage write, before D1 takes its
   * close, so that a close tried again finds them gone.
   */
  private async keepOnce(part: UsagePart): Promise<void> {
    if (part.inference.size === 0) return;
    const { results } = await this.env.DB.prepare(LEDGER_IDS_RECORDED)
      .bind(
        part.organizationId,
        new Date(part.interval).toISOString(),
        new Date(part.interval + this.intervalMs()).toISOString(),
      )
      .all<{ id: string }>();
    const inLedger = new Set(results.map((r) => r.id));
    if (inLedger.size === 0 && !part.recheck) return;
    const raw = await this.ctx.storage.list<string>({ prefix: `${rawPartPrefix(part)}i:` });
    const seen = new Set<string>();
    const puts: Record<string, unknown> = {};
    for (const [key, text] of raw) {
      const kept: unknown[][] = [];
      const left: string[] = [];
      for (const values of JSON.parse(text) as unknown[][]) {
        const id = values[0] as string;
        if (inLedger.has(id) || seen.has(id)) left.push(JSON.stringify(values));
        else {
          seen.add(id);
          kept.push(values);
        }
      }
      if (left.length === 0) continue;
      for (const row of ledgerRows(ledgerBatch(left))) removeInference(part, row);
      puts[key] = JSON.stringify(kept);
    }
    delete part.recheck;
    puts[partKey(part)] = part;
    await this.ctx.storage.put(puts);
  }

  /**
   * Archives closed parts to R2, one object per part and kind, and forgets each part once its
   * objects are written. A repeated write (after a crash before the part was forgotten) puts the
   * same rows under the same key. Returns false when R2 refused.
   */
  async archive(): Promise<boolean> {
    for (const [key, part] of this.parts) {
      if (!part.closed) continue;
      const raw = await this.ctx.storage.list<string>({ prefix: `${RAW_PREFIX}${part.hour}:${part.part}:` });
      const inference = archiveLines(raw, "inference");
      const downloads = archiveLines(raw, "downloads");
      try {
        const totals = billableTotals(part);
        if (inference.length) {
          await this.env.USAGE_ARCHIVE.put(archiveKey(part, "inference"), await gzipLines(inference), {
            httpMetadata: { contentType: "application/x-ndjson", contentEncoding: "gzip" },
            customMetadata: {
              rows: String(inference.length),
              promptTokens: String(totals.promptTokens),
              completionTokens: String(totals.completionTokens),
            },
          });
        }
        if (downloads.length) {
          let bytes = 0;
          for (const c of part.downloads.values()) bytes += c.bytesServed;
          await this.env.USAGE_ARCHIVE.put(archiveKey(part, "downloads"), await gzipLines(downloads), {
            httpMetadata: { contentType: "application/x-ndjson", contentEncoding: "gzip" },
            customMetadata: { rows: String(downloads.length), bytesServed: String(bytes) },
          });
        }
      } catch (error) {
        this.svc().log.warn("usage part not archived; kept and retried", { key, error: String(error) });
        return false;
      }
      this.parts.delete(key);
      await this.ctx.storage.delete(key);
      const due = hourStart(part.hour) + HOUR_MS + this.svc().config.usage.rawRetentionHours * HOUR_MS;
      this.pruneAt = Math.min(this.pruneAt ?? due, due);
    }
    return true;
  }

  /**
   * Deletes raw rows of archived parts older than the retention, a bounded number at a time, and
   * notes when the oldest row left is due.
   */
  async prune(now: number): Promise<void> {
    if (this.pruneAt === undefined || now < this.pruneAt) return;
    const retentionMs = this.svc().config.usage.rawRetentionHours * HOUR_MS;
    const cutoff = hourOf(now - retentionMs);
    const old = await this.ctx.storage.list({ prefix: RAW_PREFIX, end: `${RAW_PREFIX}${cutoff}`, limit: PRUNE_KEYS });
    const held = new Set([...this.parts.values()].map((p) => rawPartPrefix(p)));
    const gone = [...old.keys()].filter((key) => !held.has(key.slice(0, RAW_PART_PREFIX_LENGTH)));
    if (gone.length) await this.ctx.storage.delete(gone);
    if (old.size === PRUNE_KEYS) {
      this.pruneAt = now;
      return;
    }
    await this.notePrune(retentionMs);
  }

  /** Sets when the oldest raw row not held by an unarchived part is due for pruning; none: undefined. */
  private async notePrune(retentionMs: number): Promise<void> {
    const held = new Set([...this.parts.values()].map((p) => rawPartPrefix(p)));
    let cursor: string | undefined;
    this.pruneAt = undefined;
    for (;;) {
      const first = await this.ctx.storage.list({
        prefix: RAW_PREFIX,
        limit: 100,
        ...(cursor ? { startAfter: cursor } : {}),
      });
      for (const key of first.keys()) {
        if (held.has(key.slice(0, RAW_PART_PREFIX_LENGTH))) continue;
        this.pruneAt = hourStart(key.slice(RAW_PREFIX.length, RAW_PREFIX.length + 13)) + HOUR_MS + retentionMs;
        return;
      }
      if (first.size < 100) return;
      cursor = [...first.keys()].at(-1);
    }
  }

  /**
   * When (object clock) the book next has something to do: an open part to write or close, a
   * closed one to archive (`RETRY_MS` after a failure), or old rows to prune. Undefined: nothing.
   */
  nextWake(now: number, failed: boolean): number | undefined {
    const syncMs = this.svc().config.usage.syncMs;
    let next: number | undefined;
    const at = (t: number) => {
      next = Math.min(next ?? t, t);
    };
    for (const part of this.parts.values()) {
      if (part.closed) at(now);
      else {
        at(part.closesAt);
        if (part.dirty) at(part.syncedAt + syncMs);
      }
    }
    if (failed && next !== undefined) next = Math.max(next, now + RETRY_MS);
    if (this.pruneAt !== undefined) at(this.pruneAt);
    return next;
  }

  /** Open parts D1 has older totals of, for the organization's own usage views. */
  live(): LiveParts {
    return {
      parts: [...this.parts.values()]
        .filter((p) => !p.closed && p.dirty)
        .map((p) => ({ hour: p.hour, part: p.part, inference: [...p.inference], downloads: [...p.downloads] })),
    };
  }

  /** The raw rows the object still holds of `hour` (of every hour without), as the archive's NDJSON lines. */
  async rawLines(hour: string | undefined, kind: "inference" | "downloads"): Promise<string[]> {
    const raw = await this.ctx.storage.list<string>({ prefix: hour ? `${RAW_PREFIX}${hour}:` : RAW_PREFIX });
    return archiveLines(raw, kind);
  }
}

/** A ledger batch without the rows of `ids` (each entry's first value is its row's id). */
export function rowsWithout(batch: string, ids: ReadonlySet<string>): string {
  return JSON.stringify((JSON.parse(batch) as unknown[][]).filter((values) => !ids.has(values[0] as string)));
}

/** The rows of `kind` among raw keys (`raw:<hour>:<part>:<i|d>:…`), one JSON object a line, as the archive holds them. */
function archiveLines(raw: Map<string, string>, kind: "inference" | "downloads"): string[] {
  const marker = kind === "inference" ? ":i:" : ":d:";
  const lines: string[] = [];
  for (const [key, text] of raw) {
    if (!key.includes(marker)) continue;
    const rows: unknown[] = kind === "inference" ? ledgerRows(text) : (JSON.parse(text) as DownloadRow[]);
    for (const row of rows) lines.push(JSON.stringify(row));
  }
  return lines;
}

function rawPartPrefix(part: Pick<UsagePart, "hour" | "part">): string {
  return `${RAW_PREFIX}${part.hour}:${part.part}:`;
}

function partKey(part: Pick<UsagePart, "hour" | "part">): string {
  return `${PART_PREFIX}${part.hour}:${part.part}`;
}
