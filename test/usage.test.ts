/**
 * `GET /v1/usage`: an organization's inference per day by model, member or token, as JSON and as
 * CSV, read by a member's session or by one of its tokens, and nobody else's.
 */
import { runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { accessTokens, grants, usageHours, usageLedger } from "../worker/db/schema";
import { type LedgerRow, ledgerBatch, ledgerEntry } from "../worker/inference/ledger";
import { sha256Hex } from "../worker/platform/hash";
import { quotaStub } from "../worker/quota/org-quota";
import { carryLedgerRows } from "../worker/usage/carry";
import { seedGrant, seedLicense, testGateway } from "./helpers/fixtures";
import { ledgerRow } from "./helpers/ledger";
import { signedInMember } from "./helpers/members";

const NOW = "2026-06-20T12:00:00.000Z";

type Gateway = ReturnType<typeof testGateway>;

/** An approved organization with an owner, a developer, tokens of each and a legacy token. */
async function organizationWithUsage(gw: Gateway, name = "Acme Robotics") {
  const license = await seedLicense(gw.services);
  const { application, grant } = await seedGrant(gw.services, license, { organizationName: name });
  await gw.db
    .update(grants)
    .set({ models: ["llama-2-7b-chat", "llama-2-13b-chat"] })
    .where(eq(grants.id, grant.id));
  const organizationId = application.organizationId;
  const owner = await signedInMember(gw, { organizationId, email: `ada@${grant.id}.example`, role: "owner" });
  const developer = await signedInMember(gw, {
    organizationId,
    email: `bob@${grant.id}.example`,
    role: "developer",
  });
  const token = async (name: string, userId: string | null) => {
    const secret = `mg_${gw.services.ids.secret(32)}`;
    const id = gw.services.ids.id("tok");
    await gw.db.insert(accessTokens).values({
      id,
      grantId: grant.id,
      name,
      secretHash: await sha256Hex(secret),
      displayPrefix: secret.slice(0, 9),
      scopes: ["inference"],
      userId,
      models: null,
      limits: null,
      createdAt: NOW,
      expiresAt: null,
      revokedAt: null,
    });
    return { id, secret };
  };
  return {
    organizationId,
    grant,
    owner,
    developer,
    ownerToken: await token("owner laptop", owner.user.id),
    developerToken: await token("bob ci", developer.user.id),
    legacyToken: await token("from the status page", null),
    token,
  };
}

type Org = Awaited<ReturnType<typeof organizationWithUsage>>;

/**
 * D1's hourly totals of one call each: `[part, total tokens, token, recorded at, model?]`, each row
 * its own part of its hour (as the quota object writes them, absolute per part).
 */
async function usage(gw: Gateway, org: Org, rows: [string, number, string, string, string?][]) {
  for (const [part, total, tokenId, at, model] of rows) {
    await gw.db.insert(usageHours).values(hourRow(org, part, at, { tokenId, totalTokens: total, model }));
  }
}

/** A `usage_hours` row of one call (two prompt tokens, the rest completion) unless `counts` says more. */
function hourRow(
  org: Org,
  part: string,
  at: string,
  fields: { tokenId: string; totalTokens: number; model?: string | undefined; requests?: number },
) {
  const requests = fields.requests ?? 1;
  return {
    organizationId: org.organizationId,
    hour: at.slice(0, 13),
    model: fields.model ?? "llama-2-7b-chat",
    grantId: org.grant.id,
    tokenId: fields.tokenId,
    part,
    requests,
    promptTokens: 2 * requests,
    completionTokens: fields.totalTokens - 2 * requests,
    totalTokens: fields.totalTokens,
    errorRequests: 0,
    partialRequests: 0,
    latencyMsSum: 3 * requests,
    lastAt: at,
    updatedAt: at,
  };
}

interface UsageAnswer {
  groupBy: string;
  from: string;
  to: string;
  days: { day: string; key: string; label: string; requests: number; totalTokens: number; promptTokens: number }[];
  groups: { key: string; label: string; requests: number; totalTokens: number }[];
}

let gw: Gateway;
let org: Org;

beforeEach(async () => {
  gw = testGateway(NOW);
  org = await organizationWithUsage(gw);
  await usage(gw, org, [
    ["u1", 10, org.ownerToken.id, "2026-06-18T09:00:00.000Z"],
    ["u2", 20, org.ownerToken.id, "2026-06-18T10:00:00.000Z", "llama-2-13b-chat"],
    ["u3", 30, org.developerToken.id, "2026-06-19T23:59:59.999Z"],
    ["u4", 40, org.legacyToken.id, "2026-06-20T00:00:00.000Z"],
    // Outside the default 30 days (2026-05-22 … 2026-06-20).
    ["u5", 1000, org.developerToken.id, "2026-05-21T23:59:59.000Z"],
  ]);
});

const get = (path: string, headers: Record<string, string>) => gw.request(path, { headers });

describe("GET /v1/usage", () => {
  it("groups by model per day over the last 30 days by default", async () => {
    const res = await get("/v1/usage?groupBy=model", org.owner.headers);
    expect(res.status).toBe(200);
    const body = (await res.json()) as UsageAnswer;
    expect(body).toMatchObject({ groupBy: "model", from: "2026-05-22", to: "2026-06-20" });
    expect(body.days.map((d) => [d.day, d.key, d.requests, d.totalTokens])).toEqual([
      ["2026-06-18", "llama-2-13b-chat", 1, 20],
      ["2026-06-18", "llama-2-7b-chat", 1, 10],
      ["2026-06-19", "llama-2-7b-chat", 1, 30],
      ["2026-06-20", "llama-2-7b-chat", 1, 40],
    ]);
    expect(body.groups.map((g) => [g.key, g.requests, g.totalTokens])).toEqual([
      ["llama-2-7b-chat", 3, 80],
      ["llama-2-13b-chat", 1, 20],
    ]);
  });

  it("without groupBy keeps its earlier answer, per day and model", async () => {
    const res = await get("/v1/usage?from=2026-06-19&to=2026-06-20", {
      authorization: `Bearer ${org.developerToken.secret}`,
    });
    expect(await res.json()).toEqual({
      object: "list",
      from: "2026-06-19",
      to: "2026-06-20",
      data: [
        ["2026-06-19", 30],
        ["2026-06-20", 40],
      ].map(([date, total]) => ({
        date,
        model: "llama-2-7b-chat",
        requests: 1,
        prompt_tokens: 2,
        completion_tokens: Number(total) - 2,
        total_tokens: total,
        partial_requests: 0,
      })),
    });
  });

  it("groups by member: the token's minter by address, tokens without one as the organization's", async () => {
    const res = await get("/v1/usage?groupBy=member", org.owner.headers);
    const body = (await res.json()) as UsageAnswer;
    expect(body.groups.map((g) => [g.label, g.key, g.totalTokens])).toEqual([
      ["(organization token)", "(organization token)", 40],
      [org.owner.user.email, org.owner.user.id, 30],
      [org.developer.user.email, org.developer.user.id, 30],
    ]);
    expect(body.days.find((d) => d.day === "2026-06-18")).toMatchObject({
      label: org.owner.user.email,
      requests: 2,
      totalTokens: 30,
    });
  });

  it("groups by token, named by the token's name", async () => {
    const res = await get("/v1/usage?groupBy=token&from=2026-06-19&to=2026-06-19", org.developer.headers);
    const body = (await res.json()) as UsageAnswer;
    expect(body.days).toEqual([
      {
        day: "2026-06-19",
        key: org.developerToken.id,
        label: "bob ci",
        requests: 1,
        promptTokens: 2,
        completionTokens: 28,
        totalTokens: 30,
        partialRequests: 0,
      },
    ]);
  });

  it("takes an explicit period, both days included, and a period of 366 days", async () => {
    const body = (await (
      await get("/v1/usage?groupBy=model&from=2025-06-20&to=2026-06-20", org.owner.headers)
    ).json()) as UsageAnswer;
    expect(body.groups.reduce((sum, g) => sum + g.totalTokens, 0)).toBe(1100);
    const one = (await (
      await get("/v1/usage?groupBy=model&from=2026-06-18&to=2026-06-18", org.owner.headers)
    ).json()) as UsageAnswer;
    expect(one.days.map((d) => d.totalTokens)).toEqual([20, 10]);
  });

  it("sums every part of an hour", async () => {
    await usage(gw, org, [
      ["p1", 7, org.ownerToken.id, "2026-06-17T15:10:00.000Z"],
      ["p2", 9, org.ownerToken.id, "2026-06-17T15:50:00.000Z"],
    ]);
    const body = (await (
      await get("/v1/usage?groupBy=token&from=2026-06-17&to=2026-06-17", org.owner.headers)
    ).json()) as UsageAnswer;
    expect(body.days.map((d) => [d.key, d.requests, d.promptTokens, d.totalTokens])).toEqual([
      [org.ownerToken.id, 2, 4, 16],
    ]);
  });

  it("a token reads its own organization's usage", async () => {
    const res = await get("/v1/usage?groupBy=token", { authorization: `Bearer ${org.legacyToken.secret}` });
    expect(res.status).toBe(200);
    const body = (await res.json()) as UsageAnswer;
    expect(body.groups.map((g) => g.label).sort()).toEqual(["bob ci", "from the status page", "owner laptop"]);
  });

  it("group keys that name prototype machinery are plain groups", async () => {
    await usage(gw, org, [
      ["p1", 5, org.ownerToken.id, "2026-06-20T01:00:00.000Z", "__proto__"],
      ["p2", 6, org.ownerToken.id, "2026-06-20T02:00:00.000Z", "constructor"],
    ]);
    const body = (await (await get("/v1/usage?groupBy=model", org.owner.headers)).json()) as UsageAnswer;
    expect(body.groups.find((g) => g.key === "__proto__")).toMatchObject({ requests: 1, totalTokens: 5 });
    expect(body.groups.find((g) => g.key === "constructor")).toMatchObject({ requests: 1, totalTokens: 6 });
    expect(Object.getPrototypeOf(body.groups[0])).toBe(Object.prototype);
  });
});

describe("GET /v1/usage as CSV", () => {
  it("answers CSV with a header row for format=csv and for Accept: text/csv", async () => {
    const res = await get("/v1/usage?groupBy=member&format=csv", org.owner.headers);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/csv/);
    expect(res.headers.get("content-disposition")).toBe(
      'attachment; filename="usage-member-2026-05-22-2026-06-20.csv"',
    );
    const lines = (await res.text()).split("\r\n");
    expect(lines[0]).toBe("day,member,member_id,requests,prompt_tokens,completion_tokens,total_tokens");
    expect(lines).toContain(`2026-06-18,${org.owner.user.email},${org.owner.user.id},2,4,26,30`);
    expect(lines).toContain("2026-06-20,(organization token),(organization token),1,2,38,40");
    expect(lines.at(-1)).toBe("");

    const accepted = await get("/v1/usage?groupBy=model", { ...org.owner.headers, accept: "text/csv" });
    expect(accepted.headers.get("content-type")).toMatch(/^text\/csv/);
    expect((await accepted.text()).split("\r\n")[1]).toBe("2026-06-18,llama-2-13b-chat,llama-2-13b-chat,1,2,18,20");
  });

  it("security: quotes fields per RFC 4180 and neutralises cells a spreadsheet would run as formulas", async () => {
    const names = ['=HYPERLINK("http://evil.example","x")', "+1+2", "-2+3", "@SUM(A1)", 'ci, "blue"\nline'];
    for (const [i, name] of names.entries()) {
      const t = await org.token(name, org.owner.user.id);
      await usage(gw, org, [[`f${i}`, 3, t.id, `2026-06-20T0${i}:30:00.000Z`]]);
    }
    const text = await (await get("/v1/usage?groupBy=token&from=2026-06-20&format=csv", org.owner.headers)).text();
    expect(text).toContain(`,"'=HYPERLINK(""http://evil.example"",""x"")",tok_`);
    expect(text).toContain(",'+1+2,tok_");
    expect(text).toContain(",'-2+3,tok_");
    expect(text).toContain(",'@SUM(A1),tok_");
    expect(text).toContain(',"ci, ""blue""\nline",tok_');
    // No line starts a cell with a formula character outside quotes.
    for (const line of text.split("\r\n")) {
      for (const cell of line.split(",")) expect(cell).not.toMatch(/^[=+\-@]/);
    }
  });
});

describe("security: GET /v1/usage refuses what it must", () => {
  it("answers 401 without a session or token, and for a bad token", async () => {
    const anonymous = await get("/v1/usage", {});
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("content-type")).toMatch(/^application\/problem\+json/);
    expect(await anonymous.json()).toMatchObject({ code: "unauthorized" });
    const forged = await get("/v1/usage", { authorization: "Bearer mg_forged" });
    expect(forged.status).toBe(401);
    const csv = await get("/v1/usage?format=csv", {});
    expect(csv.status).toBe(401);
  });

  it("a member of another organization sees only their own, and is refused this one by name", async () => {
    const other = await organizationWithUsage(gw, "Initech");
    const own = (await (await get("/v1/usage?groupBy=model", { cookie: other.owner.cookie })).json()) as UsageAnswer;
    expect(own.days).toEqual([]);
    const named = await get(`/v1/usage?organization=${org.organizationId}`, { cookie: other.owner.cookie });
    expect(named.status).toBe(403);
    expect(await named.json()).toMatchObject({ code: "forbidden" });
    const header = await get("/v1/usage", {
      cookie: other.owner.cookie,
      "x-modelgate-organization": org.organizationId,
    });
    expect(header.status).toBe(403);
  });

  it("a token reads only its organization: naming another is refused", async () => {
    const other = await organizationWithUsage(gw, "Initech");
    const res = await get(`/v1/usage?organization=${org.organizationId}`, {
      authorization: `Bearer ${other.ownerToken.secret}`,
    });
    expect(res.status).toBe(403);
    const own = (await (
      await get("/v1/usage?groupBy=token", { authorization: `Bearer ${other.ownerToken.secret}` })
    ).json()) as UsageAnswer;
    expect(own.days).toEqual([]);
  });

  it("a revoked token reads nothing", async () => {
    await gw.db.update(accessTokens).set({ revokedAt: NOW }).where(eq(accessTokens.id, org.ownerToken.id));
    const res = await get("/v1/usage", { authorization: `Bearer ${org.ownerToken.secret}` });
    expect(res.status).toBe(401);
  });

  it.each([
    ["groupBy=organization", "groupBy"],
    ["groupBy=__proto__", "groupBy"],
    ["from=2026-02-30", "from"],
    ["from=yesterday", "from"],
    ["to=2026-6-1", "to"],
    ["format=xlsx", "format"],
    ["from=2026-06-20&to=2026-06-19", "from"],
    ["from=2025-06-19&to=2026-06-20", "from"],
  ])("refuses %s with a 400 problem naming %s", async (query, field) => {
    const res = await get(`/v1/usage?${query}`, org.owner.headers);
    expect(res.status).toBe(400);
    expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
    const problem = (await res.json()) as { code: string; errors: { field: string }[] };
    expect(problem.code).toBe("validation_failed");
    expect(problem.errors.map((e) => e.field)).toContain(field);
  });
});

describe("GET /v1/usage is exact to the request", () => {
  const LIMITS = { requestsPerMinute: 1_000, tokensPerMinute: 1_000_000, monthlyTokenBudget: 100_000_000 };

  /**
   * A gateway on today's clock, so that the hour its calls are recorded in stays open in the quota
   * object (it closes an hour and writes it to D1 once the hour is over), and an organization of it.
   */
  async function liveOrganization(name = "Live Labs") {
    const live = testGateway(new Date(Date.now()), { USAGE_SYNC_SECONDS: "3600" });
    return { live, org: await organizationWithUsage(live, name) };
  }

  /**
   * A call settled as the proxy settles it: its ledger row committed to the organization's quota
   * object, which folds it into its hour by its next alarm (`LEDGER_FLUSH_MS` later).
   */
  async function settle(live: Gateway, org: Org, id: string, totalTokens: number, fields: Partial<LedgerRow> = {}) {
    const at = live.clock.now();
    const row = ledgerRow(id, totalTokens, {
      organizationId: org.organizationId,
      grantId: org.grant.id,
      tokenId: org.ownerToken.id,
      startedAt: at.toISOString(),
      createdAt: at.toISOString(),
      ...fields,
    });
    const stub = quotaStub(env, org.organizationId);
    await stub.commit({ rows: ledgerBatch([ledgerEntry(row)]) }, LIMITS, at.getTime());
    await runDurableObjectAlarm(stub);
  }

  /** The day the gateway's (fixed) clock is in: the day its calls are recorded in. */
  const today = (live: Gateway) => live.clock.now().toISOString().slice(0, 10);
  const stored = (org: Org) => gw.db.select().from(usageHours).where(eq(usageHours.organizationId, org.organizationId));
  const read = async (live: Gateway, query: string, headers: Record<string, string>) =>
    (await (
      await live.request(`/v1/usage?${query}&from=${today(live)}&to=${today(live)}`, { headers })
    ).json()) as UsageAnswer;

  it("counts a call once its quota object holds it in its hour, before D1 has the hour, and sums the hour's parts", async () => {
    const { live, org } = await liveOrganization();
    await settle(live, org, "live_1", 12);
    await settle(live, org, "live_2", 8, { tokenId: org.developerToken.id, partial: true });
    expect(await stored(org)).toEqual([]);

    const byMember = await read(live, "groupBy=member", org.owner.headers);
    expect(byMember.days).toEqual([
      {
        day: today(live),
        key: org.owner.user.id,
        label: org.owner.user.email,
        requests: 1,
        promptTokens: 2,
        completionTokens: 10,
        totalTokens: 12,
        partialRequests: 0,
      },
      {
        day: today(live),
        key: org.developer.user.id,
        label: org.developer.user.email,
        requests: 1,
        promptTokens: 2,
        completionTokens: 6,
        totalTokens: 8,
        partialRequests: 1,
      },
    ]);
    const byToken = await read(live, "groupBy=token", { authorization: `Bearer ${org.developerToken.secret}` });
    expect(byToken.groups.map((g) => [g.label, g.requests, g.totalTokens])).toEqual([
      ["owner laptop", 1, 12],
      ["bob ci", 1, 8],
    ]);

    // A call the quota object could not take went to the ledger, and the cron carried it into the
    // same hour as a part of its own in D1: the hour is that part and the open one together.
    const at = live.clock.now().toISOString();
    await gw.db.insert(usageLedger).values(
      ledgerRow("ledger_1", 5, {
        organizationId: org.organizationId,
        grantId: org.grant.id,
        tokenId: org.ownerToken.id,
        startedAt: at,
        createdAt: at,
      }),
    );
    await carryLedgerRows(env.DB, live.clock.now());
    expect((await stored(org)).map((r) => [r.hour, r.part, r.requests])).toEqual([[at.slice(0, 13), "ledger", 1]]);
    const byModel = await read(live, "groupBy=model", org.owner.headers);
    expect(byModel.groups.map((g) => [g.key, g.requests, g.totalTokens])).toEqual([["llama-2-7b-chat", 3, 25]]);
    const csv = await (
      await live.request(`/v1/usage?groupBy=model&format=csv&from=${today(live)}&to=${today(live)}`, {
        headers: org.owner.headers,
      })
    ).text();
    expect(csv.split("\r\n")[1]).toBe(`${today(live)},llama-2-7b-chat,llama-2-7b-chat,3,6,19,25`);
  });

  it("security: never shows another organization's open hours", async () => {
    const { live, org } = await liveOrganization();
    const other = await organizationWithUsage(live, "Initech");
    await settle(live, org, "ours", 12);
    await settle(live, other, "theirs", 99, {
      organizationId: other.organizationId,
      grantId: other.grant.id,
      tokenId: other.ownerToken.id,
      model: "llama-2-13b-chat",
    });
    const ours = await read(live, "groupBy=model", org.owner.headers);
    expect(ours.groups.map((g) => [g.key, g.requests, g.totalTokens])).toEqual([["llama-2-7b-chat", 1, 12]]);
    const theirs = await read(live, "groupBy=token", { authorization: `Bearer ${other.developerToken.secret}` });
    expect(theirs.groups.map((g) => [g.key, g.requests, g.totalTokens])).toEqual([[other.ownerToken.id, 1, 99]]);
    const named = await live.request(`/v1/usage?organization=${org.organizationId}`, { headers: other.owner.headers });
    expect(named.status).toBe(403);
  });

  it("counts a part D1 has older totals of once, as the quota object has it", async () => {
    const { live, org } = await liveOrganization();
    await settle(live, org, "first", 10);
    const stub = quotaStub(env, org.organizationId);
    expect(await stub.syncUsage()).toBe(true);
    const [synced] = await stored(org);
    expect(synced).toMatchObject({ requests: 1, totalTokens: 10 });
    await settle(live, org, "second", 20);
    // The open part is in D1 with one call and in the object with two.
    const { parts } = await stub.liveUsage();
    expect(parts.map((p) => [p.hour, p.part])).toEqual([[synced?.hour, synced?.part]]);
    expect((await stored(org)).map((r) => r.requests)).toEqual([1]);

    const body = await read(live, "groupBy=model", org.owner.headers);
    expect(body.days.map((d) => [d.key, d.requests, d.promptTokens, d.totalTokens])).toEqual([
      ["llama-2-7b-chat", 2, 4, 30],
    ]);
  });

  it("answers D1's totals when the quota object cannot be reached", async () => {
    const unreachable = {
      idFromName: (name: string) => env.QUOTA.idFromName(name),
      get: () => ({ liveUsage: () => Promise.reject(new Error("quota object unreachable")) }),
    } as unknown as Env["QUOTA"];
    const cut = testGateway(NOW, { QUOTA: unreachable });
    const res = await cut.request("/v1/usage?groupBy=model", { headers: org.owner.headers });
    expect(res.status).toBe(200);
    const body = (await res.json()) as UsageAnswer;
    expect(body.groups.map((g) => [g.key, g.requests, g.totalTokens])).toEqual([
      ["llama-2-7b-chat", 3, 80],
      ["llama-2-13b-chat", 1, 20],
    ]);
  });
});
