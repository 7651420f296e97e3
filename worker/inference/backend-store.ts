/**
 * Inference servers admins add in the console, and the pools requests are balanced over: those of
 * `INFERENCE_BACKENDS` first, then the enabled servers of the `inference_backends` table. An
 * isolate reads the table at most once per `BACKENDS_CACHE_MS`, so a change made in the console
 * is in force everywhere within that window (at once in the isolate that made it) while the
 * completion path reads nothing but memory: a completion that finds the pools
 * `BACKENDS_REFRESH_MS` old reads them again after its answer (`renewIfDue`).
 */
import { and, eq, ne, notExists, sql } from "drizzle-orm";
import type { Config } from "../config";
import { inferenceBackendHealth, inferenceBackends } from "../db/schema";
import { base64url, fromBase64url } from "../platform/ids";
import { type Renewable, renewIfDue } from "../platform/renew-ahead";
import type { Services } from "../services";
import {
  BACKENDS_CACHE_MS,
  type Backend,
  type BackendHealth,
  type BackendUrlProblem,
  checkBackendUrl,
  type HealthReport,
} from "./backends";

type StoredBackendRow = typeof inferenceBackends.$inferSelect;

interface CachedPools extends Renewable {
  pools: ReadonlyMap<string, readonly Backend[]>;
  expiresAt: number;
}

/** How old the pools are when the next completion reads them again, after its answer. */
export const BACKENDS_REFRESH_MS = BACKENDS_CACHE_MS - 1_000;

function cachedFrom(pools: ReadonlyMap<string, readonly Backend[]>, now: number): CachedPools {
  return { pools, expiresAt: now + BACKENDS_CACHE_MS, refreshAt: now + BACKENDS_REFRESH_MS, refreshing: false };
}

/** Per deployment configuration (one per set of bindings): the merged pools and when they expire. */
const cache = new WeakMap<Config, CachedPools>();

/** Makes this isolate read the stored servers again on the next request (after a change here). */
export function forgetStoredBackends(config: Config): void {
  cache.delete(config);
}

/**
 * The merged pools if this isolate read them lately — the completion path's usual answer, read
 * again after the answer (`waitUntil`) once they are `BACKENDS_REFRESH_MS` old — or undefined.
 */
export function cachedBackendPools(
  services: Pick<Services, "db" | "config" | "clock" | "log">,
  health: BackendHealth,
  waitUntil: (work: Promise<unknown>) => void,
): ReadonlyMap<string, readonly Backend[]> | undefined {
  const now = services.clock.now().getTime();
  const hit = freshPools(services.config, now);
  if (!hit) return undefined;
  renewIfDue(
    hit,
    now,
    waitUntil,
    () => readPools(services, health),
    (error) => services.log.warn("inference servers not read again", { error: String(error) }),
  );
  return hit.pools;
}

/**
 * Model id → the servers to balance its requests over. A stored server whose URL the current
 * rules refuse (an allowed host was taken off the list) or whose key no longer opens (the secret
 * changed) is left out and logged, never sent to without its key. If the table cannot be read,
 * the pools read last (or the configured ones) serve until the next try. Given `health`, the
 * same read brings it what other isolates last saw of each server.
 */
export async function backendPools(
  services: Pick<Services, "db" | "config" | "clock" | "log">,
  health?: BackendHealth,
): Promise<ReadonlyMap<string, readonly Backend[]>> {
  return freshPools(services.config, services.clock.now().getTime())?.pools ?? readPools(services, health);
}

/** The pools this isolate read for `config`, unless they expired by `now`. */
function freshPools(config: Config, now: number): CachedPools | undefined {
  const hit = cache.get(config);
  return hit && hit.expiresAt > now ? hit : undefined;
}

/** Reads the stored servers and caches the merged pools (the last known ones if the table cannot be read). */
async function readPools(
  services: Pick<Services, "db" | "config" | "clock" | "log">,
  health?: BackendHealth,
): Promise<ReadonlyMap<string, readonly Backend[]>> {
  const { config } = services;
  const now = services.clock.now().getTime();
  let rows: StoredBackendRow[];
  try {
    rows = await enabledServers(services, health);
  } catch (error) {
    services.log.error("stored inference servers unreadable; serving the last known pools", { error: String(error) });
    const pools = cache.get(config)?.pools ?? config.inference.backends.pools;
    cache.set(config, cachedFrom(pools, now));
    return pools;
  }
  const pools = new Map<string, Backend[]>();
  for (const [model, pool] of config.inference.backends.pools) pools.set(model, [...pool]);
  for (const row of rows) {
    const stored = await storedBackend(config, row);
    if (!stored.ok) {
      if (stored.problem === "key_unreadable") {
        services.log.error("stored inference server skipped: its API key does not open with INFERENCE_KEYS_SECRET", {
          id: row.id,
          url: row.url,
        });
      } else
        services.log.warn("stored inference server refused", { id: row.id, url: row.url, problem: stored.problem });
      continue;
    }
    const pool = pools.get(row.model) ?? [];
    pool.push(stored.backend);
    pools.set(row.model, pool);
  }
  cache.set(config, cachedFrom(pools, now));
  return pools;
}

/**
 * The enabled stored servers; given `health`, in the same batch what other isolates saw of every
 * server, which it takes on. Health that cannot be read (say, its migration is not applied yet)
 * is logged and done without: the servers are read on their own.
 */
async function enabledServers(
  services: Pick<Services, "db" | "log">,
  health: BackendHealth | undefined,
): Promise<StoredBackendRow[]> {
  const { db } = services;
  const servers = db.select().from(inferenceBackends).where(eq(inferenceBackends.enabled, true));
  if (!health) return servers;
  try {
    const [rows, shared] = await db.batch([servers, db.select().from(inferenceBackendHealth)]);
    health.adopt(shared.map(reportOf));
    return rows;
  } catch (error) {
    services.log.warn("backend health unreadable; servers read without it", { error: String(error) });
    return servers;
  }
}

/**
 * A stored server as requests are sent to it, its key opened; or why it cannot be sent to: its
 * key does not open with the current secret (checked first), or the current rules refuse its URL.
 */
export async function storedBackend(
  config: Config,
  row: StoredBackendRow,
): Promise<{ ok: true; backend: Backend } | { ok: false; problem: BackendUrlProblem | "key_unreadable" }> {
  let apiKey: string | undefined;
  if (row.apiKeySealed !== null) {
    const secret = config.inference.keysSecret;
    apiKey = secret === undefined ? undefined : await openApiKey(secret, row.id, row.apiKeySealed);
    if (apiKey === undefined) return { ok: false, problem: "key_unreadable" };
  }
  const problem = checkBackendUrl(row.url, config.inference.allowedHosts);
  if (problem) return { ok: false, problem };
  return {
    ok: true,
    backend: {
      url: row.url,
      weight: row.weight,
      timeoutMs: row.timeoutMs,
      apiKey,
      servedModel: row.servedModel ?? row.model,
    },
  };
}

type HealthRow = typeof inferenceBackendHealth.$inferSelect;

function reportOf(row: HealthRow): HealthReport {
  return { url: row.url, state: row.state, reason: row.reason, at: row.seenAt, downUntil: row.downUntil };
}

/**
 * Stores what an isolate saw of its servers' health for the others, each report unless a newer
 * one for its server is stored; a server's `since` stays when a report only confirms its state.
 */
export async function shareHealthReports(
  services: Pick<Services, "db">,
  reports: readonly HealthReport[],
): Promise<void> {
  const { db } = services;
  const t = inferenceBackendHealth;
  const writes = reports.map((r) =>
    db
      .insert(t)
      .values({
        url: r.url,
        state: r.state,
        reason: r.reason,
        since: new Date(r.at).toISOString(),
        downUntil: r.downUntil,
        seenAt: r.at,
      })
      .onConflictDoUpdate({
        target: t.url,
        set: {
          state: sql`excluded.state`,
          reason: sql`excluded.reason`,
          since: sql`case when ${t.state} = excluded.state then ${t.since} else excluded.since end`,
          downUntil: sql`excluded.down_until`,
          seenAt: sql`excluded.seen_at`,
        },
        setWhere: sql`excluded.seen_at > ${t.seenAt}`,
      }),
  );
  const [first, ...rest] = writes;
  if (first) await db.batch([first, ...rest]);
}

/**
 * The statements that drop the shared health of `url` as a stored server leaves it (removed, or
 * moved to another URL): none while `INFERENCE_BACKENDS` names it, and the row stays while another
 * stored server (`exceptId` aside) still has it. Run in the change's own batch.
 */
export function dropHealthOfUnusedUrl(services: Pick<Services, "db" | "config">, url: string, exceptId: string) {
  const configured = [...services.config.inference.backends.pools.values()].some((pool) =>
    pool.some((b) => b.url === url),
  );
  if (configured) return [];
  const { db } = services;
  const stillStored = db
    .select({ id: inferenceBackends.id })
    .from(inferenceBackends)
    .where(and(eq(inferenceBackends.url, url), ne(inferenceBackends.id, exceptId)));
  return [db.delete(inferenceBackendHealth).where(and(eq(inferenceBackendHealth.url, url), notExists(stillStored)))];
}

/** Each server's latest shared health, by URL (the console's view). */
export async function sharedHealth(services: Pick<Services, "db">): Promise<Map<string, HealthRow>> {
  const rows = await services.db.select().from(inferenceBackendHealth);
  return new Map(rows.map((row) => [row.url, row]));
}

const utf8 = new TextEncoder();
const SEAL_INFO = utf8.encode("modelgate inference server api key v1");
const SEAL_PREFIX = "v1.";
const sealingKeys = new Map<string, Promise<CryptoKey>>();

/** The AES-256-GCM key derived (HKDF-SHA-256) from `INFERENCE_KEYS_SECRET`. */
function sealingKey(secret: string): Promise<CryptoKey> {
  let key = sealingKeys.get(secret);
  if (!key) {
    key = crypto.subtle
      .importKey("raw", utf8.encode(secret), "HKDF", false, ["deriveKey"])
      .then((base) =>
        crypto.subtle.deriveKey(
          { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: SEAL_INFO },
          base,
          { name: "AES-GCM", length: 256 },
          false,
          ["encrypt", "decrypt"],
        ),
      );
    sealingKeys.set(secret, key);
  }
  return key;
}

/**
 * Seals a backend's API key for storage: AES-GCM under a key derived from `secret`, with the
 * backend's id as associated data, so a sealed key copied to another row does not open.
 */
export async function sealApiKey(secret: string, backendId: string, apiKey: string): Promise<string> {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const sealed = await crypto.subtle.encrypt(
    { name: "AES-GCM", iv, additionalData: utf8.encode(backendId) },
    await sealingKey(secret),
    utf8.encode(apiKey),
  );
  return `${SEAL_PREFIX}${base64url(iv)}.${base64url(new Uint8Array(sealed))}`;
}

/** The API key `sealApiKey` sealed, or undefined when it does not open with `secret` for this backend. */
export async function openApiKey(secret: string, backendId: string, sealed: string): Promise<string | undefined> {
  if (!sealed.startsWith(SEAL_PREFIX)) return undefined;
  const [iv, data] = sealed.slice(SEAL_PREFIX.length).split(".");
  if (!iv || !data) return undefined;
  try {
    const plain = await crypto.subtle.decrypt(
      { name: "AES-GCM", iv: fromBase64url(iv), additionalData: utf8.encode(backendId) },
      await sealingKey(secret),
      fromBase64url(data),
    );
    return new TextDecoder().decode(plain);
  } catch {
    return undefined;
  }
}
