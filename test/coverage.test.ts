import { eq } from "drizzle-orm";
import OpenAI from "openai";
import { beforeEach, describe, expect, it } from "vitest";
import { grants } from "../worker/db/schema";
import { modelCoverage } from "../worker/grants/coverage";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { fixedClock } from "../worker/platform/clock";
import { type Backend, scopedBackend } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";
import { usageRows } from "./helpers/ledger";
import { approvedToken, seedRevision } from "./helpers/weights";

const SEVEN_B = ["llama-2-7b", "llama-2-7b-chat"];

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
  await seedRevision("llama-2-7b", { "config.json": "{}", "params.json": '{"dim":4096}' });
  await seedRevision("llama-2-70b", { "config.json": "{}", "params.json": '{"dim":8192}' });
});

/** A gateway with servers for a 7B and a 70B chat model, on a clock that stays in one minute. */
function inferenceGateway(backend: Backend = scopedBackend(0)) {
  return testGateway({
    clock: fixedClock("2026-06-15T12:00:05Z"),
    inference: { health: new BackendHealth(), random: () => 0 },
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({
        "llama-2-7b-chat": [{ url: backend.url }],
        "llama-2-70b-chat": [{ url: backend.url }],
      }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
}

type Gateway = ReturnType<typeof testGateway>;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const chat = (gw: Gateway, token: string, model: string, extra: Record<string, unknown> = {}) =>
  gw.request("/v1/chat/completions", {
    method: "POST",
    headers: { ...bearer(token), "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], max_tokens: 2, ...extra }),
  });

describe("modelCoverage", () => {
  it("covers a model only when both the grant and the token's own list hold it", () => {
    expect(modelCoverage({ grantModels: SEVEN_B, tokenModels: null }, "llama-2-7b")).toEqual({ covered: true });
    expect(modelCoverage({ grantModels: SEVEN_B, tokenModels: null }, "llama-2-70b")).toMatchObject({
      covered: false,
      by: "grant",
      coveredModels: SEVEN_B,
    });
    expect(modelCoverage({ grantModels: SEVEN_B, tokenModels: ["llama-2-7b"] }, "llama-2-7b-chat")).toMatchObject({
      covered: false,
      by: "token",
      coveredModels: ["llama-2-7b"],
    });
    // A token's list never reaches past its grant.
    expect(modelCoverage({ grantModels: SEVEN_B, tokenModels: ["llama-2-70b"] }, "llama-2-70b")).toMatchObject({
      covered: false,
      by: "grant",
      coveredModels: [],
    });
  });
});

describe("security: a grant covers the models applied for, not the whole family", () => {
  it("refuses 70B weights to a 7B-only grant with a problem that says how to ask for more", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { grantModels: SEVEN_B });
    expect((await gw.request("/v1/models/llama-2-7b/manifest", { headers: bearer(token) })).status).toBe(200);
    for (const path of ["/v1/models/llama-2-70b/manifest", "/v1/models/llama-2-70b/download.sh"]) {
      const res = await gw.request(path, { headers: bearer(token) });
      expect(res.status, path).toBe(403);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      const problem = (await res.json()) as Record<string, unknown>;
      expect(problem).toMatchObject({
        code: "forbidden",
        model: "llama-2-70b",
        coveredModels: SEVEN_B,
        coverage: "grant",
      });
      expect(problem.detail).toContain("grant does not cover llama-2-70b");
      expect(problem.detail).toContain("owner applies");
    }
  });

  it("refuses the 70B repo to a 7B-only grant on the Hub with GatedRepo", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { grantModels: SEVEN_B });
    const auth = bearer(`hf_${token}`);
    expect((await gw.request("/api/models/meta-llama/Llama-2-7b-hf", { headers: auth })).status).toBe(200);
    for (const path of [
      "/api/models/meta-llama/Llama-2-70b-hf",
      "/api/models/meta-llama/Llama-2-70b-hf/tree/main",
      "/meta-llama/Llama-2-70b-hf/resolve/main/config.json",
      "/meta-llama/Llama-2-70b-hf/raw/main/config.json",
    ]) {
      const res = await gw.request(path, { headers: auth });
      expect(res.status, path).toBe(403);
      expect(res.headers.get("x-error-code"), path).toBe("GatedRepo");
      expect(res.headers.get("x-error-message")).toContain("does not cover llama-2-70b");
    }
  });

  it("refuses 70B inference to a 7B-only grant in OpenAI's shape, and lists only covered models", async () => {
    const gw = inferenceGateway();
    const { token } = await approvedToken(gw, licenseSha256, { grantModels: SEVEN_B });
    expect((await chat(gw, token, "llama-2-7b-chat")).status).toBe(200);
    const refused = await chat(gw, token, "llama-2-70b-chat");
    expect(refused.status).toBe(403);
    const body = (await refused.json()) as { error: { code: string; message: string; param: string } };
    expect(body.error).toMatchObject({ code: "model_not_covered", param: "model" });
    expect(body.error.message).toContain("owner applies");

    const client = new OpenAI({
      apiKey: token,
      baseURL: "http://gw/v1",
      maxRetries: 0,
      fetch: (input: string | URL | Request, init?: RequestInit) =>
        gw.request(new URL(input instanceof Request ? input.url : String(input)).pathname, init),
    });
    expect((await client.models.list()).data.map((m) => m.id)).toEqual(["llama-2-7b-chat"]);
    await expect(client.models.retrieve("llama-2-70b-chat")).rejects.toMatchObject({
      status: 403,
      code: "model_not_covered",
    });
    await expect(
      client.chat.completions.create({ model: "llama-2-70b-chat", messages: [{ role: "user", content: "hi" }] }),
    ).rejects.toBeInstanceOf(OpenAI.PermissionDeniedError);
  });

  it("refuses a signed link once the grant no longer covers its model", async () => {
    const gw = testGateway();
    const { token, grantId } = await approvedToken(gw, licenseSha256);
    const manifest = (await (
      await gw.request("/v1/models/llama-2-70b/manifest", { headers: bearer(token) })
    ).json()) as {
      files: { url: string }[];
    };
    const url = new URL(manifest.files[0]?.url as string);
    await gw.db.update(grants).set({ models: SEVEN_B }).where(eq(grants.id, grantId));
    const res = await gw.request(url.pathname + url.search);
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "forbidden", model: "llama-2-70b", coverage: "grant" });
  });
});

describe("security: a token limited to models is refused on others", () => {
  it("on weights, the Hub and inference, saying the token does not cover it", async () => {
    const gw = inferenceGateway();
    const { token } = await approvedToken(gw, licenseSha256, { models: ["llama-2-7b-chat"] });
    const weights = await gw.request("/v1/models/llama-2-7b/manifest", { headers: bearer(token) });
    expect(weights.status).toBe(403);
    const problem = (await weights.json()) as Record<string, unknown>;
    expect(problem).toMatchObject({ coverage: "token", coveredModels: ["llama-2-7b-chat"] });
    expect(problem.detail).toContain("This token does not cover llama-2-7b");

    const hub = await gw.request("/api/models/meta-llama/Llama-2-7b-hf", { headers: bearer(token) });
    expect(hub.status).toBe(403);
    expect(hub.headers.get("x-error-code")).toBe("GatedRepo");

    expect((await chat(gw, token, "llama-2-7b-chat")).status).toBe(200);
    const other = await chat(gw, token, "llama-2-70b-chat");
    expect(other.status).toBe(403);
    expect(await other.json()).toMatchObject({
      error: { code: "model_not_covered", message: expect.stringContaining("This token does not cover") },
    });
    const models = (await (await gw.request("/v1/models", { headers: bearer(token) })).json()) as {
      data: { id: string }[];
    };
    expect(models.data.map((m) => m.id)).toEqual(["llama-2-7b-chat"]);
  });
});

describe("security: a token's own limits hold inside the organization's", () => {
  it("admits no more than the token's tokens per minute out of 100 concurrent requests, while the organization has room", async () => {
    const backend = scopedBackend(1);
    // The backend's tokenizer at its worst: one token per byte of the prompt.
    await backend.mode("ok", { promptTokens: "bytes" });
    const gw = inferenceGateway(backend);
    const limit = 4_000;
    const { token, tokenId, member } = await approvedToken(gw, licenseSha256, {
      limits: { tokensPerMinute: limit },
    });
    const digits = "1234567890".repeat(20);
    const responses = await Promise.all(
      Array.from({ length: 100 }, () =>
        chat(gw, token, "llama-2-7b-chat", { messages: [{ role: "user", content: digits }], max_tokens: 100 }),
      ),
    );
    const statuses = responses.map((r) => r.status);
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    const admitted = statuses.filter((s) => s === 200).length;
    expect(admitted).toBeGreaterThan(0);
    expect(admitted).toBeLessThan(100);
    const refusal = responses.find((r) => r.status === 429);
    expect(await refusal?.json()).toMatchObject({
      error: { code: "rate_limit_exceeded", message: expect.stringContaining("this token's tokens per minute") },
    });

    const rows = (await usageRows()).filter((row) => row.tokenId === tokenId);
    expect(rows).toHaveLength(admitted);
    const metered = rows.reduce((sum, row) => sum + row.totalTokens, 0);
    expect(metered).toBeLessThanOrEqual(limit);

    // The organization's own limit (100,000 tokens a minute) is far from reached: another of its tokens is served.
    const other = await gw.request("/v1/tokens", {
      method: "POST",
      headers: { ...member.headers, "content-type": "application/json" },
      body: JSON.stringify({ name: "unlimited", scopes: ["inference"] }),
    });
    const { token: unlimited } = (await other.json()) as { token: string };
    const served = await chat(gw, unlimited, "llama-2-7b-chat");
    expect(served.status).toBe(200);
  });

  it("admits exactly the token's requests per minute, and says so in the rate-limit headers", async () => {
    const gw = inferenceGateway(scopedBackend(2));
    const { token } = await approvedToken(gw, licenseSha256, { limits: { requestsPerMinute: 3 } });
    const responses = await Promise.all(Array.from({ length: 12 }, () => chat(gw, token, "llama-2-7b-chat")));
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(3);
    expect(statuses.filter((s) => s === 429)).toHaveLength(9);
    const refused = responses.find((r) => r.status === 429);
    expect(refused?.headers.get("x-ratelimit-limit-requests")).toBe("3");
    expect(refused?.headers.get("x-ratelimit-remaining-requests")).toBe("0");
  });

  it("refuses a request larger than the token's own budget before anything is sent", async () => {
    const backend = scopedBackend(0);
    const gw = inferenceGateway(backend);
    const { token } = await approvedToken(gw, licenseSha256, { limits: { monthlyTokenBudget: 50 } });
    const res = await chat(gw, token, "llama-2-7b-chat", { max_tokens: 200 });
    expect(res.status).toBe(429);
    expect(await res.json()).toMatchObject({
      error: { code: "request_too_large", message: expect.stringContaining("this token's limits") },
    });
    expect(res.headers.get("x-should-retry")).toBe("false");
    expect(await backend.requests()).toHaveLength(0);
  });
});
