import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import OpenAI from "openai";
import { beforeEach, describe, expect, it } from "vitest";
import { GUARD_UNSAFE_MARKER } from "../scripts/backend-sim";
import { auditEvents, grants, guardFlags, organizationGuard } from "../worker/db/schema";
import { readGuardAnswer } from "../worker/guard/classify";
import { pruneGuardSamples } from "../worker/guard/flags";
import { parseGuardBackend } from "../worker/guard/settings";
import worker from "../worker/index";
import { clearCallerCache } from "../worker/inference/access";
import { BackendHealth } from "../worker/inference/backends";
import { fixedClock } from "../worker/platform/clock";
import { accessHeaders, adminToken, TOKEN_NOW } from "./helpers/access";
import { type Backend, openAiCaller, scopedBackend } from "./helpers/backends";
import { heldWrites } from "./helpers/bindings";
import { seedLicense, testGateway } from "./helpers/gateway";
import { usageRows } from "./helpers/ledger";
import { joinByInvitation, signedInMember } from "./helpers/members";

const MODEL = "llama-2-7b-chat";
const UNSAFE = `tell me about ${GUARD_UNSAFE_MARKER} please`;

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  licenseSha256 = (await seedLicense()).licenseSha256;
});

/** A simulator scope answering as Llama Guard. */
async function guardServer(): Promise<Backend> {
  const guard = scopedBackend(1);
  await guard.mode("ok", { answer: "guard" });
  return guard;
}

/**
 * A gateway with one inference backend and, unless `guardUrl` is null, a guard model; an
 * organization with a token and the real `openai` client.
 */
async function setup(options: { guardUrl?: string | null; bindings?: Partial<Env> } = {}) {
  const backend = scopedBackend(0);
  const guard = await guardServer();
  const guardUrl = options.guardUrl === undefined ? guard.url : options.guardUrl;
  const gw = testGateway({
    clock: fixedClock(TOKEN_NOW),
    inference: { health: new BackendHealth(), random: () => 0 },
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: backend.url, timeoutMs: 10_000 }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
      GUARD_BACKEND: guardUrl === null ? "" : JSON.stringify({ url: guardUrl, servedModel: MODEL, timeoutMs: 2_000 }),
      ...options.bindings,
    },
  });
  const caller = await openAiCaller(gw, licenseSha256);
  const [grant] = await gw.db.select().from(grants).where(eq(grants.id, caller.grantId));
  const organizationId = grant?.organizationId as string;
  const ask = (content: string) =>
    caller.client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content }], max_tokens: 3 });
  return { gw, backend, guard, organizationId, ask, ...caller };
}

type Gateway = ReturnType<typeof testGateway>;

/**
 * Sets an organization's guard as an admin from outside it: the callers' contacts are at
 * example.com, and an admin from there is party to their organizations (`conflict.ts`).
 */
async function setGuard(
  gw: Gateway,
  organizationId: string,
  policy: { mode: string; storeSamples?: boolean; screenResponses?: boolean },
  role: "admin" | "approver" = "admin",
) {
  return gw.request(`/admin/api/organizations/${organizationId}/guard`, {
    method: "PUT",
    headers: accessHeaders(await adminToken({ role, email: "ops@review.example" })),
    body: JSON.stringify(policy),
  });
}

async function flagsOf(gw: Gateway, organizationId?: string) {
  const query = organizationId ? `?organization=${organizationId}` : "";
  const res = await gw.request(`/admin/api/guard/flags${query}`, { headers: accessHeaders(await adminToken()) });
  expect(res.status).toBe(200);
  return (await res.json()) as {
    threshold: number;
    organizations: {
      organizationId: string;
      flags: number;
      blocked: number;
      categories: { code: string; count: number }[];
      suspensionProposed: boolean;
      activeGrants: string[];
    }[];
    flags: { organizationId: string; action: string; stage: string; categories: string[]; sample: string | null }[];
  };
}

describe("guard mode block", () => {
  it("refuses a flagged prompt with content_policy_violation, never calls the backend and meters it as blocked", async () => {
    const { gw, backend, guard, organizationId, ask } = await setup();
    expect((await setGuard(gw, organizationId, { mode: "block" })).status).toBe(200);

    const refused = await ask(UNSAFE).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).status).toBe(400);
    expect((refused as InstanceType<typeof OpenAI.BadRequestError>).code).toBe("content_policy_violation");
    // It reached the quota check, so it carries the standing like every such answer.
    const refusedHeaders = (refused as InstanceType<typeof OpenAI.BadRequestError>).headers;
    expect(refusedHeaders.get("x-ratelimit-remaining-requests")).not.toBeNull();
    expect(refusedHeaders.get("x-modelgate-overhead-ms")).not.toBeNull();
    expect(await backend.requests()).toHaveLength(0);
    const judged = await guard.requests();
    expect(judged).toHaveLength(1);
    expect(judged[0]?.body).toMatchObject({ model: MODEL, messages: [{ role: "user", content: UNSAFE }] });

    const rows = await usageRows();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ status: 400, outcome: "blocked", totalTokens: 0, backend: null });

    const queue = await flagsOf(gw, organizationId);
    expect(queue.flags).toHaveLength(1);
    expect(queue.flags[0]).toMatchObject({ action: "blocked", stage: "prompt", categories: ["S1"], sample: null });
    expect(queue.organizations[0]).toMatchObject({ organizationId, flags: 1, blocked: 1 });
  });

  it("serves a prompt the guard finds safe", async () => {
    const { gw, backend, guard, organizationId, ask } = await setup();
    await setGuard(gw, organizationId, { mode: "block" });
    const answer = await ask("say hello");
    expect(answer.choices[0]?.message.content).toBe("tok0 tok1 tok2 ");
    expect(await guard.requests()).toHaveLength(1);
    expect(await backend.requests()).toHaveLength(1);
    expect((await flagsOf(gw, organizationId)).flags).toHaveLength(0);
  });

  it("fails closed with 503 when the guard is down, without calling the backend", async () => {
    const { gw, backend, guard, organizationId, ask } = await setup();
    await guard.mode("down");
    await setGuard(gw, organizationId, { mode: "block" });
    const refused = await ask("say hello").catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(OpenAI.InternalServerError);
    expect((refused as InstanceType<typeof OpenAI.InternalServerError>).status).toBe(503);
    expect(await backend.requests()).toHaveLength(0);
    const rows = await usageRows();
    expect(rows[0]).toMatchObject({ status: 503, outcome: "blocked", totalTokens: 0 });
  });

  it("fails closed when GUARD_BACKEND names a private address not allowed", async () => {
    const { gw, backend, organizationId, ask } = await setup({
      guardUrl: "http://169.254.169.254",
    });
    await setGuard(gw, organizationId, { mode: "block" });
    const refused = await ask("say hello").catch((error: unknown) => error);
    expect((refused as InstanceType<typeof OpenAI.APIError>).status).toBe(503);
    expect(await backend.requests()).toHaveLength(0);
  });
});

describe("guard mode log", () => {
  it("serves a flagged prompt and records a flag with its categories, without a sample unless allowed", async () => {
    const { gw, backend, organizationId, ask } = await setup();
    await setGuard(gw, organizationId, { mode: "log" });
    const answer = await ask(UNSAFE);
    expect(answer.choices[0]?.message.content).toBe("tok0 tok1 tok2 ");
    expect(await backend.requests()).toHaveLength(1);
    const queue = await flagsOf(gw, organizationId);
    expect(queue.flags).toEqual([
      expect.objectContaining({ organizationId, action: "logged", stage: "prompt", categories: ["S1"], sample: null }),
    ]);
    expect(queue.organizations[0]?.categories).toEqual([{ code: "S1", count: 1 }]);
    const rows = await usageRows();
    expect(rows[0]).toMatchObject({ status: 200, outcome: "ok" });
  });

  it("keeps the flagged text where the organization allows it, and shows one organization's flags only", async () => {
    const first = await setup();
    await setGuard(first.gw, first.organizationId, { mode: "log", storeSamples: true });
    await first.ask(UNSAFE);
    const other = await openAiCaller(first.gw, licenseSha256);
    const [otherGrant] = await first.gw.db.select().from(grants).where(eq(grants.id, other.grantId));
    const otherOrganization = otherGrant?.organizationId as string;
    await setGuard(first.gw, otherOrganization, { mode: "log" });
    await other.client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: UNSAFE }],
      max_tokens: 1,
    });

    const mine = await flagsOf(first.gw, first.organizationId);
    expect(mine.flags).toHaveLength(1);
    expect(mine.flags[0]?.organizationId).toBe(first.organizationId);
    expect(mine.flags[0]?.sample).toContain(GUARD_UNSAFE_MARKER);
    expect(mine.organizations.map((o) => o.organizationId)).toEqual([first.organizationId]);
    const theirs = await flagsOf(first.gw, otherOrganization);
    expect(theirs.flags.map((f) => [f.organizationId, f.sample])).toEqual([[otherOrganization, null]]);
    const all = await flagsOf(first.gw);
    expect(all.organizations.map((o) => o.organizationId).sort()).toEqual(
      [first.organizationId, otherOrganization].sort(),
    );
    expect(all.flags).toHaveLength(0);
  });

  it("serves when the guard is down, recording nothing", async () => {
    const { gw, guard, organizationId, ask } = await setup();
    await guard.mode("500");
    await setGuard(gw, organizationId, { mode: "log" });
    const answer = await ask(UNSAFE);
    expect(answer.choices[0]?.message.content).toBe("tok0 tok1 tok2 ");
    expect((await flagsOf(gw, organizationId)).flags).toHaveLength(0);
  });

  it("screens plain answers too where the organization asks, with the answer as the assistant's turn", async () => {
    const { gw, guard, organizationId, ask } = await setup();
    await setGuard(gw, organizationId, { mode: "block", screenResponses: true });
    await ask("say hello");
    const judged = await guard.requests();
    expect(judged).toHaveLength(2);
    expect(judged[1]?.body).toMatchObject({
      messages: [
        { role: "user", content: "say hello" },
        { role: "assistant", content: "tok0 tok1 tok2 " },
      ],
    });
  });

  it("judges an answer in its conversation and flags it as the response stage, with the answer alone as its sample", async () => {
    const { gw, organizationId, ask } = await setup();
    await setGuard(gw, organizationId, { mode: "log", screenResponses: true, storeSamples: true });
    await ask(UNSAFE);
    const flags = (await flagsOf(gw, organizationId)).flags;
    expect(flags.map((f) => f.stage).sort()).toEqual(["prompt", "response"]);
    // The response's sample is the answer alone: the prompt's text is in the prompt's flag.
    expect(flags.find((f) => f.stage === "response")?.sample).toBe("assistant: tok0 tok1 tok2 ");
  });
});

describe("screening streamed answers", () => {
  /** Streams an answer with the real client; returns its text as the client put it together. */
  async function streamed(client: OpenAI, content: string): Promise<string> {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content }],
      max_tokens: 4,
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    return text;
  }

  it("sends the whole streamed answer to the guard once the stream ended, as the assistant's turn", async () => {
    const { gw, guard, organizationId, client } = await setup();
    await setGuard(gw, organizationId, { mode: "block", screenResponses: true });
    expect(await streamed(client, "say hello")).toBe("tok0 tok1 tok2 tok3 ");
    await expect.poll(async () => (await guard.requests()).length).toBe(2);
    const judged = await guard.requests();
    expect(judged[1]?.body).toMatchObject({
      messages: [
        { role: "user", content: "say hello" },
        { role: "assistant", content: "tok0 tok1 tok2 tok3 " },
      ],
    });
    expect((await flagsOf(gw, organizationId)).flags).toHaveLength(0);
  });

  it("flags an unsafe streamed answer as logged, whatever the mode: its text already went out", async () => {
    const { gw, organizationId, client } = await setup();
    await setGuard(gw, organizationId, { mode: "log", screenResponses: true, storeSamples: true });
    expect(await streamed(client, UNSAFE)).toBe("tok0 tok1 tok2 tok3 ");
    await expect.poll(async () => (await flagsOf(gw, organizationId)).flags.length).toBe(2);
    const flags = (await flagsOf(gw, organizationId)).flags;
    expect(flags.map((f) => `${f.stage} ${f.action}`).sort()).toEqual(["prompt logged", "response logged"]);
    expect(flags.find((f) => f.stage === "response")?.sample).toBe("assistant: tok0 tok1 tok2 tok3 ");
  });

  it("asks nothing about streamed answers where the organization screens prompts only", async () => {
    const { gw, guard, organizationId, client } = await setup();
    await setGuard(gw, organizationId, { mode: "block" });
    expect(await streamed(client, "say hello")).toBe("tok0 tok1 tok2 tok3 ");
    // Settled: the stream's usage is stored before its end reaches the client.
    expect(await guard.requests()).toHaveLength(1);
  });
});

describe("guard mode off", () => {
  it("asks the guard nothing, by default and when set", async () => {
    const { gw, guard, organizationId, ask } = await setup();
    await ask(UNSAFE);
    await setGuard(gw, organizationId, { mode: "off" });
    await ask(UNSAFE);
    expect(await guard.requests()).toHaveLength(0);
    expect((await flagsOf(gw, organizationId)).flags).toHaveLength(0);
  });

  it("asks nothing without GUARD_BACKEND, whatever the organization's mode", async () => {
    const { gw, guard, organizationId, ask } = await setup({ guardUrl: null });
    await setGuard(gw, organizationId, { mode: "block" });
    await ask(UNSAFE);
    expect(await guard.requests()).toHaveLength(0);
  });

  it("takes GUARD_DEFAULT_MODE for organizations no admin set", async () => {
    const { gw, guard, backend, ask } = await setup({ bindings: { GUARD_DEFAULT_MODE: "block" } });
    await expect(ask(UNSAFE)).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    expect(await guard.requests()).toHaveLength(1);
    expect(await backend.requests()).toHaveLength(0);
    expect(gw).toBeDefined();
  });
});

describe("the guard's admin API", () => {
  it("sets a policy as admins only, audited, and refuses bad modes and unknown organizations", async () => {
    const { gw, organizationId } = await setup();
    expect((await setGuard(gw, organizationId, { mode: "log" }, "approver")).status).toBe(403);
    const bad = await setGuard(gw, organizationId, { mode: "loud" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { code: string }).code).toBe("validation_failed");
    expect((await setGuard(gw, "org_nope", { mode: "log" })).status).toBe(404);
    const set = await setGuard(gw, organizationId, { mode: "log", storeSamples: true });
    expect(await set.json()).toMatchObject({ mode: "log", storeSamples: true, custom: true, guardConfigured: true });
    const read = await gw.request(`/admin/api/organizations/${organizationId}/guard`, {
      headers: accessHeaders(await adminToken()),
    });
    expect(await read.json()).toMatchObject({ mode: "log", storeSamples: true, screenResponses: false });
    const events = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "organization.guard_set"));
    expect(events.map((e) => [e.subjectId, e.actor])).toEqual([[organizationId, "reviewer:ops@review.example"]]);
  });

  it("security: refuses, audited, an admin party to the organization switching its screening off", async () => {
    const { gw, organizationId, ask } = await setup();
    expect((await setGuard(gw, organizationId, { mode: "block" })).status).toBe(200);
    await signedInMember(gw, { organizationId, email: "insider@ops.example", role: "viewer" });
    // The caller's contact is at example.com, so a colleague from there is party to it too.
    for (const [email, conflict] of [
      ["insider@ops.example", "organization_member"],
      ["carl@example.com", "contact_domain"],
    ] as const) {
      const res = await gw.request(`/admin/api/organizations/${organizationId}/guard`, {
        method: "PUT",
        headers: accessHeaders(await adminToken({ role: "admin", email })),
        body: JSON.stringify({ mode: "off" }),
      });
      expect(res.status, email).toBe(403);
      expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict });
    }
    // Still screened, and the insider may still read the policy.
    await expect(ask(UNSAFE)).rejects.toBeInstanceOf(OpenAI.BadRequestError);
    const read = await gw.request(`/admin/api/organizations/${organizationId}/guard`, {
      headers: accessHeaders(await adminToken({ role: "admin", email: "insider@ops.example" })),
    });
    expect(await read.json()).toMatchObject({ mode: "block", custom: true });
    const refused = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "organization.change_refused"));
    expect(refused.map((e) => [e.actor, e.subjectId, e.data.change, e.data.conflict])).toEqual([
      ["reviewer:insider@ops.example", organizationId, "organization.guard_set", "organization_member"],
      ["reviewer:carl@example.com", organizationId, "organization.guard_set", "contact_domain"],
    ]);
    // An admin who is a member of another organization is no party to this one.
    await signedInMember(gw, { email: "elsewhere@ops.example", role: "owner" });
    const off = await gw.request(`/admin/api/organizations/${organizationId}/guard`, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "admin", email: "elsewhere@ops.example" })),
      body: JSON.stringify({ mode: "off" }),
    });
    expect(off.status).toBe(200);
    expect(await off.json()).toMatchObject({ mode: "off" });
  });

  it("security: refuses an admin who joins the organization while their change to its screening is on its way", async () => {
    const { gw, organizationId, member } = await setup();
    expect((await setGuard(gw, organizationId, { mode: "block" })).status).toBe(200);
    // The admin's change has passed the door and planned while they were no party to it...
    const held = heldWrites(1);
    const acting = testGateway({ clock: fixedClock(TOKEN_NOW), bindings: { DB: held.db } });
    const off = acting.request(`/admin/api/organizations/${organizationId}/guard`, {
      method: "PUT",
      headers: accessHeaders(await adminToken({ role: "admin", email: "joiner@ops.example" })),
      body: JSON.stringify({ mode: "off" }),
    });
    await held.poised;
    // ...when the organization's owner has them join it.
    await joinByInvitation(gw, member, "joiner@ops.example");
    held.release();
    const res = await off;
    expect(res.status).toBe(403);
    expect(await res.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
    const [policy] = await gw.db
      .select()
      .from(organizationGuard)
      .where(eq(organizationGuard.organizationId, organizationId));
    expect(policy?.mode).toBe("block");
  });

  it("proposes suspending an organization at the threshold, which a reviewer confirms with the grant's suspend route", async () => {
    const { gw, organizationId, grantId, ask } = await setup({ bindings: { GUARD_SUSPEND_THRESHOLD: "2" } });
    await setGuard(gw, organizationId, { mode: "log" });
    await ask(UNSAFE);
    expect((await flagsOf(gw, organizationId)).organizations[0]?.suspensionProposed).toBe(false);
    await ask(UNSAFE);
    const proposed = (await flagsOf(gw, organizationId)).organizations[0];
    expect(proposed).toMatchObject({ suspensionProposed: true, activeGrants: [grantId] });
    // The caller's contact is at example.com: a reviewer from elsewhere, as one from there is party to it.
    const suspend = await gw.request(`/admin/api/grants/${grantId}/suspend`, {
      method: "POST",
      headers: accessHeaders(await adminToken({ role: "approver", email: "approver@review.example" })),
      body: JSON.stringify({ reason: "Repeated acceptable-use flags (S1)." }),
    });
    expect(suspend.status).toBe(200);
    expect((await flagsOf(gw, organizationId)).organizations[0]?.activeGrants).toEqual([]);
  });

  it("shows the console page: flagged organizations, the proposal with its suspend action, one organization's flags", async () => {
    const { gw, organizationId, grantId, ask } = await setup({ bindings: { GUARD_SUSPEND_THRESHOLD: "1" } });
    await setGuard(gw, organizationId, { mode: "log", storeSamples: true });
    await ask(UNSAFE);
    const page = async (path: string, role: "reviewer" | "approver") => {
      const res = await gw.request(path, { headers: { "cf-access-jwt-assertion": await adminToken({ role }) } });
      expect(res.status, path).toBe(200);
      return res.text();
    };
    const queue = await page("/admin/guard", "approver");
    expect(queue).toContain(`/admin/guard?organization=${organizationId}`);
    expect(queue).toContain("S1 ×1");
    expect(queue).toContain(`data-api="/admin/api/grants/${grantId}/suspend"`);
    const asReviewer = await page("/admin/guard", "reviewer");
    expect(asReviewer).not.toContain(`data-api="/admin/api/grants/${grantId}/suspend"`);
    expect(asReviewer).toContain("needs the approver role");
    const one = await page(`/admin/guard?organization=${organizationId}`, "reviewer");
    expect(one).toContain(GUARD_UNSAFE_MARKER);
    expect(one).toContain("Changing it needs the admin role.");
  });

  it("clears samples past the retention from the every-minute cron, and keeps the flags", async () => {
    const { gw, organizationId, grantId } = await setup();
    const row = {
      organizationId,
      grantId,
      tokenId: null,
      usageId: "use_1",
      model: MODEL,
      stage: "prompt" as const,
      action: "logged" as const,
      categories: ["S1"],
    };
    // The cron runs on the real clock: one flag well past 30 days, one from yesterday.
    const now = Date.now();
    await gw.db.insert(guardFlags).values([
      { ...row, id: "gfl_old", sample: "old text", createdAt: new Date(now - 31 * 86_400_000).toISOString() },
      { ...row, id: "gfl_new", sample: "new text", createdAt: new Date(now - 86_400_000).toISOString() },
    ]);
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    const kept = await gw.db.select({ id: guardFlags.id, sample: guardFlags.sample }).from(guardFlags);
    expect(kept.sort((a, b) => a.id.localeCompare(b.id))).toEqual([
      { id: "gfl_new", sample: "new text" },
      { id: "gfl_old", sample: null },
    ]);
    expect(await pruneGuardSamples({ db: gw.db, clock: fixedClock(new Date(now)) }, 0)).toBe(1);
  });
});

describe("reading the guard", () => {
  it("reads Llama Guard's verdicts and nothing else", () => {
    expect(readGuardAnswer("safe")).toEqual({ kind: "safe" });
    expect(readGuardAnswer("\n\nunsafe\nS1,S10")).toEqual({ kind: "unsafe", categories: ["S1", "S10"] });
    expect(readGuardAnswer("unsafe\ns2, S2 ,bogus")).toEqual({ kind: "unsafe", categories: ["S2"] });
    expect(readGuardAnswer("I cannot help")).toMatchObject({ kind: "unavailable" });
  });

  it("checks GUARD_BACKEND as inference servers are checked", () => {
    expect(parseGuardBackend(JSON.stringify({ url: "http://0x7f000001:8000" }), [])).toEqual({
      problem: "private_address",
    });
    expect(parseGuardBackend(JSON.stringify({ url: "http://[::ffff:169.254.169.254]" }), [])).toEqual({
      problem: "private_address",
    });
    expect(parseGuardBackend("{not json", [])).toEqual({ problem: "malformed" });
    expect(parseGuardBackend(JSON.stringify({ url: "http://127.0.0.1:8000/v1/" }), ["127.0.0.1"])).toMatchObject({
      url: "http://127.0.0.1:8000",
      timeoutMs: 10_000,
    });
    expect(parseGuardBackend("", [])).toBeUndefined();
  });
});
