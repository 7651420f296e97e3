/**
 * `npm run license:load -- --family llama-2 --license FILE --aup FILE [--reaccept-by DATE] [--remote [--database-id ID]]`
 *
 * Loads a family's official license and Acceptable Use Policy texts as its next license version,
 * through the gateway's own `loadLicenseVersion()`. Loading texts that are already current
 * changes nothing. With `--reaccept-by 2027-01-31` (through the end of that day UTC, or an
 * ISO-8601 time), every existing grant of the family must accept the new version by then, and
 * each organization is told; without it, existing grants go on under the version they accepted.
 *
 * - default: the local database (`.wrangler/state`, or `PERSIST_TO`), on the bindings
 *   `getPlatformProxy()` gives, as `npm start` does;
 * - `--remote`: the production database (wrangler.toml's, or `--database-id`) through Cloudflare's
 *   D1 REST API, with `CLOUDFLARE_ACCOUNT_ID` and `CLOUDFLARE_API_TOKEN` (D1 edit) from the environment.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { reacceptDeadline } from "../worker/licenses/reacceptance";
import { findFamily } from "../worker/policy/families";
import { applyLocalMigrations, persistDir, withLocalBindings } from "./lib/local-state";
import { RemoteSetupError, remoteDatabase } from "./lib/remote";
import { type LicenseLoadReport, loadLicenseTexts, sha256OfText } from "./seed/license";

const USAGE =
  "usage: npm run license:load -- --family llama-2 --license LICENSE --aup USE_POLICY.md [--reaccept-by YYYY-MM-DD] [--remote [--database-id ID]]";

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      family: { type: "string" },
      license: { type: "string" },
      aup: { type: "string" },
      remote: { type: "boolean", default: false },
      "database-id": { type: "string" },
      "reaccept-by": { type: "string" },
    },
    strict: true,
  });
  if (!values.family || !values.license || !values.aup) fail("--family, --license and --aup are required.");
  if (!findFamily(values.family)) fail(`Unknown family ${values.family}.`);
  if (values["database-id"] && !values.remote)
    fail("--database-id names a production database: give it with --remote.");
  // npm runs scripts from the project root; files are named relative to where the user stood.
  const cwd = process.env.INIT_CWD ?? process.cwd();
  const license = readFileSync(resolve(cwd, values.license), "utf8");
  const aup = readFileSync(resolve(cwd, values.aup), "utf8");
  if (!license.trim() || !aup.trim()) fail("The license and AUP files must not be empty.");
  const reacceptBy =
    values["reaccept-by"] === undefined ? undefined : reacceptDeadline(values["reaccept-by"], new Date());
  if (values["reaccept-by"] !== undefined && !reacceptBy) {
    fail("--reaccept-by must be a date (YYYY-MM-DD) or ISO-8601 time in the future.");
  }
  const input = { family: values.family, license, aup, reacceptBy };

  let report: LicenseLoadReport;
  if (values.remote) {
    const { db, id } = await remoteDatabase("license_versions", values["database-id"]);
    console.log(`Loading into the production database ${id}…`);
    report = await loadLicenseTexts(db, { ...input, source: "official" });
  } else {
    console.log(`Loading into the local database in ${persistDir()}…`);
    await applyLocalMigrations();
    report = await withLocalBindings((env) => loadLicenseTexts(env.DB, { ...input, source: "official" }));
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
      ...(report.created && reacceptBy ? [`re-accept by   ${reacceptBy} (${report.grantsToReaccept} grants)`] : []),
    ].join("\n"),
  );
  if (!current) throw new Error("the family's current version does not carry these texts");
}

main().catch((error: unknown) => {
  if (error instanceof RemoteSetupError) console.error(`license:load: ${error.message}`);
  else console.error(`license:load failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
