import { newApp } from "./app";
import { deliverDueMail } from "./mail/outbox";
import { createServices } from "./services";

export { OrgQuota } from "./quota/org-quota";

const app = newApp();

export default {
  fetch: app.fetch,
  /** Every minute: deliver mail that is due, including retries of failed sends. */
  async scheduled(_controller, env, ctx) {
    const services = createServices(env, {}, { trigger: "cron" });
    ctx.waitUntil(
      deliverDueMail(services).then((report) => {
        if (report.sent + report.retried + report.failed > 0) services.log.info("mail outbox run", { ...report });
      }),
    );
  },
} satisfies ExportedHandler<Env>;
