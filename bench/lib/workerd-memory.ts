/**
 * Which workerd process serves a port, and how much memory it holds, from /proc: Linux only.
 */
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

/** Inodes of the TCP sockets listening on `port`, on any local address. */
function listeningInodes(port: number): Set<string> {
  const inodes = new Set<string>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue;
    }
    // sl local_address rem_address st … inode: local_address is HEXADDR:HEXPORT, st 0A is LISTEN.
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      const localPort = fields[1]?.split(":")[1];
      if (fields[3] === "0A" && localPort && Number.parseInt(localPort, 16) === port && fields[9]) {
        inodes.add(fields[9]);
      }
    }
  }
  return inodes;
}

/** The parent pid of `pid`, from the fields after the command name (which may hold spaces). */
function parentOf(pid: string): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

function holdsSocket(pid: string, inodes: Set<string>): boolean {
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1];
      if (inode && inodes.has(inode)) return true;
    } catch {
      // The descriptor closed while we looked.
    }
  }
  return false;
}

/**
 * The workerd process that this process spawned (Miniflare starts workerd directly) and that
 * listens on `port`: the one serving what is being measured, never another workerd on the
 * machine. Throws unless exactly one process fits.
 */
export function workerdListeningOn(port: number): number {
  const inodes = listeningInodes(port);
  const found: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (parentOf(entry) !== process.pid || !readlinkSync(`/proc/${entry}/exe`).includes("workerd")) continue;
      if (holdsSocket(entry, inodes)) found.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  if (found.length !== 1 || found[0] === undefined) {
    throw new Error(`expected one workerd child of ${process.pid} listening on port ${port}, found ${found.length}`);
  }
  return found[0];
}

/** A process's resident memory now (`VmRSS`) and at its highest so far (`VmHWM`), in bytes. */
export function residentMemory(pid: number): { now: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(status);
    if (!match?.[1]) throw new Error(`/proc/${pid}/status has no ${field}`);
    return Number(match[1]) * 1024;
  };
  return { now: kib("VmRSS"), peak: kib("VmHWM") };
}

/** Linux's USER_HZ: what /proc counts CPU time in. */
const CLOCK_TICKS = 100;

/** CPU time (user + system) a process has used so far, in milliseconds. */
export function cpuMillis(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name: state is the first, utime the 12th, stime the 13th.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

/**
 * Waits until the processes `pids` are idle: at most one clock tick of CPU among them over 200 ms,
 * for 10 s at most. A process that has exited counts as idle.
 */
export async function untilIdle(pids: readonly number[]): Promise<void> {
  const unique = [...new Set(pids)];
  const spent = () =>
    unique.reduce((sum, pid) => {
      try {
        return sum + cpuMillis(pid);
      } catch {
        return sum;
      }
    }, 0);
  const until = Date.now() + 10_000;
  let before = spent();
  while (Date.now() < until) {
    await new Promise((done) => setTimeout(done, 200));
    const now = spent();
    if (now - before <= 10) return;
    before = now;
  }
}
