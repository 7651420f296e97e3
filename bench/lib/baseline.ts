/**
 * The tree of another commit, for a benchmark to run the gateway as it was there beside the gateway
 * as it is, in the same run: a change's effect measured within one run rather than across two.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, renameSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../../scripts/lib/local-state";

export interface BaselineTree {
  /** The commit's full hash. */
  commit: string;
  /**
   * Its tree, extracted once under the system's temporary directory (outside this one, where the
   * linter and the tests would take it for theirs), sharing this tree's `node_modules`.
   */
  root: string;
}

/** The tree of `ref` (a commit, branch or tag of this repository), extracted on first use. */
export function baselineTree(ref: string): BaselineTree {
  let commit = "";
  try {
    commit = execFileSync("git", ["rev-parse", "--verify", "--quiet", `${ref}^{commit}`], {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
  } catch {}
  if (!/^[0-9a-f]{40}$/.test(commit)) throw new Error(`"${ref}" names no commit of this repository`);
  const root = join(tmpdir(), "modelgate-baselines", commit.slice(0, 12));
  if (!existsSync(join(root, "wrangler.toml"))) {
    const partial = `${root}.partial`;
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(partial, { recursive: true });
    const archive = execFileSync("git", ["archive", "--format=tar", commit], { cwd: ROOT, maxBuffer: 1 << 30 });
    execFileSync("tar", ["-x", "-C", partial], { input: archive });
    renameSync(partial, root);
  }
  // The same dependencies (a baseline whose lockfile differs is measured with this tree's), and
  // the local secrets `npm start` wrote, which wrangler reads beside wrangler.toml.
  if (!existsSync(join(root, "node_modules"))) symlinkSync(join(ROOT, "node_modules"), join(root, "node_modules"));
  if (existsSync(join(ROOT, ".dev.vars"))) copyFileSync(join(ROOT, ".dev.vars"), join(root, ".dev.vars"));
  return { commit, root };
}
