/**
 * `weights:upload`'s progress: one line redrawn in place on a terminal, with messages above it;
 * plain lines elsewhere, at most one status line every 10 seconds; resumed bytes count as done
 * but not towards the rate.
 */
import { describe, expect, it } from "vitest";
import { formatBytes, formatDuration, ProgressMeter } from "../lib/progress";

function meter(tty: boolean, total = 10 * 1024 * 1024) {
  let now = 0;
  const out: string[] = [];
  const m = new ProgressMeter(total, { tty, write: (text) => out.push(text), now: () => now });
  const advance = (ms: number) => {
    now += ms;
  };
  return { m, out, advance };
}

describe("weights:upload progress", () => {
  it("formats sizes and durations", () => {
    expect(formatBytes(83.3333)).toBe("83 B");
    expect(formatBytes(1536)).toBe("1.5 KiB");
    expect(formatBytes(13.5 * 1024 ** 3)).toBe("13.5 GiB");
    expect(formatDuration(95)).toBe("1m 35s");
    expect(formatDuration(3725)).toBe("1h 2m");
  });

  it("on a terminal redraws one line with bytes, rate and time left, messages above it", () => {
    const { m, out, advance } = meter(true);
    advance(4_000);
    m.sentBytes(4 * 1024 * 1024);
    expect(out.at(-1)).toBe("\r\x1b[2K4.0 MiB / 10.0 MiB (40%), 1.0 MiB/s, 6s left");
    m.line("  shard: retrying");
    expect(out.slice(-2)).toEqual([
      "\r\x1b[2K  shard: retrying\n",
      "\r\x1b[2K4.0 MiB / 10.0 MiB (40%), 1.0 MiB/s, 6s left",
    ]);
    m.finish();
    expect(out.at(-1)).toBe("\n");
  });

  it("elsewhere prints plain lines, a status at most every 10 s, and resumed bytes are not in the rate", () => {
    const { m, out, advance } = meter(false);
    m.skippedBytes(5 * 1024 * 1024);
    expect(out).toEqual(["5.0 MiB / 10.0 MiB (50%), 0 B/s, estimating\n"]);
    advance(5_000);
    m.sentBytes(1024 * 1024);
    expect(out).toHaveLength(1);
    advance(5_000);
    m.sentBytes(1024 * 1024);
    expect(out.at(-1)).toBe("7.0 MiB / 10.0 MiB (70%), 204.8 KiB/s, 15s left\n");
    for (const line of out) expect(line).not.toContain("\r");
  });
});
