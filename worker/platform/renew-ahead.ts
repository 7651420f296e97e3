/**
 * An isolate's cached read of the database, renewed before it expires by the first request that
 * finds it due, after that request's answer (`waitUntil`), while every request goes on using it: in
 * steady traffic the read never expires, so no request waits for the database, and concurrent
 * requests do not all read it again at once when it would have. Nothing awaits the renewal: it only
 * replaces the cached entry, which requests read synchronously.
 */
export interface Renewable {
  /** When the entry is due for renewal (before it expires). */
  refreshAt: number;
  /** A request is renewing it. */
  refreshing: boolean;
}

/** Renews `entry` through `renew` after this request's answer if it is due and nobody renews it yet. */
export function renewIfDue(
  entry: Renewable,
  now: number,
  waitUntil: (work: Promise<unknown>) => void,
  renew: () => Promise<unknown>,
  failed: (error: unknown) => void,
): void {
  if (now < entry.refreshAt || entry.refreshing) return;
  entry.refreshing = true;
  waitUntil(
    renew().catch((error: unknown) => {
      entry.refreshing = false;
      failed(error);
    }),
  );
}
