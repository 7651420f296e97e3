/** D1 binds at most this many parameters in one statement. */
export const D1_MAX_PARAMETERS = 100;

/** Ids in one `IN (…)` list, leaving room for the statement's other parameters. */
export const D1_IDS_PER_STATEMENT = 90;

/** `items` in consecutive slices of at most `size`. */
export function chunked<T>(items: readonly T[], size: number): T[][] {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size));
  return chunks;
}
