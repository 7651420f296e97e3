import { env } from "cloudflare:workers";
import OpenAI from "openai";
import { expect } from "vitest";
import type { inferenceBackends } from "../../worker/db/schema";
import type { testGateway } from "./gateway";
import { type ApprovedTokenOptions, approvedToken } from "./weights";

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
      return (await res.json()) as SimulatorRequest[];
    },
  };
}

export type Backend = ReturnType<typeof scopedBackend>;

/**
 * A row of `inference_backends` as an admin's call elsewhere would have stored it: enabled,
 * weight 1, a 10 s timeout, no key, unless `fields` say otherwise.
 */
export function storedServer(
  fields: { id: string; model: string; url: string; at: string } & Partial<typeof inferenceBackends.$inferInsert>,
): typeof inferenceBackends.$inferInsert {
  const { at, ...rest } = fields;
  return {
    servedModel: null,
    weight: 1,
    timeoutMs: 10_000,
    apiKeySealed: null,
    enabled: true,
    createdAt: at,
    updatedAt: at,
    ...rest,
  };
}

/**
 * A fresh organization with an approved application and an access token (its grant and token as
 * `options` say), and the real `openai` client on the gateway with that token (no retries, so
 * each test sees every answer).
 */
export async function openAiCaller(
  gw: ReturnType<typeof testGateway>,
  licenseSha256: string,
  options: ApprovedTokenOptions = {},
) {
  const unique = crypto.randomUUID();
  const access = await approvedToken(gw, licenseSha256, {
    organization: `Org ${unique}`,
    email: `${unique}@example.com`,
    ...options,
  });
  const client = new OpenAI({
    apiKey: access.token,
    baseURL: "http://gw/v1",
    maxRetries: 0,
    fetch: (input: string | URL | Request, init?: RequestInit) => {
      const url = new URL(input instanceof Request ? input.url : String(input));
      return gw.request(url.pathname + url.search, init);
    },
  });
  return { client, ...access };
}
