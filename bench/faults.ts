/**
 * `npm run bench:faults [-- --requests 50000 --crashes 10 --orgs 20 --batch 25 --concurrency 8 --outage 20]`
 *
 * Whether usage is lost or counted twice when things fail, measured through the real path: the
 * gateway bundle in Miniflare with its quota objects, D1, the usage archive in R2, the usage
 * queue and its consumer, billing against the Stripe stand-in (`scripts/stripe-standin.ts`). A
 * driver Worker commits settled requests to the organizations' quota objects as the proxy's
 * isolates do, over a simulated stretch of hours that runs ahead of the wall clock (commits carry
 * their simulated time, the objects' clock), while the run injects:
 *
 * - crashes: in `--crashes` of the stretch's segments, workerd is killed (SIGKILL) while commits
 *   are in flight and started again on the same persisted D1, R2 and Durable Object state. What
 *   was not durable is gone, Miniflare's in-memory queue included;
 * - duplicate deliveries: after each segment, every billing interval closed since is queued once
 *   more, and after the last hour closed, the rest;
 * - a failing Stripe: 503s for `--outage` seconds during the second segment, and in the fourth,
 *   answers that come after the client's timeout (Stripe did the work; the gateway retries).
 *
 * Every commit the driver answered is acknowledged: all its rows must be counted. At the end the
 * objects are synced past the last hour, the queue drains, and pending intervals are queued again
 * as the reconciler does (the cron does it after 5 minutes by the wall clock; the intervals here
 * carry simulated times, so the run does it at once). Then each stage is compared with the rows
 * stored — archive rows plus rows the objects still hold, by request id — per organization and
 * hour: `usage_hours`, `billing_intervals` and the meter events the stand-in accepted. Printed per
 * segment and in total: lost and doubled rows and tokens.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { Miniflare, V4MiniflareOptions as MiniflareOptions } from "miniflare";
import { startStripeStandin } from "../scripts/stripe-standin";
import { ledgerRows } from "../worker/inference/ledger";
import { hourOf } from "../worker/usage/hours";
import { buildGateway, gatewayWorkerOptions, newMiniflare, prepareDatabase } from "./lib/gateway-miniflare";
import {
  archivedRows,
  archiveObjects,
  type Commit,
  callDriver,
  commitOf,
  compareTallies,
  driverWorkerOptions,
  fmt,
  HOUR_MS,
  inParallel,
  intervalsTally,
  LIMITS,
  type LoadOrganization,
  loadOrganizations,
  random,
  seconds,
  Tally,
  usageHoursTally,
} from "./lib/usage-load";

/** Simulated hours per segment: each crash falls in a segment of its own. */
const SEGMENT_HOURS = 2;
const STRIPE_KEY = "sk_test_bench_faults";
/** Stripe's client gives up after 5 s (`STRIPE_TIMEOUT_MS`); late answers come after that. */
const LATE_ANSWER_MS = 6_000;
/** Billing is done when nothing changed for this long and nothing is pending. */
const SETTLE_MS = 60_000;
/** Stalls waited out before the run gives up on billing. */
const MAX_SWEEPS = 5;

function options() {
  const { values } = parseArgs({
    options: {
      requests: { type: "string", default: "50000" },
      crashes: { type: "string", default: "10" },
      orgs: { type: "string", default: "20" },
      batch: { type: "string", default: "25" },
      concurrency: { type: "string", default: "8" },
      outage: { type: "string", default: "20" },
    },
  });
  const int = (flag: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) {
      process.stderr.write(
        `bench:faults: --${flag} must be an integer of at least ${min}, not "${text}"\n` +
          "usage: npm run bench:faults -- [--requests N (50000)] [--crashes N (10)] [--orgs N (20)] [--batch N (25)] [--concurrency N (8)] [--outage SECONDS (20)]\n",
      );
      process.exit(2);
    }
    return n;
  };
  return {
    requests: int("requests", values.requests, 1),
    crashes: int("crashes", values.crashes, 0),
    orgs: int("orgs", values.orgs, 1),
    batch: int("batch", values.batch, 1),
    concurrency: int("concurrency", values.concurrency, 1),
    outage: int("outage", values.outage, 0),
  };
}

/** The gateway as one workerd process, started on (and again after a crash, on the same) state. */
interface Runtime {
  mf: Miniflare;
  db: D1Database;
  archive: R2Bucket;
  origin: string;
}

async function startRuntime(script: string, state: string, stripeUrl: string): Promise<Runtime> {
  const mf = newMiniflare({
    host: "127.0.0.1",
    port: 0,
    resourcePersistencePath: state,
    logRequests: false,
    handleStructuredLogs: ({ level, message }) => {
      // Stripe failing is what the run provokes; workerd's own notes (NOSENTRY) on restarted
      // alarms are no news.
      if ((level === "error" || level === "warn") && !/meter event not accepted|Stripe|NOSENTRY/.test(message))
        process.stderr.write(`workerd: ${message.slice(0, 500)}\n`);
    },
    workers: [
      driverWorkerOptions(),
      {
        name: "modelgate",
        ...gatewayWorkerOptions(
          script,
          { STRIPE_SECRET_KEY: STRIPE_KEY, STRIPE_API_BASE: stripeUrl },
          { consumeQueues: true },
        ),
      },
    ],
  } as MiniflareOptions);
  await mf.ready;
  return {
    mf,
    db: (await mf.getD1Database("DB", "modelgate")) as unknown as D1Database,
    archive: (await mf.getR2Bucket("USAGE_ARCHIVE", "modelgate")) as unknown as R2Bucket,
    // The driver's own socket, not Miniflare's entry worker, which proxies every request once more.
    origin: (await mf.unsafeGetDirectURL("driver")).origin,
  };
}

/** The organizations in D1, as billing needs them (a Stripe customer is opened for each). */
async function seedOrganizations(db: D1Database, orgs: LoadOrganization[]): Promise<void> {
  const at = new Date().toISOString();
  await db.batch(
    orgs.map((o, i) =>
      db
        .prepare(
          "insert into organizations (id, name, normalized_name, website, country, created_at) values (?, ?, ?, ?, ?, ?)",
        )
        .bind(o.id, `Bench Org ${i}`, `bench org ${i}`, null, "DE", at),
    ),
  );
}

/** What one segment of the stretch did and left. */
interface Segment {
  index: number;
  from: number;
  to: number;
  crashed: boolean;
  acknowledged: number;
  unacknowledged: number;
  duplicates: number;
  faults: string[];
}

async function main() {
  const opts = options();
  const segments = opts.crashes + 1;
  const roundsPerSegment = Math.max(1, Math.round(opts.requests / (segments * opts.orgs * opts.batch)));
  const requests = segments * roundsPerSegment * opts.orgs * opts.batch;
  const tmp = mkdtempSync(join(tmpdir(), "modelgate-bench-faults-"));
  process.on("exit", () => rmSync(tmp, { recursive: true, force: true }));
  const stripe = await startStripeStandin();
  const standin = (path: string, body?: unknown) =>
    fetch(`${stripe.url}${path}`, {
      method: body === undefined ? "GET" : "POST",
      headers: { authorization: `Bearer ${STRIPE_KEY}`, "content-type": "application/json" },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  const state = join(tmp, "state");
  const started = performance.now();
  const script = await buildGateway(join(tmp, "build"));
  let rt = await startRuntime(script, state, stripe.url);
  let exitCode = 0;
  try {
    await prepareDatabase(rt.db);
    const orgs = loadOrganizations(opts.orgs, 1);
    await seedOrganizations(rt.db, orgs);
    const start = Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
    const end = start + segments * SEGMENT_HOURS * HOUR_MS;
    // Stripe's stand-in judges timestamps by this clock: the hours billed lie ahead of the wall clock.
    await standin("/_standin/clock", { now: Math.floor((end + HOUR_MS) / 1000) });
    console.log(
      `built and started the gateway in ${seconds(performance.now() - started)}; pushing ${fmt(requests)} requests ` +
        `(${opts.orgs} organizations, commits of ${opts.batch}, ${opts.concurrency} at a time) over ${segments} segments of ` +
        `${SEGMENT_HOURS} simulated hours from ${new Date(start).toISOString()}, ${opts.crashes} crashes`,
    );

    /** Request ids with their rows' time, by whether the driver answered their commit. */
    const acknowledged = new Map<string, string>();
    const unacknowledged = new Map<string, string>();
    const next = random(7);
    const chance = random(11);
    const spreadMs = (SEGMENT_HOURS * HOUR_MS) / roundsPerSegment;
    const done: Segment[] = [];
    const duplicated = new Set<string>();
    let crashMs = 0;
    let outageOver = Promise.resolve();
    const pushStarted = performance.now();
    for (let s = 0; s < segments; s++) {
      const segment: Segment = {
        index: s,
        from: start + s * SEGMENT_HOURS * HOUR_MS,
        to: start + (s + 1) * SEGMENT_HOURS * HOUR_MS,
        crashed: false,
        acknowledged: 0,
        unacknowledged: 0,
        duplicates: 0,
        faults: [],
      };
      if (s === 1 && opts.outage > 0) {
        await standin("/_standin/fail", { status: 503 });
        outageOver = new Promise((resolve) =>
          setTimeout(() => void standin("/_standin/fail", {}).then(() => resolve()), opts.outage * 1000),
        );
        segment.faults.push(`Stripe 503 for ${opts.outage} s`);
      }
      if (s === 3) {
        // One failure at a time: the late answers come once the outage is over.
        await outageOver;
        await standin("/_standin/fail", { status: "slow", delayMs: LATE_ANSWER_MS, count: 20 });
        segment.faults.push("20 Stripe answers after the client's timeout");
      }
      // The crash comes in a round between a third and two thirds into the segment.
      const crashRound =
        s < opts.crashes ? Math.floor(roundsPerSegment / 3 + chance() * (roundsPerSegment / 3)) : undefined;
      for (let r = 0; r < roundsPerSegment; r++) {
        const from = segment.from + r * spreadMs;
        const commits = orgs.map((org) => commitOf(org, opts.batch, from, from + spreadMs, next));
        // In the crash round, workerd is killed once `killAfter` of its commits were answered,
        // while the others are in flight.
        const killAfter = r === crashRound ? 1 + Math.floor(chance() * (commits.length - 1)) : Number.NaN;
        let answered = 0;
        let killNow: () => void = () => {};
        const killed = new Promise<void>((resolve) => {
          killNow = resolve;
        });
        const send = async (commit: Commit) => {
          const rows = ledgerRows(commit.rows);
          try {
            await callDriver(rt.origin, "/commit", { commits: [commit], limits: LIMITS });
            for (const row of rows) acknowledged.set(row.id, row.createdAt);
            segment.acknowledged += rows.length;
            if (++answered >= killAfter) killNow();
          } catch {
            // No answer, or an error: the isolate cannot know whether the object kept the rows.
            for (const row of rows) unacknowledged.set(row.id, row.createdAt);
            segment.unacknowledged += rows.length;
          }
        };
        if (r !== crashRound) {
          await inParallel(commits, opts.concurrency, send);
          continue;
        }
        const crashStarted = performance.now();
        const inFlight = inParallel(commits, opts.concurrency, send);
        await Promise.race([killed, inFlight]);
        await rt.mf.dispose();
        await inFlight;
        rt = await startRuntime(script, state, stripe.url);
        crashMs += performance.now() - crashStarted;
        segment.crashed = true;
      }
      segment.duplicates = await queueAgain(rt, duplicated);
      done.push(segment);
      const billing = await rt.db
        .prepare("select state, count(*) as n from billing_intervals group by state order by state")
        .all<{ state: string; n: number }>();
      const calls = ((await (await standin("/_standin/state")).json()) as { requests: unknown[] }).requests.length;
      console.log(
        `  segment ${s}: ${fmt(segment.acknowledged)} acknowledged, ${fmt(segment.unacknowledged)} not` +
          `${segment.crashed ? " (workerd killed and restarted)" : ""}; ${segment.duplicates} intervals queued again` +
          `; intervals ${billing.results.map((b) => `${b.n} ${b.state}`).join(", ") || "none"}, ${fmt(calls)} Stripe calls` +
          `${segment.faults.length ? `; ${segment.faults.join(", ")}` : ""} — ${seconds(performance.now() - pushStarted)}`,
      );
    }
    await outageOver;

    // Every hour closed, archived and billed; what the crashes took from the queue is queued again.
    const ids = orgs.map((o) => o.id);
    for (let attempt = 1; ; attempt++) {
      const synced = await callDriver<boolean[]>(rt.origin, "/sync", { organizationIds: ids, now: end + 2 * HOUR_MS });
      if (synced.every(Boolean)) break;
      if (attempt >= 10) throw new Error(`${synced.filter((s) => !s).length} quota objects could not write D1 or R2`);
      await new Promise((r) => setTimeout(r, 2_000));
    }
    const lastDuplicates = await queueAgain(rt, duplicated);
    const requeued = await settleBilling(rt);
    const tookMs = performance.now() - pushStarted;
    console.log(
      `pushed and billed in ${seconds(tookMs)} (${seconds(crashMs)} of it killing and restarting workerd); ` +
        `every interval delivered twice (${fmt(duplicated.size)}, ${fmt(lastDuplicates)} of them after the last hour closed); ` +
        `${fmt(requeued)} pending intervals queued again as the reconciler does`,
    );

    await report(rt, stripe.url, done, acknowledged, unacknowledged, ids);
  } catch (error) {
    const cause = error instanceof Error && error.cause ? ` (${String(error.cause)})` : "";
    console.error(`bench:faults: ${error instanceof Error ? error.stack : String(error)}${cause}`);
    exitCode = 1;
  } finally {
    await rt.mf.dispose().catch(() => {});
    await stripe.close();
  }
  process.exit(exitCode);
}

/** Queues every billing interval once more that was not queued twice yet: a duplicate delivery. */
async function queueAgain(rt: Runtime, duplicated: Set<string>): Promise<number> {
  const { results } = await rt.db.prepare("select id from billing_intervals").all<{ id: string }>();
  const ids = results.map((r) => r.id).filter((id) => !duplicated.has(id));
  if (ids.length) await callDriver(rt.origin, "/enqueue", { intervalIds: ids });
  for (const id of ids) duplicated.add(id);
  return ids.length;
}

/**
 * Waits until no interval is pending. Whenever nothing moves for `SETTLE_MS`, the pending ones are
 * queued again, as the reconciler does with intervals pending for 5 minutes. Returns how many were.
 */
async function settleBilling(rt: Runtime): Promise<number> {
  let requeued = 0;
  let sweeps = 0;
  let last = "";
  let since = performance.now();
  for (;;) {
    const { results } = await rt.db
      .prepare("select state, count(*) as n from billing_intervals group by state order by state")
      .all<{ state: string; n: number }>();
    const pending = results.find((r) => r.state === "pending")?.n ?? 0;
    const now = JSON.stringify(results);
    if (now !== last) {
      last = now;
      since = performance.now();
    }
    if (pending === 0) return requeued;
    if (performance.now() - since >= SETTLE_MS) {
      if (++sweeps > MAX_SWEEPS) throw new Error(`${pending} billing intervals stayed pending: ${now}`);
      const { results: stuck } = await rt.db
        .prepare("select id from billing_intervals where state = 'pending'")
        .all<{ id: string }>();
      await callDriver(rt.origin, "/enqueue", { intervalIds: stuck.map((r) => r.id) });
      requeued += stuck.length;
      since = performance.now();
    }
    await new Promise((r) => setTimeout(r, 1_000));
  }
}

/** Every stage against the rows stored, per segment and in total. */
async function report(
  rt: Runtime,
  stripeUrl: string,
  segments: Segment[],
  acknowledged: Map<string, string>,
  unacknowledged: Map<string, string>,
  organizationIds: string[],
): Promise<void> {
  const objects = await archiveObjects(rt.archive);
  const archived = await archivedRows(rt.archive, objects);
  const held = await callDriver<string[]>(rt.origin, "/raw", { organizationIds });
  // Stored: each request id once, from the archive or, if not archived, from the object.
  const copies = new Map<string, number>();
  const stored = new Map<string, Parameters<Tally["addRow"]>[0]>();
  for (const row of archived) {
    copies.set(row.id, (copies.get(row.id) ?? 0) + 1);
    stored.set(row.id, row);
  }
  let heldOnly = 0;
  for (const line of held) {
    const row = JSON.parse(line) as Parameters<Tally["addRow"]>[0] & { id: string };
    if (stored.has(row.id)) continue;
    heldOnly++;
    stored.set(row.id, row);
  }
  const storedTally = new Tally();
  for (const row of stored.values()) storedTally.addRow(row);

  const stateRes = await fetch(`${stripeUrl}/_standin/state`, { headers: { authorization: `Bearer ${STRIPE_KEY}` } });
  const stripeState = (await stateRes.json()) as {
    meterEvents: { identifier: string; value: number }[];
    requests: { path: string }[];
  };
  const billed = new Tally();
  for (const e of stripeState.meterEvents) {
    // `<organization>:<hour>:<part>:<dimension>`, the interval's identifiers.
    const [org, hour, , dimension] = e.identifier.split(":") as [string, string, string, string];
    billed.add(org, hour, {
      requests: 0,
      promptTokens: dimension === "prompt" ? e.value : 0,
      completionTokens: dimension === "completion" ? e.value : 0,
    });
  }
  const stages = {
    usage_hours: await usageHoursTally(rt.db),
    billing_intervals: await intervalsTally(rt.db),
    "Stripe meter events": billed,
  };
  const { results: states } = await rt.db
    .prepare("select state, count(*) as n from billing_intervals group by state")
    .all<{ state: string; n: number }>();

  const header = [
    "segment",
    "acked rows",
    "not acked (kept)",
    "archive+held lost / doubled rows",
    ...Object.keys(stages).map((stage) => `${stage} lost / doubled tokens`),
  ];
  const rows: string[][] = [];
  const line = (label: string, from: number, to: number) => {
    const [fromIso, toIso] = [new Date(from).toISOString(), new Date(to).toISOString()];
    const within = (at: string) => at >= fromIso && at < toIso;
    const ofRange = (ids: Map<string, string>) => [...ids].filter(([, at]) => within(at)).map(([id]) => id);
    const acked = ofRange(acknowledged);
    const notAcked = ofRange(unacknowledged);
    const lost = acked.filter((id) => !stored.has(id)).length;
    let doubled = 0;
    for (const [id, n] of copies) if (n > 1 && within(stored.get(id)?.createdAt ?? "")) doubled += n - 1;
    const inRange = (_org: string, hour: string) => hour >= hourOf(from) && hour < hourOf(to);
    const truth = storedTally.filter(inRange);
    const cells = [
      label,
      fmt(acked.length),
      `${fmt(notAcked.length)} (${fmt(notAcked.filter((id) => stored.has(id)).length)})`,
      `${fmt(lost)} / ${fmt(doubled)}`,
    ];
    for (const tally of Object.values(stages)) {
      const d = compareTallies(truth, tally.filter(inRange));
      cells.push(`${fmt(d.lostTokens)} / ${fmt(d.doubledTokens)}`);
    }
    rows.push(cells);
  };
  for (const s of segments) line(`${s.index}${s.crashed ? " (crash)" : ""}`, s.from, s.to);
  line("total", segments[0]?.from ?? 0, segments.at(-1)?.to ?? 0);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const print = (cells: string[]) =>
    console.log(cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(" | "));
  console.log("");
  print(header);
  console.log(widths.map((w) => "-".repeat(w)).join("-|-"));
  for (const r of rows) print(r);
  console.log("");
  const total = storedTally.total();
  const kept = [...unacknowledged.keys()].filter((id) => stored.has(id)).length;
  console.log(
    `stored: ${fmt(total.requests)} requests, ${fmt(total.tokens)} tokens (${fmt(archived.length)} archived rows in ` +
      `${fmt(objects.length)} objects, ${fmt(heldOnly)} held by the objects and not archived); ` +
      `${fmt(kept)} of ${fmt(unacknowledged.size)} unacknowledged rows were kept (either way is no loss)`,
  );
  for (const [stage, tally] of Object.entries(stages)) {
    const t = tally.total();
    const d = compareTallies(storedTally, tally);
    console.log(
      `  ${stage.padEnd(20)} ${fmt(t.tokens).padStart(14)} tokens: lost ${fmt(d.lostTokens)} / doubled ${fmt(d.doubledTokens)}` +
        (stage === "Stripe meter events"
          ? ""
          : `; requests lost ${fmt(d.lostRequests)} / doubled ${fmt(d.doubledRequests)}`),
    );
  }
  const calls = new Map<string, number>();
  for (const r of stripeState.requests) calls.set(r.path, (calls.get(r.path) ?? 0) + 1);
  console.log(
    `billing intervals: ${states.map((s) => `${fmt(s.n)} ${s.state}`).join(", ")}; Stripe stand-in: ` +
      `${fmt(stripeState.meterEvents.length)} meter events accepted; calls ${[...calls].map(([path, n]) => `${path} ${fmt(n)}`).join(", ")}`,
  );
}

await main();
