/**
 * `npm run license:load -- --family llama-2 --license FILE --aup FILE [--remote]`
 *
 * Loads a family's official license and Acceptable Use Policy texts as its next license version.
 * Loading texts that are already current changes nothing.
 *
 * - default: the local database (`.wrangler/state`, or `PERSIST_TO`), through the gateway's own
 *   `loadLicenseVersion()` on the bindings `getPlatformProxy()` gives, as `npm start` does;
 * - `--remote`: the production database, through one SQL file run by
 *   `wrangler d1 execute DB --remote --file` (needs `wrangler login` or `CLOUDFLARE_API_TOKEN`);
 * - `--via-sql`: that same SQL path against the local database, to rehearse a production load.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { systemClock } from "../worker/platform/clock";
import { randomIds } from "../worker/platform/ids";
import { findFamily } from "../worker/policy/families";
import { currentVersionSql, licenseLoadSql, sha256OfText } from "./lib/license-sql";
import { applyLocalMigrations, persistDir, ROOT, withLocalBindings, wranglerEnv } from "./lib/local-state";
import { type LicenseLoadReport, loadLicenseTexts } from "./seed/license";

const USAGE =
  "usage: npm run license:load -- --family llama-2 --license LICENSE --aup USE_POLICY.md [--remote | --via-sql]";

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

/** Runs one wrangler d1 command and returns its stdout; throws with its output on failure. */
function d1(args: string[]): string {
  const result = spawnSync(
    process.execPath,
    [join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js"), "d1", "execute", "DB", ...args],
    { cwd: ROOT, env: wranglerEnv(), encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
  );
  if (result.status !== 0) {
    throw new Error(`wrangler d1 execute failed (${result.status}):\n${result.stdout}\n${result.stderr}`);
  }
  return result.stdout;
}

/** Loads through `wrangler d1 execute --file`, then reads the newest version back. */
function loadViaSql(target: string[], input: { family: string; license: string; aup: string }): LicenseLoadReport {
  const id = randomIds(systemClock).id("lic");
  const sql = licenseLoadSql({ ...input, id, source: "official", now: systemClock.now().toISOString() });
  const dir = mkdtempSync(join(tmpdir(), "modelgate-license-"));
  try {
    const file = join(dir, "license-load.sql");
    writeFileSync(file, sql);
    d1([...target, "--yes", "--file", file]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const out = d1([...target, "--json", "--command", currentVersionSql(input.family)]);
  const [first] = JSON.parse(out) as { results: Record<string, unknown>[] }[];
  const row = first?.results[0];
  if (!row) throw new Error(`no license version of ${input.family} after the load`);
  return {
    family: input.family,
    version: Number(row.version),
    licenseSha256: String(row.license_sha256),
    aupSha256: String(row.aup_sha256),
    source: "official",
    created: row.id === id,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      family: { type: "string" },
      license: { type: "string" },
      aup: { type: "string" },
      remote: { type: "boolean", default: false },
      "via-sql": { type: "boolean", default: false },
    },
    strict: true,
  });
  if (!values.family || !values.license || !values.aup) fail("--family, --license and --aup are required.");
  if (!findFamily(values.family)) fail(`Unknown family ${values.family}.`);
  if (values.remote && values["via-sql"]) fail("--remote already loads through SQL; give one of the two.");
  // npm runs scripts from the project root; files are named relative to where the user stood.
  const cwd = process.env.INIT_CWD ?? process.cwd();
  const license = readFileSync(resolve(cwd, values.license), "utf8");
  const aup = readFileSync(resolve(cwd, values.aup), "utf8");
  if (!license.trim() || !aup.trim()) fail("The license and AUP files must not be empty.");
  const input = { family: values.family, license, aup };

  let report: LicenseLoadReport;
  if (values.remote) {
    console.log("Loading into the production database (wrangler d1 execute DB --remote)…");
    report = loadViaSql(["--remote"], input);
  } else {
    console.log(`Loading into the local database in ${persistDir()}…`);
    await applyLocalMigrations();
    report = values["via-sql"]
      ? loadViaSql(["--local", "--persist-to", persistDir()], input)
      : await withLocalBindings((env) => loadLicenseTexts(env.DB, { ...input, source: "official" }));
  }

  const expected = { license: sha256OfText(license), aup: sha256OfText(aup) };
  const current = report.licenseSha256 === expected.license && report.aupSha256 === expected.aup;
  console.log(
    [
      `family         ${report.family}`,
      `version        ${report.version}`,
      `license sha256 ${expected.license}`,
      `aup sha256     ${expected.aup}`,
      `new version    ${report.created ? "yes" : "no (these texts were already current)"}`,
    ].join("\n"),
  );
  if (!current) throw new Error("the family's current version does not carry these texts");
}

main().catch((error: unknown) => {
  console.error(`license:load failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
