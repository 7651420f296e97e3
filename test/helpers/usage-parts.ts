/**
 * Driving an organization's quota object as isolates and operators do, and reading what its usage
 * book left in D1 and R2, for the tests of hourly usage and of its faults.
 */
import { runDurableObjectAlarm, runInDurableObject } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { expect } from "vitest";
import { type LedgerRow, ledgerBatch, ledgerEntry } from "../../worker/inference/ledger";
import { type QuotaLimits, quotaStub } from "../../worker/quota/org-quota";
import { createServices, type Services } from "../../worker/services";
import { gunzipLines, hourStart } from "../../worker/usage/hours";
import { boundMember } from "./bindings";
import { ledgerRow } from "./ledger";

/** Limits no test reaches. */
export const LIMITS: QuotaLimits = { requestsPerMinute: 1_000_000, tokensPerMinute: 1e12, monthlyTokenBudget: 1e15 };

/** A fresh organization id: every test has objects of its own. */
export function newOrganization(): string {
  return `org_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
}

let seq = 0;
/** A settled request of `org` recorded at `at`, with its own id. */
export function row(
  org: string,
  at: string,
  prompt: number,
  completion: number,
  fields: Partial<LedgerRow> = {},
): LedgerRow {
  seq += 1;
  return ledgerRow(`use_${String(seq).padStart(6, "0")}_${crypto.randomUUID().slice(0, 8)}`, prompt + completion, {
    organizationId: org,
    promptTokens: prompt,
    completionTokens: completion,
    startedAt: at,
    createdAt: at,
    ...fields,
  });
}

/** An ISO time `minutes` (may be fractional) into `hour`. */
export function into(hour: string, minutes: number): string {
  return new Date(hourStart(hour) + minutes * 60_000).toISOString();
}

/** Leases capacity for `rows` and commits their settlements and rows, as an isolate does, at `now`. */
export async function commitRows(org: string, rows: readonly LedgerRow[], now = Date.parse(rows[0]?.createdAt ?? "")) {
  const stub = quotaStub(env, org);
  const lease = `lease-${crypto.randomUUID()}`;
  const tokens = rows.reduce((n, r) => n + r.totalTokens, 0);
  const granted = await stub.lease(lease, { requests: rows.length, tokens: Math.max(1, tokens), need: 1 }, LIMITS, now);
  expect(granted.ok).toBe(true);
  await stub.commit(
    {
      settlements: rows.map((r) => ({ id: r.id, lease, reserved: r.totalTokens, actual: r.totalTokens })),
      rows: ledgerBatch(rows.map(ledgerEntry)),
    },
    LIMITS,
    now,
  );
}

/** Runs the object's alarm if one is set (the runtime may have run it already: the result is the same). */
export async function runAlarm(org: string): Promise<void> {
  await runDurableObjectAlarm(quotaStub(env, org));
}

/** Moves the object's clock to `now` without changing anything else. */
export async function moveClock(org: string, now: number): Promise<void> {
  await quotaStub(env, org).peek(LIMITS, now);
}

export interface Sums {
  requests: number;
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  errorRequests: number;
  partialRequests: number;
  latencyMsSum: number;
  lastAt: string;
}

/** The sums of raw rows per hour, model, grant and token, sorted by key. */
export function sumsOf(rows: readonly LedgerRow[]): [string, Sums][] {
  const sums = new Map<string, Sums>();
  for (const r of rows) {
    const key = JSON.stringify([r.createdAt.slice(0, 13), r.model, r.grantId, r.tokenId]);
    const s = sums.get(key) ?? {
      requests: 0,
      promptTokens: 0,
      completionTokens: 0,
      totalTokens: 0,
      errorRequests: 0,
      partialRequests: 0,
      latencyMsSum: 0,
      lastAt: r.createdAt,
    };
    s.requests += 1;
    s.promptTokens += r.promptTokens;
    s.completionTokens += r.completionTokens;
    s.totalTokens += r.totalTokens;
    s.errorRequests += r.status >= 400 ? 1 : 0;
    s.partialRequests += r.partial ? 1 : 0;
    s.latencyMsSum += r.latencyMs;
    if (r.createdAt > s.lastAt) s.lastAt = r.createdAt;
    sums.set(key, s);
  }
  return [...sums].sort(([a], [b]) => a.localeCompare(b));
}

/** `usage_hours` of an organization summed over parts per hour, model, grant and token, sorted by key. */
export async function hourSums(org: string): Promise<[string, Sums][]> {
  const { results } = await env.DB.prepare(
    `select hour, model, grant_id, token_id, sum(requests) requests, sum(prompt_tokens) promptTokens,
       sum(completion_tokens) completionTokens, sum(total_tokens) totalTokens, sum(error_requests) errorRequests,
       sum(partial_requests) partialRequests, sum(latency_ms_sum) latencyMsSum, max(last_at) lastAt
     from usage_hours where organization_id = ? group by hour, model, grant_id, token_id`,
  )
    .bind(org)
    .all<Sums & { hour: string; model: string; grant_id: string; token_id: string }>();
  return results
    .map(({ hour, model, grant_id, token_id, ...s }): [string, Sums] => [
      JSON.stringify([hour, model, grant_id, token_id]),
      s,
    ])
    .sort(([a], [b]) => a.localeCompare(b));
}

export async function usageHourRows(org: string) {
  const { results } = await env.DB.prepare(
    "select * from usage_hours where organization_id = ? order by hour, part, model, grant_id, token_id",
  )
    .bind(org)
    .all<{
      hour: string;
      part: string;
      requests: number;
      prompt_tokens: number;
      completion_tokens: number;
      updated_at: string;
    }>();
  return results;
}

export async function intervals(org: string) {
  const { results } = await env.DB.prepare("select * from billing_intervals where organization_id = ? order by id")
    .bind(org)
    .all<{
      id: string;
      hour: string;
      requests: number;
      prompt_tokens: number;
      completion_tokens: number;
      state: string;
      created_at: string;
    }>();
  return results;
}

/** The organization's archive objects: key, when written, metadata and lines. */
export async function archiveObjects(org: string) {
  const listed = await env.USAGE_ARCHIVE.list({ prefix: `usage/v1/${org}/` });
  const objects = [];
  for (const o of listed.objects) {
    const body = await env.USAGE_ARCHIVE.get(o.key);
    if (!body) continue;
    objects.push({
      key: o.key,
      uploaded: body.uploaded.toISOString(),
      customMetadata: body.customMetadata,
      httpMetadata: body.httpMetadata,
      lines: await gunzipLines(body.body),
    });
  }
  return objects.sort((a, b) => a.key.localeCompare(b.key));
}

/** Every inference row of the organization once: archived, or still held by its object. */
export async function everyRow(org: string): Promise<LedgerRow[]> {
  const lines = [...(await archiveObjects(org)).filter((o) => o.key.includes("/inference-")).flatMap((o) => o.lines)];
  lines.push(...(await quotaStub(env, org).rawUsage()));
  return lines.map((line) => JSON.parse(line) as LedgerRow);
}

export function byId<T extends { id: string }>(rows: readonly T[]): T[] {
  return [...rows].sort((a, b) => a.id.localeCompare(b.id));
}

/** The book inside an organization's object, for swapping the bindings it writes through. */
export interface BookInside {
  book: { env: Env; services: Services | undefined };
}

/**
 * Makes the organization's object write through `bindings` instead of the real ones (`{}`: the
 * real ones again). Returns what it logs from then on.
 */
export async function bindBook(org: string, bindings: Partial<Env>): Promise<string[]> {
  const logged: string[] = [];
  const log = (message: string) => {
    logged.push(message);
  };
  await runInDurableObject(quotaStub(env, org), (instance) => {
    const { book } = instance as unknown as BookInside;
    book.env = { ...env, ...bindings };
    book.services = { ...createServices(book.env), log: { info: log, warn: log, error: log } };
  });
  return logged;
}

/** A binding whose `method` always fails, as an unreachable D1 or R2 does; everything else is the real one. */
export function refusing<T extends object>(binding: T, method: string): T {
  return new Proxy(binding, {
    get(target, name) {
      if (name === method) return () => Promise.reject(new Error(`${method}: unavailable`));
      return boundMember(target, name);
    },
  });
}

/**
 * A binding whose `method` does its work and then fails, as a call whose connection is lost after
 * the other side applied it; everything else is the real one.
 */
export function failingAfter<T extends object>(binding: T, method: string): T {
  return new Proxy(binding, {
    get(target, name) {
      const member = boundMember(target, name);
      if (name !== method) return member;
      return async (...args: unknown[]) => {
        await (member as (...args: unknown[]) => Promise<unknown>)(...args);
        throw new Error(`${method}: connection lost`);
      };
    },
  });
}
