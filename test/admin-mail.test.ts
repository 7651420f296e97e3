/**
 * The outbox as operators read it (`GET /admin/api/mail?to=`): an address's messages, newest
 * first, with their delivery state — for admins alone, since messages hold live links.
 */
import { describe, expect, it } from "vitest";
import { mailOutbox } from "../worker/db/schema";
import { enqueueMail } from "../worker/mail/outbox";
import { accessHeaders, adminToken } from "./helpers/access";
import { testGateway } from "./helpers/fixtures";
import { signedInMember } from "./helpers/members";

type Gateway = ReturnType<typeof testGateway>;

async function listMail(gw: Gateway, query: string, role: "reviewer" | "approver" | "admin" | null = "admin") {
  const headers = role ? accessHeaders(await adminToken({ role })) : {};
  return gw.request(`/admin/api/mail?${query}`, { headers });
}

async function expectProblem(res: Response, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/problem+json");
  expect(((await res.json()) as { code: string }).code).toBe(code);
}

describe("admin: mail to an address", () => {
  it("lists an address's messages newest first, whatever the case, with their delivery state", async () => {
    const gw = testGateway();
    await enqueueMail(gw.services, { to: "Ada@Acme.example", subject: "First", text: "one" });
    gw.clock.advance(1000);
    await enqueueMail(gw.services, { to: "someone@acme.example", subject: "Not hers", text: "x" });
    await enqueueMail(gw.services, { to: "ada@acme.example", subject: "Held", text: "two" }, "send limit: test");
    const res = await listMail(gw, "to=ADA%40acme.example");
    expect(res.status).toBe(200);
    const { messages } = (await res.json()) as { messages: Record<string, unknown>[] };
    expect(messages).toEqual([
      expect.objectContaining({
        to: "ada@acme.example",
        subject: "Held",
        text: "two",
        status: "suppressed",
        lastError: "send limit: test",
        attempts: 0,
        sentAt: null,
      }),
      expect.objectContaining({ to: "Ada@Acme.example", subject: "First", status: "pending" }),
    ]);
    expect(Object.keys(messages[0] ?? {}).sort()).toEqual(
      ["attempts", "createdAt", "id", "lastError", "sentAt", "status", "subject", "text", "to"].sort(),
    );
  });

  it("shows a sent sign-in link, so a demo or support can follow it", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "ada@acme.example" });
    await gw.request("/v1/auth/email-link", {
      method: "POST",
      headers: { "content-type": "application/json", "cf-connecting-ip": "10.200.0.1" },
      body: JSON.stringify({ email: "ada@acme.example" }),
    });
    const { messages } = (await (await listMail(gw, "to=ada@acme.example")).json()) as {
      messages: { text: string; status: string; sentAt: string | null }[];
    };
    expect(messages).toHaveLength(1);
    expect(messages[0]?.status).toBe("sent");
    expect(messages[0]?.sentAt).not.toBeNull();
    expect(messages[0]?.text).toMatch(/\/auth\/sign-in\?token=mge_/);
  });

  it("lists at most 50 messages, or fewer when asked", async () => {
    const gw = testGateway();
    const at = gw.clock.now().toISOString();
    for (let i = 0; i < 60; i++) {
      await gw.db.insert(mailOutbox).values({
        id: `mail_${String(i).padStart(3, "0")}`,
        to: "ada@acme.example",
        subject: `n${i}`,
        text: "x",
        status: "sent",
        attempts: 1,
        nextAttemptAt: at,
        createdAt: at,
      });
    }
    const all = (await (await listMail(gw, "to=ada@acme.example")).json()) as { messages: { subject: string }[] };
    expect(all.messages).toHaveLength(50);
    expect(all.messages[0]?.subject).toBe("n59");
    const few = (await (await listMail(gw, "to=ada@acme.example&limit=3")).json()) as { messages: unknown[] };
    expect(few.messages).toHaveLength(3);
  });

  it("is for admins only: no token is 401, a reviewer or approver 403", async () => {
    const gw = testGateway();
    await expectProblem(await listMail(gw, "to=ada@acme.example", null), 401, "unauthorized");
    await expectProblem(await listMail(gw, "to=ada@acme.example", "reviewer"), 403, "forbidden");
    await expectProblem(await listMail(gw, "to=ada@acme.example", "approver"), 403, "forbidden");
  });

  it("refuses bad input with a 400 problem", async () => {
    const gw = testGateway();
    await expectProblem(await listMail(gw, ""), 400, "validation_failed");
    await expectProblem(await listMail(gw, `to=${"a".repeat(300)}`), 400, "validation_failed");
    await expectProblem(await listMail(gw, "to=ada@acme.example&limit=0"), 400, "validation_failed");
    await expectProblem(await listMail(gw, "to=ada@acme.example&limit=51"), 400, "validation_failed");
    await expectProblem(await listMail(gw, "to=ada@acme.example&limit=many"), 400, "validation_failed");
  });
});
