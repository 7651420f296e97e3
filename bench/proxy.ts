/**
 * `npm run bench:proxy [-- --duration 10 --rounds 3 --warmup 2 --connections 1,32]`
 *
 * What the inference proxy costs, measured in one run on loopback against one backend simulator:
 * the simulator alone, a no-op Worker that only forwards (the floor for any Worker gateway), a
 * Worker that only reads what metering needs and keeps the proxy's wire contract (backend timeout,
 * no redirects, rate-limit headers: the floor for any Worker gateway that meters), that floor
 * also storing each answer's usage row in a Durable Object before the answer ends (the simplest
 * metering that keeps an answered request's usage across a crash, as the gateway does), this
 * gateway's full path (token, license, quota reservation and settlement, metering) — also with
 * its quota object apart, and with that object's storage in memory rather than on disk — and the
 * Portkey open-source gateway. autocannon loads each with plain and streamed chat completions at
 * each concurrency for a fixed time, split into rounds that take the peers in turn (a different one
 * first each round; the gateway's two tokens, which share a process, back to back and taking turns
 * going first; each cell once every target's process is idle) so that a slow spell of the shared
 * machine falls on all of them: each figure
 * is the median over the rounds, each ratio the median of the ratios within a round. A sequential
 * client then times single requests to the microsecond, the time to the first streamed token, and
 * checks that every token arrived as its own SSE event, in order. Ratios are against peers
 * measured in the same run, on the same machine, so they mean something even where absolute
 * numbers do not. `--baseline REF` adds the gateway of another commit as one more peer (its two
 * tokens taken as this tree's are), so that a change is measured against what it replaced in the
 * same rounds; it prints the lowest and highest round's ratio beside the median, and `--baseline
 * HEAD` on an unchanged tree shows how far apart identical code lands on the machine.
 * `--object-ms N` has the quota object apart answer each call N ms later, as an object in another
 * location would: what the Worker spends waiting on a far object shows in its own CPU.
 */
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { baselineTree } from "./lib/baseline";
import { cpuMillis, untilIdle } from "./lib/workerd-memory";
import { percentile, runSequential, type SequentialResult } from "./sequential-client";
import {
  directTarget,
  gatewayTargets,
  MAX_TOKENS,
  meteringFloorTarget,
  noopWorkerTarget,
  PACED_TOKEN_MS,
  portkeyTarget,
  startSimulator,
  storedFloorTarget,
  type Target,
  unavailableTarget,
} from "./targets";

/** The peers besides the simulator itself, which is always measured. */
const PEERS = ["noop", "floor", "stored", "modelgate", "split", "memory", "portkey"] as const;
type Peer = (typeof PEERS)[number];

/** What the gateway is held to, each a ratio to peers measured in the same run. */
const GOALS = {
  plain: { cpuVsFloor: 1.2, cpuVsPortkey: 0.5, vsFloorThroughput: 0.9, vsPortkeyThroughput: 2 },
  streamed: { vsFloorThroughput: 0.9, vsPortkeyThroughput: 1.5 },
  addedP50Ms: 0.3,
  tokenLimitsMicros: 20,
};

interface LoadRow {
  target: string;
  /** The round it was measured in; -1 for the median over rounds. */
  round: number;
  stream: boolean;
  connections: number;
  rps: number;
  p50: number;
  p99: number;
  failures: number;
  requests: number;
  /** CPU time of the target's own process per completed request, in µs (undefined without a pid). */
  cpuMicros: number | undefined;
  /** With the processes of `otherPids` (the quota object's, split apart) added. */
  cpuMicrosWhole: number | undefined;
}

function usage(message?: string): never {
  if (message) process.stderr.write(`bench:proxy: ${message}\n`);
  process.stderr.write(
    "usage: npm run bench:proxy -- [--duration SECONDS (10)] [--rounds N (3)] [--warmup SECONDS (2)] [--connections 1,32] [--samples N (500)]\n" +
      "                              [--targets noop,floor,stored,modelgate,split,memory,portkey (all)] [--answers plain,streamed (both)] [--no-sequential]\n" +
      "                              [--live-streams N: the sequential client times N paced streams per target, however long that takes (else up to 200 within --duration)]\n" +
      "                              [--baseline REF: also the gateway of commit REF, beside this tree's, in the same rounds]\n" +
      "                              [--baseline-split: that gateway with its quota object apart, compared with this tree's (--targets split)]\n" +
      "                              [--object-ms N: the quota object apart answers each call N ms later, as one in another location would]\n",
  );
  process.exit(2);
}

function positive(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) usage(`${flag} must be a positive number, not "${text}"`);
  return value;
}

function options() {
  let values: {
    duration: string;
    rounds: string;
    warmup: string;
    connections: string;
    samples: string;
    "live-streams"?: string;
    targets: string;
    answers: string;
    baseline?: string;
    "baseline-split"?: boolean;
    "object-ms"?: string;
    "no-sequential"?: boolean;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      options: {
        duration: { type: "string", default: "10" },
        rounds: { type: "string", default: "3" },
        warmup: { type: "string", default: "2" },
        connections: { type: "string", default: "1,32" },
        samples: { type: "string", default: "500" },
        "live-streams": { type: "string" },
        targets: { type: "string", default: PEERS.join(",") },
        answers: { type: "string", default: "plain,streamed" },
        baseline: { type: "string" },
        "baseline-split": { type: "boolean" },
        "object-ms": { type: "string" },
        "no-sequential": { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    }) as { values: typeof values });
  } catch (error) {
    usage((error as Error).message);
  }
  if (values.help) usage();
  if (values["object-ms"] !== undefined && !values.targets.split(",").includes("split") && !values["baseline-split"])
    usage("--object-ms puts the quota object apart at a distance: it needs --targets split or --baseline-split");
  return {
    duration: positive("--duration", values.duration),
    rounds: Math.round(positive("--rounds", values.rounds)),
    warmup: Number(values.warmup) >= 0 ? Number(values.warmup) : usage("--warmup must be 0 or more"),
    connections: values.connections.split(",").map((c) => Math.round(positive("--connections", c))),
    samples: Math.round(positive("--samples", values.samples)),
    liveStreams:
      values["live-streams"] === undefined ? undefined : Math.round(positive("--live-streams", values["live-streams"])),
    targets: new Set(
      values.targets.split(",").map((t) => (PEERS.includes(t as Peer) ? (t as Peer) : usage(`unknown target "${t}"`))),
    ),
    streams: values.answers
      .split(",")
      .map((a) => (a === "plain" ? false : a === "streamed" ? true : usage(`--answers takes plain and/or streamed`))),
    sequential: !values["no-sequential"],
    baseline: values.baseline,
    baselineSplit: values["baseline-split"] === true,
    objectMs: values["object-ms"] === undefined ? undefined : Math.round(positive("--object-ms", values["object-ms"])),
  };
}

/**
 * Waits until the targets' processes are idle (`untilIdle`), so that work a target deferred past
 * its cell (usage it flushes, a collection) does not run in the next cell, on this shared machine,
 * and count against that one.
 */
async function quiet(targets: Target[]): Promise<void> {
  await untilIdle(targets.flatMap((t) => [t.pid, ...(t.otherPids ?? [])]).filter((p): p is number => p !== undefined));
}

/**
 * The cells of one round: the peers in turn, a different one first each round, and a gateway's
 * two tokens (one process) back to back, which of them first alternating by round — the second
 * runs in a process the first has just warmed. Every gateway with two tokens (this tree's and a
 * baseline's) is taken so, or a comparison between them would favour the one warmed more often.
 */
function roundOrder(running: Target[], round: number, pairs: [Target, Target][]): Target[] {
  const live = pairs.filter(([first, second]) => running.includes(first) && running.includes(second));
  const seconds = new Set(live.map(([, second]) => second));
  const units = running.filter((t) => !seconds.has(t));
  const rotated = units.map((_, i) => units[(i + round) % units.length] as Target);
  return rotated.flatMap((t) => {
    const pair = live.find(([first]) => first === t);
    if (!pair) return [t];
    return round % 2 === 0 ? pair : [pair[1], pair[0]];
  });
}

async function load(
  target: Target,
  stream: boolean,
  connections: number,
  seconds: number,
  round: number,
): Promise<LoadRow> {
  const req = target.chat({ stream });
  const cpuBefore = target.pid === undefined ? undefined : cpuMillis(target.pid);
  const othersBefore = (target.otherPids ?? []).reduce((sum, pid) => sum + cpuMillis(pid), 0);
  const result = await autocannon({
    url: req.url,
    method: "POST",
    headers: req.headers,
    body: req.body,
    connections,
    pipelining: 1,
    duration: seconds,
    timeout: 10,
  });
  // Work the target deferred past its answers (metering, settlement) belongs to the requests too.
  if (cpuBefore !== undefined) await new Promise((resolve) => setTimeout(resolve, 1_000));
  const cpuAfter = target.pid === undefined ? undefined : cpuMillis(target.pid);
  const othersAfter = (target.otherPids ?? []).reduce((sum, pid) => sum + cpuMillis(pid), 0);
  const completed = result["2xx"];
  const perRequest = (ms: number) => (ms * 1000) / completed;
  return {
    target: target.name,
    round,
    stream,
    connections,
    cpuMicros:
      cpuBefore !== undefined && cpuAfter !== undefined && completed > 0 ? perRequest(cpuAfter - cpuBefore) : undefined,
    cpuMicrosWhole:
      cpuBefore !== undefined && cpuAfter !== undefined && completed > 0
        ? perRequest(cpuAfter - cpuBefore + othersAfter - othersBefore)
        : undefined,
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    failures: result.errors + result.non2xx,
    requests: result["2xx"] + result.non2xx + result.errors,
  };
}

async function start(name: string, starter: () => Promise<Target>): Promise<Target> {
  process.stdout.write(`starting ${name}… `);
  try {
    const target = await starter();
    process.stdout.write("ready\n");
    return target;
  } catch (error) {
    const reason = (error as Error).message.split("\n")[0] ?? "unknown error";
    process.stdout.write(`not available: ${reason}\n`);
    return unavailableTarget(name, reason);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return Number.NaN;
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : "–");
const times = (r: number | undefined) => (r === undefined ? "n/a" : `${r.toFixed(2)}×`);

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

async function main(): Promise<void> {
  const opts = options();
  // Every loop below is bounded by --duration or --live-streams; this only catches a hung start or
  // teardown. The targets at most: every peer, the simulator, the token with its own limits and a
  // baseline with its own two tokens. A paced stream takes about 40 ms; 100 ms each leaves room for
  // a slow machine.
  const targetCount = PEERS.length + 4;
  const budgetSeconds =
    120 +
    opts.connections.length * 2 * targetCount * (opts.duration + opts.warmup + 2 * (opts.rounds + 1)) +
    targetCount * 2 * (opts.duration + 5) +
    targetCount * (opts.liveStreams ?? 0) * 0.1;
  const watchdog = setTimeout(() => {
    process.stderr.write(`bench:proxy: gave up after ${budgetSeconds} s\n`);
    process.exit(1);
  }, budgetSeconds * 1000);
  watchdog.unref();

  const sim = await startSimulator();
  const targets: Target[] = [directTarget(sim.url, sim.pid)];
  const stopAll = async () => {
    await Promise.allSettled(targets.map((t) => t.close()));
    await sim.close();
  };
  process.once("SIGINT", () => {
    stopAll().then(() => process.exit(130));
  });
  try {
    console.log(`backend simulator at ${sim.url}`);
    const peer = (id: Peer, name: string, starter: () => Promise<Target>) =>
      opts.targets.has(id)
        ? start(name, starter)
        : Promise.resolve(unavailableTarget(name, "not selected (--targets)"));
    targets.push(await peer("noop", "no-op Worker (Miniflare)", () => noopWorkerTarget(sim.url)));
    targets.push(await peer("floor", "metering floor Worker (Miniflare)", () => meteringFloorTarget(sim.url)));
    targets.push(await peer("stored", "metering floor, each row stored (Miniflare)", () => storedFloorTarget(sim.url)));
    const both = opts.targets.has("modelgate")
      ? await gatewayTargets(sim.url).catch((error: Error) => {
          const reason = error.message.split("\n")[0] ?? "unknown error";
          return {
            gateway: unavailableTarget("modelgate (Miniflare)", reason),
            tokenLimited: unavailableTarget("modelgate, token with own limits (Miniflare)", reason),
          };
        })
      : {
          gateway: unavailableTarget("modelgate (Miniflare)", "not selected (--targets)"),
          tokenLimited: unavailableTarget("modelgate, token with own limits (Miniflare)", "not selected (--targets)"),
        };
    console.log(`modelgate: ${both.gateway.unavailable ? `not available: ${both.gateway.unavailable}` : "ready"}`);
    targets.push(both.gateway, both.tokenLimited);
    targets.push(
      await peer(
        "split",
        "modelgate, quota object apart (Miniflare)",
        async () => (await gatewayTargets(sim.url, { split: true, objectMs: opts.objectMs })).gateway,
      ),
    );
    targets.push(
      await peer(
        "memory",
        "modelgate, quota storage in memory (Miniflare)",
        async () => (await gatewayTargets(sim.url, { memory: true })).gateway,
      ),
    );
    targets.push(await peer("portkey", "Portkey gateway (Node)", () => portkeyTarget(sim.url)));
    // Another commit's gateway, loaded in the same rounds: what a change did, within one run.
    const baselineRef = opts.baseline;
    /** The baseline's token with limits of its own, taken as this tree's is (`roundOrder`). */
    let baselineTokenLimited: Target | undefined;
    if (baselineRef !== undefined) {
      targets.push(
        await start(`modelgate @${baselineRef} (Miniflare)`, async () => {
          const tree = baselineTree(baselineRef);
          console.log(`baseline ${tree.commit} in ${tree.root}`);
          const both = await gatewayTargets(sim.url, {
            baseline: tree,
            split: opts.baselineSplit,
            objectMs: opts.objectMs,
          });
          if (!opts.baselineSplit) baselineTokenLimited = both.tokenLimited;
          return both.gateway;
        }),
      );
      if (baselineTokenLimited) targets.push(baselineTokenLimited);
    }
    const [direct, noop, floor, stored, gateway, tokenLimited, split, memory, portkey] = targets as [
      Target,
      Target,
      Target,
      Target,
      Target,
      Target,
      Target,
      Target,
      Target,
    ];
    const baseline = targets[9];
    /** This tree's gateway run as the baseline is. */
    const baselinePeer = opts.baselineSplit ? split : gateway;
    const running = targets.filter((t) => !t.unavailable);

    const rounds: LoadRow[] = [];
    const slice = Math.max(1, Math.round((opts.duration / opts.rounds) * 10) / 10);
    for (const stream of opts.streams) {
      for (const connections of opts.connections) {
        const kind = `${stream ? "streamed" : "plain"}, ${connections} connection(s)`;
        if (opts.warmup > 0) {
          process.stdout.write(`${kind}: warming up… `);
          for (const target of running) await load(target, stream, connections, opts.warmup, -1);
          process.stdout.write("done\n");
        }
        for (let round = 0; round < opts.rounds; round++) {
          const pairs: [Target, Target][] = [[gateway, tokenLimited]];
          if (baseline && baselineTokenLimited) pairs.push([baseline, baselineTokenLimited]);
          const order = roundOrder(running, round, pairs);
          const line: string[] = [];
          for (const target of order) {
            await quiet(running);
            const row = await load(target, stream, connections, slice, round);
            rounds.push(row);
            line.push(`${target.name.split(" (")[0]} ${fmt(row.rps)}/s`);
          }
          process.stdout.write(`${kind}, round ${round + 1}/${opts.rounds}: ${line.join(", ")}\n`);
        }
      }
    }
    const cellRounds = (name: string, stream: boolean, c: number) =>
      rounds.filter((r) => r.target === name && r.stream === stream && r.connections === c);
    const rows: LoadRow[] = opts.streams.flatMap((stream) =>
      opts.connections.flatMap((connections) =>
        running.map((t) => {
          const cell = cellRounds(t.name, stream, connections);
          const cpu = cell.flatMap((r) => (r.cpuMicros === undefined ? [] : [r.cpuMicros]));
          const whole = cell.flatMap((r) => (r.cpuMicrosWhole === undefined ? [] : [r.cpuMicrosWhole]));
          return {
            target: t.name,
            round: -1,
            stream,
            connections,
            rps: median(cell.map((r) => r.rps)),
            p50: median(cell.map((r) => r.p50)),
            p99: median(cell.map((r) => r.p99)),
            cpuMicros: cpu.length ? median(cpu) : undefined,
            cpuMicrosWhole: whole.length ? median(whole) : undefined,
            failures: cell.reduce((n, r) => n + r.failures, 0),
            requests: cell.reduce((n, r) => n + r.requests, 0),
          };
        }),
      ),
    );
    /** a ÷ b in each round, each pair measured in the same round. */
    const ratiosOf = (
      a: Target,
      b: Target,
      stream: boolean,
      c: number,
      field: "rps" | "cpuMicros" | "cpuMicrosWhole" = "rps",
    ) =>
      cellRounds(a.name, stream, c).flatMap((ra) => {
        const x = ra[field];
        const y = cellRounds(b.name, stream, c).find((rb) => rb.round === ra.round)?.[field];
        return x !== undefined && y !== undefined && y > 0 ? [x / y] : [];
      });
    /** The median over rounds of a ÷ b, each pair measured in the same round. */
    const ratioOf = (...args: Parameters<typeof ratiosOf>) => {
      const ratios = ratiosOf(...args);
      return ratios.length ? median(ratios) : undefined;
    };
    /** The median over rounds of a ÷ b and, after it, the lowest and highest round's. */
    const ratioSpread = (...args: Parameters<typeof ratiosOf>) => {
      const ratios = ratiosOf(...args);
      if (!ratios.length) return "n/a";
      return `${times(median(ratios))} (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`;
    };

    const sequential = new Map<string, { plain: SequentialResult; stream: SequentialResult }>();
    for (const target of opts.sequential ? running : []) {
      await quiet(running);
      process.stdout.write(`${target.name}: sequential timing… `);
      const durationMs = opts.duration * 1000;
      const plain = await runSequential(() => target.chat({ stream: false }), {
        durationMs,
        maxRequests: opts.samples,
        stream: false,
        maxTokens: MAX_TOKENS,
      });
      const stream = await runSequential(() => target.chat({ stream: true, paced: true }), {
        durationMs: opts.liveStreams === undefined ? durationMs : Number.POSITIVE_INFINITY,
        maxRequests: opts.liveStreams ?? Math.min(opts.samples, 200),
        stream: true,
        maxTokens: MAX_TOKENS,
        pacedGenerationMs: (MAX_TOKENS - 1) * PACED_TOKEN_MS,
      });
      sequential.set(target.name, { plain, stream });
      process.stdout.write("done\n");
    }

    console.log(
      `\n## Load (autocannon; each cell ${opts.rounds} rounds of ${slice} s after ${opts.warmup} s warm-up, medians over the rounds; ${MAX_TOKENS} tokens per answer; latency in whole ms)\n`,
    );
    console.log(
      table(
        [
          "answer",
          "conns",
          "target",
          "req/s",
          "req/s by round",
          "p50 ms",
          "p99 ms",
          "CPU µs/req",
          "with quota process",
          "failed",
        ],
        rows.map((r) => [
          r.stream ? "streamed" : "plain",
          String(r.connections),
          r.target,
          fmt(r.rps),
          cellRounds(r.target, r.stream, r.connections)
            .map((x) => fmt(x.rps))
            .join(" / "),
          fmt(r.p50),
          fmt(r.p99),
          r.cpuMicros === undefined ? "–" : fmt(r.cpuMicros),
          r.cpuMicrosWhole === undefined || r.cpuMicrosWhole === r.cpuMicros ? "" : fmt(r.cpuMicrosWhole),
          `${r.failures}/${r.requests}`,
        ]),
      ),
    );
    console.log(
      "\nCPU µs/req: CPU time of the target's own process (workerd, Portkey's Node, the simulator for direct) per answered request, deferred work included; steadier than req/s on a shared machine. " +
        "With the quota object apart, the first figure is the Worker's process alone (as on Cloudflare, where the object and D1 run elsewhere) and the second adds the object's process.",
    );
    for (const t of targets.filter((t) => t.unavailable)) console.log(`\n${t.name}: not available — ${t.unavailable}`);

    console.log("\n## Ratios (median over rounds of the ratio within each round)\n");
    const ratioRows: string[][] = [];
    for (const stream of opts.streams) {
      for (const c of opts.connections) {
        ratioRows.push([
          stream ? "streamed" : "plain",
          String(c),
          times(ratioOf(gateway, noop, stream, c)),
          times(ratioOf(gateway, floor, stream, c)),
          times(ratioOf(gateway, stored, stream, c)),
          times(ratioOf(gateway, portkey, stream, c)),
          times(ratioOf(floor, noop, stream, c)),
          times(ratioOf(floor, portkey, stream, c)),
          times(ratioOf(noop, direct, stream, c)),
          times(ratioOf(gateway, floor, stream, c, "cpuMicros")),
          times(ratioOf(gateway, stored, stream, c, "cpuMicros")),
          times(ratioOf(split, floor, stream, c, "cpuMicros")),
          times(ratioOf(split, floor, stream, c, "cpuMicrosWhole")),
          times(ratioOf(gateway, portkey, stream, c, "cpuMicros")),
        ]);
      }
    }
    console.log(
      table(
        [
          "answer",
          "conns",
          "req/s: gateway ÷ no-op",
          "÷ floor",
          "÷ floor storing rows",
          "÷ Portkey",
          "floor ÷ no-op",
          "floor ÷ Portkey",
          "no-op ÷ direct",
          "CPU: gateway ÷ floor",
          "÷ floor storing rows",
          "Worker apart ÷ floor",
          "Worker + object ÷ floor",
          "gateway ÷ Portkey",
        ],
        ratioRows,
      ),
    );
    console.log(
      "\nCPU ratios below 1 are better. 'Floor storing rows': the floor, each answer waiting until a Durable Object has stored its usage row. 'Worker apart': the gateway's Worker process with its quota object in a process of its own; '+ object' adds that process.",
    );
    if (baseline && !baseline.unavailable) {
      // Each gateway's token with limits of its own is a second measure of the same change, taken in
      // other cells of the same rounds: where the two disagree, the run's noise is the larger.
      const compared: [Target, Target][] = [[baselinePeer, baseline]];
      if (baselineTokenLimited && !tokenLimited.unavailable) compared.push([tokenLimited, baselineTokenLimited]);
      console.log("\n## This tree ÷ the baseline (same rounds: the median, and the lowest and highest round)\n");
      console.log(
        table(
          ["answer", "conns", "token", "req/s", "CPU µs/req"],
          opts.streams.flatMap((stream) =>
            opts.connections.flatMap((c) =>
              compared.map(([mine, theirs]) => [
                stream ? "streamed" : "plain",
                String(c),
                mine === tokenLimited ? "own limits" : "organization's",
                ratioSpread(mine, theirs, stream, c),
                ratioSpread(mine, theirs, stream, c, "cpuMicros"),
              ]),
            ),
          ),
        ),
      );
      console.log(
        "\nA change stands out from this run's noise when its lowest and highest rounds fall on the same side of 1; `--baseline HEAD` on an unchanged tree shows this machine's spread.",
      );
    }

    if (opts.sequential) {
      console.log(
        `\n## One request at a time (sequential client, µs clock; streams paced at ${PACED_TOKEN_MS} ms per token)\n`,
      );
      const noopP50 = percentile(sequential.get(noop.name)?.plain.latencies ?? [], 50);
      const directTtft = percentile(sequential.get(direct.name)?.stream.ttfts ?? [], 50);
      console.log(
        table(
          [
            "target",
            "plain p50 ms",
            "plain p99 ms",
            "p50 over no-op",
            "TTFT p50 ms",
            "TTFT over direct",
            "chunks intact",
            "streamed live",
            "failed",
          ],
          running.map((t) => {
            const s = sequential.get(t.name) as { plain: SequentialResult; stream: SequentialResult };
            const p50 = percentile(s.plain.latencies, 50);
            const ttft = percentile(s.stream.ttfts, 50);
            return [
              t.name,
              fmt(p50, 3),
              fmt(percentile(s.plain.latencies, 99), 3),
              t === direct || t === noop ? "" : `${fmt(p50 - noopP50, 3)} ms`,
              fmt(ttft, 3),
              t === direct ? "" : `${fmt(ttft - directTtft, 3)} ms`,
              `${s.stream.streamsIntact}/${s.stream.requests}`,
              `${s.stream.streamsIncremental}/${s.stream.requests}`,
              `${s.plain.failures + s.stream.failures}`,
            ];
          }),
        ),
      );
      for (const t of running) {
        const s = sequential.get(t.name);
        const problem = s?.stream.firstProblem ?? s?.plain.firstProblem;
        if (problem) console.log(`${t.name}: first problem seen: ${problem}`);
      }
    }

    console.log("\n## Against the targets\n");
    if (gateway.unavailable) {
      console.log(`modelgate not available — ${gateway.unavailable}`);
    } else {
      const top = Math.max(...opts.connections);
      const check = (label: string, value: number | undefined, goal: number, atMost: boolean, unit = "×") => {
        const shown =
          value === undefined ? "n/a" : unit === "×" ? times(value) : `${fmt(value, unit === "ms" ? 3 : 0)} ${unit}`;
        const verdict = value === undefined ? "n/a" : (atMost ? value <= goal : value >= goal) ? "met" : "NOT met";
        console.log(`${label} ${atMost ? "≤" : "≥"} ${goal}${unit === "×" ? "×" : ` ${unit}`}: ${verdict} (${shown})`);
      };
      const at = `${top} connections`;
      /** [label, measured, goal, at most (else at least)], for the answers this run measured. */
      const ratios: [string, number | undefined, number, boolean][] = [];
      if (opts.streams.includes(false)) {
        ratios.push(
          [
            `plain, ${at}: CPU per request ÷ the floor's (one process)`,
            ratioOf(gateway, floor, false, top, "cpuMicros"),
            GOALS.plain.cpuVsFloor,
            true,
          ],
          [
            `plain, ${at}: CPU per request ÷ the floor's (Worker, object apart)`,
            ratioOf(split, floor, false, top, "cpuMicros"),
            GOALS.plain.cpuVsFloor,
            true,
          ],
          [
            `plain, ${at}: CPU per request ÷ Portkey's`,
            ratioOf(gateway, portkey, false, top, "cpuMicros"),
            GOALS.plain.cpuVsPortkey,
            true,
          ],
          [
            `plain, ${at}: req/s ÷ the floor's`,
            ratioOf(gateway, floor, false, top),
            GOALS.plain.vsFloorThroughput,
            false,
          ],
          [
            `plain, ${at}: req/s ÷ Portkey's`,
            ratioOf(gateway, portkey, false, top),
            GOALS.plain.vsPortkeyThroughput,
            false,
          ],
        );
      }
      if (opts.streams.includes(true)) {
        ratios.push(
          [
            `streamed, ${at}: req/s ÷ the floor's`,
            ratioOf(gateway, floor, true, top),
            GOALS.streamed.vsFloorThroughput,
            false,
          ],
          [
            `streamed, ${at}: req/s ÷ Portkey's`,
            ratioOf(gateway, portkey, true, top),
            GOALS.streamed.vsPortkeyThroughput,
            false,
          ],
        );
      }
      for (const [label, value, goal, atMost] of ratios) check(label, value, goal, atMost);
      // Beside the floor that also keeps each answered request's usage, as the gateway does.
      for (const stream of opts.streams.filter(() => !stored.unavailable)) {
        const rps = ratioOf(gateway, stored, stream, top);
        const cpu = ratioOf(gateway, stored, stream, top, "cpuMicros");
        console.log(
          `  ${stream ? "streamed" : "plain"}, ${at}, beside the floor storing each row: req/s ${rps === undefined ? "n/a" : times(rps)}, CPU per request ${cpu === undefined ? "n/a" : times(cpu)}`,
        );
      }
      // The same gateway process, the same rounds: what a token's own limits add to a request's CPU.
      const added = opts.streams.flatMap((stream) =>
        cellRounds(tokenLimited.name, stream, top).flatMap((r) => {
          const base = cellRounds(gateway.name, stream, top).find((g) => g.round === r.round)?.cpuMicros;
          return r.cpuMicros !== undefined && base !== undefined ? [r.cpuMicros - base] : [];
        }),
      );
      check(
        "a token's own limits: CPU added per request",
        added.length ? median(added) : undefined,
        GOALS.tokenLimitsMicros,
        true,
        "µs",
      );
      if (opts.sequential) {
        const noopP50 = percentile(sequential.get(noop.name)?.plain.latencies ?? [], 50);
        const addedMs = percentile(sequential.get(gateway.name)?.plain.latencies ?? [], 50) - noopP50;
        check(
          "1 connection: p50 added to the no-op Worker's",
          Number.isFinite(addedMs) ? addedMs : undefined,
          GOALS.addedP50Ms,
          true,
          "ms",
        );
        // Every plain answer waits for its usage row to be durable in the quota object.
        const inMemoryMs = percentile(sequential.get(memory.name)?.plain.latencies ?? [], 50) - noopP50;
        if (Number.isFinite(addedMs) && Number.isFinite(inMemoryMs))
          console.log(
            `  of which the quota object's durable write to this machine's disk: ${fmt(addedMs - inMemoryMs, 3)} ms (the same gateway with that storage in memory, not durable: +${fmt(inMemoryMs, 3)} ms)`,
          );
        const gs = sequential.get(gateway.name)?.stream;
        const intact = gs ? gs.requests > 0 && gs.streamsIntact === gs.requests : undefined;
        const live = gs ? gs.requests > 0 && gs.streamsIncremental === gs.requests : undefined;
        console.log(
          `streamed chunks forwarded unmerged and in order: ${intact === undefined ? "n/a" : intact ? "met" : "NOT met"} (${gs?.streamsIntact}/${gs?.requests}); streamed live, not buffered: ${live === undefined ? "n/a" : live ? "met" : "NOT met"} (${gs?.streamsIncremental}/${gs?.requests})`,
        );
      }
    }
  } finally {
    await stopAll();
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`bench:proxy failed: ${(error as Error).stack ?? error}\n`);
    process.exit(1);
  },
);
