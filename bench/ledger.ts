/**
 * `npm run bench:ledger [-- --requests 1000000 --orgs 100 --batch 50 --concurrency 8]`
 *
 * What usage metering leaves behind per million proxied requests, measured through the real
 * path: the gateway bundle in Miniflare, each organization's `OrgQuota` object leased from and
 * committed to through its Durable Object stub as the isolates do (`worker/quota/leases.ts`: a
 * lease, then settlements with their ledger rows), and the object's own alarm writing the rows to
 * D1. The requests are spread over one simulated day and over the organizations evenly; they are
 * pushed as fast as the machine takes them, in commits of `--batch` settlements (batching changes
 * how many calls carry the rows, not how many rows there are).
 *
 * Printed, per million requests: D1 rows and the rows D1 bills as written (a row plus its index
 * entries, read from D1's own `rows_written`), D1 bytes, R2 objects and bytes, Stripe meter-event
 * calls and usage-queue messages, and the time the run took. Stripe calls are counted from the
 * rows with the billing consumer's own rule (one meter event per dimension with tokens), not sent:
 * nothing here may reach Stripe. The "after" column stays empty until the archive and aggregates
 * exist.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { V4MiniflareOptions as MiniflareOptions } from "miniflare";
import { ledgerBatch, ledgerEntry } from "../worker/inference/ledger";
import { newId } from "../worker/platform/ids";
import {
  buildGateway,
  gatewayWorkerOptions,
  newMiniflare,
  prepareDatabase,
  runtimeOutput,
} from "./lib/gateway-miniflare";

const DAY_MS = 86_400_000;
/** Limits no run reaches: every lease is granted whole, and every request still settles. */
const LIMITS = { requestsPerMinute: 1_000_000_000, tokensPerMinute: 1_000_000_000_000, monthlyTokenBudget: 1e18 };
/** The worst case each request reserves; the settlement replaces it with what was used. */
const RESERVED = 4_096;
const MODEL = "meta-llama/Llama-2-7b-chat-hf";
const BACKEND = "https://vllm-1.inference.example:8000";

/**
 * A Worker standing in for the proxy's isolates: for each commit it is sent, it leases capacity
 * from the organization's quota object and commits the settlements and ledger rows against it,
 * through the stub, exactly as `QuotaLeases` does.
 */
const DRIVER = `
export default {
  async fetch(request, env) {
    const { commits, limits } = await request.json();
    try {
    for (const c of commits) {
      const stub = env.QUOTA.get(env.QUOTA.idFromName(c.organizationId));
      const lease = await stub.lease(c.lease, { requests: c.settlements.length, tokens: c.reserved, need: c.need }, limits, c.now);
      if (!lease.ok || lease.requests < c.settlements.length) return new Response(JSON.stringify(lease), { status: 500 });
      await stub.commit({ settlements: c.settlements, rows: c.rows }, limits, c.now);
    }
    } catch (error) {
      return new Response(String(error && error.stack || error), { status: 500 });
    }
    return new Response("ok");
  },
};
`;

interface Commit {
  organizationId: string;
  lease: string;
  now: number;
  need: number;
  reserved: number;
  settlements: { id: string; lease: string; reserved: number; actual: number }[];
  rows: string;
}

function options() {
  const { values } = parseArgs({
    options: {
      requests: { type: "string", default: "1000000" },
      orgs: { type: "string", default: "100" },
      batch: { type: "string", default: "50" },
      concurrency: { type: "string", default: "8" },
    },
  });
  const int = (flag: string, text: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) {
      process.stderr.write(
        `bench:ledger: --${flag} must be a positive integer, not "${text}"\n` +
          "usage: npm run bench:ledger -- [--requests N (1000000)] [--orgs N (100)] [--batch N (50)] [--concurrency N (8)]\n",
      );
      process.exit(2);
    }
    return n;
  };
  return {
    requests: int("requests", values.requests),
    orgs: int("orgs", values.orgs),
    batch: int("batch", values.batch),
    concurrency: int("concurrency", values.concurrency),
  };
}

/** A small deterministic generator, so that two runs push the same token counts. */
function random(seed: number): () => number {
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
 * The commits of one round: every organization one commit of `size` requests at `now`, with the
 * ledger rows the proxy writes (`ledgerEntry`): 1% backend errors with no tokens, half streamed.
 */
function round(
  orgs: { id: string; grant: string; token: string }[],
  size: number,
  now: number,
  spreadMs: number,
  next: () => number,
): Commit[] {
  return orgs.map((org) => {
    const lease = newId("lse", now);
    const settlements: Commit["settlements"] = [];
    const entries: string[] = [];
    for (let i = 0; i < size; i++) {
      const started = now + Math.floor((i / size) * spreadMs);
      const latencyMs = 200 + Math.floor(next() * 4_000);
      const failed = next() < 0.01;
      const stream = next() < 0.5;
      const promptTokens = failed ? 0 : 20 + Math.floor(next() * 2_000);
      const completionTokens = failed ? 0 : 1 + Math.floor(next() * 600);
      const id = newId("use", started);
      settlements.push({ id, lease, reserved: RESERVED, actual: promptTokens + completionTokens });
      entries.push(
        ledgerEntry({
          id,
          organizationId: org.id,
          grantId: org.grant,
          tokenId: org.token,
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
          startedAt: new Date(started).toISOString(),
          createdAt: new Date(started + latencyMs).toISOString(),
        }),
      );
    }
    return {
      organizationId: org.id,
      lease,
      now,
      need: RESERVED,
      reserved: RESERVED * size,
      settlements,
      rows: ledgerBatch(entries),
    };
  });
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const fmt = (n: number) => Math.round(n).toLocaleString("en-US");
const mb = (bytes: number) => `${(bytes / 1_000_000).toFixed(1)} MB`;

async function main() {
  const opts = options();
  const perOrgRound = opts.batch;
  const rounds = Math.ceil(opts.requests / (opts.orgs * perOrgRound));
  const requests = rounds * opts.orgs * perOrgRound;
  const tmp = mkdtempSync(join(tmpdir(), "modelgate-bench-ledger-"));
  process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));
  const started = performance.now();
  const script = await buildGateway(join(tmp, "build"));
  const mf = newMiniflare({
    host: "127.0.0.1",
    port: 0,
    d1Persist: join(tmp, "state", "d1"),
    r2Persist: join(tmp, "state", "r2"),
    durableObjectsPersist: join(tmp, "state", "do"),
    handleRuntimeStdio: runtimeOutput(/^$/),
    workers: [
      {
        name: "driver",
        unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
        modules: true,
        script: DRIVER,
        compatibilityDate: "2026-07-30",
        durableObjects: { QUOTA: { className: "OrgQuota", scriptName: "modelgate" } },
      },
      { name: "modelgate", ...gatewayWorkerOptions(script) },
    ],
  } as MiniflareOptions);
  let exitCode = 0;
  try {
    const db = (await mf.getD1Database("DB", "modelgate")) as unknown as D1Database;
    await prepareDatabase(db);
    const sizeOf = async () => (await db.prepare("select 1").run()).meta.size_after ?? 0;
    const r2Objects = async () => {
      let objects = 0;
      let bytes = 0;
      for (const binding of ["WEIGHTS", "AUDIT_BUCKET"]) {
        const bucket = await mf.getR2Bucket(binding, "modelgate").catch(() => undefined);
        if (!bucket) continue;
        let cursor: string | undefined;
        do {
          const page = await bucket.list({ cursor });
          for (const o of page.objects) bytes += o.size;
          objects += page.objects.length;
          cursor = page.truncated ? page.cursor : undefined;
        } while (cursor);
      }
      return { objects, bytes };
    };
    const dbBefore = await sizeOf();
    const r2Before = await r2Objects();
    await mf.ready;
    // The driver's own socket, not Miniflare's entry worker, which proxies every request once more.
    const origin = (await mf.unsafeGetDirectURL("driver")).origin;
    console.log(
      `built and started the gateway in ${seconds(performance.now() - started)}; pushing ${fmt(requests)} requests ` +
        `(${opts.orgs} organizations, commits of ${perOrgRound}, ${opts.concurrency} at a time) over one simulated day`,
    );

    const next = random(1);
    const orgs = Array.from({ length: opts.orgs }, (_, i) => ({
      id: newId("org", Date.UTC(2026, 0, 1) + i),
      grant: newId("grt", Date.UTC(2026, 0, 1) + i),
      token: newId("tok", Date.UTC(2026, 0, 1) + i),
    }));
    const dayStart = Date.UTC(2026, 11, 1);
    const spreadMs = DAY_MS / rounds;
    const pushStarted = performance.now();
    let sent = 0;
    let resent = 0;
    let nextRound = 0;
    const push = async () => {
      while (nextRound < rounds) {
        const r = nextRound++;
        const commits = round(orgs, perOrgRound, dayStart + r * spreadMs, spreadMs, next);
        // One organization's commit per call, as an isolate sends it. A call whose connection
        // dropped is sent again: settlements count once by id and rows are written once by id.
        for (const commit of commits) {
          for (let attempt = 1; ; attempt++) {
            try {
              const res = await fetch(`${origin}/`, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify({ commits: [commit], limits: LIMITS }),
              });
              if (!res.ok) throw new Error(`the driver answered ${res.status}: ${await res.text()}`);
              await res.body?.cancel();
              break;
            } catch (error) {
              if (attempt >= 3 || (error instanceof Error && error.message.startsWith("the driver"))) throw error;
              resent++;
            }
          }
        }
        sent += commits.length * perOrgRound;
        if (r % Math.max(1, Math.floor(rounds / 10)) === 0)
          process.stdout.write(`  committed ${fmt(sent)} in ${seconds(performance.now() - pushStarted)}\n`);
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency }, push));
    const committedMs = performance.now() - pushStarted;
    console.log(
      `committed ${fmt(sent)} settlements to the quota objects in ${seconds(committedMs)} (${resent} calls sent again after a dropped connection); waiting for their alarms`,
    );

    // The objects' alarms write the rows to D1 in batches; the run ends when the last row is there.
    const count = async () =>
      (await db.prepare("select count(*) as n from usage_ledger").first<{ n: number }>())?.n ?? 0;
    const deadline = performance.now() + Math.max(120_000, committedMs * 4);
    let rows = await count();
    while (rows < requests) {
      if (performance.now() > deadline) throw new Error(`only ${rows} of ${requests} rows reached D1`);
      await new Promise((r) => setTimeout(r, 500));
      rows = await count();
    }
    const tookMs = performance.now() - pushStarted;

    const stats = await db
      .prepare(
        `select count(*) as rows,
           sum((prompt_tokens > 0) + (completion_tokens > 0)) as meterEvents,
           sum(length(id) + length(organization_id) + length(grant_id) + length(token_id) + length(model)
             + coalesce(length(backend), 0) + length(endpoint) + length(outcome) + length(started_at)
             + length(created_at) + length(billing_state) + 8 * 9) as payload
         from usage_ledger`,
      )
      .first<{ rows: number; meterEvents: number; payload: number }>();
    if (!stats) throw new Error("usage_ledger could not be read");
    const dbAfter = await sizeOf();
    const r2After = await r2Objects();

    // What D1 bills as rows written for an insert and for the billing consumer's mark: a few rows
    // copied under new ids, their `rows_written` read, then the copies removed.
    const probe = 1_000;
    const copy = await db
      .prepare(
        `insert into usage_ledger (id, organization_id, grant_id, token_id, model, backend, endpoint, stream,
           prompt_tokens, completion_tokens, total_tokens, usage_reported, outcome, partial, status, latency_ms,
           started_at, created_at)
         select 'probe' || id, organization_id, grant_id, token_id, model, backend, endpoint, stream,
           prompt_tokens, completion_tokens, total_tokens, usage_reported, outcome, partial, status, latency_ms,
           started_at, created_at from usage_ledger limit ?`,
      )
      .bind(probe)
      .run();
    const mark = await db
      .prepare("update usage_ledger set billing_state = 'sent', billed_at = created_at where id like 'probe%'")
      .run();
    await db.prepare("delete from usage_ledger where id like 'probe%'").run();
    const writtenPerInsert = (copy.meta.rows_written ?? 0) / probe;
    const writtenPerMark = (mark.meta.rows_written ?? 0) / probe;

    const perMillion = (n: number) => (n * 1_000_000) / requests;
    const scaled = requests !== 1_000_000;
    const table: [string, string][] = [
      ["D1 rows inserted (usage_ledger)", fmt(perMillion(stats.rows))],
      [
        `D1 rows billed as written (${writtenPerInsert} per insert + ${writtenPerMark} per billing mark)`,
        fmt(perMillion(stats.rows * (writtenPerInsert + writtenPerMark))),
      ],
      ["D1 bytes, row payload (sum of column lengths)", mb(perMillion(stats.payload))],
      ["D1 bytes, database growth (size_after, with indexes)", mb(perMillion(dbAfter - dbBefore))],
      ["R2 objects written", fmt(perMillion(r2After.objects - r2Before.objects))],
      ["R2 bytes written", mb(perMillion(r2After.bytes - r2Before.bytes))],
      ["Stripe meter-event calls (counted from rows)", fmt(perMillion(stats.meterEvents))],
      ["Usage-queue messages (one per row, billing on)", fmt(perMillion(stats.rows))],
      ["Time, first commit to last row in D1", seconds(scaled ? (tookMs * 1_000_000) / requests : tookMs)],
    ];
    const width = Math.max(...table.map(([k]) => k.length));
    console.log("");
    console.log(
      scaled
        ? `measured at ${fmt(requests)} requests, per-million figures scaled (× ${(1_000_000 / requests).toFixed(2)})`
        : "measured at 1,000,000 requests",
    );
    console.log(`${"per million requests".padEnd(width)} | before (today)   | after (archive + aggregates)`);
    console.log(`${"-".repeat(width)}-|------------------|-----------------------------`);
    for (const [k, v] of table) console.log(`${k.padEnd(width)} | ${v.padStart(16)} | not built yet`);
    console.log("");
    console.log(
      `${fmt(requests)} requests from ${opts.orgs} organizations; D1 took ${fmt(stats.rows)} rows at ` +
        `${fmt(stats.rows / (tookMs / 1000))} rows/s on this machine; ${fmt(stats.payload / stats.rows)} bytes of payload ` +
        `and ${fmt((dbAfter - dbBefore) / stats.rows)} bytes of database per row.`,
    );
    console.log(
      "Stripe calls are counted with the billing consumer's rule (one meter event per dimension with tokens), not sent.",
    );
  } catch (error) {
    const cause = error instanceof Error && error.cause ? ` (${String(error.cause)})` : "";
    console.error(`bench:ledger: ${error instanceof Error ? error.message : String(error)}${cause}`);
    exitCode = 1;
  } finally {
    await mf.dispose().catch(() => {});
  }
  process.exit(exitCode);
}

await main();
