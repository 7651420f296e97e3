/**
 * Runs the gateway exactly as `npm start` does (`scripts/start.ts`), on a free port with its state
 * in a throwaway directory, for checks that need the real thing in Node: the smoke test, the
 * browser tests and the end-to-end tests. Stopping it takes the whole process tree (start.ts with
 * the simulator and the Stripe stand-in, wrangler, workerd) down, and so does the exit of the
 * process that started it, by a signal too: a failed test leaves nothing running.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, wranglerEnv } from "./local-state";

/** What `scripts/start.ts` prints once the gateway answers and the demo data is in. */
export const START_BANNER = "modelgate is running";

const STOP_GRACE_MS = 10_000;

/** A TCP port nothing listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? done(address.port) : fail(new Error("no port"))));
    });
  });
}

function exited(child: ChildProcess): Promise<number | string> {
  if (child.exitCode !== null || child.signalCode !== null)
    return Promise.resolve(child.exitCode ?? child.signalCode ?? 0);
  return new Promise((done) => child.once("exit", (code, signal) => done(code ?? signal ?? 0)));
}

/** The child's exit code or signal, or "still running" after `ms`. */
export async function exitWithin(child: ChildProcess, ms: number): Promise<number | string> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string>((done) => {
    timer = setTimeout(() => done("still running"), ms);
  });
  try {
    return await Promise.race([exited(child), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Whether anything answers `/health` at `baseUrl`. */
export async function portAnswers(baseUrl: string): Promise<boolean> {
  try {
    await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(1_000) });
    return true;
  } catch {
    return false;
  }
}

/** One row of the process table. */
export interface ProcessEntry {
  pid: number;
  ppid: number;
  /** Its process group. */
  pgid: number;
}

/** The process table: from /proc on Linux, else from `ps`. */
export function processTable(): ProcessEntry[] {
  try {
    const entries: ProcessEntry[] = [];
    for (const name of readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      try {
        // "pid (comm) state ppid pgrp …": comm may hold spaces and parentheses, so read after the last ")".
        const stat = readFileSync(`/proc/${name}/stat`, "utf8");
        const [, ppid, pgid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
        entries.push({ pid: Number(name), ppid: Number(ppid), pgid: Number(pgid) });
      } catch {
        // It exited while we read.
      }
    }
    return entries;
  } catch {
    return execFileSync("ps", ["-A", "-o", "pid=,ppid=,pgid="], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map((line) => {
        const [pid, ppid, pgid] = line.trim().split(/\s+/).map(Number);
        return { pid: pid ?? 0, ppid: ppid ?? 0, pgid: pgid ?? 0 };
      });
  }
}

/** `root` and every process below it, as they are now. */
export function processTree(root: number, table: ProcessEntry[] = processTable()): ProcessEntry[] {
  const tree = table.filter((entry) => entry.pid === root);
  for (let i = 0; i < tree.length; i++) {
    const parent = tree[i]?.pid;
    for (const entry of table) if (entry.ppid === parent && entry.pid !== root) tree.push(entry);
  }
  return tree;
}

/**
 * Kills `tree` (a snapshot from `processTree`) with SIGKILL: every process group in it and every
 * process. Groups matter because start.ts runs wrangler in a group of its own, which outlives
 * start.ts; a snapshot matters because once start.ts is gone, wrangler is no longer below it.
 */
export function killTree(tree: ProcessEntry[]): void {
  const own = processTable().find((entry) => entry.pid === process.pid)?.pgid;
  for (const pgid of new Set(tree.map((entry) => entry.pgid))) {
    if (pgid > 1 && pgid !== own) killGroup(pgid);
  }
  for (const { pid } of tree) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }
}

/** Gateways started here and not yet stopped: what the exit hook takes down. */
const running = new Map<ChildProcess, string>();
let exitHookInstalled = false;

function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/**
 * The child's tree while it runs. Once it has exited its pid may belong to someone else, so only
 * the process groups are left to kill: its own (a group's id is not reused while the group has
 * members) and those found while it ran.
 */
function treeOf(child: ChildProcess, table?: ProcessEntry[]): ProcessEntry[] {
  if (child.pid === undefined || hasExited(child)) return [];
  return processTree(child.pid, table);
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, "SIGKILL");
  } catch {
    // The group is gone already.
  }
}

function killRunningNow(): void {
  const table = processTable();
  for (const [child, dir] of running) {
    killTree(treeOf(child, table));
    if (child.pid !== undefined) killGroup(child.pid);
    rmSync(dir, { recursive: true, force: true });
  }
  running.clear();
}

/**
 * On the way out of this process (normal exit, uncaught error, `process.exit`, SIGINT, SIGTERM,
 * SIGHUP), kill every gateway still running. Signals are re-raised afterwards when nobody else
 * listens, so the process still ends the way it would have.
 */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on("exit", killRunningNow);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      killRunningNow();
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    });
  }
}

/** A gateway started by `startGateway`. */
export interface GatewayProcess {
  baseUrl: string;
  /** The throwaway directory holding its state (`state/`) and `demo.json`. */
  dir: string;
  child: ChildProcess;
  /** Everything start.ts and wrangler printed so far. */
  output(): string;
  /** Resolves once the banner is printed; rejects if start.ts exits first or `deadlineMs` passes. */
  ready(deadlineMs: number): Promise<void>;
  /**
   * Asks start.ts to stop (SIGTERM), then kills what is left of its process tree (every group in
   * it, wrangler's too); removes the state.
   */
  stop(): Promise<void>;
}

/**
 * Starts `scripts/start.ts` (with `args`, e.g. `--billing`) on a free port with state in a fresh
 * temporary directory. `node --import tsx` rather than the tsx CLI: one process, so SIGTERM
 * reaches start.ts itself; its own process group, so that a last-resort kill can take the whole tree.
 */
export async function startGateway(args: string[] = []): Promise<GatewayProcess> {
  const dir = mkdtempSync(join(tmpdir(), "modelgate-gw-"));
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  installExitHook();
  const child = spawn(process.execPath, ["--import", "tsx", join("scripts", "start.ts"), ...args], {
    cwd: ROOT,
    env: wranglerEnv({ PORT: String(port), PERSIST_TO: join(dir, "state"), FORCE_COLOR: "0" }),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  running.set(child, dir);
  let output = "";
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);

  return {
    baseUrl,
    dir,
    child,
    output: () => output,
    async ready(deadlineMs) {
      const deadline = Date.now() + deadlineMs;
      while (!output.includes(START_BANNER)) {
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`npm start exited (${child.exitCode ?? child.signalCode}) before its banner`);
        }
        if (Date.now() > deadline) throw new Error(`no banner within ${deadlineMs / 1000} s`);
        await new Promise((r) => setTimeout(r, 200));
      }
    },
    async stop() {
      if (child.pid !== undefined) {
        const tree = treeOf(child);
        if (!hasExited(child)) {
          child.kill("SIGTERM");
          await exitWithin(child, STOP_GRACE_MS);
        }
        // Whatever did not stop with start.ts, e.g. a wrangler it started just as it was told to stop.
        killTree([...tree, ...treeOf(child)]);
        killGroup(child.pid);
      }
      running.delete(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
