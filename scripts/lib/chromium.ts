/**
 * Which Chromium the browser tests drive, found once per `npm run test:browser` (in the browser
 * config's global setup) and handed to every test file as `CHROMIUM_PATH`. No browser is ever
 * downloaded from a CDN: only the machine's own (or Playwright's cache, if someone filled it) or
 * the distribution's package, installed when we are root on Debian/Ubuntu.
 */
import { spawn } from "node:child_process";
import { accessSync, constants, createWriteStream, existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

/** The environment variable that names the browser, read first and passed on to test files. */
export const CHROMIUM_PATH_VAR = "CHROMIUM_PATH";

/** Where distributions put Chromium (or Chrome), in the order they are tried. */
export const SYSTEM_CHROMIUM_PATHS = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

/** What the search looks at; tests pass their own to see every branch without touching the machine. */
export interface ChromiumSearch {
  env: Record<string, string | undefined>;
  /** Absolute paths tried after `CHROMIUM_PATH`, in order. */
  candidates: string[];
  /** Playwright's browser cache (`~/.cache/ms-playwright`, or `PLAYWRIGHT_BROWSERS_PATH`). */
  playwrightCache: string;
  isExecutable(path: string): boolean;
  listDir(path: string): string[];
}

/** Where a browser was found, or why none was. */
export type ChromiumFound = { path: string; source: string } | { path: undefined; problem?: string };

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function listDir(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

/** The search as this machine answers it. */
export function machineSearch(env: Record<string, string | undefined> = process.env): ChromiumSearch {
  return {
    env,
    candidates: SYSTEM_CHROMIUM_PATHS,
    playwrightCache: env.PLAYWRIGHT_BROWSERS_PATH || join(homedir(), ".cache", "ms-playwright"),
    isExecutable,
    listDir,
  };
}

/**
 * Finds a Chromium: `CHROMIUM_PATH` (which must then be executable: a wrong path is an error, not
 * a reason to pick another browser), then the distribution's paths, then Playwright's cache
 * (`chromium-<build>/chrome-linux/chrome`, newest build first).
 */
export function findChromium(search: ChromiumSearch): ChromiumFound {
  const named = search.env[CHROMIUM_PATH_VAR];
  if (named) {
    return search.isExecutable(named)
      ? { path: named, source: CHROMIUM_PATH_VAR }
      : { path: undefined, problem: `${CHROMIUM_PATH_VAR}=${named} is not an executable file` };
  }
  for (const candidate of search.candidates) {
    if (search.isExecutable(candidate)) return { path: candidate, source: candidate };
  }
  const builds = search
    .listDir(search.playwrightCache)
    .filter((name) => /^chromium-\d+$/.test(name))
    .sort((a, b) => Number(b.slice("chromium-".length)) - Number(a.slice("chromium-".length)));
  for (const build of builds) {
    const path = join(search.playwrightCache, build, "chrome-linux", "chrome");
    if (search.isExecutable(path)) return { path, source: "Playwright's cache" };
  }
  return { path: undefined };
}

/** What the machine allows: an apt-based system, and whether we may install packages on it. */
export interface InstallAbility {
  apt: boolean;
  root: boolean;
}

export function machineInstallAbility(): InstallAbility {
  return { apt: existsSync("/usr/bin/apt-get"), root: process.getuid?.() === 0 };
}

/** The one line that tells a person exactly what to run when no browser was found or installed. */
export function whatToRun(ability: InstallAbility): string {
  const install = ability.apt
    ? `${ability.root ? "" : "sudo "}apt-get install -y chromium`
    : "install Chromium with your package manager";
  return `No Chromium for the browser tests: run \`${install}\`, or \`${CHROMIUM_PATH_VAR}=/path/to/chrome npm test\`.`;
}

/**
 * Installs Debian's/Ubuntu's `chromium` package with apt, its output going to `logFile`; resolves
 * with whether apt succeeded.
 */
export function installWithApt(logFile: string): Promise<boolean> {
  const log = createWriteStream(logFile);
  const script = "apt-get update && apt-get install -y --no-install-recommends chromium";
  const child = spawn("sh", ["-c", script], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  return new Promise((done) => {
    child.on("error", () => log.end(() => done(false)));
    child.on("close", (code) => log.end(() => done(code === 0)));
  });
}

/**
 * A Chromium for this run: found, or installed with apt when we are root on an apt-based system.
 * Throws an error whose message is the one line to act on when there is none.
 */
export async function ensureChromium(
  logFile: string,
  search: ChromiumSearch = machineSearch(),
  ability: InstallAbility = machineInstallAbility(),
  install: (logFile: string) => Promise<boolean> = installWithApt,
): Promise<string> {
  const found = findChromium(search);
  if (found.path !== undefined) return found.path;
  if (found.problem) throw new Error(`${found.problem}; unset it, or point it at a Chromium or Chrome binary.`);
  if (ability.apt && ability.root) {
    console.log(`No Chromium found: installing Debian's chromium with apt-get (output in ${logFile}) …`);
    if (await install(logFile)) {
      const installed = findChromium(search);
      if (installed.path !== undefined) return installed.path;
    }
    throw new Error(`Installing chromium with apt-get failed (see ${logFile}). ${whatToRun(ability)}`);
  }
  throw new Error(whatToRun(ability));
}
