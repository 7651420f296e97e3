/**
 * How screening compares names. A listed party and an applicant rarely spell a name the same
 * way: case, punctuation, accents, legal forms and word order differ. Both sides are reduced to
 * the same key, and only equal keys match, so a different company that shares a word is no match.
 */

/** Legal forms dropped from the end of a name ("Acme Co., Ltd." is "Acme"). */
const TRAILING_LEGAL_FORMS: ReadonlySet<string> = new Set([
  "ab",
  "ag",
  "bv",
  "co",
  "company",
  "corp",
  "corporation",
  "gmbh",
  "inc",
  "incorporated",
  "kg",
  "limited",
  "llc",
  "llp",
  "lp",
  "ltd",
  "nv",
  "oy",
  "plc",
  "pte",
  "pty",
  "sa",
  "sarl",
  "spa",
  "srl",
]);

/** Legal forms written before the name (Russian and CIS companies: "OOO Acme"). */
const LEADING_LEGAL_FORMS: ReadonlySet<string> = new Set(["cjsc", "jsc", "oao", "ojsc", "ooo", "pao", "pjsc", "zao"]);

/**
 * A name reduced for display and comparison: compatibility-decomposed (NFKD) with its accents
 * dropped, lower case, dots and apostrophes removed inside words ("S.A.", "O'Brien"), every other
 * punctuation mark a space, legal forms removed from the ends, whitespace collapsed. A name made
 * of legal forms alone keeps them.
 */
export function normalizeEntityName(name: string): string {
  const plain = name
    .normalize("NFKD")
    // Invisible characters (a soft hyphen, a zero-width space) would split a word a reader sees whole.
    .replace(/\p{Cf}+/gu, "")
    .replace(/\p{M}+/gu, "")
    .toLowerCase()
    .replace(/&/g, " and ")
    .replace(/['’`.]/g, "")
    .replace(/[^\p{L}\p{N}]+/gu, " ")
    .trim();
  const words = plain.split(" ").filter((w) => w !== "");
  let start = 0;
  let end = words.length;
  while (end - start > 1 && TRAILING_LEGAL_FORMS.has(words[end - 1] as string)) end -= 1;
  while (end - start > 1 && LEADING_LEGAL_FORMS.has(words[start] as string)) start += 1;
  return words.slice(start, end).join(" ");
}

/**
 * The key screening matches on: the normalized name's words in sorted order, so that a list's
 * "IVANOV, Ivan" and an applicant's "Ivan Ivanov" meet. Empty for a name with no letters or digits.
 */
export function screeningKey(name: string): string {
  return normalizeEntityName(name).split(" ").filter(Boolean).sort().join(" ");
}
