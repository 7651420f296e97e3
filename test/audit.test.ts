import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { type AuditEntry, auditHashInput, verifyAuditChain, writeAudited } from "../worker/audit/log";
import { auditEvents } from "../worker/db/schema";
import type { LicenseVersion } from "../worker/licenses/store";
import { sha256Hex } from "../worker/platform/hash";
import { accessHeaders, adminToken } from "./helpers/access";
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
  return res.json();
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
    expect(await verifyOverHttp(gateway)).toEqual({ ok: true, checked: 3, headSeq: 3, headHash: head?.hash });
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
