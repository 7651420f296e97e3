/**
 * Where a workerd process's CPU goes, by the runtime event each moment of it served: Linux `perf`
 * samples the whole process (every thread, native and JavaScript alike) with call stacks, and each
 * sample is put in the first class below that its stack matches. A V8 profile sees only the
 * isolate's JavaScript and the natives it calls; most of a Worker's CPU is the runtime's own work
 * around them (taking the isolate, entering a request's context, wrapping promises, collecting
 * garbage, the HTTP stack, the object's SQLite), which only a process profile shows.
 */
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cpuMillis } from "./workerd-memory";

/** The names of the classes that are the quota object's own work (`OBJECT_EVENTS`). */
const SQLITE_COMMITS = "SQLite: committing transactions (the quota object's, D1's)";
const SQLITE = "SQLite: the quota object's storage, D1 (reads, writes)";
const OBJECT_CALLS = "quota object: RPC calls handled";
const ALARMS = "alarms";

/** Classes in the order they are tried: the first whose pattern a frame of the stack matches. */
const CLASSES: [string, RegExp][] = [
  ["garbage collection", /Heap::CollectGarbage|Scavenger|MinorGCJob|MarkCompact|ConcurrentMarking|cppgc::internal::/],
  // An object's writes of one event go to SQLite in one implicit transaction, committed after it.
  [SQLITE_COMMITS, /vdbeCommit|sqlite3PagerCommitPhase|sqlite3WalFrames|ActorSqlite::commitImpl/],
  [SQLITE, /sqlite3_|SqliteDatabase|ActorSqlite/],
  [OBJECT_CALLS, /runSingle<workerd::IoContext::run<workerd::api::JsRpcTarget/],
  [
    "RPC answers (the caller resumes)",
    /runSingle<workerd::IoContext::resumeAfterIo<capnp::Response<workerd::rpc::JsRpc/,
  ],
  ["timers firing", /runSingle<workerd::IoContext::run<workerd::IoContext::TimeoutManagerImpl/],
  [
    "request received (until its first wait)",
    /runSingle<workerd::IoContext::run<workerd::\(anonymous namespace\)::WorkerEntrypoint::request/,
  ],
  ["backend answered (fetch resumes)", /runSingle<workerd::IoContext::resumeAfterIo<kj::HttpClient::Response/],
  ["a body was read (resumes)", /runSingle<workerd::IoContext::resumeAfterIo<kj::(String|Array)/],
  [ALARMS, /runSingle<workerd::IoContext::run<.*[Aa]larm/],
  ["other events in an isolate", /runSingle</],
  // V8 optimizes a function once it is hot, on threads of its own: a Worker with more code has
  // more functions to optimize, and for longer.
  [
    "V8 optimizing hot functions (helper threads)",
    /OptimizingCompileTaskExecutor|MaglevConcurrentDispatcher|ConcurrentBaselineCompiler/,
  ],
  ["outside the isolate: network, HTTP, event loop", /./],
];

/**
 * The quota object's own events (its SQLite, which in Miniflare also holds D1; the calls it
 * handles; its alarms): on Cloudflare they run in the object's isolate and in D1, not the Worker's.
 */
export const OBJECT_EVENTS: ReadonlySet<string> = new Set([SQLITE_COMMITS, SQLITE, OBJECT_CALLS, ALARMS]);

export interface RuntimeEvents {
  /** CPU time of the process while it was sampled, in ms. */
  cpuMs: number;
  /** Samples per class, in the order of `CLASSES`. */
  samples: Map<string, number>;
}

/** Whether `perf` can sample processes here; otherwise why not. */
export function perfUnavailable(): string | undefined {
  const probe = spawnSync("perf", ["record", "-q", "-o", "/dev/null", "--", "true"], { encoding: "utf8" });
  if (probe.error) return `perf not found (${probe.error.message})`;
  if (probe.status !== 0) return `perf cannot sample here: ${probe.stderr.trim().split("\n")[0] ?? probe.status}`;
  return undefined;
}

/**
 * Samples process `pid` with call stacks while `during` runs, and classes the samples; the
 * process's CPU time over the same span turns their shares into time.
 */
export async function sampleRuntimeEvents<T>(
  pid: number,
  during: () => Promise<T>,
): Promise<{ result: T; events: RuntimeEvents }> {
  const dir = mkdtempSync(join(tmpdir(), "modelgate-perf-"));
  const data = join(dir, "perf.data");
  try {
    const recorder = spawn("perf", ["record", "-q", "-F", "999", "-g", "-p", String(pid), "-o", data], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let errors = "";
    recorder.stderr.on("data", (chunk: Buffer) => {
      errors += chunk.toString();
    });
    const ended = new Promise<number | null>((done) => recorder.once("exit", done));
    // perf attaches in well under this; samples before the load are the process's idle ones.
    await new Promise((done) => setTimeout(done, 300));
    const before = cpuMillis(pid);
    const result = await during();
    const cpuMs = cpuMillis(pid) - before;
    recorder.kill("SIGINT");
    const status = await ended;
    if (status !== 0 && status !== null) throw new Error(`perf record failed: ${errors.trim()}`);
    const script = spawnSync("perf", ["script", "-i", data, "-F", "ip,sym"], {
      encoding: "utf8",
      maxBuffer: 1 << 30,
    });
    if (script.status !== 0) throw new Error(`perf script failed: ${script.stderr.trim()}`);
    return { result, events: { cpuMs, samples: classify(script.stdout) } };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `perf script` output (stacks separated by blank lines, one frame a line) counted by class. */
export function classify(script: string): Map<string, number> {
  const samples = new Map<string, number>(CLASSES.map(([name]) => [name, 0]));
  for (const stack of script.split(/\n\s*\n/)) {
    if (!stack.trim()) continue;
    const name = CLASSES.find(([, pattern]) => pattern.test(stack))?.[0] as string;
    samples.set(name, (samples.get(name) ?? 0) + 1);
  }
  return samples;
}

/** µs of CPU per request by class: each class's share of the samples of the process's CPU time. */
export function perRequestMicros(events: RuntimeEvents, requests: number): Map<string, number> {
  const total = [...events.samples.values()].reduce((a, b) => a + b, 0);
  const micros = new Map<string, number>();
  for (const [name, count] of events.samples)
    micros.set(name, total > 0 && requests > 0 ? ((count / total) * events.cpuMs * 1000) / requests : 0);
  return micros;
}
