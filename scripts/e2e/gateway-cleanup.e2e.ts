/**
 * Whatever a test starts, it stops, also when it fails: a gateway (start.ts with the simulator,
 * wrangler in its own process group, workerd) leaves no process behind when its start fails, when
 * it is stopped while wrangler runs, or when the process that started it dies without stopping it.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { startGateway } from "../lib/gateway-process";
import { ROOT } from "../lib/local-state";
import { outputOf } from "./child-output";
import { processesStartedFor, untilWranglerRuns } from "./gateway-tree";

/** Gone, or at most a moment away from it: SIGKILL is asynchronous. */
async function expectNothingLeft(dir: string): Promise<void> {
  await expect.poll(() => processesStartedFor(dir), { timeout: 5_000, interval: 100 }).toEqual([]);
}

describe.skipIf(!existsSync("/proc/self/environ"))("e2e: a gateway leaves nothing running", () => {
  it("when its setup fails early (ready() times out during the migrations)", async () => {
    const gateway = await startGateway();
    await expect.poll(() => processesStartedFor(gateway.dir).length, { timeout: 10_000 }).toBeGreaterThan(0);
    await expect(gateway.ready(50)).rejects.toThrow("no banner within 0.05 s");
    await gateway.stop();
    await expectNothingLeft(gateway.dir);
  });

  it("when it is stopped while wrangler dev and workerd run in their own process group", async () => {
    const gateway = await startGateway();
    try {
      await untilWranglerRuns(gateway, 90_000);
      expect(processesStartedFor(gateway.dir).length).toBeGreaterThanOrEqual(3);
    } finally {
      await gateway.stop();
    }
    await expectNothingLeft(gateway.dir);
  }, 150_000);

  // An uncaught error and process.exit() both end in the "exit" event; a signal does not.
  for (const how of ["throw", "sigterm"]) {
    it(`when the process that started it ends without stopping it (${how})`, async () => {
      const child = spawn(process.execPath, ["--import", "tsx", join("scripts", "e2e", "gateway-then-exit.ts"), how], {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      });
      const { code, stdout, stderr } = await outputOf(child);
      const dir = /^dir (.+)$/m.exec(stdout)?.[1];
      expect(dir, stderr).toBeDefined();
      expect(Number(/^running (\d+)$/m.exec(stdout)?.[1]), stderr).toBeGreaterThanOrEqual(3);
      expect(code).not.toBe(0);
      await expectNothingLeft(dir ?? "");
      expect(existsSync(dir ?? ""), "its state directory is removed").toBe(false);
    }, 150_000);
  }
});
