import { createExecutionContext, createScheduledController, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { mailOutbox } from "../worker/db/schema";
import worker from "../worker/index";
import { memoryMailer } from "../worker/mail/mailer";
import { deliverDueMail, enqueueMail, MAX_MAIL_ATTEMPTS } from "../worker/mail/outbox";
import { fixedClock } from "../worker/platform/clock";
import { createServices } from "../worker/services";

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
