import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { CompactSign, compactVerify, generateKeyPair, importJWK, type JWK } from "jose";
import { beforeEach, describe, expect, it } from "vitest";
import { CHECKPOINT_PREFIX, checkpointKey, writeCheckpoint } from "../worker/audit/anchor";
import {
  type AuditEntry,
  type AuditVerification,
  anchorAuditHead,
  auditHashInput,
  GENESIS_HASH,
  verifyAuditChain,
  writeAudited,
} from "../worker/audit/log";
import { auditEvents } from "../worker/db/schema";
import worker from "../worker/index";
import type { LicenseVersion } from "../worker/licenses/store";
import { sha256Hex } from "../worker/platform/hash";
import { accessHeaders, adminToken } from "./helpers/access";
import { boundMember } from "./helpers/bindings";
import { seedApplication, seedGrant, seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

function event(n: number): AuditEntry {
  return {
    actor: "operator",
    action: "test.recorded",
    subjectType: "test",
    subjectId: `subject-${n}`,
    data: { n },
  };
}

async function record(gateway: Gateway, count: number) {
  for (let n = 1; n <= count; n++) {
    await writeAudited(gateway.services, async () => ({ statements: [], events: [event(n)], result: n }));
  }
}

async function verifyOverHttp(gateway: Gateway) {
  const res = await gateway.request("/admin/api/audit/verify", {
    headers: accessHeaders(await adminToken({ role: "reviewer" })),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as AuditVerification;
}

describe("GET /admin/api/audit/verify", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  it("reports an intact chain after a review flow", async () => {
    const application = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    for (const email of ["ann@example.com", "bob@example.com"]) {
      const res = await gateway.request(`/admin/api/applications/${application.id}/decision`, {
        method: "POST",
        headers: accessHeaders(await adminToken({ email, role: "approver" })),
        body: JSON.stringify({ decision: "approve", reason: "ok", visibleToApplicant: false }),
      });
      expect(res.status).toBe(200);
    }
    const [head] = await gateway.services.db.select().from(auditEvents).orderBy(auditEvents.seq).limit(3).offset(2);
    expect(await verifyOverHttp(gateway)).toEqual({
      ok: true,
      checked: 3,
      headSeq: 3,
      headHash: head?.hash,
      anchored: true,
      checkpoints: 0,
      newestCheckpoint: null,
      truncated: false,
      rewritten: false,
      forged: false,
      checkpointProblems: [],
    });
  });

  it("finds a rewritten event once an attacker drops the trigger", async () => {
    await record(gateway, 3);
    await env.DB.exec("DROP TRIGGER audit_events_no_update");
    await env.DB.prepare("UPDATE audit_events SET data = ? WHERE seq = 2").bind('{"n":200}').run();
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      checked: 1,
      firstBroken: { seq: 2, problem: "hash_mismatch" },
    });
  });

  it("finds a rewritten event whose hash was recomputed, at the link after it", async () => {
    await record(gateway, 3);
    await env.DB.exec("DROP TRIGGER audit_events_no_update");
    const [second] = await gateway.services.db.select().from(auditEvents).where(eq(auditEvents.seq, 2));
    if (!second) throw new Error("seq 2 missing");
    const forged = { ...second, data: { n: 200 } };
    const hash = await sha256Hex(auditHashInput(forged));
    await env.DB.prepare("UPDATE audit_events SET data = ?, hash = ? WHERE seq = 2").bind('{"n":200}', hash).run();
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      checked: 2,
      firstBroken: { seq: 3, problem: "prev_hash_mismatch" },
    });
  });

  it("finds a deleted event as a gap in the sequence", async () => {
    await record(gateway, 3);
    await env.DB.exec("DROP TRIGGER audit_events_no_delete");
    await env.DB.prepare("DELETE FROM audit_events WHERE seq = 2").run();
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      checked: 1,
      firstBroken: { seq: 3, problem: "sequence_gap" },
    });
  });

  it("is closed to callers without a token", async () => {
    const res = await gateway.request("/admin/api/audit/verify");
    expect(res.status).toBe(401);
  });
});

describe("the audit table is append-only", () => {
  it("refuses UPDATE and DELETE while the triggers stand", async () => {
    const gateway = testGateway();
    await record(gateway, 2);
    await expect(env.DB.prepare("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1").run()).rejects.toThrow(
      /audit_events is append-only/,
    );
    await expect(env.DB.prepare("DELETE FROM audit_events WHERE seq = 2").run()).rejects.toThrow(
      /audit_events is append-only/,
    );
    const rows = await gateway.services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(rows.map((r) => [r.seq, r.actor])).toEqual([
      [1, "operator"],
      [2, "operator"],
    ]);
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 2 });
  });
});

describe("writeAudited under concurrency", () => {
  // Twenty writers that read the same head retry in near lockstep: one wins each round, so the
  // last one needs as many attempts as there are writers.
  it("lands 20 simultaneous writers on a dense, verifiable chain", async () => {
    const gateway = testGateway();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        writeAudited(gateway.services, async () => ({ statements: [], events: [event(i + 1)], result: i + 1 })),
      ),
    );
    expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    const rows = await gateway.services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(rows.map((r) => r.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(new Set(rows.map((r) => r.data.n)).size).toBe(20);
    expect(await verifyAuditChain(gateway.services.db)).toMatchObject({ ok: true, checked: 20, headSeq: 20 });
  });
});

describe("GET /admin/api/audit", () => {
  it("lists newest first, filters, and pages with a cursor", async () => {
    const gateway = testGateway();
    const license = await seedLicense(gateway.services);
    const { grant } = await seedGrant(gateway.services, license);
    await record(gateway, 3);
    const admin = await adminToken({ email: "boss@example.com", role: "admin" });
    const revoke = await gateway.request(`/admin/api/grants/${grant.id}/revoke`, {
      method: "POST",
      headers: accessHeaders(admin),
      body: JSON.stringify({ reason: "terminated" }),
    });
    expect(revoke.status).toBe(200);

    const reviewer = await adminToken({ role: "reviewer" });
    const list = async (query: string) => {
      const res = await gateway.request(`/admin/api/audit${query}`, { headers: accessHeaders(reviewer) });
      expect(res.status).toBe(200);
      return (await res.json()) as {
        items: { seq: number; action: string; hash: string }[];
        nextCursor: string | null;
      };
    };
    expect((await list("")).items.map((e) => e.seq)).toEqual([4, 3, 2, 1]);
    expect((await list("?action=grant.revoked")).items.map((e) => e.seq)).toEqual([4]);
    expect((await list("?actor=reviewer:boss@example.com")).items.map((e) => e.seq)).toEqual([4]);
    expect((await list(`?subjectType=grant&subjectId=${grant.id}`)).items.map((e) => e.action)).toEqual([
      "grant.revoked",
    ]);
    expect((await list("?subjectType=test&subjectId=subject-2")).items.map((e) => e.seq)).toEqual([2]);

    const first = await list("?limit=3");
    expect(first.items.map((e) => e.seq)).toEqual([4, 3, 2]);
    const second = await list(`?limit=3&cursor=${first.nextCursor}`);
    expect(second.items.map((e) => e.seq)).toEqual([1]);
    expect(second.nextCursor).toBeNull();
  });
});

/** The public half of the test's audit signing key, as a verifier outside the gateway holds it. */
function auditPublicJwk(): JWK {
  const [key] = (JSON.parse(env.AUDIT_SIGNING_KEYS) as { keys: JWK[] }).keys;
  if (!key) throw new Error("no audit signing key in the test environment");
  return { kty: key.kty, crv: key.crv, x: key.x, kid: key.kid };
}

async function checkpointKeys(): Promise<string[]> {
  return (await env.AUDIT_BUCKET.list({ prefix: CHECKPOINT_PREFIX })).objects.map((o) => o.key);
}

async function storedHash(gateway: Gateway, seq: number): Promise<string | undefined> {
  const [row] = await gateway.services.db.select().from(auditEvents).where(eq(auditEvents.seq, seq));
  return row?.hash;
}

/** What a database operator can do once the append-only triggers are dropped: rewrite `seq` and re-hash the rest. */
async function rewriteAndRehash(gateway: Gateway, seq: number, data: Record<string, unknown>) {
  await env.DB.exec("DROP TRIGGER audit_events_no_update");
  const rows = await gateway.services.db.select().from(auditEvents).orderBy(auditEvents.seq);
  let prevHash = rows.find((r) => r.seq === seq - 1)?.hash ?? GENESIS_HASH;
  for (const row of rows.filter((r) => r.seq >= seq)) {
    const forged = { ...row, prevHash, data: row.seq === seq ? data : row.data };
    const hash = await sha256Hex(auditHashInput(forged));
    await env.DB.prepare("UPDATE audit_events SET data = ?, prev_hash = ?, hash = ? WHERE seq = ?")
      .bind(JSON.stringify(forged.data), prevHash, hash, row.seq)
      .run();
    prevHash = hash;
  }
}

describe("security: the audit chain is anchored outside D1", () => {
  // Checkpoints every 5 events, so that a test needs a handful of events rather than a hundred.
  const anchoredGateway = () => testGateway(undefined, { AUDIT_CHECKPOINT_EVERY: "5" });

  it("reports an event written below the chain's first, which no link covers but the log lists", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 6);
    await env.DB.prepare(
      `INSERT INTO audit_events (seq, id, at, actor, action, subject_type, subject_id, data, prev_hash, hash)
       VALUES (0, 'evt_forged', '2020-01-01T00:00:00.000Z', 'reviewer:boss@example.com', 'application.decided',
               'application', 'app_x', '{"decision":"approve"}', 'x', 'y')`,
    ).run();
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      firstBroken: { seq: 0, id: "evt_forged", problem: "outside_chain" },
    });
    const page = await gateway.request("/admin/audit", {
      headers: { "cf-access-jwt-assertion": await adminToken({ role: "reviewer" }) },
    });
    expect(await page.text()).toContain("Chain broken.");
  });

  it("shows the console's reviewers a log cut short at a checkpoint as such, not as a verified chain", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 12);
    await env.DB.exec("DROP TRIGGER audit_events_no_delete");
    await env.DB.prepare("DELETE FROM audit_events WHERE seq >= 9").run();
    expect(await verifyOverHttp(gateway)).toMatchObject({ ok: false, truncated: true });
    const page = await gateway.request("/admin/audit", {
      headers: { "cf-access-jwt-assertion": await adminToken({ role: "reviewer" }) },
    });
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).not.toContain("Chain verified.");
    expect(html).toContain("Checkpoints disagree.");
    expect(html).toContain("cut short");
  });

  it("checkpoints the head each time a write passes a multiple of AUDIT_CHECKPOINT_EVERY, signed with the secret key", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 12);
    expect(await checkpointKeys()).toEqual([checkpointKey(5), checkpointKey(10)]);
    const object = await env.AUDIT_BUCKET.get(checkpointKey(10));
    const body = (await object?.json()) as { seq: number; hash: string; jws: string };
    expect(body).toMatchObject({ seq: 10, hash: await storedHash(gateway, 10) });
    // Anyone holding the public key can check a checkpoint without the gateway.
    const verified = await compactVerify(body.jws, await importJWK(auditPublicJwk(), "EdDSA"));
    expect(JSON.parse(new TextDecoder().decode(verified.payload))).toMatchObject({ seq: 10, hash: body.hash });
    expect(verified.protectedHeader).toMatchObject({ alg: "EdDSA", kid: "test-audit-key" });
  });

  it("verifies an intact chain against every checkpoint, then checkpoints the head it verified", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 12);
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: true,
      checked: 12,
      headSeq: 12,
      anchored: true,
      checkpoints: 2,
      newestCheckpoint: { seq: 10, hash: await storedHash(gateway, 10) },
      truncated: false,
      rewritten: false,
      forged: false,
      checkpointProblems: [],
    });
    expect(await checkpointKeys()).toEqual([checkpointKey(5), checkpointKey(10), checkpointKey(12)]);
  });

  it("checkpoints the head from the cron, so the newest events are anchored within a minute", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 3);
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    expect(await checkpointKeys()).toEqual([checkpointKey(3)]);
  });

  it("(a) reports truncation when the newest events, at and below a checkpoint, are deleted", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 12);
    await env.DB.exec("DROP TRIGGER audit_events_no_delete");
    await env.DB.prepare("DELETE FROM audit_events WHERE seq >= 9").run();
    const result = await verifyOverHttp(gateway);
    // The chain alone still holds: this is what went unnoticed before checkpoints.
    expect(result).toMatchObject({ checked: 8, headSeq: 8 });
    expect(result.firstBroken).toBeUndefined();
    expect(result).toMatchObject({
      ok: false,
      truncated: true,
      rewritten: false,
      forged: false,
      newestCheckpoint: { seq: 10 },
      checkpointProblems: [{ key: checkpointKey(10), seq: 10, problem: "event_missing" }],
    });
    // A history that does not hold is never signed.
    expect(await checkpointKeys()).toEqual([checkpointKey(5), checkpointKey(10)]);
  });

  it("(a) reports truncation of the newest token.issued event once the cron anchored it", async () => {
    const gateway = anchoredGateway();
    const license = await seedLicense(gateway.services);
    await seedGrant(gateway.services, license);
    await record(gateway, 2);
    await writeAudited(gateway.services, async () => ({
      statements: [],
      events: [
        { actor: "applicant:ada@acme.example", action: "token.issued", subjectType: "token", subjectId: "tok_1" },
      ],
      result: undefined,
    }));
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    await env.DB.exec("DROP TRIGGER audit_events_no_delete");
    await env.DB.prepare("DELETE FROM audit_events WHERE action = 'token.issued'").run();
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      truncated: true,
      checkpointProblems: [{ problem: "event_missing" }],
    });
  });

  it("(b) reports a rewrite of an earlier event whose successors were all re-hashed", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 12);
    await rewriteAndRehash(gateway, 3, { n: 300 });
    const result = await verifyOverHttp(gateway);
    expect(result.firstBroken).toBeUndefined();
    expect(result).toMatchObject({
      ok: false,
      checked: 12,
      truncated: false,
      rewritten: true,
      forged: false,
      checkpointProblems: [
        { key: checkpointKey(5), seq: 5, problem: "hash_mismatch" },
        { key: checkpointKey(10), seq: 10, problem: "hash_mismatch" },
      ],
    });
  });

  it("(c) reports checkpoint objects that are not validly signed: another key, a moved copy, no signature", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 5);
    const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
    const hash = await storedHash(gateway, 5);
    const forgedJws = await new CompactSign(new TextEncoder().encode(JSON.stringify({ seq: 7, hash, signedAt: "x" })))
      .setProtectedHeader({ alg: "EdDSA", kid: "test-audit-key", typ: "modelgate-audit-checkpoint+jws" })
      .sign(privateKey);
    await env.AUDIT_BUCKET.put(checkpointKey(7), JSON.stringify({ jws: forgedJws }), {
      customMetadata: { jws: forgedJws },
    });
    const genuine = await env.AUDIT_BUCKET.head(checkpointKey(5));
    await env.AUDIT_BUCKET.put(checkpointKey(900), "{}", { customMetadata: genuine?.customMetadata ?? {} });
    await env.AUDIT_BUCKET.put(`${CHECKPOINT_PREFIX}notes.txt`, "nothing signed here");
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: false,
      checked: 5,
      forged: true,
      truncated: false,
      rewritten: false,
      newestCheckpoint: { seq: 5 },
      checkpointProblems: [
        { key: checkpointKey(7), seq: null, problem: "invalid_signature" },
        { key: checkpointKey(900), seq: null, problem: "invalid_signature" },
        { key: `${CHECKPOINT_PREFIX}notes.txt`, seq: null, problem: "invalid_signature" },
      ],
    });
  });

  it("(d) never overwrites a checkpoint, even for a writer that raced past the existence check", async () => {
    const gateway = anchoredGateway();
    await record(gateway, 5);
    const anchor = gateway.services.auditAnchor;
    if (!anchor) throw new Error("anchoring is off");
    const before = await (await env.AUDIT_BUCKET.get(checkpointKey(5)))?.text();
    // A rewritten chain reaching seq 5 again, by the cron and by a writer that saw no object there.
    await rewriteAndRehash(gateway, 2, { n: 200 });
    expect(await anchorAuditHead(gateway.services)).toEqual({ seq: 5, outcome: "exists" });
    const racing = { ...anchor, bucket: withoutHead(env.AUDIT_BUCKET) };
    const checkpoint = { seq: 5, hash: (await storedHash(gateway, 5)) ?? "", signedAt: "2030-01-01T00:00:00.000Z" };
    expect(await writeCheckpoint(racing, checkpoint)).toBe("exists");
    expect(await (await env.AUDIT_BUCKET.get(checkpointKey(5)))?.text()).toBe(before);
    expect(await verifyOverHttp(gateway)).toMatchObject({ ok: false, rewritten: true });
  });

  it("checks the chain alone when no signing key is configured", async () => {
    const gateway = testGateway(undefined, { AUDIT_SIGNING_KEYS: "", AUDIT_CHECKPOINT_EVERY: "1" });
    await record(gateway, 3);
    expect(await verifyOverHttp(gateway)).toMatchObject({
      ok: true,
      checked: 3,
      anchored: false,
      checkpoints: 0,
      newestCheckpoint: null,
    });
    expect(await checkpointKeys()).toEqual([]);
  });
});

/** The bucket as a writer sees it that checked for an object just before another writer stored one. */
function withoutHead(bucket: R2Bucket): R2Bucket {
  return new Proxy(bucket, {
    get(target, property) {
      if (property === "head") return async () => null;
      return boundMember(target, property);
    },
  });
}
