/** The guard model's deployment settings: which server screens requests and the policy around it. Read once per environment. */
import { z } from "zod";
import { type BackendUrlProblem, backendBaseUrl, checkBackendUrl } from "../inference/backends";

/** How an organization's requests are screened: not at all, flagged, or flagged and refused. */
export const GUARD_MODES = ["off", "log", "block"] as const;
export type GuardMode = (typeof GUARD_MODES)[number];

/** The guard model's server: any OpenAI-compatible server serving e.g. Llama Guard. */
export interface GuardBackend {
  /** Base URL without `/v1`. */
  url: string;
  servedModel: string;
  timeoutMs: number;
  apiKey: string | undefined;
}

export interface GuardSettings {
  /**
   * `GUARD_BACKEND`; undefined: no guard in this deployment (every organization is `off`). A
   * URL refused as an inference server would be is kept as its problem: organizations in `block`
   * mode are then refused (fail closed), those in `log` mode served with `guard_unavailable` logged.
   */
  backend: GuardBackend | { problem: BackendUrlProblem | "malformed" } | undefined;
  /** `GUARD_DEFAULT_MODE` (default `off`): the mode of organizations no admin set. */
  defaultMode: GuardMode;
  /** `GUARD_SUSPEND_THRESHOLD` (default 10): flags in 24 hours that propose a suspension; 0 never does. */
  suspendThreshold: number;
  /** `GUARD_SAMPLE_RETENTION_DAYS` (default 30): how long stored samples are kept. */
  sampleRetentionDays: number;
}

const BackendInput = z.object({
  url: z.string(),
  servedModel: z.string().min(1).max(200).optional(),
  timeoutMs: z.number().int().positive().max(60_000).default(10_000),
  apiKey: z.string().optional(),
});

/** The most characters of screened text a flag keeps as its sample. */
export const SAMPLE_CHARS = 2_000;

function wholeNumber(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined || value.trim() === "") return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a whole number, not "${value}"`);
  return n;
}

/** Parses `GUARD_BACKEND` JSON, checking its URL exactly as inference servers' are. */
export function parseGuardBackend(json: string | undefined, allowedHosts: readonly string[]): GuardSettings["backend"] {
  if (!json?.trim()) return undefined;
  let input: z.infer<typeof BackendInput>;
  try {
    input = BackendInput.parse(JSON.parse(json));
  } catch {
    return { problem: "malformed" };
  }
  const problem = checkBackendUrl(input.url, allowedHosts);
  if (problem) return { problem };
  return {
    url: backendBaseUrl(input.url),
    servedModel: input.servedModel ?? "meta-llama/Llama-Guard-3-8B",
    timeoutMs: input.timeoutMs,
    apiKey: input.apiKey,
  };
}

const cache = new WeakMap<object, GuardSettings>();

/** The guard settings of `env`; `allowedHosts` is `INFERENCE_ALLOWED_HOSTS` as the config read it. */
export function guardSettings(env: Env, allowedHosts: readonly string[]): GuardSettings {
  const hit = cache.get(env);
  if (hit) return hit;
  // Optional in tests and older deployments: absent is the same as empty.
  const vars = env as Partial<
    Pick<Env, "GUARD_BACKEND" | "GUARD_DEFAULT_MODE" | "GUARD_SUSPEND_THRESHOLD" | "GUARD_SAMPLE_RETENTION_DAYS">
  >;
  const mode = (vars.GUARD_DEFAULT_MODE ?? "").trim() || "off";
  if (!GUARD_MODES.includes(mode as GuardMode))
    throw new Error(`GUARD_DEFAULT_MODE must be off, log or block, not "${mode}"`);
  const settings: GuardSettings = {
    backend: parseGuardBackend(vars.GUARD_BACKEND, allowedHosts),
    defaultMode: mode as GuardMode,
    suspendThreshold: wholeNumber("GUARD_SUSPEND_THRESHOLD", vars.GUARD_SUSPEND_THRESHOLD, 10),
    sampleRetentionDays: wholeNumber("GUARD_SAMPLE_RETENTION_DAYS", vars.GUARD_SAMPLE_RETENTION_DAYS, 30),
  };
  cache.set(env, settings);
  return settings;
}
