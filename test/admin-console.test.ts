import { createExecutionContext, createMessageBatch, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { billLedgerRows } from "../worker/billing/meter";
import type { UsageMessage } from "../worker/billing/queue";
import { stripeClient } from "../worker/billing/stripe";
import { billingAccounts, downloadHours, type Grant, usageHours, usageLedger } from "../worker/db/schema";
import worker from "../worker/index";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken } from "./helpers/access";
import { seedApplication, seedGrant, seedLicense, testGateway } from "./helpers/fixtures";

type Gateway = ReturnType<typeof testGateway>;

describe("review comments API", () => {
  let gateway: Gateway;
  let license: LicenseVersion;
  let reviewer: string;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
    reviewer = await adminToken({ role: "reviewer", email: "rita@example.com" });
  });

  it("lets a reviewer comment, lists comments oldest first, and audits each one", async () => {
    const app = await seedApplication(gateway.services, license);
    for (const body of ["Checked the website.", "MAU figure matches their filing."]) {
      const res = await gateway.request(`/admin/api/applications/${app.id}/comments`, {
        method: "POST",
        headers: accessHeaders(reviewer),
        body: JSON.stringify({ body }),
      });
      expect(res.status).toBe(201);
      gateway.clock.advance(60_000);
    }
    const list = await gateway.request(`/admin/api/applications/${app.id}/comments`, {
      headers: accessHeaders(reviewer),
    });
    const { items } = (await list.json()) as { items: { reviewer: string; body: string }[] };
    expect(items.map((i) => i.body)).toEqual(["Checked the website.", "MAU figure matches their filing."]);
    expect(items[0]?.reviewer).toBe("rita@example.com");

    const audit = await gateway.request("/admin/api/audit?action=application.commented", {
      headers: accessHeaders(reviewer),
    });
    const events = (await audit.json()) as { items: { actor: string; subjectId: string; data: { length: number } }[] };
    expect(events.items).toHaveLength(2);
    expect(events.items[0]).toMatchObject({ actor: "reviewer:rita@example.com", subjectId: app.id });
    expect(events.items[0]?.data.length).toBe("MAU figure matches their filing.".length);
  });

  it("refuses strangers, cross-site posts, empty comments and unknown cases", async () => {
    const app = await seedApplication(gateway.services, license);
    const path = `/admin/api/applications/${app.id}/comments`;
    const anonymous = await gateway.request(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ body: "hi" }),
    });
    expect(anonymous.status).toBe(401);
    const crossSite = await gateway.request(path, {
      method: "POST",
      headers: accessHeaders(reviewer, { "sec-fetch-site": "cross-site", origin: "https://evil.example" }),
      body: JSON.stringify({ body: "hi" }),
    });
    expect(crossSite.status).toBe(403);
    expect(((await crossSite.json()) as { code: string }).code).toBe("cross_site_request");
    const empty = await gateway.request(path, {
      method: "POST",
      headers: accessHeaders(reviewer),
      body: JSON.stringify({ body: "  " }),
    });
    expect(empty.status).toBe(400);
    const unknown = await gateway.request("/admin/api/applications/app_nope/comments", {
      method: "POST",
      headers: accessHeaders(reviewer),
      body: JSON.stringify({ body: "hi" }),
    });
    expect(unknown.status).toBe(404);
    const list = await gateway.request(path, { headers: accessHeaders(reviewer) });
    expect(((await list.json()) as { items: unknown[] }).items).toEqual([]);
  });
});

describe("reviewer console pages", () => {
  let gateway: Gateway;
  let license: LicenseVersion;

  beforeEach(async () => {
    gateway = testGateway();
    license = await seedLicense(gateway.services);
  });

  async function page(path: string, token?: string): Promise<{ status: number; html: string; headers: Headers }> {
    const res = await gateway.request(path, { headers: token ? { "cf-access-jwt-assertion": token } : {} });
    return { status: res.status, html: await res.text(), headers: res.headers };
  }

  it("asks strangers to sign in, and offers the local sign-in only in dev mode", async () => {
    const res = await page("/admin");
    expect(res.status).toBe(401);
    expect(res.html).toContain("Sign in to the review console");
    expect(res.html).toContain('href="/admin/dev-login"');
    expect(res.headers.get("content-security-policy")).toContain("script-src 'self'");
  });

  it("shows the queue with MAU, flags and who approved, oldest first", async () => {
    const older = await seedApplication(gateway.services, license, {
      organizationName: "Older Corp",
      requiredApprovals: 2,
    });
    gateway.clock.advance(3_600_000);
    await seedApplication(gateway.services, license, { organizationName: "Newer Ltd" });
    const approver = await adminToken({ role: "approver", email: "ann@example.com" });
    const decided = await gateway.request(`/admin/api/applications/${older.id}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "approve", reason: "Fine.", visibleToApplicant: false }),
    });
    expect(decided.status).toBe(200);
    const { status, html } = await page("/admin", approver);
    expect(status).toBe(200);
    expect(html.indexOf("Older Corp")).toBeLessThan(html.indexOf("Newer Ltd"));
    expect(html).toContain("900,000,000");
    expect(html).toContain("mau over threshold");
    expect(html).toContain("1 of 2");
    expect(html).toContain("ann@example.com (you)");
  });

  it("offers the decision form to approvers only, without approve for one who approved already", async () => {
    const app = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const reviewer = await adminToken({ role: "reviewer" });
    const ann = await adminToken({ role: "approver", email: "ann@example.com" });
    const ben = await adminToken({ role: "approver", email: "ben@example.com" });

    const asReviewer = await page(`/admin/applications/${app.id}`, reviewer);
    expect(asReviewer.status).toBe(200);
    expect(asReviewer.html).toContain("Deciding needs the approver role");
    expect(asReviewer.html).not.toContain('id="decision"');

    const before = await page(`/admin/applications/${app.id}`, ann);
    expect(before.html).toContain('value="approve"');

    await gateway.request(`/admin/api/applications/${app.id}/decision`, {
      method: "POST",
      headers: accessHeaders(ann),
      body: JSON.stringify({ decision: "approve", reason: "Fine.", visibleToApplicant: false }),
    });
    const after = await page(`/admin/applications/${app.id}`, ann);
    expect(after.html).toContain("You approved this case");
    expect(after.html).not.toContain('value="approve"');
    const other = await page(`/admin/applications/${app.id}`, ben);
    expect(other.html).toContain('value="approve"');
    expect(other.html).toContain("ann@example.com");
  });

  it("offers a reviewer party to a case neither the decision nor the comment form, as both would be refused", async () => {
    const app = await seedApplication(gateway.services, license, { requiredApprovals: 2 });
    const party = await page(
      `/admin/applications/${app.id}`,
      await adminToken({ role: "approver", email: "bo@acme.example" }),
    );
    expect(party.status).toBe(200);
    expect(party.html).toContain('id="conflict-of-interest"');
    expect(party.html).toContain('id="comment-conflict"');
    expect(party.html).not.toContain('id="decision"');
    expect(party.html).not.toContain('id="comment-body"');
    const other = await page(
      `/admin/applications/${app.id}`,
      await adminToken({ role: "approver", email: "cy@review.example" }),
    );
    expect(other.html).toContain('id="comment-body"');
    expect(other.html).not.toContain('id="comment-conflict"');
  });

  it("shows grant controls by role: suspend for approvers, revoke for admins only", async () => {
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Granted Inc" });
    const approver = await page(`/admin/grants/${grant.id}`, await adminToken({ role: "approver" }));
    expect(approver.html).toContain("Suspend access");
    expect(approver.html).not.toContain("Revoke for good");
    const admin = await page(`/admin/grants/${grant.id}`, await adminToken({ role: "admin" }));
    expect(admin.html).toContain("Revoke for good");
    const list = await page("/admin/grants", await adminToken({ role: "reviewer" }));
    expect(list.html).toContain("Granted Inc");
  });

  it("lists every model's inference servers, with forms to change them only for admins, and no key", async () => {
    const servers = testGateway(undefined, {
      INFERENCE_BACKENDS: JSON.stringify({
        "llama-2-7b-chat": [
          { url: "https://gpu-1.example.com/v1", apiKey: "sk-configured" },
          { url: "http://10.9.8.7" },
        ],
      }),
      INFERENCE_KEYS_SECRET: "a secret for this test's sealed keys",
    });
    const admin = await adminToken({ role: "admin" });
    const added = await servers.request("/admin/api/inference-backends", {
      method: "POST",
      headers: accessHeaders(admin),
      body: JSON.stringify({ model: "llama-2-13b-chat", url: "https://gpu-2.example.com", apiKey: "sk-console" }),
    });
    expect(added.status).toBe(201);
    const { id } = (await added.json()) as { id: string };
    const render = async (token: string) =>
      (await servers.request("/admin/inference-servers", { headers: { "cf-access-jwt-assertion": token } })).text();

    const asReviewer = await render(await adminToken({ role: "reviewer" }));
    expect(asReviewer).toContain("https://gpu-1.example.com");
    expect(asReviewer).toContain("https://gpu-2.example.com");
    expect(asReviewer).toContain("http://10.9.8.7 is a private, loopback, link-local or metadata address");
    expect(asReviewer).toContain("Adding and changing servers needs the admin role.");
    expect(asReviewer).not.toContain('id="add-server"');
    expect(asReviewer).not.toContain("data-method=");

    const asAdmin = await render(admin);
    expect(asAdmin).toContain('id="add-server"');
    expect(asAdmin).toMatch(new RegExp(`<form data-api="/admin/api/inference-backends/${id}" data-method="PATCH"`));
    expect(asAdmin).toContain(`data-api="/admin/api/inference-backends/${id}/probe"`);
    expect(asAdmin).toContain("Remove server");
    for (const html of [asReviewer, asAdmin]) {
      expect(html).not.toContain("sk-configured");
      expect(html).not.toContain("sk-console");
    }
  });

  it("shows the audit chain's verification", async () => {
    await seedApplication(gateway.services, license);
    const audit = await page("/admin/audit", await adminToken({ role: "reviewer" }));
    expect(audit.html).toContain("Chain verified.");
  });

  /** D1's totals of downloads of one part of an hour, as a quota object writes them. */
  function downloadPart(grant: Grant, hour: string, part: string, counts: Partial<typeof downloadHours.$inferInsert>) {
    return {
      organizationId: grant.organizationId,
      hour,
      grantId: grant.id,
      tokenId: "tok_x",
      model: "llama-2-7b",
      part,
      requests: 1,
      completeRequests: 1,
      errorRequests: 0,
      bytesServed: 1024 * 1024,
      lastAt: `${hour}:00:00.000Z`,
      updatedAt: `${hour}:00:00.000Z`,
      ...counts,
    };
  }

  /** D1's totals of inference of one part of an hour. */
  function usagePart(grant: Grant, hour: string, part: string, counts: Partial<typeof usageHours.$inferInsert>) {
    return {
      organizationId: grant.organizationId,
      hour,
      model: "llama-2-7b-chat",
      grantId: grant.id,
      tokenId: "tok_x",
      part,
      requests: 1,
      promptTokens: 2,
      completionTokens: 8,
      totalTokens: 10,
      errorRequests: 0,
      partialRequests: 0,
      latencyMsSum: 5,
      lastAt: `${hour}:00:00.000Z`,
      updatedAt: `${hour}:00:00.000Z`,
      ...counts,
    };
  }

  it("charts downloads and tokens per day from the hourly totals, and says so when there are none", async () => {
    const token = await adminToken({ role: "reviewer" });
    const empty = await page("/admin/usage", token);
    expect(empty.status).toBe(200);
    expect(empty.html).not.toContain("<svg");
    expect(empty.html).toContain("nothing in this period");

    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Downloader AG" });
    const hour = gateway.clock.now().toISOString().slice(0, 13);
    // Two parts of one hour: the day counts both.
    await gateway.services.db
      .insert(downloadHours)
      .values([downloadPart(grant, hour, "0000000a1", {}), downloadPart(grant, hour, "0000000b2", {})]);
    await gateway.services.db
      .insert(usageHours)
      .values([
        usagePart(grant, hour, "0000000a1", { totalTokens: 1200 }),
        usagePart(grant, hour, "0000000b2", { totalTokens: 34 }),
      ]);
    const usage = await page("/admin/usage", token);
    expect(usage.html).toContain("<svg");
    expect(usage.html).toContain(`<title>${hour.slice(0, 10)}: 2</title>`);
    expect(usage.html).toContain(`<title>${hour.slice(0, 10)}: 1,234</title>`);
    expect(usage.html).toContain("Downloader AG");
    expect(usage.html).toContain("2.0 MiB");
  });

  it("shows a grant's downloads per hour, token and model and its inference per token, from the hourly totals", async () => {
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Hourly GmbH" });
    await gateway.services.db.insert(downloadHours).values([
      downloadPart(grant, "2026-03-02T09", "0000000a1", {
        requests: 2,
        completeRequests: 1,
        bytesServed: 1024 * 1024,
        lastAt: "2026-03-02T09:10:00.000Z",
      }),
      downloadPart(grant, "2026-03-02T09", "0000000b2", {
        requests: 1,
        completeRequests: 0,
        errorRequests: 1,
        bytesServed: 0,
        lastAt: "2026-03-02T09:40:00.000Z",
      }),
      downloadPart(grant, "2026-03-02T10", "0000000c3", {
        model: "llama-2-13b",
        bytesServed: 2 * 1024 * 1024,
        lastAt: "2026-03-02T10:05:00.000Z",
      }),
    ]);
    await gateway.services.db.insert(usageHours).values([
      usagePart(grant, "2026-03-02T09", "0000000a1", {
        requests: 1,
        totalTokens: 10,
        lastAt: "2026-03-02T09:20:00.000Z",
      }),
      usagePart(grant, "2026-03-02T09", "0000000b2", {
        requests: 2,
        totalTokens: 20,
        lastAt: "2026-03-02T09:50:00.000Z",
      }),
    ]);
    const reviewer = await adminToken({ role: "reviewer" });
    const { html } = await page(`/admin/grants/${grant.id}`, reviewer);
    const section = (id: string) =>
      html.slice(html.indexOf(`id="${id}"`), html.indexOf("</section>", html.indexOf(`id="${id}"`)));
    const cells = (row: string) => [...row.matchAll(/<td[^>]*>(.*?)<\/td>/g)].map((m) => m[1]);
    const rows = (id: string) => section(id).split("<tr>").slice(2).map(cells);
    // Newest hour first; the parts of an hour summed.
    expect(rows("downloads-heading")).toEqual([
      ["2026-03-02 10:00", "llama-2-13b", "tok_x", "1", "1", "0", "2.0 MiB", "2026-03-02 10:05 UTC"],
      ["2026-03-02 09:00", "llama-2-7b", "tok_x", "3", "1", "1", "1.0 MiB", "2026-03-02 09:40 UTC"],
    ]);
    expect(rows("usage-heading")).toEqual([["tok_x", "llama-2-7b-chat", "3", "30", "2026-03-02 09:50 UTC"]]);
    const list = await page("/admin/grants", reviewer);
    const listed = list.html.split("<tr>").find((row) => row.includes("Hourly GmbH")) ?? "";
    expect(listed).toMatch(/data-label="Downloads" class="num">4</);
    expect(listed).toContain("3.0 MiB");
  });
});

describe("local sign-in", () => {
  it("keeps a valid token in a __Host- cookie that then authenticates the API", async () => {
    const gateway = testGateway();
    const token = await adminToken({ role: "approver", email: "ann@example.com" });
    const res = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "same-origin" },
      body: new URLSearchParams({ token }).toString(),
    });
    expect(res.status).toBe(303);
    const cookie = res.headers.get("set-cookie") ?? "";
    expect(cookie).toMatch(/^__Host-modelgate-dev-access=/);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("Secure");
    expect(cookie).toContain("SameSite=Strict");
    expect(cookie).toContain("Path=/");
    const me = await gateway.request("/admin/api/me", { headers: { cookie: cookie.split(";")[0] ?? "" } });
    expect(me.status).toBe(200);
    expect(((await me.json()) as { email: string }).email).toBe("ann@example.com");
  });

  it("refuses bad tokens and cross-site sign-ins", async () => {
    const gateway = testGateway();
    const bad = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "token=not-a-jwt",
    });
    expect(bad.status).toBe(401);
    expect(bad.headers.get("set-cookie")).toBeNull();
    const crossSite = await gateway.request("/admin/dev-login", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "sec-fetch-site": "cross-site" },
      body: new URLSearchParams({ token: await adminToken({ role: "admin" }) }).toString(),
    });
    expect(crossSite.status).toBe(403);
    expect(crossSite.headers.get("set-cookie")).toBeNull();
  });
});

describe("billing in the reviewer console", () => {
  let license: LicenseVersion;

  beforeEach(async () => {
    license = await seedLicense(testGateway().services);
  });

  async function page(gateway: Gateway, path: string): Promise<string> {
    const res = await gateway.request(path, {
      headers: { "cf-access-jwt-assertion": await adminToken({ role: "reviewer" }) },
    });
    expect(res.status, path).toBe(200);
    return res.text();
  }

  /** The table row of `html` that mentions `text`. */
  function rowOf(html: string, text: string): string {
    const row = html.split("<tr>").find((part) => part.includes(text));
    expect(row, `a table row with ${text}`).toBeDefined();
    return (row as string).split("</tr>")[0] as string;
  }

  /** A metered call of the grant's organization, as the inference proxy writes it. */
  async function meteredCall(gateway: Gateway, grant: Grant, totalTokens = 42) {
    const at = gateway.clock.now().toISOString();
    const [row] = await gateway.services.db
      .insert(usageLedger)
      .values({
        id: `use_${crypto.randomUUID().replaceAll("-", "")}`,
        organizationId: grant.organizationId,
        grantId: grant.id,
        tokenId: "tok_x",
        model: "llama-2-7b-chat",
        endpoint: "chat.completions",
        stream: false,
        promptTokens: totalTokens - 2,
        completionTokens: 2,
        totalTokens,
        usageReported: true,
        outcome: "ok",
        partial: false,
        status: 200,
        latencyMs: 5,
        startedAt: at,
        createdAt: at,
      })
      .returning();
    return row as NonNullable<typeof row>;
  }

  /** An organization whose payment failed `daysAgo` days ago, as Stripe's webhooks leave it. */
  async function pastDue(gateway: Gateway, organizationName: string, daysAgo: number) {
    const { grant } = await seedGrant(gateway.services, license, { organizationName });
    const at = gateway.clock.now().getTime();
    await gateway.services.db.insert(billingAccounts).values({
      organizationId: grant.organizationId,
      stripeCustomerId: `cus_${organizationName.split(" ")[0]?.toLowerCase()}`,
      stripeSubscriptionId: "sub_plan",
      plan: "pro",
      status: "past_due",
      paymentFailedAt: new Date(at - daysAgo * 86_400_000).toISOString(),
      createdAt: new Date(at - 60 * 86_400_000).toISOString(),
      updatedAt: new Date(at - daysAgo * 86_400_000).toISOString(),
    });
    return grant;
  }

  it("shows what keeps failing: a dead-lettered row with its attempts and Stripe's last error, and the backlog", async () => {
    const apiKey = `sk_test_${crypto.randomUUID().replaceAll("-", "")}`;
    const gateway = testGateway(undefined, { STRIPE_SECRET_KEY: apiKey, STRIPE_API_BASE: env.TEST_STRIPE_URL });
    // This gateway's account at the Stripe stand-in answers 503 to everything.
    await fetch(`${env.TEST_STRIPE_URL}/_standin/fail`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ status: 503 }),
    });
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Meterfail AG" });
    const doomed = await meteredCall(gateway, grant, 1234);
    const waiting = await meteredCall(gateway, grant);
    const stripe = stripeClient(gateway.services.config.billing);
    if (!stripe) throw new Error("billing should be on");
    for (let attempt = 0; attempt < 3; attempt++) await billLedgerRows(gateway.services, stripe, [doomed.id]);
    // The queue gives up on the row: its dead-letter consumer marks it.
    const batch = createMessageBatch<UsageMessage>("modelgate-usage-dlq", [
      { id: "dead-1", timestamp: new Date(), attempts: 4, body: { ledgerId: doomed.id } },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch, gateway.env, ctx);
    await waitOnExecutionContext(ctx);
    const [dead] = await gateway.services.db.select().from(usageLedger).where(eq(usageLedger.id, doomed.id));
    expect(dead).toMatchObject({ billingState: "dead", billingAttempts: 3 });
    const lastError = dead?.billingError ?? "";
    expect(lastError).not.toBe("");

    gateway.clock.advance(40 * 60_000);
    const html = await page(gateway, "/admin/billing");
    expect(html).not.toContain("Billing is off");
    const failure = rowOf(html, doomed.id);
    expect(failure).toContain("Meterfail AG");
    expect(failure).toContain("llama-2-7b-chat");
    expect(failure).toContain(">1,234<");
    expect(failure).toMatch(/data-label="Attempts" class="num">3</);
    expect(failure).toContain("dead letter");
    expect(failure).toContain(lastError.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll('"', "&quot;"));
    expect(failure).toContain("2026-03-02 09:00 UTC");
    expect(html).not.toContain(waiting.id);
    // Ledger rows are billed one by one, in a table of their own beside the hourly intervals.
    const ledgerRows = html.slice(html.indexOf("Usage-ledger rows by billing state"));
    expect(rowOf(ledgerRows, 'data-label="State">dead<')).toMatch(/data-label="Rows" class="num">1</);
    expect(rowOf(ledgerRows, 'data-label="State">pending<')).toMatch(/data-label="Rows" class="num">1</);
    expect(html).toContain("1 row waiting to be sent, the oldest written 40 min ago");
    expect(html).toContain("1 row was never billed");
    // A reviewer is told who may resend; an admin gets the form that calls the resend API.
    expect(html).toContain("Sending dead letters again needs the admin role.");
    expect(html).not.toContain('id="resend-dead"');
    const asAdmin = await (
      await gateway.request("/admin/billing", {
        headers: { "cf-access-jwt-assertion": await adminToken({ role: "admin" }) },
      })
    ).text();
    expect(asAdmin).toMatch(/<form[^>]*id="resend-dead"[^>]*data-api="\/admin\/api\/billing\/outbox\/resend"/);
    // The admin API counts the backlog with the same function.
    const outbox = await gateway.request("/admin/api/billing/outbox", {
      headers: accessHeaders(await adminToken({ role: "reviewer" })),
    });
    expect(await outbox.json()).toMatchObject({
      enabled: true,
      states: [
        { kind: "row", state: "dead", rows: 1, requests: 1, oldest: doomed.createdAt },
        { kind: "row", state: "pending", rows: 1, requests: 1, oldest: waiting.createdAt },
      ],
      failures: [expect.objectContaining({ kind: "row", id: doomed.id, state: "dead", attempts: 3 })],
    });
  });

  it("shows a suspended organization and one in its grace period, on the billing page and with its grant", async () => {
    const gateway = testGateway(undefined, { STRIPE_SECRET_KEY: "sk_test_console", BILLING_GRACE_DAYS: "7" });
    const unpaid = await pastDue(gateway, "Unpaid GmbH", 8);
    await pastDue(gateway, "Graceful Ltd", 2);
    await seedGrant(gateway.services, license, { organizationName: "Paying Inc" });

    const billing = await page(gateway, "/admin/billing");
    const suspended = rowOf(billing, "Unpaid GmbH");
    expect(suspended).toContain('<span class="badge bad">suspended</span>');
    expect(suspended).toContain("inference suspended since 2026-03-01 09:00 UTC");
    expect(suspended).toContain("cus_unpaid");
    const grace = rowOf(billing, "Graceful Ltd");
    expect(grace).toContain("past due");
    expect(grace).toContain("grace period ends 2026-03-07 09:00 UTC");
    expect(billing).not.toContain("Paying Inc");

    const grantPage = await page(gateway, `/admin/grants/${unpaid.id}`);
    const facts = grantPage.slice(grantPage.indexOf('id="billing-heading"'));
    expect(facts).toContain('<span class="badge bad">suspended</span>');
    expect(facts).toContain("cus_unpaid");
    expect(facts).toContain("pro");

    const list = await page(gateway, "/admin/grants");
    expect(list).toContain('<th scope="col">Billing</th>');
    expect(rowOf(list, "Unpaid GmbH")).toContain('data-label="Billing"><span class="badge bad">suspended');
    expect(rowOf(list, "Graceful Ltd")).toContain('data-label="Billing"><span class="badge past_due">past due');
    expect(rowOf(list, "Paying Inc")).toContain("no account yet");
  });

  it("says plainly that billing is off without a Stripe key, instead of empty tables", async () => {
    const gateway = testGateway();
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Metered Only SA" });
    await meteredCall(gateway, grant);
    const billing = await page(gateway, "/admin/billing");
    expect(billing).toContain("Billing is off.");
    expect(billing).toContain("1 call is in the ledger, unsent");
    expect(billing).not.toContain("<table");
    const grantPage = await page(gateway, `/admin/grants/${grant.id}`);
    expect(grantPage).toContain("Billing is off on this gateway");
    const list = await page(gateway, "/admin/grants");
    expect(list).toContain("Metered Only SA");
    expect(list).not.toContain('data-label="Billing"');
  });

  it("shows an organization's inference limits, and the form to change them only to admins", async () => {
    const gateway = testGateway();
    const { grant } = await seedGrant(gateway.services, license, { organizationName: "Limited Co" });
    const asReviewer = await page(gateway, `/admin/grants/${grant.id}`);
    expect(asReviewer).toContain("60 requests and 100,000 tokens per minute");
    expect(asReviewer).toContain("the gateway&#39;s defaults");
    expect(asReviewer).not.toContain('data-method="PUT"');
    const admin = await adminToken({ role: "admin", email: "ada@example.com" });
    const set = await gateway.request(`/admin/api/organizations/${grant.organizationId}/limits`, {
      method: "PUT",
      headers: accessHeaders(admin),
      body: JSON.stringify({ plan: "gold", requestsPerMinute: 7, tokensPerMinute: 700, monthlyTokenBudget: 7000 }),
    });
    expect(set.status).toBe(200);
    const asAdmin = await (
      await gateway.request(`/admin/grants/${grant.id}`, { headers: { "cf-access-jwt-assertion": admin } })
    ).text();
    expect(asAdmin).toMatch(/<form[^>]*id="limits"[^>]*data-method="PUT"/);
    expect(asAdmin).toContain("Now: plan gold.");
    expect(asAdmin).toMatch(/name="requestsPerMinute" type="number"[^>]*value="7"/);
  });
});
