/**
 * What a repo id, a revision and a file path may look like when they arrive in a URL. The rules
 * follow the Hugging Face Hub's own (and `huggingface_hub`'s `validate_repo_id`): anything else
 * names nothing the catalog can hold, so it is refused before any lookup and never reaches a
 * response header or a query.
 */

/** The Hub's longest repo id. */
const MAX_REPO_ID_LENGTH = 96;
/** Branch names, tags, `refs/pr/N` and 40-hex commit ids all fit. */
const MAX_REVISION_LENGTH = 256;
/** Longer than any weights file's path; short enough to keep errors and logs small. */
const MAX_FILE_PATH_LENGTH = 1024;

const REPO_PART = /^[A-Za-z0-9._-]+$/;
/** C0 controls, DEL and C1 controls: none belongs in a name, and CR, LF or NUL would break headers. */
function hasControlCharacter(value: string): boolean {
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i);
    if (code < 0x20 || (code >= 0x7f && code <= 0x9f)) return true;
  }
  return false;
}

/** A Hub repo id: `namespace/name` of `[A-Za-z0-9._-]`, no `--` or `..`, at most 96 characters. */
export function isRepoId(repo: string): boolean {
  if (repo.length > MAX_REPO_ID_LENGTH || repo.includes("--") || repo.includes("..")) return false;
  const parts = repo.split("/");
  return parts.length === 2 && parts.every((part) => REPO_PART.test(part) && !/^[.-]|[.-]$/.test(part));
}

/** Slash-separated segments with no control characters, no `.`, `..` or empty segment, no leading `/`. */
function isRelativePath(value: string, maxLength: number): boolean {
  if (value.length === 0 || value.length > maxLength || hasControlCharacter(value)) return false;
  return value.split("/").every((segment) => segment !== "" && segment !== "." && segment !== "..");
}

/** A revision: a ref such as `main` or `refs/pr/1`, or a commit id. */
export function isRevision(revision: string): boolean {
  return isRelativePath(revision, MAX_REVISION_LENGTH);
}

/** A file path inside a revision, relative and without `..`. Any other Unicode is allowed. */
export function isFilePath(path: string): boolean {
  return isRelativePath(path, MAX_FILE_PATH_LENGTH);
}

/**
 * A boolean query parameter (`recursive`, `expand`) read the way the Hub reads it: `true` in any
 * case, or `1`. `huggingface_hub` 0.x (requests) sends Python's `True`/`False`, 1.x (httpx) and
 * `@huggingface/hub` send `true`/`false`; anything else, or no value, is false.
 */
export function isHubTrue(value: string | undefined): boolean {
  if (value === undefined) return false;
  const text = value.trim().toLowerCase();
  return text === "true" || text === "1";
}
