import { listDurableObjectIds, runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import type { LedgerRow } from "../../worker/inference/ledger";
import { type DownloadRow, gunzipLines } from "../../worker/usage/hours";

/**
 * Moves usage on in every quota object as its alarms would: checkpoints of abandoned streams
 * settled, committed rows folded into their hours, every changed total written to D1 now (not
 * within `USAGE_SYNC_SECONDS`), hours that are over closed, billed and archived. Run it before
 * reading usage after proxied calls.
 */
export async function flushUsage(): Promise<void> {
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    const stub = env.QUOTA.get(id);
    await runDurableObjectAlarm(stub);
    await stub.syncUsage();
  }
}

/** Every archived line of a kind in the usage archive. */
export async function archivedLines(kind: "inference" | "downloads"): Promise<string[]> {
  const lines: string[] = [];
  let cursor: string | undefined;
  do {
    const page = await env.USAGE_ARCHIVE.list({ prefix: "usage/v1/", cursor });
    for (const o of page.objects) {
      if (!o.key.includes(`/${kind}-`)) continue;
      const body = await env.USAGE_ARCHIVE.get(o.key);
      if (body) lines.push(...(await gunzipLines(body.body)));
    }
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return lines;
}

/**
 * Every metered request's raw row after `flushUsage`: those the quota objects hold and those in
 * the archive, each once (by id), oldest first.
 */
export async function usageRows(): Promise<LedgerRow[]> {
  await flushUsage();
  const byId = new Map<string, LedgerRow>();
  for (const line of await archivedLines("inference")) {
    const row = JSON.parse(line) as LedgerRow;
    byId.set(row.id, row);
  }
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    for (const line of await env.QUOTA.get(id).rawUsage()) {
      const row = JSON.parse(line) as LedgerRow;
      byId.set(row.id, row);
    }
  }
  // A stable sort: rows that started at once stay in the order they were recorded (archive parts in
  // order, then what the objects hold).
  return [...byId.values()].sort((a, b) => a.startedAt.localeCompare(b.startedAt));
}

/** Every recorded download after `flushUsage`, each once, oldest first. */
export async function downloadRows(): Promise<DownloadRow[]> {
  await flushUsage();
  const byId = new Map<string, DownloadRow>();
  for (const line of await archivedLines("downloads")) {
    const row = JSON.parse(line) as DownloadRow;
    byId.set(row.id, row);
  }
  for (const id of await listDurableObjectIds(env.QUOTA)) {
    for (const line of await env.QUOTA.get(id).rawUsage(undefined, "downloads")) {
      const row = JSON.parse(line) as DownloadRow;
      byId.set(row.id, row);
    }
  }
  return [...byId.values()].sort((a, b) => a.at.localeCompare(b.at) || a.id.localeCompare(b.id));
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
