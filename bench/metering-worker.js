/**
 * The floor for a Worker gateway that meters and keeps this proxy's wire contract: the least any
 * such gateway must do. It parses the request body (the model, `max_tokens`, the prompt), sends
 * it on under a timeout without following redirects, and reads the answer for its usage — a plain
 * answer whole, a stream chunk by chunk through JavaScript — and answers with the rate-limit and
 * overhead headers every answer carries; it has no token check, quota or ledger, and its header
 * values count requests in this isolate. Whatever a metering gateway costs beyond this is its own
 * work; what this costs beyond the no-op Worker, any such gateway pays.
 *
 * With a `LEDGER` binding it is also the simplest metering that keeps an answered request's usage
 * across a crash: each answer (a stream's end) waits until its usage row is stored by a Durable
 * Object (`UsageRows`, one per isolate's organization as a gateway would have, SQLite, the row
 * written in the call and the call answered once it is durable). What a metering gateway that
 * keeps that promise does beyond this is its own work.
 */
import { DurableObject } from "cloudflare:workers";

const decoder = new TextDecoder();
const TIMEOUT_MS = 60_000;
const LIMIT = 100_000_000;
let served = 0;
/** The organization's usage object, found once per isolate (`LEDGER` only). */
let ledgerId;

/** Stores one answer's usage row and resolves once it is durable (`LEDGER` only). */
function stored(env, tokens) {
  if (!env.LEDGER) return undefined;
  ledgerId ??= env.LEDGER.idFromName("bench");
  return env.LEDGER.get(ledgerId).record(served, tokens);
}

export class UsageRows extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS usage (id INTEGER PRIMARY KEY, request INTEGER, tokens INTEGER)");
  }

  /** Writes the row; the runtime holds the answer until the write is durable. */
  record(request, tokens) {
    this.ctx.storage.sql.exec("INSERT INTO usage (request, tokens) VALUES (?, ?)", request, tokens ?? 0);
  }
}

/** The headers OpenAI's clients read on every answer, and the gateway's overhead. */
function contractHeaders(startedAt, contentType) {
  served++;
  return {
    "content-type": contentType,
    "x-ratelimit-limit-requests": String(LIMIT),
    "x-ratelimit-remaining-requests": String(LIMIT - served),
    "x-ratelimit-reset-requests": `${60 - (served % 60)}s`,
    "x-ratelimit-limit-tokens": String(LIMIT),
    "x-ratelimit-remaining-tokens": String(LIMIT - served * 24),
    "x-ratelimit-reset-tokens": `${60 - (served % 60)}s`,
    "x-modelgate-overhead-ms": String(Date.now() - startedAt),
  };
}

export default {
  /**
   * @param {Request} request
   * @param {{ UPSTREAM: string, LEDGER?: DurableObjectNamespace }} env
   */
  async fetch(request, env) {
    const startedAt = Date.now();
    const url = new URL(request.url);
    const body = await request.json();
    // A plain answer's time limit covers the whole answer (the runtime's timer, never cleared);
    // a stream's covers its headers, so it needs a timer of its own to clear.
    const controller = body.stream ? new AbortController() : undefined;
    const timer = controller && setTimeout(() => controller.abort(), TIMEOUT_MS);
    const upstream = await fetch(env.UPSTREAM + url.pathname, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      redirect: "manual",
      signal: controller ? controller.signal : AbortSignal.timeout(TIMEOUT_MS),
    });
    if (!body.stream || !upstream.body) {
      const text = await upstream.text();
      const usage = JSON.parse(text).usage;
      const headers = contractHeaders(startedAt, "application/json");
      headers["x-usage"] = String(usage?.total_tokens);
      await stored(env, usage?.total_tokens);
      return new Response(text, { status: upstream.status, headers });
    }
    clearTimeout(timer);
    const reader = upstream.body.getReader();
    let seen = 0;
    const stream = new ReadableStream(
      {
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) {
            await stored(env, seen);
            controller.close();
            return;
          }
          if (decoder.decode(value, { stream: true }).includes('"usage"')) seen++;
          controller.enqueue(value);
        },
        cancel(reason) {
          return reader.cancel(reason);
        },
      },
      { highWaterMark: 0 },
    );
    return new Response(stream, { headers: contractHeaders(startedAt, "text/event-stream") });
  },
};
