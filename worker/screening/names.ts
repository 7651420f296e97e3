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
 * Letters of other scripts that look like a Latin letter, and the letter they look like: folded
 * so that a name spelled with one ("Acme Rоckets" with a Cyrillic о) meets the name it imitates.
 * Drawn from Unicode's confusables data (UTS #39, `confusables.txt`) for the Cyrillic, Greek and
 * Armenian letters that pass for Latin ones; capitals map to capitals, since a name is lower-cased
 * only after folding (a Greek Η reads as H, its lower case η does not). Fullwidth and mathematical
 * letters need no entry: compatibility decomposition already makes them Latin.
 */
const LOOK_ALIKE_LETTERS: ReadonlyMap<string, string> = new Map([
  // Cyrillic capitals.
  ["\u0405", "S"], // Ѕ
  ["\u0406", "I"], // І
  ["\u0408", "J"], // Ј
  ["\u0410", "A"], // А
  ["\u0412", "B"], // В
  ["\u0415", "E"], // Е
  ["\u041A", "K"], // К
  ["\u041C", "M"], // М
  ["\u041D", "H"], // Н
  ["\u041E", "O"], // О
  ["\u0420", "P"], // Р
  ["\u0421", "C"], // С
  ["\u0422", "T"], // Т
  ["\u0423", "Y"], // У
  ["\u0425", "X"], // Х
  ["\u0474", "V"], // Ѵ
  ["\u04AE", "Y"], // Ү
  ["\u050C", "G"], // Ԍ
  ["\u051A", "Q"], // Ԛ
  ["\u051C", "W"], // Ԝ
  // Cyrillic small letters, with в к м н т, which read as small capitals of B K M H T.
  ["\u0430", "a"], // а
  ["\u0432", "b"], // в
  ["\u0433", "r"], // г
  ["\u0435", "e"], // е
  ["\u043A", "k"], // к
  ["\u043C", "m"], // м
  ["\u043D", "h"], // н
  ["\u043E", "o"], // о
  ["\u0440", "p"], // р
  ["\u0441", "c"], // с
  ["\u0442", "t"], // т
  ["\u0443", "y"], // у
  ["\u0445", "x"], // х
  ["\u0455", "s"], // ѕ
  ["\u0456", "i"], // і
  ["\u0458", "j"], // ј
  ["\u0461", "w"], // ѡ
  ["\u0475", "v"], // ѵ
  ["\u04AF", "y"], // ү
  ["\u04BB", "h"], // һ
  ["\u0501", "d"], // ԁ
  ["\u051B", "q"], // ԛ
  ["\u051D", "w"], // ԝ
  // Greek capitals.
  ["\u037F", "J"], // Ϳ
  ["\u0391", "A"], // Α
  ["\u0392", "B"], // Β
  ["\u0395", "E"], // Ε
  ["\u0396", "Z"], // Ζ
  ["\u0397", "H"], // Η
  ["\u0399", "I"], // Ι
  ["\u039A", "K"], // Κ
  ["\u039C", "M"], // Μ
  ["\u039D", "N"], // Ν
  ["\u039F", "O"], // Ο
  ["\u03A1", "P"], // Ρ
  ["\u03A4", "T"], // Τ
  ["\u03A5", "Y"], // Υ
  ["\u03A7", "X"], // Χ
  ["\u03F9", "C"], // Ϲ
  // Greek small letters.
  ["\u03B1", "a"], // α
  ["\u03B3", "y"], // γ
  ["\u03B9", "i"], // ι
  ["\u03BA", "k"], // κ
  ["\u03BD", "v"], // ν
  ["\u03BF", "o"], // ο
  ["\u03C1", "p"], // ρ
  ["\u03C5", "u"], // υ
  ["\u03C7", "x"], // χ
  ["\u03F2", "c"], // ϲ
  ["\u03F3", "j"], // ϳ
  // Armenian.
  ["\u054D", "U"], // Ս
  ["\u054F", "S"], // Տ
  ["\u0555", "O"], // Օ
  ["\u0570", "h"], // հ
  ["\u0578", "n"], // ո
  ["\u057D", "u"], // ս
  ["\u0581", "g"], // ց
  ["\u0585", "o"], // օ
  // A Latin letter that passes for another: the dotless ı.
  ["\u0131", "i"], // ı
]);

const LOOK_ALIKE_PATTERN = new RegExp(`[${[...LOOK_ALIKE_LETTERS.keys()].join("")}]`, "gu");

/** The name's words, reduced (see `normalizeEntityName`), look-alike letters folded or not. */
function entityNameWords(name: string, foldLookAlikes: boolean): string[] {
  let plain = name
    .normalize("NFKD")
    // Invisible characters (a soft hyphen, a zero-width space) would split a word a reader sees whole.
    .replace(/\p{Cf}+/gu, "")
    .replace(/\p{M}+/gu, "");
  if (foldLookAlikes) plain = plain.replace(LOOK_ALIKE_PATTERN, (letter) => LOOK_ALIKE_LETTERS.get(letter) ?? letter);
  const words = plain
    .toLowerCase()
    .replace(/&/g, " and ")
    .replace(/['’`.]/g, "")
    .replace(/[^\p{L}\p{N}]+/gu, " ")
    .split(" ")
    .filter((w) => w !== "");
  let start = 0;
  let end = words.length;
  while (end - start > 1 && TRAILING_LEGAL_FORMS.has(words[end - 1] as string)) end -= 1;
  while (end - start > 1 && LEADING_LEGAL_FORMS.has(words[start] as string)) start += 1;
  return words.slice(start, end);
}

/**
 * A name reduced for comparison: compatibility-decomposed (NFKD) with its accents dropped,
 * letters of other scripts that look like Latin ones folded to those (`LOOK_ALIKE_LETTERS`), lower
 * case, dots and apostrophes removed inside words ("S.A.", "O'Brien"), every other punctuation
 * mark a space, legal forms removed from the ends, whitespace collapsed. A name made of legal
 * forms alone keeps them.
 */
export function normalizeEntityName(name: string): string {
  return entityNameWords(name, true).join(" ");
}

/**
 * The key screening matches on: the normalized name's words in sorted order, so that a list's
 * "IVANOV, Ivan" and an applicant's "Ivan Ivanov" meet. Empty for a name with no letters or digits.
 */
export function screeningKey(name: string): string {
  return entityNameWords(name, true).sort().join(" ");
}

/**
 * The keys a name is looked up under in a list: its `screeningKey`, and the same key without
 * look-alike letters folded, which is how a list loaded before they were folded keeps its names
 * until it is loaded again. One key when the name has no look-alike letters; none without letters
 * or digits.
 */
export function screeningLookupKeys(name: string): string[] {
  const keys = new Set([screeningKey(name), entityNameWords(name, false).sort().join(" ")]);
  keys.delete("");
  return [...keys];
}

/**
 * The key organization names resemble each other by: the `screeningKey`, so punctuation, legal
 * forms, word order and look-alike letters make no difference. Null for a name that tells no
 * organization apart — no letters or digits, or legal forms alone ("GmbH", "Co., Ltd.") — which
 * would otherwise resemble every other such name.
 */
export function resemblanceKey(name: string): string | null {
  const words = entityNameWords(name, true);
  const distinctive = words.some((w) => !TRAILING_LEGAL_FORMS.has(w) && !LEADING_LEGAL_FORMS.has(w));
  return distinctive ? words.sort().join(" ") : null;
}
