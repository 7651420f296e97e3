/**
 * Where a finished download is recorded: with its organization's quota object, which folds it
 * into the hour's `download_hours` totals and archives it with the hour (`usage-book.ts`). When
 * the object cannot take it, the row goes to `download_events`, which the cron carries into the
 * same totals (`carryLedgerRows`).
 */
import { downloadEvents } from "../db/schema";
import { quotaStub } from "../quota/org-quota";
import type { Services } from "../services";
import type { DownloadRow } from "../usage/hours";

/** How many times the direct write to `download_events` is tried before the row is logged for replay. */
const WRITE_ATTEMPTS = 4;

/**
 * Records one download. Its quota object stores it before it answers; if the call fails, the row
 * is written to `download_events` instead, retried with backoff; a row neither could take is
 * logged whole, at error level, so that it can be replayed. A download whose organization is
 * unknown goes straight to `download_events` (the cron finds the organization from the grant).
 *
 * An object that stored the row but whose answer was lost makes the row count twice (once from
 * each place): a row counted twice can be found by its id, a row lost cannot be found at all.
 */
export async function recordDownloadRow(
  services: Pick<Services, "db" | "log">,
  env: Env,
  row: DownloadRow,
  retryDelayMs = 100,
): Promise<void> {
  if (row.organizationId) {
    try {
      await quotaStub(env, row.organizationId).recordDownloads([row]);
      return;
    } catch (error) {
      services.log.warn("quota object unreachable; download written directly", {
        downloadId: row.id,
        error: String(error),
      });
    }
  }
  await writeDownloadEvent(services, row, retryDelayMs);
}

/** Writes a download to `download_events`, retried; logs it whole when every attempt failed. */
async function writeDownloadEvent(
  services: Pick<Services, "db" | "log">,
  row: DownloadRow,
  retryDelayMs: number,
): Promise<void> {
  const { organizationId: _organization, ...event } = row;
  for (let attempt = 1; ; attempt++) {
    try {
      // A retry after a write that took but whose answer was lost finds the row there.
      await services.db.insert(downloadEvents).values(event).onConflictDoNothing();
      return;
    } catch (error) {
      if (attempt >= WRITE_ATTEMPTS) {
        services.log.error("download not recorded", { row, error: String(error) });
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs * 2 ** (attempt - 1)));
    }
  }
}
