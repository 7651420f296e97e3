/**
 * Ids in one `IN (…)` list: D1 binds at most 100 parameters in one statement, and this leaves
 * room for the statement's others.
 */
export const D1_IDS_PER_STATEMENT = 90;

/** `items` in consecutive slices of at most `size`. */
export function chunked<T>(items: readonly T[], size: number): T[][] {
  const chunks: T[][] = [];
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size));
  return chunks;
}
