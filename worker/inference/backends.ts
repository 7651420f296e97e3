import { z } from "zod";
import { canonicalHost, isPrivateHost } from "../platform/addresses";

/** One GPU inference server (vLLM, TGI, anything OpenAI-compatible) serving a model. */
export interface Backend {
  /** Base URL without the `/v1` suffix, e.g. `https://gpu-1.example.com`. */
  url: string;
  weight: number;
  timeoutMs: number;
  apiKey: string | undefined;
  /** The model name the server expects (vLLM's `--served-model-name`). */
  servedModel: string;
  /**
   * The server is vLLM and is asked for usage on every streamed chunk
   * (`stream_options.continuous_usage_stats`), so a stream cut before its usage chunk is still
   * billed what the server counted. Off unless the operator says so: another server may refuse
   * a field it does not know.
   */
  continuousUsage?: boolean;
}

const BackendInput = z.object({
  url: z.string(),
  weight: z.number().positive().default(1),
  timeoutMs: z.number().int().positive().max(600_000).default(120_000),
  apiKey: z.string().optional(),
  servedModel: z.string().optional(),
  continuousUsage: z.boolean().default(false),
});

export const BackendsInput = z.record(z.string(), z.array(BackendInput));

/** Why a backend URL was refused. */
export type BackendUrlProblem = "not_a_url" | "scheme" | "credentials" | "private_address";

/**
 * Checks a backend URL as requests will be sent to it (`backendBaseUrl`): http(s), no credentials
 * in it, and its host, as the URL parser normalises it (`0x7f000001` is `127.0.0.1`,
 * `[::ffff:127.0.0.1]` is `[::ffff:7f00:1]`), not a private, loopback, link-local, metadata or
 * otherwise non-public address (`isPrivateHost`) unless the operator listed the host in
 * `allowedHosts`. Every way a server enters the pools passes here: `INFERENCE_BACKENDS`, the admin
 * API, and each stored server whenever it is read. (Names that resolve to private addresses
 * cannot be caught here: Workers have no DNS lookup; the edge's own egress rules cover that.)
 */
export function checkBackendUrl(raw: string, allowedHosts: readonly string[]): BackendUrlProblem | undefined {
  let url: URL;
  try {
    url = new URL(backendBaseUrl(raw));
  } catch {
    return "not_a_url";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return "scheme";
  if (url.username || url.password) return "credentials";
  const host = url.hostname.toLowerCase();
  if (isPrivateHost(host) && !allowedHosts.some((entry) => canonicalHost(entry) === host)) return "private_address";
  return undefined;
}

/** A backend URL as requests are sent to it: no trailing slash, no `/v1`. */
export function backendBaseUrl(url: string): string {
  return url.trim().replace(/\/+$/, "").replace(/\/v1$/, "");
}

/** What each refusal of a backend URL means, for the operator. */
export const BACKEND_URL_PROBLEMS: Record<BackendUrlProblem, string> = {
  not_a_url: "is not an absolute URL",
  scheme: "must be http or https",
  credentials: "must not carry a user name or password (give the API key on its own)",
  private_address:
    "is a private, loopback, link-local or metadata address; an operator must list the host in INFERENCE_ALLOWED_HOSTS first",
};

/** The configured pools, with refused backends listed separately for the operator's logs. */
export interface BackendPools {
  pools: ReadonlyMap<string, readonly Backend[]>;
  refused: { model: string; url: string; problem: BackendUrlProblem }[];
}

/** Parses `INFERENCE_BACKENDS` (model id → backends). Malformed JSON throws: a deployment error. */
export function parseBackendPools(json: string | undefined, allowedHosts: readonly string[]): BackendPools {
  const input = BackendsInput.parse(json?.trim() ? JSON.parse(json) : {});
  const pools = new Map<string, Backend[]>();
  const refused: BackendPools["refused"] = [];
  for (const [model, list] of Object.entries(input)) {
    const usable: Backend[] = [];
    for (const b of list) {
      const problem = checkBackendUrl(b.url, allowedHosts);
      if (problem) {
        refused.push({ model, url: b.url, problem });
        continue;
      }
      usable.push({
        url: backendBaseUrl(b.url),
        weight: b.weight,
        timeoutMs: b.timeoutMs,
        apiKey: b.apiKey,
        servedModel: b.servedModel ?? model,
        ...(b.continuousUsage ? { continuousUsage: true } : {}),
      });
    }
    pools.set(model, usable);
  }
  return { pools, refused };
}

/**
 * How long a failed backend is left alone before it is probed again, while its pool has others
 * to serve (the last of a pool is tried anyway: `BackendHealth.order`).
 */
const DOWN_FOR_MS = 10_000;

/** How long an isolate serves the stored servers, and their shared health, before reading them again. */
export const BACKENDS_CACHE_MS = 5_000;

/**
 * How much longer an isolate that learned of a failure from another leaves the backend alone:
 * the isolate that found it down probes it when its time is up, and the others, reading its word
 * within `BACKENDS_CACHE_MS`, need not probe at all (nor each write what they found). They probe
 * themselves only if no word comes, say because that isolate is gone.
 */
const PROBE_LEFT_TO_REPORTER_MS = BACKENDS_CACHE_MS + 1_000;

/** A change in a backend's health as one isolate saw it: what isolates tell each other. */
export interface HealthReport {
  url: string;
  state: "up" | "down";
  /** Why it went down ("connect", "timeout", "status 503", "probe"); null when up. */
  reason: string | null;
  /** When it was seen (epoch ms). */
  at: number;
  /** When a down backend is next probed (epoch ms); null when up. */
  downUntil: number | null;
}

/** What it means to find a backend down (for `reason`) or, with no reason, up at `at`. */
export function healthReport(url: string, at: number, reason: string | null): HealthReport {
  return reason === null
    ? { url, state: "up", reason: null, at, downUntil: null }
    : { url, state: "down", reason, at, downUntil: at + DOWN_FOR_MS };
}

/**
 * Health as this isolate knows it. A backend that refused a connection or answered 5xx is down
 * for a while; once that passes it is probed (`/health`, then `/v1/models`) before it gets traffic
 * again. The changes this isolate sees go out as reports (`takeReports`) and it adopts the others'
 * newer ones (`adopt`): a backend one isolate finds down is left alone by the rest within
 * seconds, and one a probe finds up takes their traffic again, without each isolate paying a
 * failed attempt or a probe of its own.
 */
export class BackendHealth {
  private readonly downUntil = new Map<string, number>();
  /** When this isolate last learned of each backend's health: reports from before that are old news. */
  private readonly knownAt = new Map<string, number>();
  private readonly probing = new Map<string, Promise<boolean>>();
  private readonly unshared = new Map<string, HealthReport>();

  constructor(
    private readonly fetcher: typeof fetch = (input, init) => fetch(input, init),
    private readonly now: () => number = () => Date.now(),
  ) {}

  markDown(backend: Backend, now: number, reason: string): void {
    this.learn(healthReport(backend.url, now, reason));
  }

  /** A backend answered: news only if it was down. */
  markUp(backend: Backend, now: number): void {
    if (this.downUntil.has(backend.url)) this.learn(healthReport(backend.url, now, null));
  }

  private learn(report: HealthReport): void {
    this.apply(report);
    this.unshared.set(report.url, report);
  }

  /** Takes `report` as known, a down backend left alone `waitMs` longer than it says. */
  private apply(report: HealthReport, waitMs = 0): void {
    if (report.state === "down") this.downUntil.set(report.url, (report.downUntil ?? report.at + DOWN_FOR_MS) + waitMs);
    else this.downUntil.delete(report.url);
    this.knownAt.set(report.url, report.at);
  }

  /** Whether this isolate saw changes the others have not been told of. */
  get hasReports(): boolean {
    return this.unshared.size > 0;
  }

  /** The changes to tell the others of; `giveBack` them if they could not be told. */
  takeReports(): HealthReport[] {
    const reports = [...this.unshared.values()];
    this.unshared.clear();
    return reports;
  }

  /** Reports that could not be shared, kept for the next try unless a newer change replaced them. */
  giveBack(reports: readonly HealthReport[]): void {
    for (const report of reports) if (!this.unshared.has(report.url)) this.unshared.set(report.url, report);
  }

  /**
   * Takes on what other isolates saw, where it is newer than what this one knows. A backend
   * another isolate found down is left to that isolate's probe (`PROBE_LEFT_TO_REPORTER_MS`).
   */
  adopt(reports: readonly HealthReport[]): void {
    for (const report of reports) {
      if (report.at > (this.knownAt.get(report.url) ?? Number.NEGATIVE_INFINITY)) {
        this.apply(report, PROBE_LEFT_TO_REPORTER_MS);
      }
    }
  }

  /** Whether a backend may take traffic now; kicks off a probe when its down time has passed. */
  isUsable(backend: Backend, now: number, waitUntil: (p: Promise<unknown>) => void): boolean {
    const until = this.downUntil.get(backend.url);
    if (until === undefined) return true;
    if (now < until) return false;
    if (!this.probing.has(backend.url)) {
      const probe = this.probe(backend).then((ok) => {
        this.probing.delete(backend.url);
        if (ok) this.markUp(backend, this.now());
        else this.markDown(backend, this.now(), "probe");
        return ok;
      });
      this.probing.set(backend.url, probe);
      waitUntil(probe);
    }
    return false;
  }

  /** One health check: `/health` (vLLM, TGI), falling back to `/v1/models`. */
  async probe(backend: Backend): Promise<boolean> {
    for (const path of ["/health", "/v1/models"]) {
      try {
        const res = await this.fetcher(`${backend.url}${path}`, {
          headers: backend.apiKey ? { authorization: `Bearer ${backend.apiKey}` } : {},
          redirect: "manual",
          signal: AbortSignal.timeout(3_000),
        });
        await res.body?.cancel();
        if (res.ok) return true;
        if (res.status !== 404) return false;
      } catch {
        return false;
      }
    }
    return false;
  }

  /**
   * The servers of `pool` to try for one request, in order: the usable ones (`orderBackends`).
   * When none is, the server whose down time ends first still gets the request, as a half-open
   * trial: a pool is never emptied for a fixed window, so its last server keeps serving what it
   * can, clients see its own error (a 502) rather than a blanket 503, and its first success
   * brings it back at once. Among several down servers the trial moves on to the next with each
   * failure, as each failure pushes that server's time back.
   */
  order(
    pool: readonly Backend[],
    now: number,
    waitUntil: (p: Promise<unknown>) => void,
    random: () => number,
  ): Backend[] {
    const usable = orderBackends(pool, (b) => this.isUsable(b, now, waitUntil), random);
    if (usable.length > 0) return usable;
    let lastResort: Backend | undefined;
    for (const backend of pool) {
      if (!lastResort || this.downUntilOf(backend) < this.downUntilOf(lastResort)) lastResort = backend;
    }
    return lastResort ? [lastResort] : [];
  }

  private downUntilOf(backend: Backend): number {
    return this.downUntil.get(backend.url) ?? Number.NEGATIVE_INFINITY;
  }

  /** Wait for probes started so far (tests). */
  async settled(): Promise<void> {
    await Promise.all(this.probing.values());
  }
}

/**
 * Orders a pool for one request: usable backends by weighted random choice without replacement
 * (so retries go to the others), down ones never. (`BackendHealth.order` adds the last resort
 * when every server of the pool is down.)
 */
export function orderBackends(
  pool: readonly Backend[],
  usable: (b: Backend) => boolean,
  random: () => number,
): Backend[] {
  const candidates = pool.filter(usable);
  const ordered: Backend[] = [];
  while (candidates.length > 0) {
    const total = candidates.reduce((n, b) => n + b.weight, 0);
    let pick = random() * total;
    let index = 0;
    for (; index < candidates.length - 1; index++) {
      pick -= (candidates[index] as Backend).weight;
      if (pick < 0) break;
    }
    ordered.push(candidates.splice(index, 1)[0] as Backend);
  }
  return ordered;
}
