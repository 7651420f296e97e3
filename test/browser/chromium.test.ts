/**
 * How the browser tests find Chromium (scripts/lib/chromium.ts), on a made-up machine: which path
 * wins, Playwright's cache, installing with apt only as root, and the one line shown otherwise.
 */
import { describe, expect, it } from "vitest";
import { type ChromiumSearch, ensureChromium, findChromium, SYSTEM_CHROMIUM_PATHS } from "../../scripts/lib/chromium";

const CACHE = "/home/dev/.cache/ms-playwright";

function machine(executables: string[], env: Record<string, string> = {}, cache: string[] = []): ChromiumSearch {
  const present = new Set(executables);
  return {
    env,
    candidates: SYSTEM_CHROMIUM_PATHS,
    playwrightCache: CACHE,
    isExecutable: (path) => present.has(path),
    listDir: (path) => (path === CACHE ? cache : []),
  };
}

describe("browser tests: finding Chromium", () => {
  it("takes CHROMIUM_PATH first, over the system's browser", () => {
    const found = findChromium(
      machine(["/opt/chrome/chrome", "/usr/bin/chromium"], { CHROMIUM_PATH: "/opt/chrome/chrome" }),
    );
    expect(found).toEqual({ path: "/opt/chrome/chrome", source: "CHROMIUM_PATH" });
  });

  it("refuses a CHROMIUM_PATH that is not executable instead of picking another browser", () => {
    const found = findChromium(machine(["/usr/bin/chromium"], { CHROMIUM_PATH: "/nowhere/chrome" }));
    expect(found).toEqual({ path: undefined, problem: "CHROMIUM_PATH=/nowhere/chrome is not an executable file" });
  });

  it("tries /usr/bin/chromium, /usr/bin/chromium-browser, /usr/bin/google-chrome in that order", () => {
    expect(findChromium(machine(["/usr/bin/google-chrome", "/usr/bin/chromium-browser"])).path).toBe(
      "/usr/bin/chromium-browser",
    );
    expect(findChromium(machine(["/usr/bin/google-chrome"])).path).toBe("/usr/bin/google-chrome");
  });

  it("falls back to the newest build in Playwright's cache that has a browser", () => {
    const cache = ["chromium-1090", "chromium-1200", "chromium_headless_shell-1200", "chromium-1100", "ffmpeg-1010"];
    const found = findChromium(
      machine([`${CACHE}/chromium-1100/chrome-linux/chrome`, `${CACHE}/chromium-1090/chrome-linux/chrome`], {}, cache),
    );
    expect(found).toEqual({ path: `${CACHE}/chromium-1100/chrome-linux/chrome`, source: "Playwright's cache" });
  });

  it("finds nothing on a machine without a browser", () => {
    expect(findChromium(machine([], {}, ["chromium-1200"]))).toEqual({ path: undefined });
  });

  it("as root on apt, installs chromium once and uses it", async () => {
    const installed: string[] = [];
    const search = machine([]);
    const path = await ensureChromium("/tmp/apt.log", search, { apt: true, root: true }, async (log) => {
      installed.push(log);
      search.isExecutable = (p) => p === "/usr/bin/chromium";
      return true;
    });
    expect(path).toBe("/usr/bin/chromium");
    expect(installed).toEqual(["/tmp/apt.log"]);
  });

  it("says what to run, in one line, when apt's install fails", async () => {
    const failed = ensureChromium("/tmp/apt.log", machine([]), { apt: true, root: true }, async () => false);
    await expect(failed).rejects.toThrow(
      "Installing chromium with apt-get failed (see /tmp/apt.log). No Chromium for the browser tests: run `apt-get install -y chromium`, or `CHROMIUM_PATH=/path/to/chrome npm test`.",
    );
  });

  it("never installs without root: tells the user to sudo, or to name a browser", async () => {
    let asked = false;
    const refused = ensureChromium("/tmp/apt.log", machine([]), { apt: true, root: false }, async () => {
      asked = true;
      return true;
    });
    await expect(refused).rejects.toThrow(
      /^No Chromium for the browser tests: run `sudo apt-get install -y chromium`, or `CHROMIUM_PATH=\/path\/to\/chrome npm test`\.$/,
    );
    expect(asked).toBe(false);
  });

  it("without apt, names the package manager and CHROMIUM_PATH", async () => {
    await expect(ensureChromium("/tmp/apt.log", machine([]), { apt: false, root: true })).rejects.toThrow(
      "run `install Chromium with your package manager`, or `CHROMIUM_PATH=/path/to/chrome npm test`.",
    );
  });
});
