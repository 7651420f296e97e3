/**
 * The gateway in Miniflare, as the benchmarks run it: the bundle `wrangler deploy` would upload,
 * with wrangler.toml's bindings, a migrated D1 database holding the placeholder license, and an
 * approved application's access token minted through the public API. Shared by the benchmarks so
 * each measures the same gateway the same way.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import {
  convertV4MiniflareOptions,
  Miniflare,
  type V4MiniflareOptions,
  type V4WorkerOptions as WorkerOptions,
} from "miniflare";
import { unstable_getMiniflareWorkerOptions, unstable_splitSqlQuery } from "wrangler";
import { ROOT, spawnWrangler } from "../../scripts/lib/local-state";
import { loadLicenseTexts, placeholderLlama2Texts } from "../../scripts/seed/license";

/**
 * Options of wrangler.toml that a Miniflare worker takes as they are. Queue consumers are left
 * out unless asked for (`consumeQueues`): the usage consumer would try to reach Stripe, and
 * billing is on no path the proxy's benchmarks measure (the proxy only enqueues).
 */
const WRANGLER_BINDING_OPTIONS = [
  "compatibilityDate",
  "compatibilityFlags",
  "bindings",
  "d1Databases",
  "r2Buckets",
  "durableObjects",
  "ratelimits",
  "email",
  "queueProducers",
  "kvNamespaces",
] as const;

/**
 * Bundles the gateway of the tree at `root` (this one by default) into `outdir` as `wrangler
 * deploy` would; wrangler's output shows only on failure.
 */
export function buildGateway(outdir: string, root = ROOT): Promise<string> {
  const child = spawnWrangler(["deploy", "--dry-run", "--outdir", outdir], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  return new Promise((done, fail) => {
    child.on("error", fail);
    child.on("exit", (code) =>
      code === 0
        ? done(join(outdir, "index.js"))
        : fail(new Error(`wrangler deploy --dry-run exited with ${code}:\n${output.slice(-2000)}`)),
    );
  });
}

/**
 * wrangler's `send_email` options leave `allowed_sender_addresses` undefined, which the pinned
 * Miniflare turns into a binding without a value and refuses to start; the gateway only ever
 * sends from MAIL_FROM, so that is the list.
 */
function sendEmailOptions(email: unknown, mailFrom: string): unknown {
  const bindings = (email as { send_email?: Record<string, unknown>[] } | undefined)?.send_email;
  if (!bindings) return email;
  return {
    send_email: bindings.map((b) => ({ ...b, allowed_sender_addresses: b.allowed_sender_addresses ?? [mailFrom] })),
  };
}

/** wrangler.toml (and .dev.vars) as Miniflare options, per tree, read once: wrangler logs every read. */
const fromWrangler = new Map<string, Record<string, unknown>>();

/**
 * Miniflare worker options for the gateway bundle at `scriptPath`: wrangler.toml's bindings, with
 * `bindings` added to (or replacing) its vars. `consumeQueues` adds wrangler.toml's queue
 * consumers, for a benchmark that bills (against a Stripe stand-in).
 */
export function gatewayWorkerOptions(
  scriptPath: string,
  bindings: Record<string, unknown> = {},
  { consumeQueues = false, root = ROOT }: { consumeQueues?: boolean; root?: string } = {},
): WorkerOptions {
  let read = fromWrangler.get(root);
  if (!read) {
    read = unstable_getMiniflareWorkerOptions(join(root, "wrangler.toml")).workerOptions as Record<string, unknown>;
    fromWrangler.set(root, read);
  }
  const options: Record<string, unknown> = {};
  for (const key of WRANGLER_BINDING_OPTIONS) if (read[key] !== undefined) options[key] = read[key];
  if (consumeQueues) options.queueConsumers = read.queueConsumers;
  const vars = (read.bindings ?? {}) as Record<string, unknown>;
  options.email = sendEmailOptions(options.email, String(vars.MAIL_FROM));
  // Module names are paths relative to modulesRoot; the bundle may live outside the repository.
  return {
    ...options,
    bindings: { ...vars, ...bindings },
    modules: true,
    modulesRoot: dirname(scriptPath),
    scriptPath,
  } as WorkerOptions;
}

/**
 * A Miniflare instance from options in the shape the benchmarks write them (one flat object per
 * worker, as `unstable_getMiniflareWorkerOptions` returns them), converted to Miniflare's own:
 * the benchmarks then run the same workerd as the tests and `npm start`.
 */
export function newMiniflare(options: V4MiniflareOptions): Miniflare {
  return new Miniflare(convertV4MiniflareOptions(options));
}

/**
 * Makes an empty D1 database the gateway's: every migration in `migrations/` (of the tree at
 * `root`), in order, then the placeholder Llama 2 license. Returns the license's sha256, which
 * applicants accept.
 */
export async function prepareDatabase(db: D1Database, root = ROOT): Promise<string> {
  const dir = join(root, "migrations");
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()) {
    const statements = unstable_splitSqlQuery(readFileSync(join(dir, file), "utf8"));
    if (statements.length) await db.batch(statements.map((s) => db.prepare(s)));
  }
  const license = await loadLicenseTexts(db, { family: "llama-2", ...placeholderLlama2Texts(), source: "placeholder" });
  return license.licenseSha256;
}

/**
 * An approved application and a personal access token with `scopes`, through the public API as
 * an applicant gets them: apply, confirm with the link mailed to the contact (read from the
 * gateway's outbox in `db`), then mint the token signed in with the session confirming gave.
 */
export async function approvedAccessToken(
  base: string,
  db: D1Database,
  licenseSha256: string,
  scopes: ("download" | "inference")[],
  models: string[],
): Promise<string> {
  const [token] = await approvedAccessTokens(base, db, licenseSha256, models, [{ name: "bench", scopes }]);
  return token as string;
}

/** A personal access token to mint: its name, scopes and, optionally, limits of its own. */
export interface TokenRequest {
  name: string;
  scopes: ("download" | "inference")[];
  limits?: { requestsPerMinute?: number; tokensPerMinute?: number; monthlyTokenBudget?: number };
}

/** Like {@link approvedAccessToken}, minting one token per request, all of the same member and organization. */
export async function approvedAccessTokens(
  base: string,
  db: D1Database,
  licenseSha256: string,
  models: string[],
  requests: TokenRequest[],
): Promise<string[]> {
  const json = { "content-type": "application/json", accept: "application/json" };
  const email = "bea@bench.example";
  const applied = await fetch(`${base}/v1/applications`, {
    method: "POST",
    headers: json,
    body: JSON.stringify({
      family: "llama-2",
      organization: { name: "Bench Robotics", website: "https://bench.example", country: "DE" },
      contact: { name: "Bea", email },
      intendedUse: "Benchmarking the gateway",
      declaredMau: 5_000,
      models,
      licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    }),
  });
  if (applied.status !== 201)
    throw new Error(`POST /v1/applications answered ${applied.status} ${await applied.text()}`);
  const mail = await db
    .prepare('SELECT text FROM mail_outbox WHERE "to" = ? ORDER BY created_at DESC LIMIT 1')
    .bind(email)
    .first<{ text: string }>();
  const link = /\/applications\/confirm\?token=(\S+)/.exec(mail?.text ?? "")?.[1];
  if (!link) throw new Error(`no confirmation link was mailed to ${email}`);
  // Confirming accepts the texts applied under, by their hashes: the license's, and its policy's.
  const { aupSha256 } = (await (await fetch(`${base}/v1/licenses/llama-2`)).json()) as { aupSha256: string };
  const confirmed = await fetch(`${base}/v1/applications/confirm`, {
    method: "POST",
    headers: json,
    body: JSON.stringify({ token: decodeURIComponent(link), licenseSha256, aupSha256 }),
  });
  const application = (await confirmed.json()) as { status?: string };
  if (confirmed.status !== 200 || application.status !== "approved") {
    throw new Error(`confirming the application answered ${confirmed.status} ${JSON.stringify(application)}`);
  }
  const session = (confirmed.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
  const tokens: string[] = [];
  for (const request of requests) {
    const minted = await fetch(`${base}/v1/tokens`, {
      method: "POST",
      headers: { ...json, cookie: session },
      body: JSON.stringify(request),
    });
    const token = (await minted.json()) as { token?: string };
    if (minted.status !== 201 || !token.token) {
      throw new Error(`POST /v1/tokens answered ${minted.status} ${JSON.stringify(token)}`);
    }
    tokens.push(token.token);
  }
  return tokens;
}

/**
 * A Miniflare `handleRuntimeStdio` that passes workerd's output on line by line, prefixed, except
 * lines matching `drop`.
 */
export function runtimeOutput(drop: RegExp): (stdout: Readable, stderr: Readable) => void {
  const passOn = (stream: Readable, to: NodeJS.WriteStream) =>
    createInterface({ input: stream }).on("line", (line) => {
      if (!drop.test(line)) to.write(`workerd: ${line}\n`);
    });
  return (stdout, stderr) => {
    passOn(stdout, process.stdout);
    passOn(stderr, process.stderr);
  };
}
