import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { auditEvents, inferenceBackendHealth, inferenceBackends } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { BACKENDS_REFRESH_MS, openApiKey, sealApiKey } from "../worker/inference/backend-store";
import { BACKENDS_CACHE_MS, BackendHealth } from "../worker/inference/backends";
import { fixedClock } from "../worker/platform/clock";
import { accessHeaders, adminToken, TOKEN_NOW } from "./helpers/access";
import { type Backend, openAiCaller, scopedBackend, storedServer } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";

const MODEL = "llama-2-7b-chat";
const KEYS_SECRET = "a long random string that seals inference server keys";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A gateway with no configured servers, an approved token, an OpenAI client and admin calls. */
async function setup(bindings: Partial<Env> = {}) {
  const clock = fixedClock(TOKEN_NOW);
  const gw = testGateway({
    clock,
    inference: { health: new BackendHealth(), random: () => 0 },
    bindings: {
      INFERENCE_BACKENDS: "{}",
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
      INFERENCE_KEYS_SECRET: KEYS_SECRET,
      ...bindings,
    },
  });
  const { client } = await openAiCaller(gw, licenseSha256);
  const admin = async (method: string, path: string, body?: unknown, role: "admin" | "approver" = "admin") =>
    gw.request(`/admin/api/inference-backends${path}`, {
      method,
      headers: accessHeaders(await adminToken({ role, email: `${role}@example.com` })),
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
  const ask = () =>
    client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 4 });
  return { gw, clock, client, admin, ask };
}

async function add(admin: Awaited<ReturnType<typeof setup>>["admin"], backend: Backend, extra = {}) {
  const res = await admin("POST", "", { model: MODEL, url: backend.url, ...extra });
  expect(res.status).toBe(201);
  return (await res.json()) as { id: string; [key: string]: unknown };
}

describe("inference servers added in the console", () => {
  it("serve the model at once, with their key and served name, which is sealed at rest and never shown", async () => {
    const { gw, client, admin, ask } = await setup();
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    expect((await client.models.list()).data).toEqual([]);

    const gpu = scopedBackend(0);
    // The simulators serve every Llama 2 id; another one stands for the name a server expects.
    const added = await add(admin, gpu, {
      apiKey: "sk-gpu-secret-1",
      servedModel: "llama-2-13b-chat",
      weight: 2,
      timeoutMs: 30_000,
    });
    expect(added).toMatchObject({
      source: "console",
      model: MODEL,
      url: gpu.url,
      servedModel: "llama-2-13b-chat",
      weight: 2,
      timeoutMs: 30_000,
      hasApiKey: true,
      apiKeyReadable: true,
      enabled: true,
    });
    expect(JSON.stringify(added)).not.toContain("sk-gpu-secret-1");

    const answer = await ask();
    expect(answer.choices[0]?.message.content).toBeTruthy();
    const [sent] = await gpu.requests();
    expect(sent?.headers.authorization).toBe("Bearer sk-gpu-secret-1");
    expect(sent?.body.model).toBe("llama-2-13b-chat");
    expect((await client.models.list()).data.map((m) => m.id)).toEqual([MODEL]);

    const [row] = await gw.db.select().from(inferenceBackends).where(eq(inferenceBackends.id, added.id));
    expect(row?.apiKeySealed).toMatch(/^v1\./);
    expect(row?.apiKeySealed).not.toContain("sk-gpu-secret-1");
    expect(await openApiKey(KEYS_SECRET, added.id, row?.apiKeySealed as string)).toBe("sk-gpu-secret-1");
    // Bound to its row: the same sealed text does not open for another id.
    expect(await openApiKey(KEYS_SECRET, "bkd_other", row?.apiKeySealed as string)).toBeUndefined();

    const listed = await admin("GET", "", undefined, "approver");
    expect(listed.status).toBe(200);
    const list = (await listed.json()) as { items: unknown[]; keysSealable: boolean };
    expect(list.keysSealable).toBe(true);
    expect(list.items).toEqual([expect.objectContaining({ id: added.id, hasApiKey: true })]);
    expect(JSON.stringify(list)).not.toContain("sk-gpu-secret-1");

    const events = await gw.db.select().from(auditEvents).where(eq(auditEvents.subjectId, added.id));
    expect(events.map((e) => [e.action, e.actor, e.data.url, e.data.apiKey])).toEqual([
      ["inference_backend.added", "reviewer:admin@example.com", gpu.url, "set"],
    ]);
    expect(JSON.stringify(events)).not.toContain("sk-gpu-secret-1");
  });

  it("are disabled, changed and removed, each audited, and the proxy follows", async () => {
    const { gw, clock, admin, ask } = await setup();
    const first = scopedBackend(0);
    const second = scopedBackend(1);
    const a = await add(admin, first);
    const b = await add(admin, second);
    await ask();
    expect((await first.requests()).length).toBe(1);

    const disabled = await admin("PATCH", `/${a.id}`, { enabled: false, weight: 5 });
    expect(disabled.status).toBe(200);
    expect(await disabled.json()).toMatchObject({ id: a.id, enabled: false, weight: 5 });
    await ask();
    await ask();
    expect((await first.requests()).length).toBe(1);
    expect((await second.requests()).length).toBe(2);

    const removed = await admin("DELETE", `/${b.id}`);
    expect(removed.status).toBe(200);
    expect(await removed.json()).toEqual({ id: b.id, removed: true });
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    expect(await gw.db.select().from(inferenceBackends).where(eq(inferenceBackends.id, b.id))).toEqual([]);

    const enabled = await admin("PATCH", `/${a.id}`, {
      enabled: true,
      apiKey: "sk-new",
      servedModel: "llama-2-70b-chat",
    });
    expect(await enabled.json()).toMatchObject({ enabled: true, hasApiKey: true, servedModel: "llama-2-70b-chat" });
    await ask();
    const sent = (await first.requests()).at(-1);
    expect(sent?.headers.authorization).toBe("Bearer sk-new");
    expect(sent?.body.model).toBe("llama-2-70b-chat");

    const cleared = await admin("PATCH", `/${a.id}`, { clearApiKey: true, servedModel: "" });
    const clearedView = (await cleared.json()) as { updatedAt: string };
    expect(clearedView).toMatchObject({ hasApiKey: false, servedModel: MODEL });
    await ask();
    expect((await first.requests()).at(-1)?.headers.authorization).toBeUndefined();

    // A change to what a server already has writes and records nothing.
    clock.advance(1_000);
    const same = await admin("PATCH", `/${a.id}`, { weight: 5, enabled: true });
    expect(await same.json()).toMatchObject({ weight: 5, updatedAt: clearedView.updatedAt });

    const events = await gw.db.select().from(auditEvents).orderBy(auditEvents.seq);
    const mine = events.filter((e) => e.subjectType === "inference_backend");
    expect(mine.map((e) => [e.action, e.subjectId])).toEqual([
      ["inference_backend.added", a.id],
      ["inference_backend.added", b.id],
      ["inference_backend.changed", a.id],
      ["inference_backend.removed", b.id],
      ["inference_backend.changed", a.id],
      ["inference_backend.changed", a.id],
    ]);
    expect(mine[2]?.data.changes).toEqual({ enabled: { from: true, to: false }, weight: { from: 1, to: 5 } });
    expect(mine[4]?.data.changes).toEqual({
      enabled: { from: false, to: true },
      servedModel: { from: null, to: "llama-2-70b-chat" },
      apiKey: { from: "none", to: "replaced" },
    });
    expect(mine[5]?.data.changes).toEqual({
      servedModel: { from: "llama-2-70b-chat", to: null },
      apiKey: { from: "set", to: "none" },
    });
  });

  /**
   * A gateway whose isolate read its (empty) pools, and then a server another isolate's admin call
   * stored: this isolate's read came before it.
   */
  async function serverAddedElsewhere() {
    const gateway = await setup();
    await expect(gateway.ask()).rejects.toMatchObject({ status: 503 });
    const gpu = scopedBackend(0);
    const at = gateway.clock.now().toISOString();
    await gateway.gw.db
      .insert(inferenceBackends)
      .values(storedServer({ id: "bkd_elsewhere", model: MODEL, url: gpu.url, at }));
    return { ...gateway, gpu };
  }

  it("made elsewhere are in force in this isolate once its read of them expires", async () => {
    const { clock, ask, gpu } = await serverAddedElsewhere();
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    clock.advance(BACKENDS_CACHE_MS);
    await ask();
    expect((await gpu.requests()).length).toBe(1);
  });

  it("made elsewhere are read by the first completion that finds this isolate's read 4 s old, after its answer, so no completion waits for the table", async () => {
    const { clock, ask, gpu } = await serverAddedElsewhere();
    clock.advance(BACKENDS_REFRESH_MS);
    // Answered from the pools read 4 s ago (no server yet), which this completion reads again after its answer.
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    // Still within the first read's 5 s: the new read serves.
    await ask();
    expect((await gpu.requests()).length).toBe(1);
  });

  it("whose key does not open with the current secret are skipped, and flagged in the list", async () => {
    const { gw, admin, ask } = await setup();
    const gpu = scopedBackend(0);
    const at = TOKEN_NOW.toISOString();
    await gw.db.insert(inferenceBackends).values(
      storedServer({
        id: "bkd_rotated",
        model: MODEL,
        url: gpu.url,
        at,
        apiKeySealed: await sealApiKey("the secret before the rotation", "bkd_rotated", "sk-old"),
      }),
    );
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    expect(await gpu.requests()).toEqual([]);
    const list = (await (await admin("GET", "")).json()) as { items: { id: string; apiKeyReadable: boolean }[] };
    expect(list.items).toEqual([expect.objectContaining({ id: "bkd_rotated", apiKeyReadable: false })]);
    const probe = await admin("POST", "/bkd_rotated/probe");
    expect(probe.status).toBe(409);
    // Entering the key again brings it back.
    expect((await admin("PATCH", "/bkd_rotated", { apiKey: "sk-current" })).status).toBe(200);
    await ask();
    expect((await gpu.requests())[0]?.headers.authorization).toBe("Bearer sk-current");
  });

  it("are probed on an admin's request, enabled or not", async () => {
    const { admin } = await setup();
    const up = await add(admin, scopedBackend(0), { enabled: false });
    const probe = await admin("POST", `/${up.id}/probe`);
    expect(probe.status).toBe(200);
    expect(await probe.json()).toMatchObject({ id: up.id, healthy: true });
    const downBackend = scopedBackend(1);
    await downBackend.mode("down");
    const down = await add(admin, downBackend);
    expect(await (await admin("POST", `/${down.id}/probe`)).json()).toMatchObject({ healthy: false });
    expect((await admin("POST", "/bkd_missing/probe")).status).toBe(404);
  });

  it("audit an admin's probe with who asked and what it found, since the answer steers every isolate's routing", async () => {
    const { gw, admin } = await setup();
    const upBackend = scopedBackend(0);
    const up = await add(admin, upBackend, { enabled: false });
    const downBackend = scopedBackend(1);
    await downBackend.mode("down");
    const down = await add(admin, downBackend);
    expect((await admin("POST", `/${up.id}/probe`)).status).toBe(200);
    expect((await admin("POST", `/${down.id}/probe`)).status).toBe(200);
    // Refused probes (not found, or the approver's) record nothing.
    expect((await admin("POST", "/bkd_missing/probe")).status).toBe(404);
    expect((await admin("POST", `/${up.id}/probe`, undefined, "approver")).status).toBe(403);

    const probed = await gw.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "inference_backend.probed"))
      .orderBy(auditEvents.seq);
    expect(probed.map((e) => [e.actor, e.subjectType, e.subjectId, e.data])).toEqual([
      [
        "reviewer:admin@example.com",
        "inference_backend",
        up.id,
        { model: MODEL, url: upBackend.url, enabled: false, healthy: true, latencyMs: expect.any(Number) },
      ],
      [
        "reviewer:admin@example.com",
        "inference_backend",
        down.id,
        { model: MODEL, url: downBackend.url, enabled: true, healthy: false, latencyMs: expect.any(Number) },
      ],
    ]);
  });

  it("show what the gateway last saw of each server, and an admin's check tells every isolate", async () => {
    const { admin, ask, clock } = await setup();
    const gpu = scopedBackend(0);
    const added = await add(admin, gpu);
    const healthOf = async () => {
      const list = (await (await admin("GET", "")).json()) as { items: { id: string; health: unknown }[] };
      return list.items.find((b) => b.id === added.id)?.health;
    };
    expect(await healthOf()).toBeNull();
    await gpu.mode("500");
    await expect(ask()).rejects.toMatchObject({ status: 502 });
    const since = TOKEN_NOW.toISOString();
    expect(await healthOf()).toEqual({ state: "down", reason: "status 500", since, seenAt: since });
    // Down, but the only server of its model: still tried, and its own failure is what the client sees.
    await expect(ask()).rejects.toMatchObject({ status: 502 });
    expect(await gpu.requests()).toHaveLength(2);

    await gpu.mode("ok");
    clock.advance(1_000);
    expect(await (await admin("POST", `/${added.id}/probe`)).json()).toMatchObject({ healthy: true });
    const checked = clock.now().toISOString();
    expect(await healthOf()).toEqual({ state: "up", reason: null, since: checked, seenAt: checked });
    clock.advance(BACKENDS_CACHE_MS);
    expect((await ask()).choices[0]?.message.content).toBe("tok0 tok1 tok2 tok3 ");
    expect(await gpu.requests()).toHaveLength(3);
  });

  it("that are their model's only server are still tried while another isolate reports them down", async () => {
    const { admin, ask, gw, clock } = await setup();
    const gpu = scopedBackend(0);
    await add(admin, gpu);
    const at = clock.now().getTime();
    // Far from its probe: under a fixed down window nothing would reach it for a minute.
    await gw.db.insert(inferenceBackendHealth).values({
      url: gpu.url,
      state: "down",
      reason: "status 500",
      since: new Date(at).toISOString(),
      downUntil: at + 60_000,
      seenAt: at,
    });
    clock.advance(1_000);
    expect((await ask()).choices[0]?.message.content).toBe("tok0 tok1 tok2 tok3 ");
    expect(await gpu.requests()).toHaveLength(1);
    // Its success is news for the others: the server is up again.
    const [shared] = await gw.db.select().from(inferenceBackendHealth).where(eq(inferenceBackendHealth.url, gpu.url));
    expect(shared).toMatchObject({ state: "up", reason: null });
  });

  it("take their shared health with them when they leave, unless another server still has the URL", async () => {
    const gpu = scopedBackend(0);
    const other = scopedBackend(1);
    const { gw, admin, ask } = await setup({
      INFERENCE_BACKENDS: JSON.stringify({ "llama-2-70b-chat": [{ url: other.url }] }),
    });
    const healthUrls = async () => (await gw.db.select().from(inferenceBackendHealth)).map((r) => r.url).sort();
    const first = await add(admin, gpu);
    const second = (await (await admin("POST", "", { model: "llama-2-13b-chat", url: gpu.url })).json()) as {
      id: string;
    };
    await gpu.mode("500");
    await expect(ask()).rejects.toMatchObject({ status: 502 });
    expect(await healthUrls()).toEqual([gpu.url]);

    // Another stored server still has the URL: its health stays; the last one takes it along.
    expect((await admin("DELETE", `/${first.id}`)).status).toBe(200);
    expect(await healthUrls()).toEqual([gpu.url]);
    expect((await admin("DELETE", `/${second.id}`)).status).toBe(200);
    expect(await healthUrls()).toEqual([]);

    // A server moved to another URL leaves its old URL's health behind it; a URL the configuration
    // names keeps its health when the stored server leaves it.
    const third = (await (await admin("POST", "", { model: "llama-2-13b-chat", url: gpu.url })).json()) as {
      id: string;
    };
    expect(await (await admin("POST", `/${third.id}/probe`)).json()).toMatchObject({ healthy: true });
    expect(await healthUrls()).toEqual([gpu.url]);
    expect((await admin("PATCH", `/${third.id}`, { url: other.url })).status).toBe(200);
    expect(await healthUrls()).toEqual([]);
    await other.mode("down");
    expect(await (await admin("POST", `/${third.id}/probe`)).json()).toMatchObject({ healthy: false });
    expect(await healthUrls()).toEqual([other.url]);
    expect((await admin("DELETE", `/${third.id}`)).status).toBe(200);
    expect(await healthUrls()).toEqual([other.url]);
  });

  it("configured in INFERENCE_BACKENDS are listed read-only and cannot be added twice", async () => {
    const gpu = scopedBackend(0);
    const { admin } = await setup({
      INFERENCE_BACKENDS: JSON.stringify({
        [MODEL]: [{ url: gpu.url, apiKey: "sk-config" }, { url: "http://10.1.2.3" }],
      }),
    });
    const list = (await (await admin("GET", "")).json()) as Record<string, unknown>;
    expect(list.items).toEqual([
      expect.objectContaining({ id: null, source: "configuration", url: gpu.url, hasApiKey: true }),
    ]);
    expect(list.refused).toEqual([{ model: MODEL, url: "http://10.1.2.3", problem: "private_address" }]);
    const twice = await admin("POST", "", { model: MODEL, url: `${gpu.url}/v1/` });
    expect(twice.status).toBe(409);
    expect(await twice.json()).toMatchObject({ code: "conflict" });
  });
});

describe("inference server changes that are refused", () => {
  it("answer 4xx problems and write nothing", async () => {
    const { gw, admin } = await setup();
    const gpu = scopedBackend(0);
    const existing = await add(admin, gpu);
    const before = {
      rows: (await gw.db.select().from(inferenceBackends)).length,
      events: (await gw.db.select().from(auditEvents)).length,
    };
    const cases: [string, string, unknown, number, string, string?][] = [
      ["POST", "", { model: MODEL, url: "http://10.0.0.5:8000" }, 400, "validation_failed", "url"],
      ["POST", "", { model: MODEL, url: "http://169.254.169.254/latest" }, 400, "validation_failed", "url"],
      ["POST", "", { model: MODEL, url: "http://[::1]:8000" }, 400, "validation_failed", "url"],
      ["POST", "", { model: MODEL, url: "ftp://gpu.example.com" }, 400, "validation_failed", "url"],
      ["POST", "", { model: MODEL, url: "https://user:pw@gpu.example.com" }, 400, "validation_failed", "url"],
      ["POST", "", { model: MODEL, url: "not a url" }, 400, "validation_failed", "url"],
      ["POST", "", { model: "gpt-4", url: "https://gpu.example.com" }, 400, "validation_failed", "model"],
      ["POST", "", { model: MODEL, url: "https://gpu.example.com", weight: 0 }, 400, "validation_failed", "weight"],
      ["POST", "", { model: MODEL, url: "https://gpu.example.com", timeoutMs: 1e9 }, 400, "validation_failed"],
      ["POST", "", { model: MODEL, url: "https://gpu.example.com", extra: 1 }, 400, "validation_failed"],
      ["POST", "", { model: MODEL, url: gpu.url }, 409, "conflict"],
      ["POST", "", "{not json", 400, "malformed_body"],
      ["PATCH", `/${existing.id}`, { url: "http://192.168.1.9" }, 400, "validation_failed", "url"],
      ["PATCH", `/${existing.id}`, { apiKey: "k", clearApiKey: true }, 400, "validation_failed", "apiKey"],
      ["PATCH", `/${existing.id}`, { model: "llama-2-13b-chat" }, 400, "validation_failed"],
      ["PATCH", "/bkd_missing", { weight: 2 }, 404, "not_found"],
      ["DELETE", "/bkd_missing", undefined, 404, "not_found"],
    ];
    for (const [method, path, body, status, code, field] of cases) {
      const res = await admin(method, path, body);
      expect([method, path, body, res.status]).toEqual([method, path, body, status]);
      expect(res.headers.get("content-type")).toContain("application/problem+json");
      const problem = (await res.json()) as { code: string; errors?: { field: string }[] };
      expect(problem.code).toBe(code);
      if (field) expect(problem.errors?.map((e) => e.field)).toContain(field);
    }
    expect((await admin("POST", "", { model: MODEL, url: "https://gpu.example.com" }, "approver")).status).toBe(403);
    const crossSite = await gw.request("/admin/api/inference-backends", {
      method: "POST",
      headers: accessHeaders(await adminToken({ role: "admin" }), { "sec-fetch-site": "cross-site" }),
      body: JSON.stringify({ model: MODEL, url: "https://gpu.example.com" }),
    });
    expect(crossSite.status).toBe(403);
    expect((await gw.request("/admin/api/inference-backends")).status).toBe(401);
    expect({
      rows: (await gw.db.select().from(inferenceBackends)).length,
      events: (await gw.db.select().from(auditEvents)).length,
    }).toEqual(before);
  });

  it("cannot give a server an API key without INFERENCE_KEYS_SECRET, but can add it without one", async () => {
    const { gw, admin } = await setup({ INFERENCE_KEYS_SECRET: "" });
    const refused = await admin("POST", "", { model: MODEL, url: "https://gpu-1.example.com", apiKey: "sk-1" });
    expect(refused.status).toBe(409);
    expect(await refused.json()).toMatchObject({ code: "invalid_state" });
    expect(await gw.db.select().from(inferenceBackends)).toEqual([]);
    const added = await admin("POST", "", { model: MODEL, url: "https://gpu-1.example.com", apiKey: "" });
    expect(added.status).toBe(201);
    expect(await added.json()).toMatchObject({ hasApiKey: false });
    const list = (await (await admin("GET", "")).json()) as { keysSealable: boolean };
    expect(list.keysSealable).toBe(false);
  });
});

/** A simulator's URL with its loopback host written another way. */
function respelled(backend: Backend, host: string): string {
  const url = new URL(backend.url);
  return `http://${host}:${url.port}${url.pathname}`;
}

describe("security: inference servers at private addresses in disguise", () => {
  const refusedHosts = [
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[64:ff9b:1::7f00:1]",
    "[2002:7f00:1::1]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
    "[ff02::1]",
    "224.0.0.1",
    "[fec0::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[fe80::1]",
    "[::]",
    "0.0.0.0",
    "255.255.255.255",
    "100.64.0.1",
    "2852039166",
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "0x0a000001",
    "10.1",
    "127.0.0.2",
    "localhost",
    "gpu.localhost",
    "gpu.local",
    "metadata.google.internal",
  ];

  // The simulators listen on 127.0.0.1, which the operator allowed: its IPv6 spellings are other
  // hosts, and reach it all the same.
  it("are refused by the admin API with the private-address problem, and nothing is stored", async () => {
    const { gw, admin } = await setup();
    const gpu = scopedBackend(0);
    const existing = await add(admin, gpu);
    const before = (await gw.db.select().from(auditEvents)).length;
    for (const host of refusedHosts) {
      for (const [method, path, body] of [
        ["POST", "", { model: MODEL, url: respelled(gpu, host) }],
        ["PATCH", `/${existing.id}`, { url: `${respelled(gpu, host)}/v1/` }],
      ] as const) {
        const res = await admin(method, path, body);
        expect([host, method, res.status]).toEqual([host, method, 400]);
        expect(res.headers.get("content-type")).toContain("application/problem+json");
        expect(await res.json()).toMatchObject({
          code: "validation_failed",
          urlProblem: "private_address",
          errors: [{ field: "url" }],
        });
      }
    }
    const rows = await gw.db.select().from(inferenceBackends);
    expect(rows.map((r) => r.url)).toEqual([gpu.url]);
    expect((await gw.db.select().from(auditEvents)).length).toBe(before);
    // Nothing reached the simulator behind the disguised loopback addresses.
    expect(await gpu.requests()).toEqual([]);
  });

  it("at loopback written in decimal, hex, octal or short are refused when loopback is not allowed", async () => {
    const { admin } = await setup({ INFERENCE_ALLOWED_HOSTS: "" });
    for (const host of ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1."]) {
      const res = await admin("POST", "", { model: MODEL, url: `http://${host}:8000/` });
      expect([host, res.status]).toEqual([host, 400]);
      expect(await res.json()).toMatchObject({ code: "validation_failed", urlProblem: "private_address" });
    }
  });

  it("at public addresses and names are accepted", async () => {
    const { admin } = await setup({ INFERENCE_ALLOWED_HOSTS: "" });
    for (const url of [
      "http://8.8.8.8:8000",
      "http://[2606:4700::1111]",
      "http://[::ffff:8.8.8.8]",
      "https://gpu-1.example.com/v1",
    ]) {
      const res = await admin("POST", "", { model: MODEL, url });
      expect([url, res.status]).toEqual([url, 201]);
    }
  });

  it("in INFERENCE_BACKENDS are left out and reported, however their host is spelled", async () => {
    const gpu = scopedBackend(0);
    const disguised = ["[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "0xa9fea9fe"].map((host) =>
      respelled(gpu, host),
    );
    const { admin, ask } = await setup({
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: disguised.map((url) => ({ url })) }),
    });
    const list = (await (await admin("GET", "")).json()) as { items: unknown[]; refused: unknown[] };
    expect(list.items).toEqual([]);
    expect(list.refused).toEqual(disguised.map((url) => ({ model: MODEL, url, problem: "private_address" })));
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    expect(await gpu.requests()).toEqual([]);
  });

  it("stored before they were refused are neither called nor probed", async () => {
    const { gw, admin, ask } = await setup();
    const gpu = scopedBackend(0);
    const at = TOKEN_NOW.toISOString();
    await gw.db
      .insert(inferenceBackends)
      .values(storedServer({ id: "bkd_mapped", model: MODEL, url: respelled(gpu, "[::ffff:127.0.0.1]"), at }));
    await expect(ask()).rejects.toMatchObject({ status: 503 });
    const probe = await admin("POST", "/bkd_mapped/probe");
    expect(probe.status).toBe(409);
    expect(await probe.json()).toMatchObject({ code: "invalid_state" });
    expect(await gpu.requests()).toEqual([]);
  });
});
