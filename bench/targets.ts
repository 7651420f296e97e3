/**
 * What `npm run bench:proxy` measures, each started on loopback and pointed at one backend
 * simulator: the simulator itself, a no-op Worker, this gateway's full path and Portkey.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { Miniflare, type MiniflareOptions } from "miniflare";
import { unstable_getMiniflareWorkerOptions, unstable_splitSqlQuery } from "wrangler";
import { spawnWrangler } from "../scripts/lib/local-state";
import { loadLicenseTexts, placeholderLlama2Texts } from "../scripts/seed/license";

export const ROOT = join(import.meta.dirname, "..");

/** The model every target is asked for; the gateway routes it to the simulator. */
export const MODEL = "llama-2-7b-chat";
/** Routed to the paced simulator scope, where tokens come `PACED_TOKEN_MS` apart. */
export const PACED_MODEL = "llama-2-13b-chat";
export const PACED_SCOPE = "/scope/paced";
export const PACED_TOKEN_MS = 2;
/** Completion length of every request: the simulator streams one event per token. */
export const MAX_TOKENS = 16;

/** One HTTP request a target is loaded with. */
export interface TargetRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** A running thing under test, or the reason it could not be started. */
export interface Target {
  name: string;
  /** Why the target has no numbers; undefined when it runs. */
  unavailable?: string;
  /** A chat completion request; `paced` targets the simulator scope with slow tokens. */
  chat(options: { stream: boolean; paced?: boolean }): TargetRequest;
  close(): Promise<void>;
}

/** Eight words, so every answer reports `prompt_tokens: 8`. */
const PROMPT = "Summarise the Llama 2 license in one line.";

function chatBody(model: string, stream: boolean): string {
  return JSON.stringify({
    model,
    messages: [{ role: "user", content: PROMPT }],
    max_tokens: MAX_TOKENS,
    ...(stream ? { stream: true, stream_options: { include_usage: true } } : {}),
  });
}

const JSON_HEADERS = { "content-type": "application/json" };

/**
 * Miniflare options every Worker target shares. Requests go to a direct socket of the Worker,
 * not through Miniflare's entry worker, which adds about a millisecond per request that the
 * Workers runtime in production does not have. workerd's own log lines about clients that hung
 * up (autocannon closes its connections mid-stream when a run ends) are dropped; anything else
 * it prints is passed on.
 */
function workerSocketOptions() {
  const passOn = (stream: Readable, to: NodeJS.WriteStream) =>
    createInterface({ input: stream }).on("line", (line) => {
      if (!/disconnected|Broken pipe|Connection reset|^stack: /.test(line)) to.write(`workerd: ${line}\n`);
    });
  return {
    host: "127.0.0.1",
    unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    handleRuntimeStdio: (stdout: Readable, stderr: Readable) => {
      passOn(stdout, process.stdout);
      passOn(stderr, process.stderr);
    },
  };
}

/** The URL of the Worker's direct socket. */
async function directOrigin(mf: Miniflare): Promise<string> {
  await mf.ready;
  return (await mf.unsafeGetDirectURL()).origin;
}

/** A free TCP port on loopback. */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.on("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? done(address.port) : fail(new Error("no port"))));
    });
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    const force = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.once("exit", () => {
      clearTimeout(force);
      done();
    });
    child.kill("SIGTERM");
  });
}

async function waitForHttp(url: string, deadlineMs: number, child?: ChildProcess): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`exited with ${child.exitCode} before answering`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      await res.body?.cancel();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`${url} did not answer within ${deadlineMs} ms`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/**
 * The backend simulator in its own process, so its event loop does not share a thread with the
 * load generator. Tokens in the paced scope come `PACED_TOKEN_MS` apart, so a proxy that
 * buffers a stream shows it.
 */
export async function startSimulator(): Promise<{ url: string; close(): Promise<void> }> {
  const child = spawn(process.execPath, ["--import", "tsx", join(ROOT, "scripts", "backend-sim.ts"), "--port", "0"], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "inherit"],
  });
  const url = await new Promise<string>((done, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error("the backend simulator did not start within 20 s")), 20_000);
    child.stdout?.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const match = /listening on (\S+)/.exec(out);
      if (match?.[1]) {
        clearTimeout(timer);
        done(match[1]);
      }
    });
    child.once("exit", (code) => fail(new Error(`the backend simulator exited with ${code}`)));
  });
  child.stdout?.resume();
  const paced = await fetch(`${url}${PACED_SCOPE}/_sim/mode`, {
    method: "POST",
    body: JSON.stringify({ mode: "ok", tokenLatencyMs: PACED_TOKEN_MS }),
  });
  if (!paced.ok) throw new Error(`could not pace the simulator: ${paced.status}`);
  return { url, close: () => stopChild(child) };
}

/** The simulator itself: what any proxy's numbers are compared with. */
export function directTarget(simUrl: string): Target {
  return {
    name: "direct (simulator)",
    chat: ({ stream, paced }) => ({
      url: `${simUrl}${paced ? PACED_SCOPE : ""}/v1/chat/completions`,
      headers: JSON_HEADERS,
      body: chatBody(MODEL, stream),
    }),
    close: async () => {},
  };
}

/** A Worker that only forwards, in Miniflare: the floor for any Worker gateway. */
export async function noopWorkerTarget(simUrl: string): Promise<Target> {
  const mf = new Miniflare({
    ...workerSocketOptions(),
    modules: true,
    scriptPath: join(ROOT, "bench", "noop-worker.js"),
    compatibilityDate: "2026-07-30",
    bindings: { UPSTREAM: simUrl },
  });
  const base = await directOrigin(mf);
  return {
    name: "no-op Worker (Miniflare)",
    chat: ({ stream, paced }) => ({
      url: `${base}${paced ? PACED_SCOPE : ""}/v1/chat/completions`,
      headers: JSON_HEADERS,
      body: chatBody(MODEL, stream),
    }),
    close: () => mf.dispose(),
  };
}

/** The Portkey AI gateway's Node server, routing to the simulator as an OpenAI-compatible custom host. */
export async function portkeyTarget(simUrl: string): Promise<Target> {
  const port = await freePort();
  const entry = join(ROOT, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js");
  const child = spawn(process.execPath, [entry, `--port=${port}`, "--headless"], {
    cwd: ROOT,
    // Portkey logs every failure with a stack; the bench reports failures by count instead.
    stdio: ["ignore", "ignore", "ignore"],
    env: { ...process.env, NODE_ENV: "production" },
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    await waitForHttp(base, 30_000, child);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  return {
    name: "Portkey gateway (Node)",
    chat: ({ stream, paced }) => ({
      url: `${base}/v1/chat/completions`,
      headers: {
        ...JSON_HEADERS,
        authorization: "Bearer sk-sim",
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": `${simUrl}${paced ? PACED_SCOPE : ""}/v1`,
      },
      body: chatBody(MODEL, stream),
    }),
    close: () => stopChild(child),
  };
}

/**
 * Options of wrangler.toml that a Miniflare worker takes as they are. Queue consumers are left
 * out on purpose: the usage consumer would try to reach Stripe, and billing is not on the
 * request path being measured (the proxy only enqueues).
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

/** Limits no benchmark reaches: the quota object still reserves and settles every request. */
const BENCH_LIMITS = { requestsPerMinute: 100_000_000, tokensPerMinute: 1_000_000_000, monthlyTokenBudget: 1e15 };

async function applyMigrations(db: D1Database): Promise<void> {
  const dir = join(ROOT, "migrations");
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort()) {
    const statements = unstable_splitSqlQuery(readFileSync(join(dir, file), "utf8"));
    if (statements.length) await db.batch(statements.map((s) => db.prepare(s)));
  }
}

/** An approved application and an inference token, through the gateway's own public API. */
async function mintInferenceToken(base: string, licenseSha256: string): Promise<string> {
  const applied = await fetch(`${base}/v1/applications`, {
    method: "POST",
    headers: { ...JSON_HEADERS, accept: "application/json" },
    body: JSON.stringify({
      family: "llama-2",
      organization: { name: "Bench Robotics", website: "https://bench.example", country: "DE" },
      contact: { name: "Bea", email: "bea@bench.example" },
      intendedUse: "Load testing the inference proxy",
      declaredMau: 5_000,
      models: [MODEL, PACED_MODEL],
      licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    }),
  });
  const application = (await applied.json()) as { id?: string; status?: string; statusUrl?: string };
  if (application.status !== "approved" || !application.statusUrl) {
    throw new Error(`POST /v1/applications answered ${applied.status} ${JSON.stringify(application)}`);
  }
  const capability = new URL(application.statusUrl).searchParams.get("token");
  const minted = await fetch(`${base}/v1/applications/${application.id}/tokens`, {
    method: "POST",
    headers: { ...JSON_HEADERS, authorization: `Bearer ${capability}` },
    body: JSON.stringify({ name: "bench", scopes: ["inference"] }),
  });
  const token = (await minted.json()) as { token?: string };
  if (minted.status !== 201 || !token.token) {
    throw new Error(`POST /v1/applications/{id}/tokens answered ${minted.status} ${JSON.stringify(token)}`);
  }
  return token.token;
}

/** Bundles the gateway as `wrangler deploy` would upload it; wrangler's output only shows on failure. */
function buildWorker(outdir: string): Promise<void> {
  const child = spawnWrangler(["deploy", "--dry-run", "--outdir", outdir], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    output += chunk.toString();
  });
  return new Promise((done, fail) => {
    child.on("error", fail);
    child.on("exit", (code) => {
      if (code === 0) done();
      else fail(new Error(`wrangler deploy --dry-run exited with ${code}:\n${output.slice(-2000)}`));
    });
  });
}

/**
 * This gateway's full inference path — token check, license check, quota reservation and
 * settlement in the Durable Object, metering into D1 — from the bundle `wrangler deploy` would
 * upload, in Miniflare with wrangler.toml's bindings and in-memory state.
 */
export async function gatewayTarget(simUrl: string): Promise<Target> {
  const outdir = join(ROOT, "bench", ".build");
  await buildWorker(outdir);
  const fromWrangler = unstable_getMiniflareWorkerOptions(join(ROOT, "wrangler.toml")).workerOptions as Record<
    string,
    unknown
  >;
  const options: Record<string, unknown> = {};
  for (const key of WRANGLER_BINDING_OPTIONS) if (fromWrangler[key] !== undefined) options[key] = fromWrangler[key];
  const vars = fromWrangler.bindings as Record<string, unknown>;
  options.email = sendEmailOptions(options.email, String(vars.MAIL_FROM));
  const bindings = {
    ...vars,
    INFERENCE_BACKENDS: JSON.stringify({
      [MODEL]: [{ url: simUrl, weight: 1 }],
      [PACED_MODEL]: [{ url: `${simUrl}${PACED_SCOPE}`, weight: 1 }],
    }),
    INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    INFERENCE_DEFAULT_LIMITS: JSON.stringify(BENCH_LIMITS),
  };
  const mf = new Miniflare({
    ...options,
    ...workerSocketOptions(),
    bindings,
    modules: true,
    scriptPath: join(outdir, "index.js"),
  } as MiniflareOptions);
  try {
    const base = await directOrigin(mf);
    const db = (await mf.getD1Database("DB")) as unknown as D1Database;
    await applyMigrations(db);
    const license = await loadLicenseTexts(db, {
      family: "llama-2",
      ...placeholderLlama2Texts(),
      source: "placeholder",
    });
    const token = await mintInferenceToken(base, license.licenseSha256);
    const headers = { ...JSON_HEADERS, authorization: `Bearer ${token}` };
    const probe = await fetch(`${base}/v1/chat/completions`, { method: "POST", headers, body: chatBody(MODEL, false) });
    if (probe.status !== 200) throw new Error(`a first completion answered ${probe.status}: ${await probe.text()}`);
    await probe.body?.cancel();
    return {
      name: "modelgate (Miniflare)",
      chat: ({ stream, paced }) => ({
        url: `${base}/v1/chat/completions`,
        headers,
        body: chatBody(paced ? PACED_MODEL : MODEL, stream),
      }),
      close: () => mf.dispose(),
    };
  } catch (error) {
    await mf.dispose();
    throw error;
  }
}

/** A target that could not start, carried through to the table with its reason. */
export function unavailableTarget(name: string, reason: string): Target {
  return {
    name,
    unavailable: reason,
    chat: () => {
      throw new Error(`${name} is not available: ${reason}`);
    },
    close: async () => {},
  };
}
