/**
 * Runs the gateway exactly as `npm start` does (`scripts/start.ts`), on a free port with its state
 * in a throwaway directory, for checks that need the real thing in Node: the smoke test and the
 * browser tests. Stopping it takes the whole process tree (start.ts, wrangler, workerd) down.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
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
  /** Asks start.ts to stop (SIGTERM), then kills the process group if it has not; removes the state. */
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
  const child = spawn(process.execPath, ["--import", "tsx", join("scripts", "start.ts"), ...args], {
    cwd: ROOT,
    env: wranglerEnv({ PORT: String(port), PERSIST_TO: join(dir, "state"), FORCE_COLOR: "0" }),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
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
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await exitWithin(child, STOP_GRACE_MS);
        try {
          if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
