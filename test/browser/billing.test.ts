/**
 * Billing in a real browser, with the gateway as `npm start -- --billing` runs it: billing on,
 * against the Stripe stand-in. Calls the proxy meters reach Stripe through the usage queue (the
 * stand-in's meter-event totals equal the organization's tokens), and the console's Billing page
 * shows the outbox drained and every account in order; a failed payment, sent as a webhook signed
 * by the real `stripe` library, puts the organization in its grace period, which the page and
 * `/v1/billing` both say.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import Stripe from "stripe";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayProcess } from "../../scripts/lib/gateway-process";
import { ARTIFACTS, BrowserHarness, expectAccessible, expectNoSidewaysScroll } from "./harness";

/** What `npm start -- --billing` gives the gateway and the stand-in. */
const STRIPE_KEY = "sk_test_local";
const WEBHOOK_SECRET = "whsec_local";

interface Standing {
  organizationId: string;
  enabled: boolean;
  status: string;
  suspended: boolean;
  suspendedSince: string | null;
  paymentFailedAt: string | null;
  usage: { requests: number; promptTokens: number; completionTokens: number; unbilledRequests: number };
}

let harness: BrowserHarness;
let gateway: GatewayProcess;
let auth: { authorization: string };
let stripeUrl: string;

beforeAll(async () => {
  harness = await BrowserHarness.start(["--billing"]);
  gateway = harness.gateway;
  const { demoToken } = JSON.parse(readFileSync(join(gateway.dir, "demo.json"), "utf8")) as {
    demoToken: { token: string };
  };
  auth = { authorization: `Bearer ${demoToken.token}` };
  const announced = /Billing: on, through the Stripe stand-in at (\S+);/.exec(gateway.output())?.[1];
  if (!announced) throw new Error(`npm start -- --billing announced no Stripe stand-in:\n${gateway.output()}`);
  stripeUrl = announced;
});

afterAll(async () => {
  await harness?.stop();
});

async function standing(): Promise<Standing> {
  const res = await fetch(`${gateway.baseUrl}/v1/billing`, { headers: auth });
  expect(res.status).toBe(200);
  return (await res.json()) as Standing;
}

async function stripeState() {
  const res = await fetch(`${stripeUrl}/_standin/state`, { headers: { authorization: `Bearer ${STRIPE_KEY}` } });
  return (await res.json()) as {
    customers: { id: string; metadata: { organization_id: string } }[];
    totals: Record<string, Record<string, number>>;
  };
}

describe("billing on, in Chromium", () => {
  it("sends the metered calls to Stripe, and the console shows the outbox drained", async () => {
    for (const stream of [false, false, true]) {
      const chat = await fetch(`${gateway.baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({
          model: "llama-2-7b-chat",
          messages: [{ role: "user", content: "Hello" }],
          max_tokens: 8,
          stream,
        }),
      });
      expect(chat.status).toBe(200);
      await chat.text();
    }
    // The calls close into a billing interval when their minute is over (npm start bills per
    // minute; deployed, per hour), which the quota object queues and the consumer sends.
    await expect
      .poll(async () => (await standing()).usage, { timeout: 100_000, interval: 500 })
      .toMatchObject({ requests: 3, unbilledRequests: 0 });
    const billed = await standing();
    expect(billed).toMatchObject({ enabled: true, status: "active", suspended: false, paymentFailedAt: null });

    const stripe = await stripeState();
    const customer = stripe.customers.find((c) => c.metadata.organization_id === billed.organizationId);
    expect(customer).toBeDefined();
    expect(stripe.totals[customer?.id ?? ""]).toEqual({
      modelgate_prompt_tokens: billed.usage.promptTokens,
      modelgate_completion_tokens: billed.usage.completionTokens,
    });
    expect(billed.usage.completionTokens).toBe(24);

    const admin = await harness.signIn("ada@example.com", "admin");
    await admin.getByRole("navigation", { name: "Console" }).getByRole("link", { name: "Billing" }).click();
    await admin.getByRole("heading", { name: "Usage on its way to Stripe" }).waitFor();
    await expect(admin.locator("#outbox-status").textContent()).resolves.toBe(
      "Nothing is waiting to be sent. Nothing has failed for good.",
    );
    const sent = admin.locator("table", { hasText: "billing intervals by billing state" }).locator("tr", {
      hasText: "Accepted by Stripe.",
    });
    // Requests of the intervals Stripe accepted: the three calls, in one interval or two.
    await expect(sent.locator("td").nth(3).textContent()).resolves.toBe("3");
    await admin.getByText("None: every billing account is active.").waitFor();
    await admin.screenshot({ path: join(ARTIFACTS, "billing-on.png"), fullPage: true });
    await expectAccessible(admin, "billing page, billing on");
  });

  it("a failed payment starts the organization's grace period, shown in the console and the API", async () => {
    const { organizationId } = await standing();
    const customer = (await stripeState()).customers.find((c) => c.metadata.organization_id === organizationId);
    const now = Math.floor(Date.now() / 1000);
    const payload = JSON.stringify({
      id: "evt_browser_payment_failed",
      object: "event",
      type: "invoice.payment_failed",
      created: now,
      api_version: "2025-01-01",
      livemode: false,
      data: { object: { object: "invoice", customer: customer?.id } },
    });
    const signature = new Stripe(STRIPE_KEY).webhooks.generateTestHeaderString({
      payload,
      secret: WEBHOOK_SECRET,
      timestamp: now,
    });
    const delivered = await fetch(`${gateway.baseUrl}/webhooks/stripe`, {
      method: "POST",
      headers: { "stripe-signature": signature, "content-type": "application/json" },
      body: payload,
    });
    expect(delivered.status).toBe(200);

    const after = await standing();
    expect(after.paymentFailedAt).not.toBeNull();
    expect(after.suspended).toBe(false);
    expect(Date.parse(after.suspendedSince ?? "")).toBeGreaterThan(Date.now());

    for (const width of [1280, 375]) {
      const admin = await harness.signIn(`ada-${width}@example.com`, "admin", width);
      await admin.goto(`${gateway.baseUrl}/admin/billing`);
      const row = admin.locator("section", { hasText: "Organizations whose payment is not in order" }).locator("tr", {
        hasText: "Acme Robotics",
      });
      await expect(row.textContent()).resolves.toMatch(/Payment failed .*grace period ends .*when inference stops/s);
      await expect(row.textContent()).resolves.toContain(customer?.id ?? "no customer");
      await expectAccessible(admin, `billing page in arrears at ${width} px`);
      if (width === 375) {
        await expectNoSidewaysScroll(admin, "billing page in arrears at 375 px");
        await admin.screenshot({ path: join(ARTIFACTS, "billing-arrears-375.png"), fullPage: true });
      }
    }
  });
});
