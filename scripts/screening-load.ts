/**
 * `npm run screening:load -- --list FILE.csv [--remote [--database-id ID]]`
 *
 * Replaces the denied-party screening list with a CSV in the shape of the US Consolidated
 * Screening List (`name`, `alt_names`, `country` or `addresses`, `source`), through the gateway's
 * own `loadScreeningList()`: one atomic batch with its audit event (`screening.list_loaded`).
 * Applications whose organization or contact matches a listed name or alias go to review.
 *
 * - default: the local database (`.wrangler/state`, or `PERSIST_TO`), as `npm start` uses it;
 * - `--remote`: the production database through Cloudflare's D1 REST API, with
 *   `CLOUDFLARE_ACCOUNT_ID` and `CLOUDFLARE_API_TOKEN` (D1 edit) from the environment.
 *
 * The admin API does the same for a running gateway: `PUT /admin/api/screening/list` (text/csv).
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { createDatabase } from "../worker/db/client";
import { systemClock } from "../worker/platform/clock";
import { randomIds } from "../worker/platform/ids";
import { parseScreeningList } from "../worker/screening/csv";
import { loadScreeningList, type ScreeningListReport } from "../worker/screening/list";
import { applyLocalMigrations, persistDir, withLocalBindings } from "./lib/local-state";
import { RemoteSetupError, remoteDatabase } from "./lib/remote";

const USAGE = "usage: npm run screening:load -- --list LIST.csv [--remote [--database-id ID]]";

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

async function load(db: D1Database, text: string): Promise<ScreeningListReport> {
  const deps = { db: createDatabase(db), clock: systemClock, ids: randomIds(systemClock), auditAnchor: undefined };
  return loadScreeningList(deps, parseScreeningList(text), text, "operator");
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      list: { type: "string" },
      remote: { type: "boolean", default: false },
      "database-id": { type: "string" },
    },
    strict: true,
  });
  if (!values.list) fail("--list is required.");
  if (values["database-id"] && !values.remote)
    fail("--database-id names a production database: give it with --remote.");
  const cwd = process.env.INIT_CWD ?? process.cwd();
  const text = readFileSync(resolve(cwd, values.list), "utf8");
  if (!text.trim()) fail("The list file is empty.");

  let report: ScreeningListReport;
  if (values.remote) {
    const { db, id } = await remoteDatabase("screening_entries", values["database-id"]);
    console.log(`Loading into the production database ${id}…`);
    report = await load(db, text);
  } else {
    console.log(`Loading into the local database in ${persistDir()}…`);
    await applyLocalMigrations();
    report = await withLocalBindings((env) => load(env.DB, text));
  }
  console.log(
    [
      `parties  ${report.entries}`,
      `names    ${report.names} (names and aliases, normalized)`,
      `sources  ${report.sources.join(", ")}`,
      `sha256   ${report.sha256}`,
    ].join("\n"),
  );
}

main().catch((error: unknown) => {
  if (error instanceof RemoteSetupError) console.error(`screening:load: ${error.message}`);
  else console.error(`screening:load failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
