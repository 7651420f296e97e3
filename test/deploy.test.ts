import { createExecutionContext, createMessageBatch, waitOnExecutionContext } from "cloudflare:test";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import type { UsageMessage } from "../worker/billing/queue";
import { applications, billingIntervals, usageLedger } from "../worker/db/schema";
import worker from "../worker/index";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken } from "./helpers/weights";

/**
 * Each deployed environment has queues of its own (wrangler.toml's `[env.staging]` names
 * `modelgate-usage-staging` and `modelgate-usage-staging-dlq`); the Worker must know a dead-letter
 * queue by its suffix, or staging's dead letters would be billed as fresh usage.
 */
describe("deploy: environments' queues", () => {
  it.each(["modelgate-usage-dlq", "modelgate-usage-staging-dlq"])("%s is consumed as dead letters", async (queue) => {
    const gw = testGateway();
    const { licenseSha256 } = await seedLicense();
    const access = await approvedToken(gw, licenseSha256);
    const [application] = await gw.db.select().from(applications).where(eq(applications.id, access.applicationId));
    const id = `use_${crypto.randomUUID().replaceAll("-", "")}`;
    const at = new Date().toISOString();
    await gw.db.insert(usageLedger).values({
      id,
      organizationId: application?.organizationId as string,
      grantId: access.grantId,
      tokenId: access.tokenId,
      model: "llama-2-7b-chat",
      backend: "http://sim",
      endpoint: "chat.completions",
      stream: false,
      promptTokens: 3,
      completionTokens: 4,
      totalTokens: 7,
      usageReported: true,
      outcome: "ok",
      partial: false,
      status: 200,
      latencyMs: 5,
      startedAt: at,
      createdAt: at,
    });
    const organizationId = application?.organizationId as string;
    const intervalId = `${organizationId}:${at.slice(0, 13)}:0mxbhj1k1`;
    await gw.db.insert(billingIntervals).values({
      id: intervalId,
      organizationId,
      hour: at.slice(0, 13),
      requests: 1,
      promptTokens: 3,
      completionTokens: 4,
      createdAt: at,
    });
    const batch = createMessageBatch<UsageMessage>(queue, [
      { id: "m1", timestamp: new Date(), attempts: 10, body: { ledgerId: id } },
      { id: "m2", timestamp: new Date(), attempts: 10, body: { intervalId } },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, gw.env, ctx);
    await waitOnExecutionContext(ctx);
    const [row] = await gw.db.select().from(usageLedger).where(eq(usageLedger.id, id));
    expect(row?.billingState).toBe("dead");
    const [interval] = await gw.db.select().from(billingIntervals).where(eq(billingIntervals.id, intervalId));
    expect(interval?.state).toBe("dead");
  });
});
