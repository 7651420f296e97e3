/**
 * `npm run bench:ledger [-- --requests 1000000 --orgs 100 --batch 50 --concurrency 8 --tokens-per-org 1]`
 *
 * What usage metering leaves behind per million proxied requests, in the design the code runs now
 * ("after") and in the one before it ("before"), measured side by side in one run of the gateway
 * bundle in Miniflare.
 *
 * After: each organization's `OrgQuota` object is leased from and committed to through its
 * Durable Object stub as the isolates do (`worker/quota/leases.ts`), in commits of at most `--batch`
 * settlements that each span at most one `USAGE_SYNC_SECONDS` of simulated time (so an object
 * writes an open hour as often as steady traffic makes it), and its own alarm folds the
 * rows into hourly parts, writes their totals to `usage_hours`, closes each hour into a billing
 * interval and archives its rows to R2 (`worker/quota/usage-book.ts`). The simulated day starts at
 * the current hour and runs ahead of the wall clock: commits carry their simulated time, which is
 * the objects' clock (the newest time a caller passed), so hours close as the day passes. At the
 * end every object is synced past the day's last hour, which closes and archives it.
 *
 * Before: the same rows written one per request to `usage_ledger` with the code's own
 * `writeUsageRows` (today the fallback path for rows a quota object could not take), in batches of
 * `--batch` rows of one organization, as the objects' alarms wrote them.
 *
 * Printed, per million requests: D1 rows and the rows D1 bills as written (per statement kind,
 * from D1's own `rows_written`: the ledger's inserts as they ran, the rest by probes on copies of
 * the rows; how often the objects wrote each `usage_hours` row is counted by triggers), D1 bytes,
 * R2 objects and bytes, Stripe meter-event calls and usage-queue messages (counted with the
 * billing consumer's rule, not sent: nothing here may reach Stripe), and the time each took. The
 * run checks that every stage of the new path holds exactly the tokens pushed, hour by hour.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { V4MiniflareOptions as MiniflareOptions } from "miniflare";
import { intervalEventsOf } from "../worker/billing/meter";
import { joinLedgerBatches, writeUsageRows } from "../worker/inference/ledger";
import type { Services } from "../worker/services";
import { INSERT_INTERVAL, UPSERT_USAGE_HOURS } from "../worker/usage/hours";
import { buildGateway, gatewayWorkerOptions, newMiniflare, prepareDatabase } from "./lib/gateway-miniflare";
import {
  archiveMetadataTally,
  archiveObjects,
  type Commit,
  callDriver,
  commitOf,
  compareTallies,
  DriverError,
  driverWorkerOptions,
  fmt,
  HOUR_MS,
  inParallel,
  intervalsTally,
  LIMITS,
  loadOrganizations,
  mb,
  random,
  seconds,
  Tally,
  usageHoursTally,
} from "./lib/usage-load";

const DAY_MS = 86_400_000;
/** wrangler.toml's `USAGE_SYNC_SECONDS`: how often an object writes an open hour's changed totals. */
const SYNC_MS = 300_000;
/** Stripe's dimensions, named only to count events per interval. */
const METERS = { prompt: "prompt", completion: "completion" };
/** Rows copied for each probe of what D1 bills as written. */
const PROBE_ROWS = 1_000;

function options() {
  const { values } = parseArgs({
    options: {
      requests: { type: "string", default: "1000000" },
      orgs: { type: "string", default: "100" },
      batch: { type: "string", default: "50" },
      concurrency: { type: "string", default: "8" },
      "tokens-per-org": { type: "string", default: "1" },
    },
  });
  const int = (flag: string, text: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) {
      process.stderr.write(
        `bench:ledger: --${flag} must be a positive integer, not "${text}"\n` +
          "usage: npm run bench:ledger -- [--requests N (1000000)] [--orgs N (100)] [--batch N (50)] [--concurrency N (8)] [--tokens-per-org N (1)]\n",
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
    tokensPerOrg: int("tokens-per-org", values["tokens-per-org"]),
  };
}

/** Triggers that count the objects' writes to `usage_hours` (an upsert that updates fires the update trigger). */
const COUNT_WRITES = [
  "create table bench_writes (kind text primary key, n integer not null)",
  "insert into bench_writes values ('insert', 0), ('update', 0)",
  "create trigger bench_usage_hours_insert after insert on usage_hours begin update bench_writes set n = n + 1 where kind = 'insert'; end",
  "create trigger bench_usage_hours_update after update on usage_hours begin update bench_writes set n = n + 1 where kind = 'update'; end",
];
const STOP_COUNTING = ["drop trigger bench_usage_hours_insert", "drop trigger bench_usage_hours_update"];

interface Measured {
  rowsInserted: number;
  /** Label and count of each kind of write, with what D1 bills as written for one. */
  writes: { label: string; count: number; rowsWritten: number }[];
  payloadBytes: number;
  dbGrowth: number;
  r2Objects: number;
  r2Bytes: number;
  stripeCalls: number;
  queueMessages: number;
  tookMs: number;
}

const billedRows = (m: Measured) => m.writes.reduce((sum, w) => sum + w.count * w.rowsWritten, 0);

/**
 * The new path's billed rows if every hour row were written at every sync of its hour (an hour of
 * steady traffic: 3,600 / `USAGE_SYNC_SECONDS` writes, the first an insert, then the close). The
 * simulated day runs a hundred times faster than the objects' alarms, which come 250 ms of wall
 * time after a commit, so the run sees fewer syncs per hour than steady traffic makes.
 */
function billedRowsAtEverySync(after: Measured): number {
  type Write = Measured["writes"][number];
  const [inserted, updated, ...intervals] = after.writes as [Write, Write, ...Write[]];
  const syncs = HOUR_MS / SYNC_MS;
  return (
    inserted.count * (inserted.rowsWritten + syncs * updated.rowsWritten) +
    intervals.reduce((sum, w) => sum + w.count * w.rowsWritten, 0)
  );
}

async function main() {
  const opts = options();
  const perOrg = Math.ceil(opts.requests / opts.orgs);
  const requests = perOrg * opts.orgs;
  // A commit carries at most `--batch` requests and never spans more than one sync interval of
  // simulated time, so that the objects write open hours as often as under steady traffic.
  const rounds = Math.max(Math.ceil(perOrg / opts.batch), Math.ceil(DAY_MS / SYNC_MS));
  /** Requests each organization commits in round `r`: `perOrg` spread evenly over the rounds. */
  const sizeOf = (r: number) => Math.floor(((r + 1) * perOrg) / rounds) - Math.floor((r * perOrg) / rounds);
  const tmp = mkdtempSync(join(tmpdir(), "modelgate-bench-ledger-"));
  process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));
  const started = performance.now();
  const script = await buildGateway(join(tmp, "build"));
  const mf = newMiniflare({
    host: "127.0.0.1",
    port: 0,
    resourcePersistencePath: join(tmp, "state"),
    logRequests: false,
    handleStructuredLogs: ({ level, message }) => {
      if (level === "warn" || level === "error") process.stderr.write(`workerd: ${message}\n`);
    },
    workers: [driverWorkerOptions(), { name: "modelgate", ...gatewayWorkerOptions(script) }],
  } as MiniflareOptions);
  let exitCode = 0;
  try {
    const db = (await mf.getD1Database("DB", "modelgate")) as unknown as D1Database;
    const archive = (await mf.getR2Bucket("USAGE_ARCHIVE", "modelgate")) as unknown as R2Bucket;
    await prepareDatabase(db);
    for (const sql of COUNT_WRITES) await db.prepare(sql).run();
    const dbSize = async () => (await db.prepare("select 1").run()).meta.size_after ?? 0;
    // The driver's own socket, not Miniflare's entry worker, which proxies every request once more.
    const origin = (await mf.unsafeGetDirectURL("driver")).origin;
    const orgs = loadOrganizations(opts.orgs, opts.tokensPerOrg);
    const dayStart = Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
    const dayEnd = dayStart + DAY_MS;
    const spreadMs = DAY_MS / rounds;
    /** Round `r`'s commits, one per organization, their rows recorded in the round's stretch of the day. */
    const roundOf = (r: number, next: () => number) =>
      sizeOf(r) === 0
        ? []
        : orgs.map((org) => commitOf(org, sizeOf(r), dayStart + r * spreadMs, dayStart + (r + 1) * spreadMs, next));
    console.log(
      `built and started the gateway in ${seconds(performance.now() - started)}; pushing ${fmt(requests)} requests ` +
        `(${opts.orgs} organizations × ${opts.tokensPerOrg} token(s), ${fmt(rounds)} commits each of up to ${Math.ceil(perOrg / rounds)} ` +
        `requests and ${seconds(spreadMs)} of simulated time, ${opts.concurrency} at a time) over one simulated day from ${new Date(dayStart).toISOString()}`,
    );

    // After: through the quota objects, which fold, write hours, close them and archive.
    const pushed = new Tally();
    const dbStart = await dbSize();
    const pushStarted = performance.now();
    let resent = 0;
    let committed = 0;
    const send = async (commit: Commit) => {
      // A call whose connection dropped is sent again: the object takes a settlement, and its
      // row, once by id.
      for (let attempt = 1; ; attempt++) {
        try {
          await callDriver(origin, "/commit", { commits: [commit], limits: LIMITS });
          return;
        } catch (error) {
          if (attempt >= 3 || error instanceof DriverError) throw error;
          resent++;
        }
      }
    };
    const next = random(1);
    for (let r = 0; r < rounds; r++) {
      const commits = roundOf(r, next);
      for (const c of commits) pushed.addRows(c.rows);
      // Each organization's commits go in order, as one isolate's do; organizations in parallel.
      await inParallel(commits, opts.concurrency, send);
      committed += commits.length * sizeOf(r);
      if (r % Math.max(1, Math.floor(rounds / 10)) === 0)
        console.log(`  committed ${fmt(committed)} in ${seconds(performance.now() - pushStarted)}`);
    }
    const committedMs = performance.now() - pushStarted;
    const closedDuringDay = (await db.prepare("select count(*) as n from billing_intervals").first<{ n: number }>())?.n;
    const ids = orgs.map((o) => o.id);
    for (let attempt = 1; ; attempt++) {
      const synced: boolean[] = [];
      for (let i = 0; i < ids.length; i += 10)
        synced.push(
          ...(await callDriver<boolean[]>(origin, "/sync", {
            organizationIds: ids.slice(i, i + 10),
            now: dayEnd + 2 * HOUR_MS,
          })),
        );
      if (synced.every(Boolean)) break;
      if (attempt >= 5) throw new Error(`${synced.filter((s) => !s).length} quota objects could not write D1 or R2`);
      await new Promise((r) => setTimeout(r, 2_000));
    }
    const afterMs = performance.now() - pushStarted;
    console.log(
      `committed ${fmt(requests)} settlements in ${seconds(committedMs)} (${resent} calls sent again after a dropped connection); ` +
        `${fmt(closedDuringDay ?? 0)} hours had closed by then; every object synced past the day's end after ${seconds(afterMs)}`,
    );

    const after = await measureAfter(db, archive, dbSize, dbStart, afterMs);
    for (const sql of STOP_COUNTING) await db.prepare(sql).run();
    await probeAfter(db, after);
    const stages = {
      "usage_hours (D1)": await usageHoursTally(db),
      "billing_intervals (D1)": await intervalsTally(db),
      "archive metadata (R2)": archiveMetadataTally(await archiveObjects(archive)),
    };
    const parts = await db
      .prepare(
        `select count(*) as orgHours, sum(parts) as parts, max(parts) as maxParts
         from (select count(distinct part) as parts from usage_hours group by organization_id, hour)`,
      )
      .first<{ orgHours: number; parts: number; maxParts: number }>();

    // Before: the same rows, one per request, with `writeUsageRows` as the objects' alarms used it:
    // each organization's rows in batches of `--batch`.
    let ledgerRowsWritten = 0;
    const d1 = {
      prepare: (sql: string) => db.prepare(sql),
      batch: async (statements: D1PreparedStatement[]) => {
        const results = await db.batch(statements);
        for (const r of results) ledgerRowsWritten += r.meta.rows_written ?? 0;
        return results;
      },
    };
    // `writeUsageRows` reads only `db.$client` (the D1 binding) and, on failure, `log`.
    const ledgerServices = { db: { $client: d1 }, log: console } as unknown as Pick<Services, "db" | "log">;
    const ledgerStart = await dbSize();
    const beforeStarted = performance.now();
    const pushedBefore = new Tally();
    const nextBefore = random(1);
    const gathered = new Map<string, { rows: string[]; count: number }>();
    for (let r = 0; r < rounds; r++) {
      const full: string[] = [];
      for (const c of roundOf(r, nextBefore)) {
        pushedBefore.addRows(c.rows);
        const g = gathered.get(c.organizationId) ?? { rows: [], count: 0 };
        g.rows.push(c.rows);
        g.count += c.settlements.length;
        gathered.set(c.organizationId, g);
        if (g.count < opts.batch) continue;
        full.push(joinLedgerBatches(g.rows));
        gathered.delete(c.organizationId);
      }
      await inParallel(full, opts.concurrency, (rows) => writeUsageRows(ledgerServices, rows));
    }
    const rest = [...gathered.values()].map((g) => joinLedgerBatches(g.rows));
    await inParallel(rest, opts.concurrency, (rows) => writeUsageRows(ledgerServices, rows));
    const before = await measureBefore(db, dbSize, ledgerStart, performance.now() - beforeStarted, ledgerRowsWritten);

    printTable(opts, requests, before, after);
    console.log("");
    const total = pushed.total();
    const totalBefore = pushedBefore.total();
    if (total.tokens !== totalBefore.tokens) throw new Error("the two designs were not given the same rows");
    console.log(
      `pushed ${fmt(total.requests)} requests, ${fmt(total.tokens)} tokens (${fmt(total.promptTokens)} prompt, ${fmt(total.completionTokens)} completion) ` +
        `in ${fmt(pushed.hours.size)} organization-hours; ${fmt(parts?.parts ?? 0)} parts (at most ${parts?.maxParts ?? 0} in one hour)`,
    );
    let exact = true;
    for (const [stage, tally] of Object.entries(stages)) {
      const d = compareTallies(pushed, tally);
      const t = tally.total();
      exact &&= d.lostTokens + d.doubledTokens + d.lostRequests + d.doubledRequests === 0;
      console.log(
        `  ${stage.padEnd(24)} ${fmt(t.requests).padStart(11)} requests ${fmt(t.tokens).padStart(15)} tokens: ` +
          `lost ${fmt(d.lostTokens)} / doubled ${fmt(d.doubledTokens)} tokens, lost ${fmt(d.lostRequests)} / doubled ${fmt(d.doubledRequests)} requests`,
      );
    }
    if (!exact) exitCode = 1;
    console.log(
      "Stripe calls and queue messages are counted with the billing consumer's rule (one meter event per dimension with tokens; one message per interval or row), not sent.",
    );
  } catch (error) {
    const cause = error instanceof Error && error.cause ? ` (${String(error.cause)})` : "";
    console.error(`bench:ledger: ${error instanceof Error ? error.stack : String(error)}${cause}`);
    exitCode = 1;
  } finally {
    await mf.dispose().catch(() => {});
  }
  process.exit(exitCode);
}

/** What the quota objects left in D1 and R2; what each D1 write is billed is probed next. */
async function measureAfter(
  db: D1Database,
  archive: R2Bucket,
  sizeOf: () => Promise<number>,
  dbStart: number,
  tookMs: number,
): Promise<Measured> {
  const writes = await db.prepare("select kind, n from bench_writes").all<{ kind: string; n: number }>();
  const writesOf = (kind: string) => writes.results.find((w) => w.kind === kind)?.n ?? 0;
  const hours = await db
    .prepare(
      `select count(*) as rows, sum(length(organization_id) + length(hour) + length(model) + length(grant_id)
         + length(token_id) + length(part) + length(last_at) + length(updated_at) + 8 * 7) as payload from usage_hours`,
    )
    .first<{ rows: number; payload: number }>();
  const { results: intervals } = await db
    .prepare("select id, prompt_tokens as promptTokens, completion_tokens as completionTokens from billing_intervals")
    .all<{ id: string; promptTokens: number; completionTokens: number }>();
  const intervalPayload = await db
    .prepare(
      `select coalesce(sum(length(id) + length(organization_id) + length(hour) + length(state) + length(created_at)
         + coalesce(length(billed_at), 0) + 8 * 4), 0) as payload from billing_intervals`,
    )
    .first<{ payload: number }>();
  // Bytes only: the probes and the ledger come after, and `bench_writes` is one row.
  const dbGrowth = (await sizeOf()) - dbStart;
  const objects = await archiveObjects(archive);
  return {
    rowsInserted: (hours?.rows ?? 0) + intervals.length,
    writes: [
      { label: "usage_hours rows inserted", count: writesOf("insert"), rowsWritten: 0 },
      { label: "usage_hours rows updated (later syncs)", count: writesOf("update"), rowsWritten: 0 },
      { label: "billing_intervals inserted", count: intervals.length, rowsWritten: 0 },
      { label: "billing_intervals marked sent", count: intervals.length, rowsWritten: 0 },
    ],
    payloadBytes: (hours?.payload ?? 0) + (intervalPayload?.payload ?? 0),
    dbGrowth,
    r2Objects: objects.length,
    r2Bytes: objects.reduce((sum, o) => sum + o.size, 0),
    stripeCalls: intervals.reduce((sum, i) => sum + intervalEventsOf(i, METERS).length, 0),
    queueMessages: intervals.length,
    tookMs,
  };
}

/**
 * What D1 bills as rows written for each write of the new path, read from D1's own `rows_written`
 * for the code's own statements run on copies of the rows (then removed): an hour row inserted,
 * the same row updated by a later sync, an interval inserted, and the consumer's mark.
 */
async function probeAfter(db: D1Database, after: Measured): Promise<void> {
  const copies = (requestsAdded: number) =>
    db
      .prepare(
        `select json_group_array(json_array(organization_id, hour, model, grant_id, token_id, 'probe0000',
           requests + ?1, prompt_tokens, completion_tokens, total_tokens, error_requests, partial_requests,
           latency_ms_sum, last_at, updated_at)) as rows
         from (select * from usage_hours where part != 'probe0000' limit ?2)`,
      )
      .bind(requestsAdded, PROBE_ROWS)
      .first<{ rows: string }>();
  const inserted = await copies(0);
  const n = (JSON.parse(inserted?.rows ?? "[]") as unknown[]).length;
  const insert = await db.prepare(UPSERT_USAGE_HOURS).bind(inserted?.rows).run();
  const update = await db
    .prepare(UPSERT_USAGE_HOURS)
    .bind((await copies(1))?.rows)
    .run();
  await db.prepare("delete from usage_hours where part = 'probe0000'").run();

  const { results: intervals } = await db
    .prepare("select * from billing_intervals limit ?")
    .bind(PROBE_ROWS)
    .all<Record<string, string | number>>();
  const added = await db.batch(
    intervals.map((i) =>
      db
        .prepare(INSERT_INTERVAL)
        .bind(
          `probe:${i.id}`,
          i.organization_id,
          i.hour,
          i.requests,
          i.prompt_tokens,
          i.completion_tokens,
          "pending",
          i.created_at,
        ),
    ),
  );
  // The consumer's mark (`billIntervals`): one update per interval, only of a pending one.
  const marked = await db.batch(
    intervals.map((i) =>
      db
        .prepare("update billing_intervals set state = ?, billed_at = ?, error = ? where id = ? and state = 'pending'")
        .bind("sent", new Date().toISOString(), null, `probe:${i.id}`),
    ),
  );
  await db.prepare("delete from billing_intervals where id like 'probe:%'").run();
  const per = (results: D1Result[], count: number) =>
    count ? results.reduce((sum, r) => sum + (r.meta.rows_written ?? 0), 0) / count : 0;
  const [hoursInserted, hoursUpdated, intervalsInserted, intervalsMarked] = after.writes as [
    Measured["writes"][number],
    Measured["writes"][number],
    Measured["writes"][number],
    Measured["writes"][number],
  ];
  hoursInserted.rowsWritten = per([insert], n);
  hoursUpdated.rowsWritten = per([update], n);
  intervalsInserted.rowsWritten = per(added, intervals.length);
  intervalsMarked.rowsWritten = per(marked, intervals.length);
}

/** What the per-request ledger left in D1, with D1's billed rows for its inserts and for the consumer's mark. */
async function measureBefore(
  db: D1Database,
  sizeOf: () => Promise<number>,
  dbStart: number,
  tookMs: number,
  insertRowsWritten: number,
): Promise<Measured> {
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
  const dbGrowth = (await sizeOf()) - dbStart;
  // The billing consumer's mark of a row, on copies of a few rows, then removed.
  await db
    .prepare(
      `insert into usage_ledger (id, organization_id, grant_id, token_id, model, backend, endpoint, stream,
         prompt_tokens, completion_tokens, total_tokens, usage_reported, outcome, partial, status, latency_ms,
         started_at, created_at)
       select 'probe' || id, organization_id, grant_id, token_id, model, backend, endpoint, stream,
         prompt_tokens, completion_tokens, total_tokens, usage_reported, outcome, partial, status, latency_ms,
         started_at, created_at from usage_ledger limit ?`,
    )
    .bind(PROBE_ROWS)
    .run();
  const mark = await db
    .prepare("update usage_ledger set billing_state = 'sent', billed_at = created_at where id like 'probe%'")
    .run();
  await db.prepare("delete from usage_ledger where id like 'probe%'").run();
  return {
    rowsInserted: stats.rows,
    writes: [
      { label: "usage_ledger rows inserted", count: stats.rows, rowsWritten: insertRowsWritten / stats.rows },
      {
        label: "usage_ledger rows marked sent",
        count: stats.rows,
        rowsWritten: (mark.meta.rows_written ?? 0) / PROBE_ROWS,
      },
    ],
    payloadBytes: stats.payload,
    dbGrowth,
    r2Objects: 0,
    r2Bytes: 0,
    stripeCalls: stats.meterEvents,
    queueMessages: stats.rows,
    tookMs,
  };
}

function printTable(opts: ReturnType<typeof options>, requests: number, before: Measured, after: Measured): void {
  const perMillion = (n: number) => (n * 1_000_000) / requests;
  const scaled = requests !== 1_000_000;
  const ratio = (a: number, b: number) => (b === 0 ? "" : a / b >= 0.1 ? `${(a / b).toFixed(2)}` : `1/${fmt(b / a)}`);
  const writesText = (m: Measured) =>
    m.writes.map((w) => `${fmt(perMillion(w.count))} × ${Number(w.rowsWritten.toFixed(2))}`).join(" + ");
  const rows: [string, number, number, (n: number) => string][] = [
    ["D1 rows stored (ledger rows; hour rows + intervals)", before.rowsInserted, after.rowsInserted, fmt],
    ["D1 rows billed as written", billedRows(before), billedRows(after), fmt],
    [
      `  the same if every hour row were written every ${SYNC_MS / 60_000} min`,
      billedRows(before),
      billedRowsAtEverySync(after),
      fmt,
    ],
    ["D1 bytes, row payload (sum of column lengths)", before.payloadBytes, after.payloadBytes, mb],
    ["D1 bytes, database growth (size_after, with indexes)", before.dbGrowth, after.dbGrowth, mb],
    ["R2 objects written (USAGE_ARCHIVE)", before.r2Objects, after.r2Objects, fmt],
    ["R2 bytes written (gzip NDJSON)", before.r2Bytes, after.r2Bytes, mb],
    ["Stripe meter-event calls", before.stripeCalls, after.stripeCalls, fmt],
    ["Usage-queue messages (one per row; per interval)", before.queueMessages, after.queueMessages, fmt],
  ];
  const table = rows.map(([label, b, a, f]) => [label, f(perMillion(b)), f(perMillion(a)), ratio(a, b)]);
  const time = (ms: number) => seconds(scaled ? (ms * 1_000_000) / requests : ms);
  table.push([
    "Time (before: rows written; after: first commit to last archive)",
    time(before.tookMs),
    time(after.tookMs),
    "",
  ]);
  const w = [Math.max(...table.map((r) => r[0]?.length ?? 0)), 16, 16, 10];
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(w[0] as number) : c.padStart(w[i] as number))).join(" | ");
  console.log("");
  console.log(
    scaled
      ? `measured at ${fmt(requests)} requests, per-million figures scaled (× ${(1_000_000 / requests).toFixed(2)})`
      : "measured at 1,000,000 requests",
  );
  console.log(line(["per million requests", "before (ledger)", "after (hours)", "after ÷ before"]));
  console.log(w.map((n) => "-".repeat(n)).join("-|-"));
  for (const r of table) console.log(line(r as string[]));
  console.log("");
  console.log(`D1 rows billed as written, before: ${writesText(before)}`);
  for (const w of before.writes) console.log(`  ${w.label}: ${w.rowsWritten.toFixed(2)} rows written each`);
  console.log(`D1 rows billed as written, after: ${writesText(after)}`);
  for (const w of after.writes)
    console.log(`  ${w.label}: ${fmt(perMillion(w.count))} per million, ${w.rowsWritten.toFixed(2)} rows written each`);
  const targets = [
    ["D1 rows written", billedRows(after) / billedRows(before)],
    [
      `D1 rows written, every hour row written every ${SYNC_MS / 60_000} min`,
      billedRowsAtEverySync(after) / billedRows(before),
    ],
    ["Stripe calls", after.stripeCalls / before.stripeCalls],
  ] as const;
  for (const [what, r] of targets)
    console.log(`${what}: after ÷ before = ${ratio(r, 1)} — target ≤ 1/100: ${r <= 0.01 ? "met" : "NOT met"}`);
  console.log(
    `${opts.orgs} organizations, ${opts.tokensPerOrg} token(s) each, commits of at most ${opts.batch} requests, ${opts.concurrency} calls at a time: ` +
      `${fmt(requests / (opts.orgs * 24))} requests per organization-hour. The "after" figures grow with organization-hours ` +
      "(and tokens), not with requests: scaled to a million requests they hold for this density.",
  );
}

await main();
