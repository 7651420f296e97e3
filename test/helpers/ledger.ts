import { listDurableObjectIds, runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import type { LedgerRow } from "../../worker/inference/ledger";

/**
 * Writes the usage rows that quota objects have settled but not yet flushed to D1, as their
 * alarms would within `LEDGER_FLUSH_MS`: run it before reading the ledger after proxied calls.
 */
export async function flushUsage(): Promise<void> {
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    await runDurableObjectAlarm(env.QUOTA.get(id));
  }
}

/** A settled chat completion's ledger row of `totalTokens` tokens (two of them the prompt's). */
export function ledgerRow(id: string, totalTokens: number, fields: Partial<LedgerRow> = {}): LedgerRow {
  const at = "2026-06-15T12:00:10.000Z";
  return {
    id,
    organizationId: "org_q",
    grantId: "grt_q",
    tokenId: "tok_q",
    model: "llama-2-7b-chat",
    backend: "https://gpu.example",
    endpoint: "chat.completions",
    stream: false,
    promptTokens: 2,
    completionTokens: totalTokens - 2,
    totalTokens,
    usageReported: true,
    outcome: "ok",
    partial: false,
    status: 200,
    latencyMs: 3,
    startedAt: at,
    createdAt: at,
    ...fields,
  };
}
