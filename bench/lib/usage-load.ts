/**
 * Settled requests as the proxy's isolates hand them to their organizations' quota objects, and
 * what the usage path leaves of them, per organization and hour: shared by `bench:ledger` and
 * `bench:faults` so that both push the same load and count it the same way.
 */
import type { V4WorkerOptions as WorkerOptions } from "miniflare";
import { ledgerBatch, ledgerEntry, ledgerRows } from "../../worker/inference/ledger";
import { newId } from "../../worker/platform/ids";
import { gunzipLines, hourOf } from "../../worker/usage/hours";

export const HOUR_MS = 3_600_000;
/** Limits no run reaches: every lease is granted whole, and every request still settles. */
export const LIMITS = {
  requestsPerMinute: 1_000_000_000,
  tokensPerMinute: 1_000_000_000_000,
  monthlyTokenBudget: 1e18,
};
/** The worst case each request reserves; the settlement replaces it with what was used. */
const RESERVED = 4_096;
const MODEL = "meta-llama/Llama-2-7b-chat-hf";
const BACKEND = "https://vllm-1.inference.example:8000";

/**
 * A Worker standing in for the proxy's isolates and for an operator: `/commit` leases capacity
 * from each organization's quota object and commits settlements and ledger rows against it,
 * through the stub, exactly as `QuotaLeases` does; `/sync` calls the objects' `syncUsage`;
 * `/raw` reads the rows they still hold; `/enqueue` puts billing intervals on the usage queue.
 */
const DRIVER = `
const json = (body, status = 200) => new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
const quota = (env, organizationId) => env.QUOTA.get(env.QUOTA.idFromName(organizationId));
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    const body = await request.json();
    try {
      if (path === "/commit") {
        for (const c of body.commits) {
          const stub = quota(env, c.organizationId);
          const lease = await stub.lease(c.lease, { requests: c.settlements.length, tokens: c.reserved, need: c.need }, body.limits, c.now);
          if (!lease.ok || lease.requests < c.settlements.length) return json(lease, 500);
          await stub.commit({ settlements: c.settlements, rows: c.rows }, body.limits, c.now);
        }
        return json("ok");
      }
      if (path === "/sync") {
        return json(await Promise.all(body.organizationIds.map((id) => quota(env, id).syncUsage(body.now))));
      }
      if (path === "/raw") {
        const lines = [];
        for (const id of body.organizationIds) lines.push(...(await quota(env, id).rawUsage(undefined, "inference")));
        return json(lines);
      }
      if (path === "/enqueue") {
        for (let i = 0; i < body.intervalIds.length; i += 100)
          await env.USAGE_QUEUE.sendBatch(body.intervalIds.slice(i, i + 100).map((intervalId) => ({ body: { intervalId } })));
        return json(body.intervalIds.length);
      }
      return json("not found", 404);
    } catch (error) {
      return json(String((error && error.stack) || error), 500);
    }
  },
};
`;

/** Miniflare options of the driver Worker, bound to the gateway's quota objects and usage queue. */
export function driverWorkerOptions(): WorkerOptions {
  return {
    name: "driver",
    unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    modules: true,
    script: DRIVER,
    compatibilityDate: "2026-07-30",
    durableObjects: { QUOTA: { className: "OrgQuota", scriptName: "modelgate" } },
    queueProducers: { USAGE_QUEUE: { queueName: "modelgate-usage" } },
  } as WorkerOptions;
}

/** Posts `body` to the driver; throws with the driver's answer unless it answered 200. */
export async function callDriver<T>(origin: string, path: string, body: unknown): Promise<T> {
  const res = await fetch(`${origin}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new DriverError(`the driver answered ${res.status} to ${path}: ${text.slice(0, 2000)}`);
  return JSON.parse(text) as T;
}

/** The driver answered, with an error: the call reached the quota objects. */
export class DriverError extends Error {}

/** An organization of the load, with its grant and `--tokens-per-org` tokens. */
export interface LoadOrganization {
  id: string;
  grant: string;
  tokens: string[];
}

export function loadOrganizations(count: number, tokensPerOrg: number): LoadOrganization[] {
  const base = Date.UTC(2026, 0, 1);
  return Array.from({ length: count }, (_, i) => ({
    id: newId("org", base + i),
    grant: newId("grt", base + i),
    tokens: Array.from({ length: tokensPerOrg }, (_, t) => newId("tok", base + i * 1_000 + t)),
  }));
}

/** One isolate's commit to one organization's object: settlements and their ledger rows. */
export interface Commit {
  organizationId: string;
  lease: string;
  now: number;
  need: number;
  reserved: number;
  settlements: { id: string; lease: string; reserved: number; actual: number }[];
  rows: string;
}

/** A small deterministic generator, so that two runs push the same token counts. */
export function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/**
 * One organization's commit of `size` requests recorded between `from` and `to` (epoch ms), with
 * the ledger rows the proxy writes (`ledgerEntry`): 1% backend errors with no tokens, half
 * streamed, spread over the organization's tokens. The commit is sent at the newest row's time,
 * as an isolate commits once its requests ended.
 */
export function commitOf(org: LoadOrganization, size: number, from: number, to: number, next: () => number): Commit {
  const recorded = Array.from({ length: size }, (_, i) => from + Math.floor((i / size) * (to - from)));
  const lease = newId("lse", from);
  const settlements: Commit["settlements"] = [];
  const entries: string[] = [];
  for (let i = 0; i < size; i++) {
    const createdAt = recorded[i] as number;
    const latencyMs = 200 + Math.floor(next() * 4_000);
    const failed = next() < 0.01;
    const stream = next() < 0.5;
    const promptTokens = failed ? 0 : 20 + Math.floor(next() * 2_000);
    const completionTokens = failed ? 0 : 1 + Math.floor(next() * 600);
    const id = newId("use", createdAt);
    settlements.push({ id, lease, reserved: RESERVED, actual: promptTokens + completionTokens });
    entries.push(
      ledgerEntry({
        id,
        organizationId: org.id,
        grantId: org.grant,
        tokenId: org.tokens[i % org.tokens.length] as string,
        model: MODEL,
        backend: BACKEND,
        endpoint: "chat.completions",
        stream,
        promptTokens,
        completionTokens,
        totalTokens: promptTokens + completionTokens,
        usageReported: !failed,
        outcome: failed ? "backend_error" : "ok",
        partial: false,
        status: failed ? 502 : 200,
        latencyMs,
        startedAt: new Date(createdAt - latencyMs).toISOString(),
        createdAt: new Date(createdAt).toISOString(),
      }),
    );
  }
  return {
    organizationId: org.id,
    lease,
    now: recorded.at(-1) ?? from,
    need: RESERVED,
    reserved: RESERVED * size,
    settlements,
    rows: ledgerBatch(entries),
  };
}

/** Requests and tokens of one organization's hour. */
export interface HourCounts {
  requests: number;
  promptTokens: number;
  completionTokens: number;
}

/** Usage per organization and hour (`<organization> <hour>`), as one stage of the path holds it. */
export class Tally {
  readonly hours = new Map<string, HourCounts>();

  add(organizationId: string, hour: string, counts: HourCounts): void {
    const key = `${organizationId} ${hour}`;
    const c = this.hours.get(key) ?? { requests: 0, promptTokens: 0, completionTokens: 0 };
    c.requests += counts.requests;
    c.promptTokens += counts.promptTokens;
    c.completionTokens += counts.completionTokens;
    this.hours.set(key, c);
  }

  addRows(batch: string): void {
    for (const row of ledgerRows(batch)) this.addRow(row);
  }

  addRow(row: { organizationId: string; createdAt: string; promptTokens: number; completionTokens: number }): void {
    this.add(row.organizationId, hourOf(row.createdAt), {
      requests: 1,
      promptTokens: row.promptTokens,
      completionTokens: row.completionTokens,
    });
  }

  total(): HourCounts & { tokens: number } {
    const t = { requests: 0, promptTokens: 0, completionTokens: 0, tokens: 0 };
    for (const c of this.hours.values()) {
      t.requests += c.requests;
      t.promptTokens += c.promptTokens;
      t.completionTokens += c.completionTokens;
    }
    t.tokens = t.promptTokens + t.completionTokens;
    return t;
  }

  /** Only the hours `keep` accepts. */
  filter(keep: (organizationId: string, hour: string) => boolean): Tally {
    const out = new Tally();
    for (const [key, c] of this.hours) {
      const [org, hour] = key.split(" ") as [string, string];
      if (keep(org, hour)) out.add(org, hour, c);
    }
    return out;
  }
}

/**
 * What `actual` lacks (lost) and has too much (doubled) against `expected`, hour by hour, in
 * requests and tokens: a loss in one hour is not hidden by a double count in another.
 */
export function compareTallies(expected: Tally, actual: Tally) {
  const out = { lostRequests: 0, doubledRequests: 0, lostTokens: 0, doubledTokens: 0 };
  for (const key of new Set([...expected.hours.keys(), ...actual.hours.keys()])) {
    const e = expected.hours.get(key) ?? { requests: 0, promptTokens: 0, completionTokens: 0 };
    const a = actual.hours.get(key) ?? { requests: 0, promptTokens: 0, completionTokens: 0 };
    const requests = a.requests - e.requests;
    // Each dimension on its own: a prompt token is not a completion token.
    const prompt = a.promptTokens - e.promptTokens;
    const completion = a.completionTokens - e.completionTokens;
    if (requests < 0) out.lostRequests -= requests;
    else out.doubledRequests += requests;
    for (const d of [prompt, completion]) {
      if (d < 0) out.lostTokens -= d;
      else out.doubledTokens += d;
    }
  }
  return out;
}

/** `usage_hours`, summed over parts, per organization and hour. */
export async function usageHoursTally(db: D1Database): Promise<Tally> {
  const tally = new Tally();
  const { results } = await db
    .prepare(
      `select organization_id as org, hour, sum(requests) as requests, sum(prompt_tokens) as promptTokens,
         sum(completion_tokens) as completionTokens from usage_hours group by organization_id, hour`,
    )
    .all<HourCounts & { org: string; hour: string }>();
  for (const r of results) tally.add(r.org, r.hour, r);
  return tally;
}

/** `billing_intervals` per organization and hour (and, of those, the ones in `states` only). */
export async function intervalsTally(db: D1Database, states?: string[]): Promise<Tally> {
  const tally = new Tally();
  const where = states ? `where state in (${states.map(() => "?").join(", ")})` : "";
  const { results } = await db
    .prepare(
      `select organization_id as org, hour, sum(requests) as requests, sum(prompt_tokens) as promptTokens,
         sum(completion_tokens) as completionTokens from billing_intervals ${where} group by organization_id, hour`,
    )
    .bind(...(states ?? []))
    .all<HourCounts & { org: string; hour: string }>();
  for (const r of results) tally.add(r.org, r.hour, r);
  return tally;
}

/** The usage archive's object key, taken apart: `usage/v1/<org>/<YYYY>/<MM>/<DD>/<HH>/<kind>-<part>.ndjson.gz`. */
function archivedHour(key: string): { org: string; hour: string } | undefined {
  const m = /^usage\/v1\/([^/]+)\/(\d{4})\/(\d{2})\/(\d{2})\/(\d{2})\/inference-/.exec(key);
  if (!m) return undefined;
  return { org: decodeURIComponent(m[1] as string), hour: `${m[2]}-${m[3]}-${m[4]}T${m[5]}` };
}

/** Every object of the usage archive with its size and custom metadata. */
export async function archiveObjects(bucket: R2Bucket) {
  const objects: { key: string; size: number; customMetadata: Record<string, string> }[] = [];
  let cursor: string | undefined;
  do {
    const page = await bucket.list({ cursor, include: ["customMetadata"] });
    for (const o of page.objects) objects.push({ key: o.key, size: o.size, customMetadata: o.customMetadata ?? {} });
    cursor = page.truncated ? page.cursor : undefined;
  } while (cursor);
  return objects;
}

/** The archive's inference objects summed per organization and hour from their custom metadata. */
export function archiveMetadataTally(objects: Awaited<ReturnType<typeof archiveObjects>>): Tally {
  const tally = new Tally();
  for (const o of objects) {
    const at = archivedHour(o.key);
    if (!at) continue;
    tally.add(at.org, at.hour, {
      requests: Number(o.customMetadata.rows ?? 0),
      promptTokens: Number(o.customMetadata.promptTokens ?? 0),
      completionTokens: Number(o.customMetadata.completionTokens ?? 0),
    });
  }
  return tally;
}

/** The rows of every inference object of the archive, read back and decompressed. */
export async function archivedRows(bucket: R2Bucket, objects: Awaited<ReturnType<typeof archiveObjects>>) {
  const rows: {
    id: string;
    organizationId: string;
    createdAt: string;
    promptTokens: number;
    completionTokens: number;
  }[] = [];
  for (const o of objects) {
    if (!archivedHour(o.key)) continue;
    const body = await bucket.get(o.key);
    if (!body) continue;
    for (const line of await gunzipLines(await body.arrayBuffer())) rows.push(JSON.parse(line));
  }
  return rows;
}

/** Runs `work` over `items`, at most `limit` at a time. */
export async function inParallel<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await work(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

export const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
export const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
export const mb = (bytes: number) => `${(bytes / 1_000_000).toFixed(2)} MB`;
