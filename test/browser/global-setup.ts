/**
 * Browser-test global setup, run once per run before any test file: finds the Chromium the files
 * drive (or installs Debian's, as root), and hands its path to them as `CHROMIUM_PATH`. Without a
 * browser the run stops here with one line saying what to run, instead of every file failing.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { CHROMIUM_PATH_VAR, ensureChromium } from "../../scripts/lib/chromium";
import { ROOT } from "../../scripts/lib/local-state";

export default async function findBrowser(): Promise<void> {
  const artifacts = join(ROOT, "test-artifacts");
  mkdirSync(artifacts, { recursive: true });
  try {
    // Test files run in workers spawned after this, with this process's environment.
    process.env[CHROMIUM_PATH_VAR] = await ensureChromium(join(artifacts, "chromium-install.log"));
  } catch (error) {
    // One line, not a stack trace: the message says what to run.
    console.error(`\n✖ ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
}
