import { env } from "cloudflare:workers";
import { expect } from "vitest";

const SIM_URLS = JSON.parse(env.TEST_BACKEND_URLS) as string[];

/** A request as a simulator logged it. */
export interface SimulatorRequest {
  path: string;
  body: Record<string, unknown>;
  /** Request headers, lower-cased. */
  headers: Record<string, string>;
}

/**
 * A private slice of one of the simulators test/global-setup.ts starts: its own mode and request
 * log, so tests never disturb each other.
 */
export function scopedBackend(index: number) {
  const base = `${SIM_URLS[index]}/scope/${crypto.randomUUID()}`;
  return {
    url: base,
    async mode(mode: string, extra: Record<string, unknown> = {}) {
      const res = await fetch(`${base}/_sim/mode`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ mode, ...extra }),
      });
      expect(res.status).toBe(200);
    },
    async requests(): Promise<SimulatorRequest[]> {
      const res = await fetch(`${base}/_sim/requests`);
      const body = (await res.json()) as { requests?: unknown[] } | unknown[];
      return (Array.isArray(body) ? body : (body.requests ?? [])) as SimulatorRequest[];
    },
  };
}

export type Backend = ReturnType<typeof scopedBackend>;
