/**
 * `npm start`: everything a fresh clone needs to run the gateway locally, then the gateway itself.
 *
 * 1. `.dev.vars` from `.dev.vars.example`, the dev Access key it trusts, and dev keys that sign
 *    download links and audit checkpoints;
 * 2. D1 migrations applied to the local database;
 * 3. the placeholder Llama 2 license and AUP loaded into that database;
 * 4. synthetic weights for every Llama 2 model uploaded to local R2 and published;
 * 5. the inference-backend simulator, which every Llama 2 model is routed to, and which also
 *    answers as the guard model (`GUARD_BACKEND`, Llama Guard's verdicts; every organization's
 *    screening is `off` until an admin turns it on in the console's Flags page);
 * 6. `wrangler dev` on 127.0.0.1:$PORT (default 8787), persisting to the same state;
 * 7. demo applications submitted through the public API, and a demo access token;
 * 8. a banner with the URLs, then the server's logs until Ctrl-C.
 *
 * `PORT` moves the server, `SIM_PORT` the simulator (default: a free port), `PERSIST_TO` the
 * local state (default `.wrangler/state`).
 *
 * `npm start -- --billing` also starts the Stripe stand-in (`STRIPE_PORT`, default a free port)
 * and turns billing on against it: accounts open at the first metered call and usage goes out
 * through the queue, as in production with a Stripe key.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, relative } from "node:path";
import { parseArgs } from "node:util";
import { llama2 } from "../worker/policy/families/llama-2";
import { type BackendSimulator, GUARD_UNSAFE_MARKER, startBackendSimulator } from "./backend-sim";
import { ensureDevAccessKey, ensureDevSecret } from "./dev-access-key";
import { ensureDevAuditKey, ensureDevDownloadKey } from "./dev-download-key";
import { mintDevAccessToken } from "./lib/dev-access-token";
import {
  applyLocalMigrations,
  demoFile,
  lastLines,
  persistDir,
  ROOT,
  spawnWrangler,
  startLogFile,
  withLocalBindings,
} from "./lib/local-state";
import { seedDemoApplications } from "./seed/demo";
import { type DemoToken, ensureDemoToken } from "./seed/demo-token";
import { describeLoad, seedPlaceholderLicense } from "./seed/license";
import { seedSyntheticWeights } from "./seed/weights";
import { startStripeStandin } from "./stripe-standin";

const port = Number(process.env.PORT ?? 8787);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`PORT must be a TCP port number, not ${process.env.PORT}`);
  process.exit(2);
}
const baseUrl = `http://127.0.0.1:${port}`;
const simPort = Number(process.env.SIM_PORT ?? 0);
if (!Number.isInteger(simPort) || simPort < 0 || simPort > 65535) {
  console.error(`SIM_PORT must be a TCP port number, not ${process.env.SIM_PORT}`);
  process.exit(2);
}
const billing = parseArgs({ options: { billing: { type: "boolean", default: false } } }).values.billing === true;
const stripePort = Number(process.env.STRIPE_PORT ?? 0);
if (!Number.isInteger(stripePort) || stripePort < 0 || stripePort > 65535) {
  console.error(`STRIPE_PORT must be a TCP port number, not ${process.env.STRIPE_PORT}`);
  process.exit(2);
}
/** The Stripe key and webhook secret the gateway and the stand-in share under `--billing`. */
const LOCAL_STRIPE_KEY = "sk_test_local";
const LOCAL_WEBHOOK_SECRET = "whsec_local";
const HEALTH_TIMEOUT_MS = 60_000;

function step(message: string): void {
  console.log(`▶ ${message}`);
}

/** Where wrangler's output goes (hundreds of lines of migration tables and startup detail). */
const logFile = startLogFile();

/**
 * Whether `host:port` is free: we try to listen on it ourselves. `wrangler dev` on a taken port
 * would not say so before the seeding had already gone to whatever holds it.
 */
function portIsFree(host: string, portNumber: number): Promise<boolean> {
  return new Promise((done) => {
    const probe = createServer();
    probe.once("error", () => done(false));
    probe.listen({ host, port: portNumber, exclusive: true }, () => probe.close(() => done(true)));
  });
}

/** Refuses at once, before anything is started or seeded, when a port we need is taken. */
async function refuseTakenPorts(): Promise<void> {
  const wanted: [string, number][] = [["PORT", port]];
  if (simPort !== 0) wanted.push(["SIM_PORT", simPort]);
  if (billing && stripePort !== 0) wanted.push(["STRIPE_PORT", stripePort]);
  for (const [name, value] of wanted) {
    if (await portIsFree("127.0.0.1", value)) continue;
    const other = name === "PORT" ? " (another npm start?)" : "";
    console.error(
      `✖ npm start: port ${value} on 127.0.0.1 is already in use${other}. Stop what holds it, or choose another: ${name}=${value + 1} npm start`,
    );
    process.exit(1);
  }
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

function printBanner(
  demoCases: { label: string; statusUrl: string }[] | undefined,
  demoToken: DemoToken | undefined,
  simulatorUrl: string,
  stripeUrl: string | undefined,
): void {
  const lines = [
    "",
    "━━━ modelgate is running ━━━",
    `  Gateway         ${baseUrl}`,
    `  Apply (form)    ${baseUrl}/apply/llama-2`,
    `  Your account    ${baseUrl}/account   (sign in with a link; local mail: GET /admin/api/mail?to=…)`,
    `  Review console  ${baseUrl}/admin   (sign in at /admin/dev-login with npm run admin:token)`,
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
    `  Weights and inference (synthetic weights; every Llama 2 model answers from the simulator at ${simulatorUrl}):`,
    demoToken
      ? `    TOKEN=${demoToken.token}   # demo token, scopes ${demoToken.scopes.join(" + ")}`
      : `    TOKEN=…   # mint one at ${baseUrl}/account, signed in with a link mailed to the contact`,
    `    curl -H "Authorization: Bearer $TOKEN" ${baseUrl}/v1/models/llama-2-7b/manifest`,
    `    curl -H "Authorization: Bearer $TOKEN" ${baseUrl}/v1/models/llama-2-7b/download.sh | sh -s ./llama-2-7b`,
    `    curl -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" ${baseUrl}/v1/chat/completions \\`,
    `      -d '{"model":"llama-2-7b-chat","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'`,
    `    OpenAI client: new OpenAI({ baseURL: "${baseUrl}/v1", apiKey: TOKEN })`,
    "",
    stripeUrl
      ? `  Billing: on, through the Stripe stand-in at ${stripeUrl}; standing: curl -H "Authorization: Bearer $TOKEN" ${baseUrl}/v1/billing`
      : "  Billing: off (no Stripe key); `npm start -- --billing` runs it against a local Stripe stand-in",
    `  Content policy: the simulator is the guard model; turn an organization's screening on at ${baseUrl}/admin/guard`,
    `    (a prompt holding "${GUARD_UNSAFE_MARKER}" is unsafe to it, category S1)`,
  );
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
  await refuseTakenPorts();
  mkdirSync(persistDir(), { recursive: true });
  writeFileSync(logFile, "");
  console.log(`wrangler's output goes to ${relative(ROOT, logFile)}`);

  step("Dev settings (.dev.vars) and the dev Access key");
  // ensureDevAccessKey creates .dev.vars from .dev.vars.example when it is missing.
  const hadDevVars = existsSync(`${ROOT}/.dev.vars`);
  const key = await ensureDevAccessKey(ROOT);
  const downloadKid = await ensureDevDownloadKey(ROOT);
  const auditKid = await ensureDevAuditKey(ROOT);
  ensureDevSecret(ROOT, "INFERENCE_KEYS_SECRET");
  console.log(
    `${hadDevVars ? "Updated" : "Created"} .dev.vars; Access key ${key.kid}, download key ${downloadKid}, audit key ${auditKid}`,
  );

  step("D1 migrations (local)");
  await applyLocalMigrations(logFile);

  // One set of local bindings for both seeds: starting them costs seconds. Wrangler's in-process
  // logger would print its config warnings (the same that land in the log) here: errors only.
  const wranglerLog = process.env.WRANGLER_LOG;
  process.env.WRANGLER_LOG = "error";
  await withLocalBindings(async (env) => {
    step("License texts (placeholder)");
    console.log(describeLoad(await seedPlaceholderLicense(env.DB)));

    step("Synthetic weights (local R2)");
    for (const w of await seedSyntheticWeights(env))
      console.log(`${w.outcome.padEnd(11)} ${w.model} revision ${w.revision}, ${w.files} files, ${w.totalBytes} bytes`);
  });
  if (wranglerLog === undefined) delete process.env.WRANGLER_LOG;
  else process.env.WRANGLER_LOG = wranglerLog;

  step("Inference-backend simulator");
  const simulator = await startBackendSimulator({
    port: simPort,
    models: [...llama2.models.map((m) => m.id), GUARD_MODEL],
  });
  closeHelpers = () => simulator.close();
  const guardUrl = await startGuardScope(simulator);
  console.log(`Listening on ${simulator.url}; every Llama 2 model is routed to it, and ${guardUrl} is the guard model`);

  const billingVars: string[] = [];
  let stripeUrl: string | undefined;
  if (billing) {
    step("Stripe stand-in (billing on)");
    const stripe = await startStripeStandin({ port: stripePort });
    stripeUrl = stripe.url;
    closeHelpers = async () => {
      await Promise.all([simulator.close(), stripe.close()]);
    };
    billingVars.push(
      "--var",
      `STRIPE_SECRET_KEY:${LOCAL_STRIPE_KEY}`,
      "--var",
      `STRIPE_WEBHOOK_SECRETS:${LOCAL_WEBHOOK_SECRET}`,
      "--var",
      `STRIPE_API_BASE:${stripe.url}`,
    );
    console.log(
      `Listening on ${stripe.url}; the gateway bills through it (what it holds: curl -H "Authorization: Bearer ${LOCAL_STRIPE_KEY}" ${stripe.url}/_standin/state)`,
    );
  }

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
      "--var",
      `INFERENCE_BACKENDS:${inferenceBackends(simulator)}`,
      "--var",
      "INFERENCE_ALLOWED_HOSTS:127.0.0.1",
      "--var",
      `GUARD_BACKEND:${JSON.stringify({ url: guardUrl, servedModel: GUARD_MODEL, timeoutMs: 5_000 })}`,
      // Locally usage closes into a billing interval every minute and reaches the console's D1
      // figures within seconds, rather than hourly and every five minutes as deployed.
      "--var",
      "USAGE_INTERVAL_MINUTES:1",
      "--var",
      "USAGE_SYNC_SECONDS:5",
      ...billingVars,
      "--show-interactive-dev-session=false",
    ],
    // Its own process group, so that stopping it stops workerd too, and Ctrl-C reaches it only
    // through us (once), not twice.
    { stdio: ["ignore", "pipe", "pipe"], detached: true },
  );
  // Until the banner, wrangler's output goes to the log only (errors to the terminal too); then the
  // server's logs follow the banner on the terminal as well.
  server.stdout?.on("data", (chunk: Buffer) => {
    appendFileSync(logFile, chunk);
    if (serverLogsShown) process.stdout.write(chunk);
  });
  server.stderr?.on("data", (chunk: Buffer) => {
    appendFileSync(logFile, chunk);
    if (serverLogsShown || chunk.toString().includes("[ERROR]")) process.stderr.write(chunk);
  });

  const stopServer = (signal: NodeJS.Signals, exitCode: number) => {
    if (stopping) return;
    stopping = true;
    void closeHelpers();
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
    console.error(`wrangler dev exited (${signal ?? code}); its last lines (all in ${relative(ROOT, logFile)}):`);
    console.error(lastLines(readLog(), 30));
    process.exit(code || 1);
  });
  onFailure = () => stopServer("SIGTERM", 1);

  await waitForHealth(server);

  step("Demo applications");
  const previous = readPreviousDemo();
  // The demo's contacts confirm their addresses as anyone must: with the link the gateway mailed,
  // read back from its outbox by an admin (a dev Access token signed with the local key).
  const { token: adminToken } = await mintDevAccessToken(ROOT, {
    email: "seed@modelgate.local",
    role: "admin",
    ttlSeconds: 600,
  });
  const demo = await seedDemoApplications(baseUrl, { adminToken });
  let demoToken: DemoToken | undefined;
  if (demo.ok) {
    for (const c of demo.cases) console.log(`${c.status.padEnd(15)} ${c.label}: ${c.statusUrl}`);
    const token = await ensureDemoToken(baseUrl, demo.cases, previous.demoToken);
    if (token.ok) {
      demoToken = token.token;
      console.log(`${token.minted ? "Minted" : "Kept"} the demo access token ${token.token.tokenId}`);
    } else {
      console.warn(`⚠ No demo access token: ${token.warning}`);
    }
    mkdirSync(dirname(demoFile()), { recursive: true });
    writeFileSync(demoFile(), `${JSON.stringify({ baseUrl, cases: demo.cases, demoToken }, null, 2)}\n`);
    console.log(`Saved to ${relative(ROOT, demoFile())}`);
  } else {
    console.warn(`⚠ No demo applications: ${demo.warning}`);
  }

  printBanner(demo.ok ? demo.cases : undefined, demoToken, simulator.url, stripeUrl);
  serverLogsShown = true;
}

function readLog(): string {
  try {
    return readFileSync(logFile, "utf8");
  } catch {
    return "";
  }
}

/** `INFERENCE_BACKENDS`: every Llama 2 model served by the simulator. */
function inferenceBackends(simulator: BackendSimulator): string {
  return JSON.stringify(Object.fromEntries(llama2.models.map((m) => [m.id, [{ url: simulator.url }]])));
}

/** The model the guard scope serves: Llama Guard 3, as `GUARD_BACKEND` names it by default. */
const GUARD_MODEL = "meta-llama/Llama-Guard-3-8B";

/**
 * Turns the simulator's `guard` scope into a guard model (`safe`, or `unsafe` and `S1` for a
 * conversation holding the simulator's unsafe marker); returns its base URL.
 */
async function startGuardScope(simulator: BackendSimulator): Promise<string> {
  const url = `${simulator.url}/scope/guard`;
  const res = await fetch(`${url}/_sim/mode`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ mode: "ok", answer: "guard" }),
  });
  if (!res.ok) throw new Error(`the simulator refused its guard mode: ${res.status} ${await res.text()}`);
  return url;
}

/** What an earlier run recorded in demo.json, if anything. */
function readPreviousDemo(): { demoToken?: DemoToken } {
  try {
    const saved = JSON.parse(readFileSync(demoFile(), "utf8")) as { demoToken?: DemoToken };
    return saved.demoToken ? { demoToken: saved.demoToken } : {};
  } catch {
    return {};
  }
}

let stopping = false;
/** Whether wrangler's output is shown on the terminal too (after the banner). */
let serverLogsShown = false;
/** Stops the simulator (and the Stripe stand-in) once they run. */
let closeHelpers: () => Promise<void> = async () => {};
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
  console.error(`  wrangler's output: ${relative(ROOT, logFile)}`);
  onFailure();
});
