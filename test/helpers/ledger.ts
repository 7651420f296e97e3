import { listDurableObjectIds, runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";

/**
 * Writes the usage rows that quota objects have settled but not yet flushed to D1, as their
 * alarms would within `LEDGER_FLUSH_MS`: run it before reading the ledger after proxied calls.
 */
export async function flushUsage(): Promise<void> {
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    await runDurableObjectAlarm(env.QUOTA.get(id));
  }
}
