import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq, sql } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { type MailMessage, mailOutbox } from "../worker/db/schema";
import worker from "../worker/index";
import { gatewayLink } from "../worker/mail/links";
import { memoryMailer } from "../worker/mail/mailer";
import {
  deliverDueMail,
  enqueueMail,
  enqueueMailWithinLimits,
  MAIL_SEND_LIMITS,
  MAX_MAIL_ATTEMPTS,
} from "../worker/mail/outbox";
import { mailSafeName } from "../worker/mail/templates";
import { fixedClock } from "../worker/platform/clock";
import { createServices } from "../worker/services";
import { confirmationToken, confirmRequest } from "./helpers/apply";
import { seedLicense, testGateway } from "./helpers/fixtures";
import { json } from "./helpers/gateway";

function outboxDeps(start = "2026-05-01T10:00:00Z") {
  const clock = fixedClock(start);
  const mailer = memoryMailer();
  const services = createServices(env, { clock, mailer: () => mailer });
  return { clock, mailer, services };
}

async function queue(services: ReturnType<typeof createServices>, to = "ada@acme.example") {
  await enqueueMail(services, { to, subject: "Hello", text: "Body" });
  const [row] = await services.db.select().from(mailOutbox).where(eq(mailOutbox.to, to));
  return row as NonNullable<typeof row>;
}

describe("mail outbox", () => {
  it("retries a failed send with backoff and delivers it later, exactly once", async () => {
    const { clock, mailer, services } = outboxDeps();
    const queued = await queue(services);
    mailer.failNext = 1;
    expect(await deliverDueMail(services)).toEqual({ sent: 0, retried: 1, failed: 0 });
    const [afterFailure] = await services.db.select().from(mailOutbox).where(eq(mailOutbox.id, queued.id));
    expect(afterFailure).toMatchObject({ status: "pending", attempts: 1, lastError: "mail delivery failed" });

    clock.advance(30_000);
    expect(await deliverDueMail(services)).toEqual({ sent: 0, retried: 0, failed: 0 });
    clock.advance(31_000);
    expect(await deliverDueMail(services)).toEqual({ sent: 1, retried: 0, failed: 0 });
    expect(mailer.sent).toEqual([{ to: "ada@acme.example", subject: "Hello", text: "Body" }]);
    const [sent] = await services.db.select().from(mailOutbox).where(eq(mailOutbox.id, queued.id));
    expect(sent).toMatchObject({ status: "sent", attempts: 2, lastError: null });
    clock.advance(3_600_000);
    expect(await deliverDueMail(services)).toEqual({ sent: 0, retried: 0, failed: 0 });
    expect(mailer.sent).toHaveLength(1);
  });

  it("marks a message failed after the last attempt but keeps it", async () => {
    const { clock, mailer, services } = outboxDeps();
    const queued = await queue(services);
    mailer.failNext = MAX_MAIL_ATTEMPTS;
    for (let i = 0; i < MAX_MAIL_ATTEMPTS; i++) {
      await deliverDueMail(services);
      clock.advance(3_600_000);
    }
    const [row] = await services.db.select().from(mailOutbox).where(eq(mailOutbox.id, queued.id));
    expect(row).toMatchObject({ status: "failed", attempts: MAX_MAIL_ATTEMPTS });
    expect(mailer.sent).toEqual([]);
  });

  it("sends a message once when two delivery runs overlap", async () => {
    const { mailer, services } = outboxDeps();
    await queue(services, "a@example.com");
    await queue(services, "b@example.com");
    const reports = await Promise.all([deliverDueMail(services), deliverDueMail(services), deliverDueMail(services)]);
    expect(reports.reduce((n, r) => n + r.sent, 0)).toBe(2);
    expect(mailer.sent.map((m) => m.to).sort()).toEqual(["a@example.com", "b@example.com"]);
  });

  it("is drained by the cron trigger through the send_email binding", async () => {
    const services = createServices(env);
    const queued = await queue(services, "ops@acme.example");
    const ctx = createExecutionContext();
    await worker.scheduled(createScheduledController({ cron: "* * * * *" }), env, ctx);
    await waitOnExecutionContext(ctx);
    const [row] = await services.db.select().from(mailOutbox).where(eq(mailOutbox.id, queued.id));
    expect(row).toMatchObject({ status: "sent", attempts: 1 });
  });
});

describe("security: the public form is not a mail relay", () => {
  type Gateway = ReturnType<typeof testGateway>;
  let gateway: Gateway;
  let licenseSha256: string;

  beforeEach(async () => {
    gateway = testGateway();
    licenseSha256 = (await seedLicense(gateway.services)).licenseSha256;
  });

  /** Posts an application as an anonymous stranger would, from an address of its own. */
  async function apply(n: number, fields: { organization?: string; contact?: string; email?: string; use?: string }) {
    const res = await gateway.request(
      "/v1/applications",
      json(
        {
          family: "llama-2",
          organization: {
            name: fields.organization ?? `Acme ${n}`,
            website: "https://evil.example/landing",
            country: "DE",
          },
          contact: { name: fields.contact ?? "Ada Lovelace", email: fields.email ?? "victim@bank.example" },
          intendedUse: fields.use ?? "Customer support assistant for our robot vacuum owners.",
          declaredMau: 120_000,
          licenseSha256,
          acceptLicense: true,
          acceptAup: true,
        },
        { "cf-connecting-ip": `203.0.113.${n}` },
      ),
    );
    expect(res.status).toBe(201);
    return res;
  }

  async function outbox(): Promise<MailMessage[]> {
    // In the order queued: under a fixed clock, times and ids do not tell.
    return gateway.services.db.select().from(mailOutbox).orderBy(sql`rowid`);
  }

  /** Every URL-looking token in a text. */
  function links(text: string): string[] {
    return text.match(/\b(?:https?:\/\/|www\.)[^\s)]+/gi) ?? [];
  }

  it("mails a stranger none of the attacker's words or links, only the gateway's", async () => {
    await apply(1, {
      organization: "Acme. Your access is suspended. Re-verify at https://evil.example/reverify",
      contact: "Security Desk evil\u200b.example/login",
      use: "Your modelgate access is suspended. Re-verify at https://evil.example/reverify within 24 hours.",
    });
    await apply(2, {
      organization: "Re-verify now at www.evil-login.example",
      contact: "Mallory <mallory@evil.example>",
    });
    const base = gateway.services.config.publicBaseUrl;
    const rows = await outbox();
    expect(rows).toHaveLength(2);
    const delivered = gateway.mailer.sent;
    expect(delivered).toHaveLength(2);
    for (const mail of [...rows, ...delivered]) {
      expect(mail.to).toBe("victim@bank.example");
      for (const part of [mail.subject, mail.text]) {
        for (const attacker of ["evil", "suspended", "Re-verify", "reverify", "Security Desk", "Mallory", "Acme."]) {
          expect(part).not.toContain(attacker);
        }
      }
      expect(mail.text).toContain("Hello,");
      const found = links(mail.text);
      expect(found.length).toBeGreaterThan(0);
      for (const link of found) expect(link.startsWith(`${base}/applications/`)).toBe(true);
    }
  });

  it("keeps a hostile name with CR/LF on one line of the body, out of the headers", async () => {
    await apply(1, {
      organization: "Acme\r\nBcc: everyone\r\n\r\nSubject: Urgent",
      contact: "Ada\r\nSubject: Your access is suspended\u202e",
    });
    // The confirmation mail names no one; the notice after confirmation goes to a proven address.
    expect((await confirmRequest(gateway, confirmationToken(gateway, "victim@bank.example"))).status).toBe(200);
    const [, row] = await outbox();
    const [, sent] = gateway.mailer.sent;
    for (const mail of [row, sent]) {
      expect(mail?.subject).toMatch(/^Llama 2 access application app_\w+ received$/);
      expect(mail?.text).not.toMatch(/[\r\u202e]/);
      expect(mail?.text.split("\n").filter((line) => /^(Bcc|Subject):/i.test(line))).toEqual([]);
    }
    // Names are repeated cut short, flattened onto the line they belong to.
    expect(sent?.text).toContain("Hello Ada Subject: Your access is suspended,");
    expect(sent?.text).toContain("the application of “Acme Bcc: everyone Subject: Urgent”");
  });

  it("repeats no name to an unverified address, and at most 200 characters of it to a proven one", async () => {
    await apply(1, { organization: `Acme Robotics ${"é".repeat(185)}` });
    expect(gateway.mailer.sent[0]?.text).not.toContain("Acme");
    expect((await confirmRequest(gateway, confirmationToken(gateway, "victim@bank.example"))).status).toBe(200);
    const text = gateway.mailer.sent[1]?.text ?? "";
    const name = text.match(/the application of “([^”]*)”/)?.[1] ?? "";
    expect(Array.from(name)).toHaveLength(199);
    expect(name.startsWith("Acme Robotics éé")).toBe(true);
  });

  it("suppresses the sixth message to one address within an hour, and the application still succeeds", async () => {
    for (let n = 1; n <= MAIL_SEND_LIMITS.perAddress + 1; n++) await apply(n, { email: "Victim@Bank.example" });
    const rows = await outbox();
    expect(rows.map((row) => row.status)).toEqual(["sent", "sent", "sent", "sent", "sent", "suppressed"]);
    expect(rows[5]?.lastError).toBe("send limit: 5 messages to this address within an hour");
    expect(gateway.mailer.sent).toHaveLength(5);
    expect(await deliverDueMail(gateway.services)).toEqual({ sent: 0, retried: 0, failed: 0 });

    // Another address at the same domain is still under the domain's limit.
    await apply(7, { email: "colleague@bank.example" });
    expect(gateway.mailer.sent.map((m) => m.to).at(-1)).toBe("colleague@bank.example");

    gateway.clock.advance(MAIL_SEND_LIMITS.windowMs + 1000);
    await apply(8, { email: "victim@bank.example" });
    expect((await outbox()).at(-1)?.status).toBe("sent");
  });

  it("security: holds the limits when many strangers name one address and one domain at the same moment", async () => {
    // From as many networks as the per-network brake would take; each application succeeds.
    await Promise.all(Array.from({ length: 25 }, (_, i) => apply(i + 1, { email: "victim@bank.example" })));
    const toVictim = (await outbox()).filter((row) => row.to === "victim@bank.example");
    expect(toVictim).toHaveLength(25);
    expect(toVictim.filter((row) => row.status !== "suppressed")).toHaveLength(MAIL_SEND_LIMITS.perAddress);
    expect(gateway.mailer.sent.filter((m) => m.to === "victim@bank.example")).toHaveLength(MAIL_SEND_LIMITS.perAddress);

    const services = gateway.services;
    const limits = { perAddress: 5, perDomain: 3, windowMs: 3_600_000 };
    await Promise.all(
      Array.from({ length: 12 }, async (_, i) =>
        services.db.batch(
          (await enqueueMailWithinLimits(
            services,
            { to: `staff${i}@corp.example`, subject: "Hello", text: "Body" },
            limits,
          )) as [never],
        ),
      ),
    );
    const toCorp = (await outbox()).filter((row) => row.to.endsWith("@corp.example"));
    expect(toCorp.filter((row) => row.status !== "suppressed")).toHaveLength(limits.perDomain);
  });

  it("suppresses mail over a domain's limit, however the addresses differ", async () => {
    const services = gateway.services;
    const limits = { perAddress: 5, perDomain: 3, windowMs: 3_600_000 };
    for (const to of ["a@bank.example", "B@BANK.example", "c@bank.example", "d@bank.example", "e@other.example"]) {
      await services.db.batch(
        (await enqueueMailWithinLimits(services, { to, subject: "Hello", text: "Body" }, limits)) as [never],
      );
    }
    const rows = await outbox();
    expect(rows.map((row) => [row.to, row.status])).toEqual([
      ["a@bank.example", "pending"],
      ["B@BANK.example", "pending"],
      ["c@bank.example", "pending"],
      ["d@bank.example", "suppressed"],
      ["e@other.example", "pending"],
    ]);
    expect(rows[3]?.lastError).toBe("send limit: 3 messages to bank.example within an hour");
  });

  it("holds free-mail addresses to their own limit only: a free-mail domain is not one company", async () => {
    const services = gateway.services;
    const limits = { perAddress: 2, perDomain: 3, windowMs: 3_600_000 };
    const to = ["a@gmail.com", "b@gmail.com", "c@gmail.com", "d@gmail.com", "a@gmail.com", "a@gmail.com"];
    for (const address of to) {
      await services.db.batch(
        (await enqueueMailWithinLimits(services, { to: address, subject: "Hello", text: "Body" }, limits)) as [never],
      );
    }
    expect((await outbox()).map((row) => row.status)).toEqual([
      "pending",
      "pending",
      "pending",
      "pending",
      "pending",
      "suppressed",
    ]);
  });

  it("security: counts an address with its other spellings, which reach the same mailbox", async () => {
    const services = gateway.services;
    const limits = { perAddress: 2, perDomain: 3, windowMs: 3_600_000 };
    const to = [
      "victim+1@gmail.com",
      "Vic.Tim+2@googlemail.com",
      "v.i.c.t.i.m@gmail.com",
      "victim2@gmail.com",
      "ops+1@bank.example",
      "ops+2@bank.example",
      "OPS+3@bank.example",
    ];
    for (const address of to) {
      await services.db.batch(
        (await enqueueMailWithinLimits(services, { to: address, subject: "Hello", text: "Body" }, limits)) as [never],
      );
    }
    expect((await outbox()).map((row) => [row.to, row.status])).toEqual([
      ["victim+1@gmail.com", "pending"],
      ["Vic.Tim+2@googlemail.com", "pending"],
      ["v.i.c.t.i.m@gmail.com", "suppressed"],
      ["victim2@gmail.com", "pending"],
      ["ops+1@bank.example", "pending"],
      ["ops+2@bank.example", "pending"],
      ["OPS+3@bank.example", "suppressed"],
    ]);
    expect((await outbox())[6]?.lastError).toBe("send limit: 2 messages to this address within an hour");
  });

  it.each([
    ["Acme Robotics GmbH", "Acme Robotics GmbH"],
    ["  Ada \t Lovelace\n", "Ada Lovelace"],
    ["https://evil.example", null],
    ["see evil.example", null],
    ["evil\u200b.example", null],
    ["evil．example", null],
    ["www.evil", null],
    ["ops@evil.example", null],
    ["10.0.0.1 admin", null],
    ["\u0000\r\n", null],
  ])("mailSafeName(%j) is %j", (raw, expected) => {
    expect(mailSafeName(raw, { verified: false })).toBe(expected);
  });

  it("lets a verified address see a longer name, never a link", () => {
    const long = "Acme Robotics ".repeat(10).trim();
    expect(mailSafeName(long, { verified: true })).toBe(long);
    expect(mailSafeName(long, { verified: false })?.length).toBe(60);
    expect(mailSafeName("Acme https://evil.example", { verified: true })).toBeNull();
  });

  it("builds links on the gateway's origin only", () => {
    expect(gatewayLink("https://gw.example", "/applications/app_1?token=x")).toBe(
      "https://gw.example/applications/app_1?token=x",
    );
    for (const path of ["//evil.example/x", "https://evil.example/", "@evil.example/", "/\\evil.example", "/a b"]) {
      expect(() => gatewayLink("https://gw.example", path)).toThrow();
    }
  });
});
