/**
 * Where local state lives and how scripts reach it. `wrangler dev`, `wrangler d1 … --local` and
 * `getPlatformProxy()` must all agree on one directory, or a seed lands in a database the server
 * never reads; everything here takes that directory from one place.
 */
import { type SpawnOptions, spawn } from "node:child_process";
import { appendFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { getPlatformProxy } from "wrangler";

/** The project root: scripts are run from it by npm. */
export const ROOT = resolve(import.meta.dirname, "..", "..");

/**
 * The local persistence directory, as `wrangler dev --persist-to` takes it (wrangler adds `v3/`).
 * `PERSIST_TO` moves it, e.g. for the smoke test, which must not touch a developer's data.
 */
export function persistDir(): string {
  return resolve(ROOT, process.env.PERSIST_TO ?? join(".wrangler", "state"));
}

/** Where `npm start` records the demo applications: next to the state directory. */
export function demoFile(): string {
  return join(dirname(persistDir()), "demo.json");
}

/** Environment for every wrangler run: never phone home. */
export function wranglerEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, WRANGLER_SEND_METRICS: "false", ...extra };
}

/** Spawns the project's wrangler with the Node that runs this script (the project's Node 22). */
export function spawnWrangler(args: string[], options: SpawnOptions = {}) {
  return spawn(process.execPath, [join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js"), ...args], {
    cwd: ROOT,
    env: wranglerEnv(),
    ...options,
  });
}

/**
 * Runs wrangler to completion, echoing its output, or appending it to `logFile` when one is given
 * (then a failure's message ends with the output's last lines); rejects on a non-zero exit.
 */
export function runWrangler(args: string[], logFile?: string): Promise<void> {
  // stdin is not a terminal, so wrangler takes its non-interactive defaults instead of prompting
  // (for `d1 migrations apply`, "yes, apply").
  const child = spawnWrangler(args, { stdio: ["ignore", logFile ? "pipe" : "inherit", logFile ? "pipe" : "inherit"] });
  let output = "";
  const keep = (chunk: Buffer) => {
    output += chunk.toString();
    if (logFile) appendFileSync(logFile, chunk);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  return new Promise((done, fail) => {
    child.on("error", fail);
    child.on("close", (code, signal) => {
      if (code === 0) return done();
      const tail = logFile ? `\n${lastLines(output, 30)}` : "";
      fail(new Error(`wrangler ${args.join(" ")} exited with ${signal ?? code}${tail}`));
    });
  });
}

/** The last `count` lines of `text`. */
export function lastLines(text: string, count: number): string {
  return text.trimEnd().split("\n").slice(-count).join("\n");
}

/** Applies the D1 migrations to the local database in the persistence directory. */
export function applyLocalMigrations(logFile?: string): Promise<void> {
  return runWrangler(["d1", "migrations", "apply", "DB", "--local", "--persist-to", persistDir()], logFile);
}

/** Where `npm start` writes what wrangler prints: inside the local state, replaced on every start. */
export function startLogFile(): string {
  return join(persistDir(), "npm-start.log");
}

/**
 * Runs `work` with the bindings of wrangler.toml backed by the local state, exactly the files
 * `wrangler dev --persist-to` reads. Remote bindings are off: nothing here may reach Cloudflare.
 */
export async function withLocalBindings<T>(work: (env: Env) => Promise<T>): Promise<T> {
  const proxy = await getPlatformProxy<Env>({
    configPath: join(ROOT, "wrangler.toml"),
    // getPlatformProxy takes the versioned directory itself; wrangler dev appends `v3` on its own.
    persist: { path: join(persistDir(), "v3") },
    remoteBindings: false,
  });
  try {
    return await work(proxy.env);
  } finally {
    await proxy.dispose();
  }
}
