/**
 * Usage as CSV (RFC 4180: CRLF line ends, fields quoted when they hold a quote, comma or line
 * break, quotes doubled), safe to open in a spreadsheet: a text field starting with `=`, `+`, `-`,
 * `@`, a tab or a carriage return is prefixed with `'` so that it is never read as a formula.
 * Token names and member addresses are written by users, so every text field is treated so.
 */
import type { UsageDay, UsageGroup } from "./totals";

const FORMULA_START = /^[=+\-@\t\r]/;

/** One text field, neutralised and quoted as needed. */
export function csvField(value: string): string {
  const safe = FORMULA_START.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** The CSV of usage rows: a header row, then one row per day and group. */
export function usageCsv(groupBy: UsageGroup, days: readonly UsageDay[]): string {
  const header = ["day", groupBy, `${groupBy}_id`, "requests", "prompt_tokens", "completion_tokens", "total_tokens"];
  const lines = [header.join(",")];
  for (const d of days) {
    lines.push(
      [
        csvField(d.day),
        csvField(d.label),
        csvField(d.key),
        String(d.requests),
        String(d.promptTokens),
        String(d.completionTokens),
        String(d.totalTokens),
      ].join(","),
    );
  }
  return `${lines.join("\r\n")}\r\n`;
}
