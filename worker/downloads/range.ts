/**
 * HTTP Range requests (RFC 9110 §14) for a single object. We serve one range; a request for
 * several ranges is answered with the whole object (200), which the RFC allows and every
 * download tool handles.
 */

/** What to send for a request. */
export type RangePlan =
  | { kind: "full" }
  | { kind: "partial"; offset: number; length: number }
  | { kind: "unsatisfiable" };

/**
 * Plans the answer to a `Range` header for an object of `size` bytes whose current strong etag is
 * `etag`. `If-Range` with any validator other than that etag means the client's partial copy is
 * stale: it gets the whole object.
 */
export function planRange(rangeHeader: string | null, ifRange: string | null, size: number, etag: string): RangePlan {
  if (!rangeHeader) return { kind: "full" };
  if (ifRange !== null && ifRange.trim() !== `"${etag}"`) return { kind: "full" };
  const match = /^\s*bytes\s*=\s*(.+)$/i.exec(rangeHeader);
  if (!match) return { kind: "full" }; // An unknown unit is ignored (RFC 9110 §14.2).
  const specs = (match[1] as string)
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (specs.length !== 1) return { kind: "full" };
  const spec = specs[0] as string;
  const parts = /^(\d*)-(\d*)$/.exec(spec);
  if (!parts) return { kind: "full" };
  const [, first, last] = parts as unknown as [string, string, string];
  if (first === "" && last === "") return { kind: "full" };
  if (first === "") {
    // Suffix: the last n bytes.
    const n = Number(last);
    if (n === 0 || size === 0) return { kind: "unsatisfiable" };
    const length = Math.min(n, size);
    return { kind: "partial", offset: size - length, length };
  }
  const start = Number(first);
  if (!Number.isSafeInteger(start) || start >= size) return { kind: "unsatisfiable" };
  const end = last === "" ? size - 1 : Math.min(Number(last), size - 1);
  if (!Number.isSafeInteger(end) || end < start) return { kind: "full" }; // Invalid: ignore the header.
  return { kind: "partial", offset: start, length: end - start + 1 };
}
