import { newApp } from "./app";
import { keyOrganizationNames } from "./applications/identity";
import { purgeUnconfirmedDrafts } from "./applications/submit";
import { anchorAuditHead } from "./audit/log";
import { consumeDeadLetters, consumeUsageBatch, USAGE_DLQ_NAME, type UsageMessage } from "./billing/queue";
import { reconcileBilling } from "./billing/reconcile";
import { billingEnabled } from "./config";
import { tendEvents } from "./events/cron";
import { consumeEventBatch, isEventsQueue } from "./events/queue";
import { pruneGuardSamples } from "./guard/flags";
import { guardSettings } from "./guard/settings";
import { deliverDueMail } from "./mail/outbox";
import { createServices } from "./services";
import { carryLedgerRows } from "./usage/carry";

export { OrgQuota } from "./quota/org-quota";

const app = newApp();

export default {
  fetch: app.fetch,

  /**
   * Every minute: checkpoint the audit chain's head outside D1, deliver mail that is due (retries
   * included), carry usage recorded one row at a time into the hourly aggregates, and reconcile
   * billing — re-queue usage Stripe has not accepted yet, flag usage too old to bill, provision
   * billing accounts. Also dispatch webhook events to organizations' endpoints, tell reviewers of
   * new and ageing cases, and clear guard flags' samples past their retention.
   */
  async scheduled(_controller, env, ctx) {
    const services = createServices(env, {}, { trigger: "cron" });
    ctx.waitUntil(
      anchorAuditHead(services).then(
        (anchored) => {
          if (anchored?.outcome === "written") services.log.info("audit head checkpointed", { seq: anchored.seq });
        },
        (error: unknown) => services.log.error("audit checkpoint failed", { error: String(error) }),
      ),
    );
    ctx.waitUntil(
      deliverDueMail(services).then((report) => {
        if (report.sent + report.retried + report.failed > 0) services.log.info("mail outbox run", { ...report });
      }),
    );
    ctx.waitUntil(
      purgeUnconfirmedDrafts(services).then(
        (purged) => {
          if (purged > 0) services.log.info("unconfirmed applications purged", { purged });
        },
        (error: unknown) => services.log.error("purging unconfirmed applications failed", { error: String(error) }),
      ),
    );
    ctx.waitUntil(
      keyOrganizationNames(services).then(
        (keyed) => {
          if (keyed > 0) services.log.info("organization names keyed for resemblance", { keyed });
        },
        (error: unknown) => services.log.error("keying organization names failed", { error: String(error) }),
      ),
    );
    ctx.waitUntil(
      carryLedgerRows(env.DB, services.clock.now()).then(
        (carried) => {
          if (carried.usage + carried.downloads > 0) services.log.info("usage rows carried into hours", carried);
        },
        (error: unknown) => services.log.error("carrying usage rows into hours failed", { error: String(error) }),
      ),
    );
    ctx.waitUntil(
      pruneGuardSamples(services, guardSettings(env, services.config.inference.allowedHosts).sampleRetentionDays).then(
        (pruned) => {
          if (pruned > 0) services.log.info("guard flag samples pruned", { pruned });
        },
        (error: unknown) => services.log.error("pruning guard flag samples failed", { error: String(error) }),
      ),
    );
    ctx.waitUntil(
      tendEvents(services, env).then((report) => {
        if (report.deliveries + report.requeued + report.reviewersTold > 0)
          services.log.info("events tended", { ...report });
      }),
    );
    if (!billingEnabled(services.config)) {
      services.log.info("billing is off: no STRIPE_SECRET_KEY; usage is metered but not sent to Stripe");
      return;
    }
    ctx.waitUntil(
      reconcileBilling(services, env.USAGE_QUEUE).then((report) => {
        if (report.requeued + report.expired + report.accountsCreated > 0)
          services.log.info("billing reconciled", { ...report });
      }),
    );
  },

  /**
   * The usage queue (billing intervals and ledger rows → Stripe meter events) and its dead-letter
   * queue; the events queue (webhook deliveries, reviewers' chat) and its own, known by name.
   */
  async queue(batch, env, _ctx) {
    const services = createServices(env, {}, { trigger: "queue", queue: batch.queue });
    if (isEventsQueue(batch.queue)) return consumeEventBatch(batch, env, services);
    if (isDeadLetterQueue(batch.queue)) await consumeDeadLetters(batch, services);
    else await consumeUsageBatch(batch, services);
  },
} satisfies ExportedHandler<Env, UsageMessage>;

/**
 * Each deployed environment has its own queues (`modelgate-usage-staging-dlq` beside
 * `modelgate-usage-dlq`, see wrangler.toml), so the dead-letter queue is known by its suffix.
 */
function isDeadLetterQueue(queue: string): boolean {
  return queue === USAGE_DLQ_NAME || queue.endsWith("-dlq");
}
