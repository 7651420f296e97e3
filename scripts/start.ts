/**
 * `npm start`: everything a fresh clone needs to run the gateway locally, then the gateway itself.
 *
 * 1. `.dev.vars` from `.dev.vars.example`, and the dev Access key it trusts;
 * 2. D1 migrations applied to the local database;
 * 3. the placeholder Llama 2 license and AUP loaded into that database;
 * 4. `wrangler dev` on 127.0.0.1:$PORT (default 8787), persisting to the same state;
 * 5. demo applications submitted through the public API;
 * 6. a banner with the URLs, then the server's logs until Ctrl-C.
 *
 * `PORT` moves the server, `PERSIST_TO` moves the local state (default `.wrangler/state`).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, relative } from "node:path";
import { ensureDevAccessKey } from "./dev-access-key";
import { ensureDevDownloadKey } from "./dev-download-key";
import { applyLocalMigrations, demoFile, persistDir, ROOT, spawnWrangler, withLocalBindings } from "./lib/local-state";
import { type DemoCase, seedDemoApplications } from "./seed/demo";
import { describeLoad, seedPlaceholderLicense } from "./seed/license";

const port = Number(process.env.PORT ?? 8787);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`PORT must be a TCP port number, not ${process.env.PORT}`);
  process.exit(2);
}
const baseUrl = `http://127.0.0.1:${port}`;
const HEALTH_TIMEOUT_MS = 60_000;

function step(message: string): void {
  console.log(`\n▶ ${message}`);
}

async function waitForHealth(server: ReturnType<typeof spawnWrangler>): Promise<void> {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (server.exitCode !== null || server.signalCode !== null) {
      throw new Error(`wrangler dev exited (${server.signalCode ?? server.exitCode}) before it answered`);
    }
    try {
      const res = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  throw new Error(`${baseUrl}/health did not answer within ${HEALTH_TIMEOUT_MS / 1000} s`);
}

function printBanner(demoCases: { label: string; statusUrl: string }[] | undefined): void {
  const lines = [
    "",
    "━━━ modelgate is running ━━━",
    `  Gateway         ${baseUrl}`,
    `  Apply (form)    ${baseUrl}/apply/llama-2`,
    `  License         ${baseUrl}/v1/licenses/llama-2`,
    `  API reference   ${baseUrl}/docs`,
    `  OpenAPI         ${baseUrl}/openapi.json`,
  ];
  if (demoCases?.length) {
    lines.push("", "  Demo applications (status links):");
    for (const c of demoCases) lines.push(`    ${c.label}`, `      ${c.statusUrl}`);
  }
  lines.push(
    "",
    "  Admin API: mint a dev token, send it as the Cf-Access-Jwt-Assertion header:",
    "    npm run admin:token -- --email you@example.com --role approver",
    `  Local state: ${relative(ROOT, persistDir()) || "."}  (delete it to start over)`,
    "  Ctrl-C stops the server.",
    "",
  );
  console.log(lines.join("\n"));
}

async function main(): Promise<void> {
  step("Dev settings (.dev.vars) and the dev Access key");
  // ensureDevAccessKey creates .dev.vars from .dev.vars.example when it is missing.
  const hadDevVars = existsSync(`${ROOT}/.dev.vars`);
  const key = await ensureDevAccessKey(ROOT);
  const downloadKid = await ensureDevDownloadKey(ROOT);
  console.log(`${hadDevVars ? "Updated" : "Created"} .dev.vars; Access key ${key.kid}, download key ${downloadKid}`);

  step("D1 migrations (local)");
  await applyLocalMigrations();

  step("License texts (placeholder)");
  const report = await withLocalBindings((env) => seedPlaceholderLicense(env.DB));
  console.log(describeLoad(report));

  step(`wrangler dev on ${baseUrl}`);
  const server = spawnWrangler(
    [
      "dev",
      "--ip",
      "127.0.0.1",
      "--port",
      String(port),
      "--persist-to",
      persistDir(),
      "--var",
      `PUBLIC_BASE_URL:${baseUrl}`,
      "--show-interactive-dev-session=false",
    ],
    // Its own process group, so that stopping it stops workerd too, and Ctrl-C reaches it only
    // through us (once), not twice.
    { stdio: ["ignore", "inherit", "inherit"], detached: true },
  );

  const stopServer = (signal: NodeJS.Signals, exitCode: number) => {
    if (stopping) return;
    stopping = true;
    if (server.pid === undefined || server.exitCode !== null || server.signalCode !== null) process.exit(exitCode);
    // Ask wrangler to stop (it stops workerd), then make sure of it after a grace period.
    killGroup(server.pid, signal);
    const pid = server.pid;
    server.once("exit", () => process.exit(exitCode));
    setTimeout(() => {
      killGroup(pid, "SIGKILL");
      process.exit(exitCode || 1);
    }, 5_000).unref();
  };
  process.on("SIGINT", () => stopServer("SIGINT", 0));
  process.on("SIGTERM", () => stopServer("SIGTERM", 0));
  server.on("exit", (code, signal) => {
    if (stopping) return;
    console.error(`wrangler dev exited (${signal ?? code})`);
    process.exit(code || 1);
  });
  onFailure = () => stopServer("SIGTERM", 1);

  await waitForHealth(server);

  step("Demo applications");
  const demo = await seedDemoApplications(baseUrl, readPreviousDemo());
  if (demo.ok) {
    mkdirSync(dirname(demoFile()), { recursive: true });
    writeFileSync(demoFile(), `${JSON.stringify({ baseUrl, cases: demo.cases }, null, 2)}\n`);
    for (const c of demo.cases) console.log(`${c.status.padEnd(15)} ${c.label}: ${c.statusUrl}`);
    console.log(`Saved to ${relative(ROOT, demoFile())}`);
  } else {
    console.warn(`⚠ No demo applications: ${demo.warning}`);
  }

  printBanner(demo.ok ? demo.cases : undefined);
}

/** The demo cases an earlier run recorded, if any. */
function readPreviousDemo(): DemoCase[] {
  try {
    return (JSON.parse(readFileSync(demoFile(), "utf8")) as { cases: DemoCase[] }).cases;
  } catch {
    return [];
  }
}

let stopping = false;
/** How to give up once the server runs: stop it too. Before that, just exit. */
let onFailure: () => void = () => process.exit(1);

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone.
  }
}

main().catch((error: unknown) => {
  console.error(`\n✖ npm start failed: ${error instanceof Error ? error.message : String(error)}`);
  onFailure();
});
