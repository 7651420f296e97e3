/**
 * The readiness check behind `GET /health?ready`: whether this Worker can reach what a request
 * needs — D1, R2, the quota Durable Object and the usage queue — each bounded by a short timeout,
 * so a load balancer or an operator's probe learns which one is down instead of waiting on it.
 */
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { abuseBrake } from "../http/middleware";
import { quotaStub } from "../quota/org-quota";

/** One dependency's answer. */
export interface Check {
  ok: boolean;
  /** Milliseconds the check took (or until it timed out). */
  ms: number;
  detail?: string;
}

/** The readiness report: `ok` when every check is. */
export interface Readiness {
  ok: boolean;
  checks: { d1: Check; r2: Check; quota: Check; queue: Check };
}

/** Options; the defaults are production behaviour. */
export interface ReadinessOptions {
  /** Per-check limit; a check slower than this fails. */
  timeoutMs?: number;
  /** Milliseconds since some origin, for the `ms` of each check (the request's clock). */
  now: () => number;
}

/** The quota object the probe talks to: not any organization's, so it holds no counters. */
const PROBE_OBJECT = "readiness-probe";
/** An R2 key that is never written: `head` of it proves the bucket answers. */
const PROBE_KEY = "health/readiness-probe";

async function timed(run: () => Promise<string | undefined>, timeoutMs: number, now: () => number): Promise<Check> {
  const start = now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    const detail = await Promise.race([run(), timeout]);
    return { ok: true, ms: now() - start, ...(detail ? { detail } : {}) };
  } catch (error) {
    return { ok: false, ms: now() - start, detail: error instanceof Error ? error.message : String(error) };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Touches each dependency once, all at the same time. The queue has no call that does nothing
 * (`send` would enqueue a message the billing consumer then reads), so its check reports whether
 * the binding is there and says so.
 */
export async function checkReadiness(env: Env, options: ReadinessOptions): Promise<Readiness> {
  const timeoutMs = options.timeoutMs ?? 2_000;
  const { now } = options;
  const [d1, r2, quota, queue] = await Promise.all([
    timed(
      async () => {
        await env.DB.prepare("select 1").first();
        return undefined;
      },
      timeoutMs,
      now,
    ),
    timed(
      async () => {
        await env.WEIGHTS.head(PROBE_KEY);
        return undefined;
      },
      timeoutMs,
      now,
    ),
    timed(
      async () => {
        await quotaStub(env, PROBE_OBJECT).ping();
        return undefined;
      },
      timeoutMs,
      now,
    ),
    timed(
      async () => {
        if (typeof env.USAGE_QUEUE?.send !== "function") throw new Error("no USAGE_QUEUE binding");
        return "binding present; not sent to (Queues has no no-op call)";
      },
      timeoutMs,
      now,
    ),
  ]);
  return { ok: d1.ok && r2.ok && quota.ok && queue.ok, checks: { d1, r2, quota, queue } };
}

/**
 * `GET /health`: liveness (`{ok: true}`, touching nothing); `GET /health?ready`: readiness, 200
 * when every dependency answered and 503 with the failed check's detail otherwise. Readiness is
 * held to the public abuse brake: each check is a billed D1 read, R2 operation and Durable Object
 * request, which anonymous callers must not be able to run up.
 */
export async function health(c: Context<HonoEnv>): Promise<Response> {
  if (c.req.query("ready") === undefined) return c.json({ ok: true });
  await abuseBrake()(c, async () => {});
  const { clock } = c.get("services");
  const report = await checkReadiness(c.env, { now: () => clock.now().getTime() });
  return c.json(report, report.ok ? 200 : 503, { "cache-control": "no-store" });
}
