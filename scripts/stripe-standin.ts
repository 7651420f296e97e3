/**
 * A local stand-in for the parts of Stripe's API the gateway calls, for tests and local runs
 * where Stripe cannot be reached. The real `stripe` SDK talks to it (`host`, `port`, `protocol`).
 * It implements customers, subscriptions, Billing Meters (listed, created on an event name's first
 * event), meter events and their summaries (per hour or day) with Stripe's rules that matter
 * for correct billing: `Idempotency-Key` replays the first answer and a meter event `identifier` is
 * accepted once, both for 24 hours of its clock only (Stripe promises no longer: a repeat after
 * that is a new event, billed again), timestamps older than 35 days are refused. It records every
 * request, keeps accepted meter-event totals, and can be told to misbehave for a number of
 * requests: answer a 5xx (`{status: 503}`), hang without answering (`{status: "hang"}`), or do the
 * work but answer late (`{status: "slow", delayMs}`, as a Stripe that took a request after its
 * caller gave up).
 *
 * State is kept per API key, so tests running at the same time each get their own Stripe.
 *
 *   npm run stripe:standin -- --port 12111
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

type Params = Record<string, unknown>;

/** An accepted meter event. */
export interface StandinMeterEvent {
  identifier: string;
  eventName: string;
  customer: string;
  value: number;
  timestamp: number;
}

interface Account {
  customers: Map<string, Params>;
  subscriptions: Map<string, Params>;
  /** Every meter event accepted, a repeat accepted after the identifier window included. */
  meterEvents: StandinMeterEvent[];
  /** When (its clock, seconds) each identifier was last accepted. */
  identifiers: Map<string, number>;
  /** Meters by event name. */
  meters: Map<string, { id: string; event_name: string }>;
  idempotent: Map<string, { status: number; body: string; at: number }>;
  requests: { method: string; path: string; idempotencyKey: string | undefined }[];
  failure: { status: number | "hang" | "slow"; remaining: number; delayMs: number } | undefined;
  /** Seconds since the epoch that this account treats as now (for the 35-day rule). */
  now: number | undefined;
}

/** Handle of a running stand-in. */
export interface StripeStandin {
  url: string;
  port: number;
  close(): Promise<void>;
}

/**
 * How long Stripe remembers an idempotency key and a meter event's identifier: "at least 24 hours",
 * so a sender may count on no more. The stand-in forgets them then, on its clock, so that a test
 * sees what a repeat after the window costs.
 */
export const IDENTIFIER_WINDOW_SECONDS = 86_400;

/** The account's now, in seconds: the clock a test set, or the system's. */
const nowOf = (a: Pick<Account, "now">) => a.now ?? Math.floor(Date.now() / 1000);

const id = (prefix: string) => `${prefix}_${randomBytes(12).toString("hex")}`;

/** Decodes Stripe's form encoding (`a[b][0]=x`) into nested objects and arrays. */
export function parseStripeForm(body: string): Params {
  const out: Params = {};
  for (const [key, value] of new URLSearchParams(body)) {
    const path = key.replace(/\]/g, "").split("[");
    let node: Record<string, unknown> = out;
    for (let i = 0; i < path.length - 1; i++) {
      const k = path[i] as string;
      node[k] ??= {};
      node = node[k] as Record<string, unknown>;
    }
    node[path.at(-1) as string] = value;
  }
  return out;
}

function stripeError(res: ServerResponse, status: number, message: string, extra: Params = {}) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: { type: "invalid_request_error", message, ...extra } }));
}

/** Starts the stand-in on 127.0.0.1 (a free port unless one is given). */
export async function startStripeStandin(options: { port?: number; host?: string } = {}): Promise<StripeStandin> {
  const accounts = new Map<string, Account>();
  const account = (key: string): Account => {
    let a = accounts.get(key);
    if (!a) {
      a = {
        customers: new Map(),
        subscriptions: new Map(),
        meterEvents: [],
        identifiers: new Map(),
        meters: new Map(),
        idempotent: new Map(),
        requests: [],
        failure: undefined,
        now: undefined,
      };
      accounts.set(key, a);
    }
    return a;
  };
  const hanging = new Set<ServerResponse>();

  async function readBody(req: IncomingMessage): Promise<string> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString("utf8");
  }

  function handleApi(a: Account, method: string, path: string, params: Params): { status: number; body: Params } {
    if (method === "POST" && path === "/v1/customers") {
      const customer = { id: id("cus"), object: "customer", created: Math.floor(Date.now() / 1000), ...params };
      a.customers.set(customer.id, customer);
      return { status: 200, body: customer };
    }
    if (method === "POST" && path === "/v1/subscriptions") {
      const customer = String(params.customer ?? "");
      if (!a.customers.has(customer))
        return {
          status: 400,
          body: { error: { type: "invalid_request_error", message: `No such customer: '${customer}'` } },
        };
      const items = Object.values((params.items as Params) ?? {}).map((item) => ({
        id: id("si"),
        object: "subscription_item",
        price: { id: String((item as Params).price), object: "price" },
      }));
      const subscription = {
        id: id("sub"),
        object: "subscription",
        status: "active",
        customer,
        items: { object: "list", data: items },
        metadata: params.metadata ?? {},
        created: Math.floor(Date.now() / 1000),
      };
      a.subscriptions.set(subscription.id, subscription);
      return { status: 200, body: subscription };
    }
    if (method === "POST" && path === "/v1/billing/meter_events") {
      const payload = (params.payload as Params) ?? {};
      const identifier = String(params.identifier ?? id("mev"));
      const customer = String(payload.stripe_customer_id ?? "");
      const value = Number(payload.value);
      const now = nowOf(a);
      const timestamp = params.timestamp === undefined ? now : Number(params.timestamp);
      if (!params.event_name)
        return {
          status: 400,
          body: {
            error: {
              type: "invalid_request_error",
              message: "Missing required param: event_name.",
              param: "event_name",
            },
          },
        };
      if (!a.customers.has(customer))
        return {
          status: 400,
          body: { error: { type: "invalid_request_error", message: `No such customer: '${customer}'` } },
        };
      if (!Number.isFinite(value))
        return {
          status: 400,
          body: { error: { type: "invalid_request_error", message: "Invalid value", param: "payload[value]" } },
        };
      if (timestamp < now - 35 * 86_400 || timestamp > now + 300) {
        return {
          status: 400,
          body: {
            error: {
              type: "invalid_request_error",
              code: "timestamp_out_of_range",
              message: "Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
              param: "timestamp",
            },
          },
        };
      }
      if (now - (a.identifiers.get(identifier) ?? Number.NEGATIVE_INFINITY) < IDENTIFIER_WINDOW_SECONDS) {
        return {
          status: 400,
          body: {
            error: {
              type: "invalid_request_error",
              code: "resource_already_exists",
              message: `An event with identifier ${identifier} already exists.`,
              param: "identifier",
            },
          },
        };
      }
      a.meterEvents.push({ identifier, eventName: String(params.event_name), customer, value, timestamp });
      a.identifiers.set(identifier, now);
      meterOf(a, String(params.event_name));
      return {
        status: 200,
        body: {
          object: "billing.meter_event",
          created: now,
          event_name: params.event_name,
          identifier,
          livemode: false,
          payload,
          timestamp,
        },
      };
    }
    if (method === "GET" && path === "/v1/billing/meters") {
      const data = [...a.meters.values()].map((m) => ({ object: "billing.meter", status: "active", ...m }));
      return { status: 200, body: { object: "list", data, has_more: false, url: path } };
    }
    const summaries = /^\/v1\/billing\/meters\/([^/]+)\/event_summaries$/.exec(path);
    if (method === "GET" && summaries)
      return eventSummaries(a, decodeURIComponent(summaries[1] as string), params, path);
    return {
      status: 404,
      body: { error: { type: "invalid_request_error", message: `Unrecognized request URL (${method}: ${path}).` } },
    };
  }

  /** The meter of an event name, created with its first event as an operator would have beforehand. */
  function meterOf(a: Account, eventName: string) {
    let meter = a.meters.get(eventName);
    if (!meter) {
      meter = { id: `mtr_${Buffer.from(eventName).toString("hex").slice(0, 24)}`, event_name: eventName };
      a.meters.set(eventName, meter);
    }
    return meter;
  }

  /**
   * A meter's event summaries for a customer: one per hour or day (`value_grouping_window`) that
   * has events, or one for the whole range, newest first, paged with `limit` and `starting_after`.
   */
  function eventSummaries(a: Account, meterId: string, params: Params, path: string) {
    const meter = [...a.meters.values()].find((m) => m.id === meterId);
    if (!meter)
      return {
        status: 404,
        body: { error: { type: "invalid_request_error", message: `No such meter: '${meterId}'` } },
      };
    const start = Number(params.start_time);
    const end = Number(params.end_time);
    const window = params.value_grouping_window as string | undefined;
    const step = window === "hour" ? 3_600 : window === "day" ? 86_400 : undefined;
    if (!Number.isInteger(start) || !Number.isInteger(end) || start % 60 !== 0 || end % 60 !== 0 || end <= start)
      return {
        status: 400,
        body: {
          error: {
            type: "invalid_request_error",
            message: "start_time and end_time must be aligned with minute boundaries, end after start.",
          },
        },
      };
    if (step && (start % step !== 0 || end % step !== 0))
      return {
        status: 400,
        body: { error: { type: "invalid_request_error", message: `Times must align with ${window} boundaries.` } },
      };
    const buckets = new Map<number, number>();
    for (const e of a.meterEvents) {
      if (e.eventName !== meter.event_name || e.customer !== String(params.customer ?? "")) continue;
      if (e.timestamp < start || e.timestamp >= end) continue;
      const bucket = step ? e.timestamp - ((e.timestamp - start) % step) : start;
      buckets.set(bucket, (buckets.get(bucket) ?? 0) + e.value);
    }
    const all = [...buckets.entries()]
      .sort(([x], [y]) => y - x)
      .map(([bucket, value]) => ({
        id: `mtrusg_${meter.id}_${bucket}`,
        object: "billing.meter_event_summary",
        aggregated_value: value,
        start_time: bucket,
        end_time: step ? bucket + step : end,
        livemode: false,
        meter: meter.id,
      }));
    const after = params.starting_after ? all.findIndex((s) => s.id === params.starting_after) + 1 : 0;
    const limit = Math.min(100, Math.max(1, Number(params.limit ?? 10)));
    const data = all.slice(after, after + limit);
    return { status: 200, body: { object: "list", data, has_more: after + limit < all.length, url: path } };
  }

  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", "http://standin");
    const method = req.method ?? "GET";
    const key = (req.headers.authorization ?? "").replace(/^Bearer\s+/i, "") || "anonymous";
    const a = account(key);
    const body = await readBody(req);

    // Control endpoints for tests, keyed by the same API key.
    if (url.pathname === "/_standin/fail" && method === "POST") {
      const { status, count, delayMs } = JSON.parse(body || "{}") as {
        status?: number | "hang" | "slow";
        count?: number;
        delayMs?: number;
      };
      a.failure =
        status === undefined
          ? undefined
          : { status, remaining: count ?? Number.POSITIVE_INFINITY, delayMs: delayMs ?? 10_000 };
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
      return;
    }
    if (url.pathname === "/_standin/clock" && method === "POST") {
      a.now = (JSON.parse(body || "{}") as { now?: number }).now;
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
      return;
    }
    if (url.pathname === "/_standin/state" && method === "GET") {
      const totals: Record<string, Record<string, number>> = {};
      for (const e of a.meterEvents) {
        totals[e.customer] ??= {};
        const perCustomer = totals[e.customer] as Record<string, number>;
        perCustomer[e.eventName] = (perCustomer[e.eventName] ?? 0) + e.value;
      }
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          customers: [...a.customers.values()],
          subscriptions: [...a.subscriptions.values()],
          meterEvents: a.meterEvents,
          totals,
          requests: a.requests,
        }),
      );
      return;
    }

    if (!url.pathname.startsWith("/v1/")) {
      stripeError(res, 404, "Not found");
      return;
    }
    const idempotencyKey = req.headers["idempotency-key"] as string | undefined;
    a.requests.push({ method, path: url.pathname, idempotencyKey });
    let delayMs = 0;
    if (a.failure && a.failure.remaining > 0) {
      a.failure.remaining -= 1;
      if (a.failure.status === "hang") {
        hanging.add(res);
        return;
      }
      if (a.failure.status === "slow") delayMs = a.failure.delayMs;
      else {
        stripeError(res, a.failure.status, "Stripe is having a bad day.", { type: "api_error" });
        return;
      }
    }
    if (delayMs > 0) {
      // The work is done now; only the answer is late.
      hanging.add(res);
      const answer = answerOf(a, method, url.pathname + url.search, idempotencyKey, body);
      setTimeout(() => {
        hanging.delete(res);
        if (!res.destroyed) send(res, answer);
      }, delayMs).unref();
      return;
    }
    send(res, answerOf(a, method, url.pathname + url.search, idempotencyKey, body));
  });

  /** Stripe's answer to an API request, replayed for a repeated `Idempotency-Key`. */
  function answerOf(a: Account, method: string, path: string, idempotencyKey: string | undefined, body: string) {
    const replayKey = idempotencyKey ? `${method} ${path} ${idempotencyKey}` : undefined;
    const replay = replayKey ? a.idempotent.get(replayKey) : undefined;
    if (replay && nowOf(a) - replay.at < IDENTIFIER_WINDOW_SECONDS)
      return { status: replay.status, body: replay.body, replayed: true };
    const answer = handleApi(
      a,
      method,
      path.split("?")[0] as string,
      parseStripeForm(method === "GET" ? (path.split("?")[1] ?? "") : body),
    );
    const text = JSON.stringify(answer.body);
    if (replayKey && answer.status < 500)
      a.idempotent.set(replayKey, { status: answer.status, body: text, at: nowOf(a) });
    return { status: answer.status, body: text, replayed: false };
  }

  function send(res: ServerResponse, answer: { status: number; body: string; replayed: boolean }) {
    res.writeHead(
      answer.status,
      answer.replayed
        ? { "content-type": "application/json", "idempotent-replayed": "true" }
        : { "content-type": "application/json", "request-id": id("req") },
    );
    res.end(answer.body);
  }

  await new Promise<void>((resolve) => server.listen(options.port ?? 0, options.host ?? "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${options.host ?? "127.0.0.1"}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of hanging) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { values } = parseArgs({
    options: { port: { type: "string", default: "12111" }, host: { type: "string", default: "127.0.0.1" } },
  });
  const standin = await startStripeStandin({ port: Number(values.port), host: values.host });
  console.log(`Stripe stand-in listening on ${standin.url}`);
  for (const signal of ["SIGINT", "SIGTERM"] as const)
    process.on(signal, () => void standin.close().then(() => process.exit(0)));
}
