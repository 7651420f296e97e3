import type { LinkedFile } from "./links";

/** Quotes a string for a POSIX shell, whatever it contains. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'"'"'`)}'`;
}

/** A text file the script writes next to the weights (license, policy, notice). */
export interface BundledText {
  path: string;
  text: string;
}

function heredocMarker(texts: BundledText[]): string {
  let marker = "MODELGATE_EOF";
  while (texts.some((t) => t.text.split("\n").includes(marker))) marker += "_";
  return marker;
}

/**
 * A POSIX `sh` script that downloads every file with resume (curl `-C -` or wget `-c`), checks
 * each sha256 with whichever tool the platform has (`sha256sum` or `shasum -a 256`, never the
 * list file itself), retries a corrupt file once from scratch, and exits non-zero naming every
 * file that still does not verify.
 */
export function downloadScript(input: {
  model: string;
  revision: string;
  expiresAt: string;
  downloadsAllowed: number;
  files: LinkedFile[];
  texts: BundledText[];
}): string {
  const marker = heredocMarker(input.texts);
  const lines: string[] = [
    "#!/bin/sh",
    `# modelgate: ${input.model} at revision ${input.revision}.`,
    `# The links in this script stop working at ${input.expiresAt}; get a fresh script after that.`,
    `# Each link serves ${input.downloadsAllowed} downloads' worth of bytes; a resume draws only what it fetches.`,
    "# Usage: sh download.sh [TARGET_DIR]   (run it again to resume an interrupted download)",
    "set -u",
    `DEST=\${1:-${shellQuote(input.model)}}`,
    'mkdir -p "$DEST" || exit 1',
    "",
    "if command -v sha256sum >/dev/null 2>&1; then",
    "  sha256_of() { sha256sum \"$1\" | cut -d ' ' -f 1; }",
    "elif command -v shasum >/dev/null 2>&1; then",
    "  sha256_of() { shasum -a 256 \"$1\" | cut -d ' ' -f 1; }",
    "else",
    '  echo "modelgate: need sha256sum or shasum to verify the files" >&2; exit 1',
    "fi",
    "if command -v curl >/dev/null 2>&1; then",
    '  fetch() { curl --fail --silent --show-error --location --retry 5 --retry-delay 2 -C - -o "$2" "$1"; }',
    "elif command -v wget >/dev/null 2>&1; then",
    '  fetch() { wget --quiet --tries=5 -c -O "$2" "$1"; }',
    "else",
    '  echo "modelgate: need curl or wget" >&2; exit 1',
    "fi",
    "size_of() { wc -c < \"$1\" | tr -d ' '; }",
    "",
    "FAILED=''",
    "get() {",
    '  url=$1; path=$2; size=$3; sum=$4; target="$DEST/$path"',
    '  mkdir -p "$(dirname "$target")" || return 1',
    '  if [ -f "$target" ] && [ "$(size_of "$target")" -gt "$size" ]; then rm -f "$target"; fi',
    '  if [ ! -f "$target" ] || [ "$(size_of "$target")" -ne "$size" ]; then',
    '    echo "downloading $path"',
    '    fetch "$url" "$target" || { echo "modelgate: download of $path failed" >&2; }',
    "  fi",
    '  if [ -f "$target" ] && [ "$(sha256_of "$target")" = "$sum" ]; then echo "verified $path"; return 0; fi',
    '  echo "modelgate: $path does not match its sha256; downloading it again" >&2',
    '  rm -f "$target"',
    '  fetch "$url" "$target" || true',
    '  if [ -f "$target" ] && [ "$(sha256_of "$target")" = "$sum" ]; then echo "verified $path"; return 0; fi',
    '  echo "modelgate: CHECKSUM MISMATCH for $path" >&2',
    '  FAILED="$FAILED $path"',
    "}",
    "",
  ];
  for (const file of input.files) {
    lines.push(`get ${shellQuote(file.url)} ${shellQuote(file.path)} ${file.size} ${file.sha256}`);
  }
  for (const text of input.texts) {
    lines.push(`cat > "$DEST"/${shellQuote(text.path)} <<'${marker}'`, text.text.replace(/\n$/, ""), marker);
  }
  lines.push(
    "",
    'if [ -n "$FAILED" ]; then',
    '  echo "modelgate: these files failed verification:$FAILED" >&2',
    "  exit 1",
    "fi",
    `echo "all ${input.files.length} files verified in $DEST"`,
    "",
  );
  return lines.join("\n");
}
