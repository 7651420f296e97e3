/** How the console writes numbers, sizes, times and ages. */

/** `1,200,000,000`, grouped for reading at a glance. */
export function formatCount(n: number): string {
  return n.toLocaleString("en-US");
}

/** A byte count in binary units: `13.5 GiB`. */
export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** An ISO instant as `2026-03-02 09:00 UTC`. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return "—";
  return `${iso.replace("T", " ").slice(0, 16)} UTC`;
}

/** How long a case has waited, in the largest sensible unit: `3 d 4 h`, `5 h`, `12 min`. */
export function formatAge(seconds: number): string {
  const days = Math.floor(seconds / 86_400);
  const hours = Math.floor((seconds % 86_400) / 3600);
  if (days > 0) return hours > 0 ? `${days} d ${hours} h` : `${days} d`;
  if (hours > 0) return `${hours} h`;
  return `${Math.max(0, Math.floor(seconds / 60))} min`;
}

/** Human words for an application status. */
export const STATUS_WORDS: Record<string, string> = {
  pending_review: "Pending review",
  info_requested: "Information requested",
  approved: "Approved",
  rejected: "Rejected",
};
