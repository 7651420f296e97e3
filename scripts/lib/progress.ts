/**
 * Progress of a long transfer: bytes done of the total, the rate and the time left. On a terminal
 * it is one line redrawn in place (at most every 200 ms) with messages printed above it; anywhere
 * else (a CI log, a pipe) it is plain lines, one per message plus a status line at most every
 * 10 seconds, so a log neither floods nor goes silent for an hour.
 */

/** Where the meter writes and how it tells time; defaults are the process's stdout and clock. */
export interface ProgressOptions {
  write?: (text: string) => void;
  /** One updating line (a terminal) or plain lines. */
  tty?: boolean;
  now?: () => number;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** `1536` → `1.5 KiB`. */
export function formatBytes(n: number): string {
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? Math.round(value) : value.toFixed(1)} ${UNITS[unit]}`;
}

/** `3725` seconds → `1h 2m`; `95` → `1m 35s`. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${s}s`;
}

/** A meter over `total` bytes. */
export class ProgressMeter {
  private readonly write: (text: string) => void;
  /** Whether the status is one line redrawn in place (so per-step lines would only scroll it away). */
  readonly tty: boolean;
  private readonly now: () => number;
  private readonly started: number;
  /** Bytes done, counting those a resumed upload found already stored. */
  private done = 0;
  /** Bytes sent in this run: the rate is theirs alone. */
  private sent = 0;
  private lastDrawn = -Infinity;
  private drawn = false;

  constructor(
    private readonly total: number,
    options: ProgressOptions = {},
  ) {
    this.write = options.write ?? ((text) => process.stdout.write(text));
    this.tty = options.tty ?? process.stdout.isTTY === true;
    this.now = options.now ?? (() => Date.now());
    this.started = this.now();
  }

  /** `bytes` were sent now. */
  sentBytes(bytes: number): void {
    this.done += bytes;
    this.sent += bytes;
    this.tick();
  }

  /** `bytes` were already stored (a resumed upload): done, but not part of the rate. */
  skippedBytes(bytes: number): void {
    this.done += bytes;
    this.tick();
  }

  /** A message, printed above the status line on a terminal. */
  line(message: string): void {
    if (this.tty) {
      this.write(`\r\x1b[2K${message}\n`);
      this.drawn = false;
      this.draw();
    } else {
      this.write(`${message}\n`);
    }
  }

  /** Ends the meter: the terminal's status line stays as it last read. */
  finish(): void {
    if (this.tty && this.drawn) {
      this.draw();
      this.write("\n");
      this.drawn = false;
    }
  }

  /** `412.3 MiB / 13.5 GiB (3%), 48.2 MiB/s, 4m 31s left` */
  status(): string {
    const seconds = (this.now() - this.started) / 1000;
    const rate = seconds > 0 ? this.sent / seconds : 0;
    const percent = this.total > 0 ? Math.floor((this.done / this.total) * 100) : 100;
    // The first seconds' rate says little (connections warming up, a first small file).
    const left = rate > 0 && seconds >= 3 ? `${formatDuration((this.total - this.done) / rate)} left` : "estimating";
    return `${formatBytes(this.done)} / ${formatBytes(this.total)} (${percent}%), ${formatBytes(rate)}/s, ${left}`;
  }

  private tick(): void {
    const now = this.now();
    if (now - this.lastDrawn < (this.tty ? 200 : 10_000)) return;
    this.lastDrawn = now;
    if (this.tty) this.draw();
    else this.write(`${this.status()}\n`);
  }

  private draw(): void {
    this.write(`\r\x1b[2K${this.status()}`);
    this.drawn = true;
  }
}
