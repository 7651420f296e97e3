/**
 * `npm run bench:profile [-- --answers plain|streamed --connections 32 --duration 10 --split --target gateway|floor|noop]`
 *
 * Where the gateway's CPU goes on the inference path: the gateway as `bench:proxy` runs it, loaded
 * by autocannon, with V8's sampling profiler on through workerd's inspector. Prints the functions
 * with the most self time (and, for the gateway's own code, the time spent in and under them), and
 * writes the whole profile to `bench/.build/<target>.cpuprofile`, which Chrome's DevTools open.
 * `--split` runs the quota object in a process of its own, so that the profile is the Worker's
 * alone, as on Cloudflare. `--target floor` (or `noop`) profiles the metering floor (or the no-op
 * Worker) under the same load instead, to set the gateway's figures beside theirs.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { freePort } from "../scripts/lib/gateway-process";
import { ROOT } from "../scripts/lib/local-state";
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
    target: { type: "string", default: "gateway" },
  },
});
const stream = values.answers === "streamed";
const connections = Number(values.connections);
const duration = Number(values.duration);
const top = Number(values.top);
const profiled = values.target;
if (!["gateway", "floor", "noop"].includes(profiled)) throw new Error("--target is gateway, floor or noop");

/** The Worker to profile, in Miniflare with its inspector on `inspectorPort`. */
async function profiledTarget(simUrl: string, inspectorPort: number): Promise<Target> {
  const extra = { inspectorPort };
  if (profiled === "floor") return meteringFloorTarget(simUrl, extra);
  if (profiled === "noop") return noopWorkerTarget(simUrl, extra);
  const { gateway } = await gatewayTargets(simUrl, { split: values.split, extra });
  return gateway;
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

async function main(): Promise<void> {
  const sim = await startSimulator();
  const inspectorPort = await freePort();
  const gateway = await profiledTarget(sim.url, inspectorPort);
  try {
    const targets = (await (await fetch(`http://127.0.0.1:${inspectorPort}/json`)).json()) as {
      title: string;
      webSocketDebuggerUrl: string;
    }[];
    console.log(`inspector targets: ${targets.map((t) => t.title).join(", ")}`);
    const target = targets.find((t) => t.title.includes("core:user")) ?? targets[0];
    if (!target) throw new Error("the inspector lists no worker");
    const session = await devtools(target.webSocketDebuggerUrl);
    await session.send("Profiler.enable");
    await session.send("Profiler.setSamplingInterval", { interval: 100 });
    const request = gateway.chat({ stream });
    // Warm up first: the first requests compile and fill caches.
    await autocannon({
      url: request.url,
      method: "POST",
      headers: request.headers,
      body: request.body,
      duration: 2,
      connections,
    });
    await session.send("Profiler.start");
    const result = await autocannon({
      url: request.url,
      method: "POST",
      headers: request.headers,
      body: request.body,
      duration,
      connections,
    });
    const { profile } = await session.send<{ profile: CpuProfile }>("Profiler.stop");
    session.close();
    const requests = result.requests.total;
    mkdirSync(join(ROOT, "bench", ".build"), { recursive: true });
    const file = join(ROOT, "bench", ".build", `${profiled}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    const { self, total, all } = summarize(profile);
    const perRequest = (ms: number) => `${((ms * 1000) / requests).toFixed(1).padStart(7)} µs`;
    console.log(
      `${stream ? "streamed" : "plain"}, ${connections} connections, ${duration} s: ${requests} requests (${result.non2xx} not 2xx); sampled ${all.toFixed(0)} ms in the isolate, ${perRequest(all)}/request`,
    );
    console.log(`\nself time per request (top ${top}):`);
    for (const [name, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top))
      console.log(`${perRequest(ms)}  ${name}`);
    console.log(`\ntime in and under the gateway's own functions (top ${top}):`);
    for (const [name, ms] of [...total]
      .filter(([name]) => !name.startsWith("(") && !name.includes("(native)"))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top))
      console.log(`${perRequest(ms)}  ${name}`);
    console.log(`\nprofile: ${file}`);
  } finally {
    await gateway.close();
    await sim.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
