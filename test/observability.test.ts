import { env } from "cloudflare:workers";
import { beforeEach, describe, expect, it } from "vitest";
import { clearCallerCache } from "../worker/inference/access";
import { recordCompletion } from "../worker/observability/analytics";
import { checkReadiness } from "../worker/observability/readiness";
import { fixedClock } from "../worker/platform/clock";
import { openAiCaller, scopedBackend } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

/** An Analytics Engine dataset that keeps what was written. */
function recordingDataset() {
  const points: AnalyticsEngineDataPoint[] = [];
  const dataset: AnalyticsEngineDataset = { writeDataPoint: (point) => void points.push(point ?? {}) };
  return { points, dataset };
}

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

describe("GET /health", () => {
  it("answers liveness without touching anything", async () => {
    const gw = testGateway();
    const res = await gw.request("/health");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it("?ready: 200 when D1, R2, the quota object and the queue all answer", async () => {
    const gw = testGateway();
    const res = await gw.request("/health?ready");
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toBe("no-store");
    const body = (await res.json()) as { ok: boolean; checks: Record<string, { ok: boolean; detail?: string }> };
    expect(body.ok).toBe(true);
    expect(Object.keys(body.checks).sort()).toEqual(["d1", "queue", "quota", "r2"]);
    for (const check of Object.values(body.checks)) expect(check.ok).toBe(true);
    expect(body.checks.queue?.detail).toMatch(/not sent/);
  });

  it("?ready: 503 naming the check that failed when D1 refuses", async () => {
    const broken = {
      prepare: () => {
        throw new Error("D1_ERROR: database unavailable");
      },
    } as unknown as D1Database;
    const gw = testGateway({ bindings: { DB: broken } });
    const res = await gw.request("/health?ready");
    expect(res.status).toBe(503);
    const body = (await res.json()) as { ok: boolean; checks: Record<string, { ok: boolean; detail?: string }> };
    expect(body.ok).toBe(false);
    expect(body.checks.d1).toMatchObject({ ok: false, detail: "D1_ERROR: database unavailable" });
    expect(body.checks.r2?.ok).toBe(true);
    expect(body.checks.quota?.ok).toBe(true);
  });

  it("?ready: a dependency that never answers fails within the timeout, the others still pass", async () => {
    const hanging = { ...env.WEIGHTS, head: () => new Promise<null>(() => {}) } as unknown as R2Bucket;
    const started = Date.now();
    const report = await checkReadiness({ ...env, WEIGHTS: hanging }, { timeoutMs: 50, now: () => Date.now() });
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(report.ok).toBe(false);
    expect(report.checks.r2).toMatchObject({ ok: false, detail: "no answer within 50 ms" });
    expect(report.checks.d1.ok).toBe(true);
  });

  it("security: ?ready is held to the public abuse brake (each check is a billed operation)", async () => {
    const refusing = { limit: async () => ({ success: false }) } as unknown as RateLimit;
    const gw = testGateway({ bindings: { PUBLIC_LIMITER: refusing } });
    const res = await gw.request("/health?ready", { headers: { "cf-connecting-ip": "203.0.113.9" } });
    expect(res.status).toBe(429);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    expect(((await res.json()) as { code: string }).code).toBe("rate_limited");
    expect((await gw.request("/health")).status).toBe(200);
  });

  it("?ready: a missing queue binding fails the queue check", async () => {
    const report = await checkReadiness({ ...env, USAGE_QUEUE: undefined as unknown as Queue }, { now: () => 0 });
    expect(report.checks.queue).toMatchObject({ ok: false, detail: "no USAGE_QUEUE binding" });
  });
});

describe("analytics data points", () => {
  it("a completion writes one point: organization, model, backend, status, tokens", async () => {
    const { points, dataset } = recordingDataset();
    const backend = scopedBackend(0);
    const gw = testGateway({
      clock: fixedClock("2026-06-15T12:00:05Z"),
      inference: { random: () => 0 },
      bindings: {
        INFERENCE_BACKENDS: JSON.stringify({ "llama-2-7b-chat": [{ url: backend.url }] }),
        INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
        ANALYTICS: dataset,
      },
    });
    const { client, applicationId } = await openAiCaller(gw, licenseSha256);
    await client.chat.completions.create({
      model: "llama-2-7b-chat",
      messages: [{ role: "user", content: "say hello to the nice people" }],
      max_tokens: 5,
    });
    const organizationId = (
      await gw.db.query.applications.findFirst({
        where: (a, { eq }) => eq(a.id, applicationId),
      })
    )?.organizationId;
    expect(points).toHaveLength(1);
    expect(points[0]).toEqual({
      indexes: [organizationId],
      blobs: ["completion", "llama-2-7b-chat", backend.url, "ok", "chat.completions"],
      doubles: [200, expect.any(Number), 6, 5, 0],
    });
  });

  it("a download writes one point with the bytes served once its stream ended", async () => {
    const { points, dataset } = recordingDataset();
    await seedRevision("llama-2-7b", { "params.json": bytes(2_000, 5) });
    const gw = testGateway({ bindings: { ANALYTICS: dataset } });
    const { token } = await approvedToken(gw, licenseSha256);
    const manifest = (await (
      await gw.request("/v1/models/llama-2-7b/manifest", { headers: { authorization: `Bearer ${token}` } })
    ).json()) as { files: { path: string; url: string }[] };
    const url = new URL(manifest.files[0]?.url as string);
    const res = await gw.request(url.pathname + url.search, { headers: { range: "bytes=0-99" } });
    expect(res.status).toBe(206);
    expect((await res.arrayBuffer()).byteLength).toBe(100);
    expect(points).toHaveLength(1);
    expect(points[0]).toMatchObject({
      blobs: ["download", "llama-2-7b", "", "complete", "params.json"],
      doubles: [206, expect.any(Number), 0, 0, 100],
    });
    expect(points[0]?.indexes?.[0]).toMatch(/^org/);
  });

  it("without the binding nothing is written and nothing fails; a throwing dataset never fails the caller", () => {
    const row = {
      organizationId: "org_1",
      model: "m",
      backend: null,
      endpoint: "completions",
      outcome: "ok",
      status: 200,
      promptTokens: 1,
      completionTokens: 2,
    };
    expect(() => recordCompletion({}, row, 5)).not.toThrow();
    const throwing: AnalyticsEngineDataset = {
      writeDataPoint: () => {
        throw new Error("buffer full");
      },
    };
    expect(() => recordCompletion({ ANALYTICS: throwing }, row, 5)).not.toThrow();
  });
});
