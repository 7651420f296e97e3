/**
 * What runs for a gateway, found independently of gateway-process.ts's own bookkeeping: every
 * process whose environment carries the gateway's `PERSIST_TO`, which start.ts, wrangler and
 * workerd all inherit, orphaned or not. Linux only (/proc).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { GatewayProcess } from "../lib/gateway-process";
import { processTable } from "../lib/gateway-process";

/** Pids of live processes started for the gateway whose state is in `dir`. */
export function processesStartedFor(dir: string): number[] {
  const marker = `PERSIST_TO=${join(dir, "state")}\0`;
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) continue; // a zombie is dead already
      if (readFileSync(`/proc/${name}/environ`, "latin1").includes(marker)) pids.push(Number(name));
    } catch {
      // Exited while we looked, or not ours to read.
    }
  }
  return pids;
}

/** Resolves once `wrangler dev` runs in a process group other than start.ts's, with workerd in it. */
export async function untilWranglerRuns(gateway: GatewayProcess, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const pids = new Set(processesStartedFor(gateway.dir));
    const outsideStartGroup = processTable().filter((e) => pids.has(e.pid) && e.pgid !== gateway.child.pid);
    const workerd = outsideStartGroup.some((entry) => {
      try {
        return readFileSync(`/proc/${entry.pid}/cmdline`, "utf8").includes("workerd");
      } catch {
        return false;
      }
    });
    if (workerd && gateway.output().includes("wrangler dev on")) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`wrangler dev did not run within ${ms / 1000} s:\n${gateway.output()}`);
}
