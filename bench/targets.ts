/**
 * What `npm run bench:proxy` measures, each started on loopback and pointed at one backend
 * simulator: the simulator itself, a no-op Worker, this gateway's full path and Portkey.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import type { Miniflare, V4MiniflareOptions as MiniflareOptions } from "miniflare";
import { freePort } from "../scripts/lib/gateway-process";
import { ROOT } from "../scripts/lib/local-state";
import type { BaselineTree } from "./lib/baseline";
import {
  approvedAccessTokens,
  buildGateway,
  gatewayWorkerOptions,
  newMiniflare,
  prepareDatabase,
  runtimeOutput,
} from "./lib/gateway-miniflare";
import { workerdListeningOn } from "./lib/workerd-memory";

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
  /** The process doing the target's work, whose CPU time per request the load runs report. */
  pid?: number;
  /**
   * Processes doing the rest of its work, as on Cloudflare where they are other machines (the
   * quota object and its D1 database): reported beside `pid`'s CPU as the whole figure.
   */
  otherPids?: number[];
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
  return {
    host: "127.0.0.1",
    unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    handleRuntimeStdio: runtimeOutput(/disconnected|Broken pipe|Connection reset|^stack: /),
  };
}

/** The URL of the Worker's direct socket. */
async function directOrigin(mf: Miniflare): Promise<string> {
  await mf.ready;
  return (await mf.unsafeGetDirectURL()).origin;
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
export async function startSimulator(): Promise<{ url: string; pid: number | undefined; close(): Promise<void> }> {
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
  return { url, pid: child.pid, close: () => stopChild(child) };
}

/** The simulator itself: what any proxy's numbers are compared with. */
export function directTarget(simUrl: string, simPid?: number): Target {
  return {
    name: "direct (simulator)",
    pid: simPid,
    chat: ({ stream, paced }) => ({
      url: `${simUrl}${paced ? PACED_SCOPE : ""}/v1/chat/completions`,
      headers: JSON_HEADERS,
      body: chatBody(MODEL, stream),
    }),
    close: async () => {},
  };
}

/** A Worker of `bench/` that forwards to the simulator, in Miniflare. */
async function forwardingWorkerTarget(
  name: string,
  script: string,
  simUrl: string,
  extra: Partial<MiniflareOptions> = {},
): Promise<Target> {
  const mf = newMiniflare({
    ...extra,
    ...workerSocketOptions(),
    modules: true,
    scriptPath: join(ROOT, "bench", script),
    compatibilityDate: "2026-07-30",
    bindings: { UPSTREAM: simUrl },
  });
  const base = await directOrigin(mf);
  return {
    name,
    pid: workerdListeningOn(Number(new URL(base).port)),
    chat: ({ stream, paced }) => ({
      url: `${base}${paced ? PACED_SCOPE : ""}/v1/chat/completions`,
      headers: JSON_HEADERS,
      body: chatBody(MODEL, stream),
    }),
    close: () => mf.dispose(),
  };
}

/** A Worker that only forwards, in Miniflare: the floor for any Worker gateway. */
export function noopWorkerTarget(simUrl: string, extra: Partial<MiniflareOptions> = {}): Promise<Target> {
  return forwardingWorkerTarget("no-op Worker (Miniflare)", "noop-worker.js", simUrl, extra);
}

/**
 * A Worker that forwards and reads what metering needs — the request's body, the answer's usage,
 * every streamed chunk — under a backend timeout, without following redirects, and answers with
 * the rate-limit headers; nothing else: the floor for any Worker gateway that meters and keeps this
 * proxy's wire contract.
 */
export function meteringFloorTarget(simUrl: string, extra: Partial<MiniflareOptions> = {}): Promise<Target> {
  return forwardingWorkerTarget("metering floor Worker (Miniflare)", "metering-worker.js", simUrl, extra);
}

/**
 * The metering floor that also keeps every answered request's usage across a crash, as simply as a
 * Worker can: each answer waits until a Durable Object has stored its row (one call per answer,
 * the object's SQLite on this machine's disk, as the gateway's quota object's is).
 */
export function storedFloorTarget(simUrl: string): Promise<Target> {
  return forwardingWorkerTarget("metering floor, each row stored (Miniflare)", "metering-worker.js", simUrl, {
    durableObjects: { LEDGER: { className: "UsageRows", useSQLite: true } },
  } as Partial<MiniflareOptions>);
}

/** The Portkey AI gateway's Node server, routing to the simulator as an OpenAI-compatible custom host. */
export async function portkeyTarget(simUrl: string): Promise<Target> {
  const port = await freePort();
  const entry = join(ROOT, "bench", "node_modules", "@portkey-ai", "gateway", "build", "start-server.js");
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
    pid: child.pid,
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

/** Limits no benchmark reaches: the quota object still reserves and settles every request. */
const BENCH_LIMITS = { requestsPerMinute: 100_000_000, tokensPerMinute: 1_000_000_000, monthlyTokenBudget: 1e15 };
/** A token's own limits, under the organization's and never reached either: a second level counted on every request. */
const TOKEN_LIMITS = { requestsPerMinute: 50_000_000, tokensPerMinute: 500_000_000, monthlyTokenBudget: 1e14 };

/** The gateway's full path, for a token of the organization's limits only and for a token with limits of its own. */
export interface GatewayTargets {
  gateway: Target;
  /** The same gateway (same process), called with a token that has limits of its own. */
  tokenLimited: Target;
}

/**
 * This gateway's full inference path — token check, license check, quota reservation and
 * settlement in the Durable Object, metering into D1 — from the bundle `wrangler deploy` would
 * upload, in Miniflare with wrangler.toml's bindings and state in a temporary directory: the
 * quota object's storage is SQLite files on this machine's disk, written before the object
 * answers, as a durable write is before it answers on Cloudflare. `memory` keeps that storage in
 * memory instead, not durable, so that the disk's share of the wait for a usage row is seen
 * apart. `split` runs the quota object in a workerd process of its own (with its
 * own D1 database, which it writes usage to), reached through Miniflare's dev registry as the
 * Worker reaches it on Cloudflare: across processes, so that the Worker's own CPU per request is
 * seen apart from the object's. `objectMs` (with `split`) has that object answer each call so
 * much later, as one in another location would (`farQuotaScript`). `baseline` runs the gateway of
 * another commit's tree instead (its bundle, bindings and migrations).
 */
export async function gatewayTargets(
  simUrl: string,
  options: {
    split?: boolean;
    objectMs?: number;
    memory?: boolean;
    extra?: Partial<MiniflareOptions>;
    baseline?: BaselineTree;
  } = {},
): Promise<GatewayTargets> {
  const root = options.baseline?.root ?? ROOT;
  const script = await buildGateway(join(root, "bench", ".build"), root);
  const vars = {
    INFERENCE_BACKENDS: JSON.stringify({
      [MODEL]: [{ url: simUrl, weight: 1 }],
      [PACED_MODEL]: [{ url: `${simUrl}${PACED_SCOPE}`, weight: 1 }],
    }),
    INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    INFERENCE_DEFAULT_LIMITS: JSON.stringify(BENCH_LIMITS),
  };
  const disposers: (() => Promise<void>)[] = [];
  const dispose = async () => {
    for (const close of disposers.reverse()) await close().catch(() => undefined);
  };
  try {
    const workerOptions = gatewayWorkerOptions(script, vars, { root }) as Record<string, unknown>;
    let quotaPid: number | undefined;
    let registry: Partial<MiniflareOptions> = {};
    if (options.split) {
      const registryPath = mkdtempSync(join(tmpdir(), "modelgate-registry-"));
      disposers.push(async () => rmSync(registryPath, { recursive: true, force: true }));
      registry = { unsafeDevRegistryPath: registryPath } as Partial<MiniflareOptions>;
      const far = options.objectMs ? farQuotaScript(script, options.objectMs) : undefined;
      const quotaOptions = gatewayWorkerOptions(far ?? script, vars, { root }) as Record<string, unknown>;
      const className = far ? FAR_QUOTA_CLASS : "OrgQuota";
      if (far) {
        const bindings = quotaOptions.durableObjects as Record<string, Record<string, unknown>>;
        quotaOptions.durableObjects = { ...bindings, QUOTA: { ...bindings.QUOTA, className } };
      }
      const quota = newMiniflare({
        ...quotaOptions,
        name: QUOTA_SCRIPT,
        ...registry,
        ...workerSocketOptions(),
      } as MiniflareOptions);
      disposers.push(() => quota.dispose());
      const quotaOrigin = await directOrigin(quota);
      await prepareDatabase((await quota.getD1Database("DB")) as unknown as D1Database, root);
      quotaPid = workerdListeningOn(Number(new URL(quotaOrigin).port));
      workerOptions.durableObjects = { QUOTA: { className, scriptName: QUOTA_SCRIPT } };
    }
    const mf = newMiniflare({
      ...workerOptions,
      name: options.baseline ? "modelgate-baseline" : options.split ? "modelgate-split" : "modelgate",
      ...registry,
      ...workerSocketOptions(),
      ...(options.memory ? { unsafeEphemeralDurableObjects: true } : {}),
      ...options.extra,
    } as MiniflareOptions);
    disposers.push(() => mf.dispose());
    const base = await directOrigin(mf);
    const db = (await mf.getD1Database("DB")) as unknown as D1Database;
    const licenseSha256 = await prepareDatabase(db, root);
    const [token, limitedToken] = await approvedAccessTokens(
      base,
      db,
      licenseSha256,
      [MODEL, PACED_MODEL],
      [
        { name: "bench", scopes: ["inference"] },
        { name: "bench, own limits", scopes: ["inference"], limits: TOKEN_LIMITS },
      ],
    );
    const pid = workerdListeningOn(Number(new URL(base).port));
    const apart = `quota object apart${options.split && options.objectMs ? `, ${options.objectMs} ms away` : ""}`;
    const label = options.baseline
      ? `modelgate @${options.baseline.commit.slice(0, 7)}${options.split ? `, ${apart}` : ""} (Miniflare)`
      : options.split
        ? `modelgate, ${apart} (Miniflare)`
        : options.memory
          ? "modelgate, quota storage in memory (Miniflare)"
          : "modelgate (Miniflare)";
    const target = (name: string, bearer: string | undefined, close: () => Promise<void>): Target => ({
      name,
      pid,
      ...(quotaPid === undefined ? {} : { otherPids: [quotaPid] }),
      chat: ({ stream, paced }) => ({
        url: `${base}/v1/chat/completions`,
        headers: { ...JSON_HEADERS, authorization: `Bearer ${bearer}` },
        body: chatBody(paced ? PACED_MODEL : MODEL, stream),
      }),
      close,
    });
    for (const bearer of [token, limitedToken]) {
      const probe = await fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { ...JSON_HEADERS, authorization: `Bearer ${bearer}` },
        body: chatBody(MODEL, false),
      });
      if (probe.status !== 200) throw new Error(`a first completion answered ${probe.status}: ${await probe.text()}`);
      await probe.body?.cancel();
    }
    return {
      gateway: target(label, token, dispose),
      // Closed with the gateway it shares.
      tokenLimited: target(
        label.replace("modelgate", "modelgate, token with own limits"),
        limitedToken,
        async () => {},
      ),
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}

/** The script name the quota object's own process registers under (`split`). */
const QUOTA_SCRIPT = "modelgate-quota";
/** The quota object of `farQuotaScript`. */
const FAR_QUOTA_CLASS = "FarOrgQuota";

/**
 * Writes, beside the gateway bundle at `script`, a copy of it with one more quota object class:
 * `OrgQuota` answering each call `ms` later, as an object in another location would (the wait is
 * on the object's side, so that calls overlap as they do across a network). Returns its path.
 */
function farQuotaScript(script: string, ms: number): string {
  const bundle = readFileSync(script, "utf8");
  if (!/export\s*\{[^}]*\bOrgQuota\b/.test(bundle)) throw new Error(`${script} exports no OrgQuota`);
  const path = join(dirname(script), "far-quota.js");
  writeFileSync(
    path,
    `${bundle.replace(/\/\/# sourceMappingURL=.*$/m, "")}
export class ${FAR_QUOTA_CLASS} extends OrgQuota {
  async lease(...args) {
    await scheduler.wait(${ms});
    return super.lease(...args);
  }
  async commit(...args) {
    await scheduler.wait(${ms});
    return super.commit(...args);
  }
}
`,
  );
  return path;
}

/** This gateway's full path in one workerd process, as `npm start` and the tests run it. */
export async function gatewayTarget(simUrl: string, extra: Partial<MiniflareOptions> = {}): Promise<Target> {
  return (await gatewayTargets(simUrl, { extra })).gateway;
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
