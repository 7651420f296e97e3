/**
 * `npm run bench:profile [-- --answers plain|streamed --connections 32 --duration 10 --split [--object-ms N] --target gateway|floor|noop --compare --own-limits --perf --rounds 3]`
 *
 * Where the gateway's CPU goes on the inference path: the gateway as `bench:proxy` runs it, loaded
 * by autocannon, with V8's sampling profiler on through workerd's inspector. Prints the functions
 * with the most self time (and, for the gateway's own code, the time spent in and under them), and
 * writes the whole profile to `bench/.build/<target>.cpuprofile`, which Chrome's DevTools open.
 * `--split` runs the quota object in a process of its own, so that the profile is the Worker's
 * alone, as on Cloudflare; `--object-ms N` has that object answer each call N ms later, as one in
 * another location would. `--target floor` (or `noop`) profiles the metering floor (or the no-op
 * Worker) under the same load instead; `--compare` profiles the floor and then the gateway in one
 * run. The isolate's busy time per request is reported whole and, for the gateway, without what
 * ran in or under its quota object's code (which has an isolate of its own on Cloudflare): a cost
 * moved from the Worker to the object shows as such. `--own-limits` calls the gateway with a token
 * that has limits of its own. `--perf` samples the whole workerd process with Linux `perf` instead
 * (where it is installed and allowed) and reports its CPU per request by the runtime event it
 * served (`lib/runtime-events.ts`): most of a Worker's CPU is the runtime's work around the
 * JavaScript, which the V8 profile does not show. With `--perf --compare` the floor and the gateway
 * take turns, `--rounds` of them, a different one first each round.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { freePort } from "../scripts/lib/gateway-process";
import { ROOT } from "../scripts/lib/local-state";
import {
  OBJECT_EVENTS,
  perfUnavailable,
  perRequestMicros,
  type RuntimeEvents,
  sampleRuntimeEvents,
} from "./lib/runtime-events";
import { untilIdle } from "./lib/workerd-memory";
import { gatewayTargets, meteringFloorTarget, noopWorkerTarget, startSimulator, type Target } from "./targets";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

const { values } = parseArgs({
  options: {
    answers: { type: "string", default: "plain" },
    connections: { type: "string", default: "32" },
    duration: { type: "string", default: "10" },
    top: { type: "string", default: "30" },
    split: { type: "boolean", default: false },
    "object-ms": { type: "string" },
    target: { type: "string", default: "gateway" },
    compare: { type: "boolean", default: false },
    "own-limits": { type: "boolean", default: false },
    perf: { type: "boolean", default: false },
    rounds: { type: "string", default: "3" },
  },
});
const stream = values.answers === "streamed";
const connections = Number(values.connections);
const duration = Number(values.duration);
const top = Number(values.top);
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new Error("--rounds takes a whole number of at least 1");
const profiled = values.target;
if (!["gateway", "floor", "noop"].includes(profiled)) throw new Error("--target is gateway, floor or noop");

/** The Worker to profile, in Miniflare with its inspector on `inspectorPort`. */
async function profiledTarget(simUrl: string, kind: string, inspectorPort: number): Promise<Target> {
  const extra = { inspectorPort };
  if (kind === "floor") return meteringFloorTarget(simUrl, extra);
  if (kind === "noop") return noopWorkerTarget(simUrl, extra);
  const objectMs = values["object-ms"] === undefined ? undefined : Number(values["object-ms"]);
  if (objectMs !== undefined && (!values.split || !(objectMs > 0)))
    throw new Error("--object-ms takes ms > 0, with --split");
  const { gateway, tokenLimited } = await gatewayTargets(simUrl, { split: values.split, objectMs, extra });
  return values["own-limits"] ? tokenLimited : gateway;
}

/** A minimal Chrome DevTools Protocol session over the inspector's WebSocket. */
async function devtools(url: string) {
  const socket = new WebSocket(url);
  await new Promise((done, fail) => {
    socket.addEventListener("open", done, { once: true });
    socket.addEventListener("error", fail, { once: true });
  });
  let next = 1;
  const waiting = new Map<number, (result: unknown) => void>();
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(String(event.data)) as { id?: number; result?: unknown; error?: unknown };
    if (message.id === undefined) return;
    waiting.get(message.id)?.(
      message.error ? Promise.reject(new Error(JSON.stringify(message.error))) : message.result,
    );
    waiting.delete(message.id);
  });
  return {
    send<T>(method: string, params: Record<string, unknown> = {}): Promise<T> {
      const id = next++;
      socket.send(JSON.stringify({ id, method, params }));
      return new Promise<T>((done) => waiting.set(id, done as (result: unknown) => void));
    },
    close: () => socket.close(),
  };
}

function describe(frame: ProfileNode["callFrame"]): string {
  const file = frame.url.split("/").pop() || "(native)";
  return `${frame.functionName || "(anonymous)"} ${file}:${frame.lineNumber + 1}`;
}

/** Self time per function, and total time (self and below) per function, in ms. */
function summarize(profile: CpuProfile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const sampleMs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const id = samples[i] as number;
    sampleMs.set(id, (sampleMs.get(id) ?? 0) + (deltas[i + 1] ?? deltas[i] ?? 0) / 1000);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  const walk = (id: number, stack: Set<string>): number => {
    const node = byId.get(id) as ProfileNode;
    const name = describe(node.callFrame);
    const own = sampleMs.get(id) ?? 0;
    self.set(name, (self.get(name) ?? 0) + own);
    const entered = !stack.has(name);
    if (entered) stack.add(name);
    let sum = own;
    for (const child of node.children ?? []) sum += walk(child, stack);
    if (entered) {
      stack.delete(name);
      total.set(name, (total.get(name) ?? 0) + sum);
    }
    return sum;
  };
  const root = profile.nodes[0];
  const all = root ? walk(root.id, new Set()) : 0;
  return { self, total, all };
}

/** autocannon against `worker` with this run's answers and connections, for `seconds`. */
function loader(worker: Target) {
  const request = worker.chat({ stream });
  return (seconds: number) =>
    autocannon({
      url: request.url,
      method: "POST",
      headers: request.headers,
      body: request.body,
      duration: seconds,
      connections,
    });
}

interface Profiled {
  kind: string;
  requests: number;
  failures: number;
  profile: CpuProfile;
  /** Lines of the gateway's bundle where its quota object's code is (empty for other targets). */
  objectLines: [number, number][];
}

/** Loads `kind` with autocannon under the profiler (after a warm-up) and returns its profile. */
async function profileUnderLoad(simUrl: string, kind: string): Promise<Profiled> {
  const inspectorPort = await freePort();
  const worker = await profiledTarget(simUrl, kind, inspectorPort);
  try {
    const targets = (await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json()) as {
      title: string;
      webSocketDebuggerUrl: string;
    }[];
    const target = targets.find((t) => t.title.includes("core:user")) ?? targets[0];
    if (!target) throw new Error("the inspector lists no worker");
    const session = await devtools(target.webSocketDebuggerUrl);
    await session.send("Profiler.enable");
    await session.send("Profiler.setSamplingInterval", { interval: 100 });
    const load = loader(worker);
    // Warm up first: the first requests compile and fill caches.
    await load(2);
    await session.send("Profiler.start");
    const result = await load(duration);
    const { profile } = await session.send<{ profile: CpuProfile }>("Profiler.stop");
    session.close();
    mkdirSync(join(ROOT, "bench", ".build"), { recursive: true });
    const file = join(ROOT, "bench", ".build", `${kind}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    console.log(`${kind}: profile in ${file}`);
    const objectLines = kind === "gateway" ? classLines(join(ROOT, "bench", ".build", "index.js"), OBJECT_CLASSES) : [];
    return { kind, requests: result.requests.total, failures: result.non2xx + result.errors, profile, objectLines };
  } finally {
    await worker.close();
  }
}

/** The quota object's classes: on Cloudflare they run in the object's isolate, not the Worker's. */
const OBJECT_CLASSES = ["OrgQuota", "UsageBook"];

/** The bundle's lines (0-based, as profiles count them) from `var Name = class` to its closing `};`. */
function classLines(bundle: string, names: string[]): [number, number][] {
  const lines = readFileSync(bundle, "utf8").split("\n");
  return names.flatMap((name) => {
    const from = lines.findIndex((line) => line.startsWith(`var ${name} = class`));
    if (from < 0) return [];
    const to = lines.findIndex((line, i) => i > from && line === "};");
    return [[from, to < 0 ? lines.length : to] as [number, number]];
  });
}

/**
 * The isolate's busy time (idle excluded) and, of it, what ran in or under the quota object's
 * code: the RPC methods the Worker calls, the book they keep, their storage and D1 calls.
 */
function busyTime(run: Profiled): { busy: number; object: number } {
  const { profile, objectLines } = run;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inObject = new Map<number, boolean>();
  const objects = (id: number | undefined): boolean => {
    if (id === undefined) return false;
    const known = inObject.get(id);
    if (known !== undefined) return known;
    const frame = (byId.get(id) as ProfileNode).callFrame;
    const here =
      frame.url.endsWith("index.js") &&
      objectLines.some(([from, to]) => frame.lineNumber >= from && frame.lineNumber <= to);
    const answer = here || objects(parent.get(id));
    inObject.set(id, answer);
    return answer;
  };
  let busy = 0;
  let object = 0;
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const id = samples[i] as number;
    if ((byId.get(id) as ProfileNode).callFrame.functionName === "(idle)") continue;
    const ms = (deltas[i + 1] ?? deltas[i] ?? 0) / 1000;
    busy += ms;
    if (objects(id)) object += ms;
  }
  return { busy, object };
}

function report(run: Profiled): void {
  const { self, total, all } = summarize(run.profile);
  const perRequest = (ms: number) => `${((ms * 1000) / run.requests).toFixed(1).padStart(7)} µs`;
  console.log(
    `\n## ${run.kind}: ${stream ? "streamed" : "plain"}, ${connections} connections, ${duration} s: ${run.requests} requests (${run.failures} failed); sampled ${all.toFixed(0)} ms in the isolate, ${perRequest(all)}/request`,
  );
  console.log(`\nself time per request (top ${top}):`);
  for (const [name, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top))
    console.log(`${perRequest(ms)}  ${name}`);
  console.log(`\ntime in and under the Worker's own functions (top ${top}):`);
  for (const [name, ms] of [...total]
    .filter(([name]) => !name.startsWith("(") && !name.includes("(native)"))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top))
    console.log(`${perRequest(ms)}  ${name}`);
}

interface Sampled {
  kind: string;
  requests: number;
  failures: number;
  events: RuntimeEvents;
}

/**
 * Loads each of `kinds` with autocannon while `perf` samples its workerd process: after a warm-up
 * of each, in `rounds` turns of an equal share of the duration, a different one first each round,
 * each turn once every process is idle and until its own is again (work it deferred counts), so
 * that a slow spell of the shared machine falls on all of them. Each kind's turns are summed.
 */
async function eventsUnderLoad(simUrl: string, kinds: string[], rounds: number): Promise<Sampled[]> {
  const workers: Target[] = [];
  try {
    for (const kind of kinds) workers.push(await profiledTarget(simUrl, kind, await freePort()));
    const pids = workers.map((worker, i) => {
      if (worker.pid === undefined) throw new Error(`no process id for ${kinds[i]}`);
      return worker.pid;
    });
    const loads = workers.map(loader);
    for (const load of loads) await load(2);
    const sums: Sampled[] = kinds.map((kind) => ({
      kind,
      requests: 0,
      failures: 0,
      events: { cpuMs: 0, samples: new Map() },
    }));
    const share = duration / rounds;
    for (let round = 0; round < rounds; round++) {
      for (let turn = 0; turn < kinds.length; turn++) {
        const i = (round + turn) % kinds.length;
        const [pid, load, sum] = [pids[i], loads[i], sums[i]] as [number, ReturnType<typeof loader>, Sampled];
        await untilIdle(pids);
        const { result, events } = await sampleRuntimeEvents(pid, async () => {
          const loaded = await load(share);
          await untilIdle([pid]);
          return loaded;
        });
        sum.requests += result["2xx"];
        sum.failures += result.non2xx + result.errors;
        sum.events.cpuMs += events.cpuMs;
        for (const [name, count] of events.samples)
          sum.events.samples.set(name, (sum.events.samples.get(name) ?? 0) + count);
      }
    }
    return sums;
  } finally {
    for (const worker of workers) await worker.close();
  }
}

/** CPU per request by runtime event, a column per run (and the difference, for two). */
function reportEvents(runs: Sampled[]): void {
  const columns = runs.map((run) => perRequestMicros(run.events, run.requests));
  const total = (c: Map<string, number>) => [...c.values()].reduce((a, b) => a + b, 0);
  const names = [...(columns[0]?.keys() ?? [])];
  const cell = (n: number) => n.toFixed(0).padStart(7);
  console.log(
    `\n## The workerd process's CPU per request by runtime event (perf; ${stream ? "streamed" : "plain"}, ${connections} connections, ${duration} s)\n`,
  );
  for (const run of runs)
    console.log(
      `${run.kind}: ${run.requests} requests (${run.failures} failed), ${((run.events.cpuMs * 1000) / run.requests).toFixed(0)} µs of CPU each`,
    );
  const header = runs.map((r) => r.kind.padStart(7)).join(" ") + (runs.length === 2 ? "    diff" : "");
  console.log(`\n${header}  µs per request`);
  const rows = [...names, "total"];
  for (const name of rows) {
    const micros = columns.map((c) => (name === "total" ? total(c) : (c.get(name) ?? 0)));
    const diff = micros.length === 2 ? ` ${cell((micros[1] as number) - (micros[0] as number))}` : "";
    console.log(`${micros.map(cell).join(" ")}${diff}  ${name}`);
  }
  const [floor, gateway] = columns;
  if (runs.length !== 2 || !floor || !gateway) return;
  const worker = total(gateway) - [...OBJECT_EVENTS].reduce((sum, name) => sum + (gateway.get(name) ?? 0), 0);
  console.log(
    `\n${runs[1]?.kind} ÷ ${runs[0]?.kind}: ${(total(gateway) / total(floor)).toFixed(2)}× the process's CPU; ` +
      `without the quota object's own events (${[...OBJECT_EVENTS].join("; ")}), which run in its isolate ` +
      `and in D1 on Cloudflare: ${worker.toFixed(0)} µs, ${(worker / total(floor)).toFixed(2)}×`,
  );
}

async function main(): Promise<void> {
  const sim = await startSimulator();
  try {
    const kinds = values.compare ? ["floor", "gateway"] : [profiled];
    if (values.perf) {
      const unavailable = perfUnavailable();
      if (unavailable) throw new Error(`--perf: ${unavailable}`);
      reportEvents(await eventsUnderLoad(sim.url, kinds, rounds));
      return;
    }
    const runs: Profiled[] = [];
    for (const kind of kinds) runs.push(await profileUnderLoad(sim.url, kind));
    for (const run of runs) report(run);
    console.log("\n## The isolate's busy time per request (idle excluded)\n");
    const perRequest = (ms: number, run: Profiled) => (ms * 1000) / run.requests;
    for (const run of runs) {
      const { busy, object } = busyTime(run);
      const line = `${run.kind}: ${perRequest(busy, run).toFixed(0)} µs`;
      console.log(
        run.objectLines.length
          ? `${line}, of which the quota object ${perRequest(object, run).toFixed(0)} µs (its own isolate on Cloudflare): the Worker's own ${perRequest(busy - object, run).toFixed(0)} µs`
          : line,
      );
    }
    const [floor, gateway] = runs;
    if (values.compare && floor && gateway) {
      const f = busyTime(floor);
      const g = busyTime(gateway);
      const ratio = (x: number) => `${(perRequest(x, gateway) / perRequest(f.busy, floor)).toFixed(2)}×`;
      console.log(
        `\ngateway ÷ floor, busy time per request: ${ratio(g.busy)} with the quota object, ${ratio(g.busy - g.object)} the Worker's own (sampled, one run each, in turn)`,
      );
    }
  } finally {
    await sim.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
