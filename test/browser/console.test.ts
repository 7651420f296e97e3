/**
 * The reviewer console and the applicant's pages in a real browser: Debian's Chromium driven by
 * playwright-core against the gateway started exactly as `npm start` starts it. Covers the
 * over-threshold case end to end (apply → two approvers → token), a rejection's reason, a
 * reviewer without the approver role, cross-site posts, an admin steering inference servers, phone
 * width and an axe-core audit.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GUARD_UNSAFE_MARKER } from "../../scripts/backend-sim";
import type { AdminRoleName } from "../../scripts/lib/dev-access-token";
import type { GatewayProcess } from "../../scripts/lib/gateway-process";
import { ARTIFACTS, BrowserHarness, EVIL_HOST, expectAccessible, expectNoSidewaysScroll, useLink } from "./harness";

let harness: BrowserHarness;
let gateway: GatewayProcess;

beforeAll(async () => {
  harness = await BrowserHarness.start();
  gateway = harness.gateway;
});

afterAll(async () => {
  await harness?.stop();
});

const newPage = (width?: number, height?: number): Promise<Page> => harness.newPage(width, height);
const signIn = (email: string, role: AdminRoleName, width?: number): Promise<Page> =>
  harness.signIn(email, role, width);

/**
 * Fills and submits the public application form, then confirms the address with the link mailed
 * to it; returns the status page's address.
 */
async function apply(page: Page, org: { name: string; country: string; email: string; mau: string }): Promise<string> {
  await page.goto(`${gateway.baseUrl}/apply/llama-2`);
  await page.getByLabel("Legal name").fill(org.name);
  await page.getByLabel("Country of incorporation").selectOption(org.country);
  await page.getByLabel("Your name").fill("Pat Applicant");
  await page.getByLabel("Work e-mail").fill(org.email);
  await page.getByLabel("Intended use").fill("Customer support assistant for our own products.");
  await page.getByLabel(/Monthly active users in June 2023/).fill(org.mau);
  await page.getByLabel(/I accept the LLAMA 2 Community License/).check();
  await page.getByLabel("I accept the Acceptable Use Policy.").check();
  await page.getByRole("button", { name: "Submit application" }).click();
  await page.getByRole("heading", { name: "Check your e-mail" }).waitFor();
  const link = await harness.mailedLink(org.email, "/applications/confirm");
  await useLink(page, link, "Accept the license and confirm", /\/applications\/app_\w+\?token=mgs_/);
  return page.url();
}

async function openCase(page: Page, organization: string): Promise<void> {
  await page.goto(`${gateway.baseUrl}/admin?q=${encodeURIComponent(organization)}`);
  await page.getByRole("link", { name: organization }).click();
  await page.waitForURL(/\/admin\/applications\/app_/);
}

async function decide(page: Page, decision: "Approve" | "Reject", reason: string): Promise<void> {
  await page.getByLabel(decision, { exact: true }).check();
  await page.locator("#decision-reason").fill(reason);
  await Promise.all([page.waitForEvent("load"), page.getByRole("button", { name: "Record decision" }).click()]);
}

describe("reviewer console and applicant pages in Chromium", () => {
  let statusUrl: string;
  let caseUrl: string;

  it("an over-threshold application needs two approvers, then the applicant mints a token", async () => {
    const applicant = await newPage(375, 800);
    statusUrl = await apply(applicant, {
      name: "Globex Megacorp",
      country: "US",
      email: "pat@globex.example",
      mau: "1200000000",
    });
    await expect(applicant.locator(".status").textContent()).resolves.toBe("Pending review");
    await applicant.getByText("two approvers review the case").waitFor();
    await expectAccessible(applicant, "status page, pending");
    await expectNoSidewaysScroll(applicant, "status page, pending");

    const ann = await signIn("ann@example.com", "approver");
    // The __Host- cookie is kept over plain http on 127.0.0.1, which Chromium treats as secure.
    const cookies = await ann.context().cookies();
    expect(cookies.find((c) => c.name === "__Host-modelgate-dev-access")).toMatchObject({
      httpOnly: true,
      secure: true,
      sameSite: "Strict",
      path: "/",
    });
    await ann.goto(`${gateway.baseUrl}/admin`);
    const row = ann.getByRole("row").filter({ hasText: "Globex Megacorp" });
    await expect(row.textContent()).resolves.toContain("1,200,000,000");
    await expect(row.textContent()).resolves.toContain("mau over threshold");
    await ann.screenshot({ path: join(ARTIFACTS, "queue.png"), fullPage: true });
    await expectAccessible(ann, "queue");

    await openCase(ann, "Globex Megacorp");
    caseUrl = ann.url();
    await decide(ann, "Approve", "MAU figure checked against the annual report.");
    await ann.getByRole("heading", { name: /Approvals: 1 of 2/ }).waitFor();
    await expect(ann.locator("#own-approval").textContent()).resolves.toContain("You approved this case");
    await expect(ann.getByLabel("Approve", { exact: true }).count()).resolves.toBe(0);
    await ann.getByLabel("Add a comment").fill("Second approver: please check the affiliates list.");
    await Promise.all([ann.waitForEvent("load"), ann.getByRole("button", { name: "Add comment" }).click()]);
    await ann.getByText("please check the affiliates list").waitFor();
    await ann.screenshot({ path: join(ARTIFACTS, "case.png"), fullPage: true });
    await expectAccessible(ann, "case page");

    // The API refuses a second approval by the same person, whatever the page shows.
    const again = await ann.evaluate(
      async (url) => {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ decision: "approve", reason: "again", visibleToApplicant: false }),
        });
        return res.status;
      },
      `${caseUrl.replace("/admin/applications/", "/admin/api/applications/")}/decision`,
    );
    expect(again).toBe(409);

    const ben = await signIn("ben@example.com", "approver");
    await ben.goto(caseUrl);
    await expect(ben.locator("#approvals").textContent()).resolves.toContain("ann@example.com");
    await decide(ben, "Approve", "Agreed.");
    await expect(ben.locator("h1 .badge").textContent()).resolves.toBe("Approved");

    await applicant.goto(statusUrl);
    await expect(applicant.locator(".status").textContent()).resolves.toBe("Approved");
    await applicant.getByText(`HF_ENDPOINT=${gateway.baseUrl} HF_TOKEN=hf_mg_YOUR_TOKEN`).waitFor();
    await applicant.screenshot({ path: join(ARTIFACTS, "status-approved-375.png"), fullPage: true });
    await expectAccessible(applicant, "status page, approved");
    await expectNoSidewaysScroll(applicant, "status page, approved");

    // Tokens are minted signed in, not with the status link: confirming signed the contact in.
    await applicant.getByRole("link", { name: "your account" }).click();
    await applicant.waitForURL(`${gateway.baseUrl}/account`);
    const minted = await applicant.evaluate(async () => {
      const res = await fetch("/v1/tokens", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "training cluster", scopes: ["download"] }),
      });
      return { status: res.status, body: (await res.json()) as { token?: string } };
    });
    expect(minted.status).toBe(201);
    expect(minted.body.token).toMatch(/^mg_[\w-]{20,}$/);
    // The form asks for every model by default; npm start seeds llama-2-7b's weights.
    const manifest = await fetch(`${gateway.baseUrl}/v1/models/llama-2-7b/manifest`, {
      headers: { authorization: `Bearer ${minted.body.token}` },
    });
    expect(manifest.status).toBe(200);
  });

  it("a rejection shows its reason and when the applicant may apply again", async () => {
    const applicant = await newPage(375, 800);
    const url = await apply(applicant, {
      name: "Initrode Holdings",
      country: "CN",
      email: "li@initrode.example",
      mau: "5000",
    });
    await expect(applicant.locator(".status").textContent()).resolves.toBe("Pending review");

    const ann = await signIn("ann2@example.com", "approver");
    await openCase(ann, "Initrode Holdings");
    await decide(ann, "Reject", "The end-user statement is missing; apply again with it attached.");

    await applicant.goto(url);
    await expect(applicant.locator(".status").textContent()).resolves.toBe("Not approved");
    await applicant.getByText("The end-user statement is missing").waitFor();
    await expect(applicant.locator("#reapply").textContent()).resolves.toMatch(/apply again (from|after)|final/);
    await expectAccessible(applicant, "status page, rejected");
  });

  it("a reviewer without the approver role sees no decision buttons and the API refuses them", async () => {
    const rita = await signIn("rita@example.com", "reviewer", 375);
    await rita.goto(caseUrl);
    await rita.getByText("Deciding needs the approver role").waitFor();
    await expect(rita.getByRole("button", { name: "Record decision" }).count()).resolves.toBe(0);
    await expect(rita.locator("#decision").count()).resolves.toBe(0);
    const status = await rita.evaluate(
      async (url) => {
        const res = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ decision: "reject", reason: "no", visibleToApplicant: false }),
        });
        return res.status;
      },
      `${caseUrl.replace("/admin/applications/", "/admin/api/applications/")}/decision`,
    );
    expect(status).toBe(403);
    await expectAccessible(rita, "case page at 375 px, reviewer");
    await expectNoSidewaysScroll(rita, "case page at 375 px");
    await rita.goto(`${gateway.baseUrl}/admin`);
    await expectNoSidewaysScroll(rita, "queue at 375 px");
    await rita.screenshot({ path: join(ARTIFACTS, "queue-375.png"), fullPage: true });
  });

  it("refuses a cross-site post, even from a signed-in reviewer's browser", async () => {
    const ann = await signIn("ann3@example.com", "approver");
    const apiUrl = `${caseUrl.replace("/admin/applications/", "/admin/api/applications/")}/comments`;
    const port = new URL(gateway.baseUrl).port;
    // A page on another site posts a JSON-looking text/plain form to the console's API.
    await ann.goto(`http://${EVIL_HOST}:${port}/health`);
    const [response] = await Promise.all([
      ann.waitForResponse((r) => r.url() === apiUrl),
      ann.evaluate((target) => {
        // Runs in the page, where `document` exists; typed loosely since these tests compile without DOM types.
        // biome-ignore lint/suspicious/noExplicitAny: the DOM is not in this project's type libraries.
        const doc = (globalThis as any).document;
        const form = doc.createElement("form");
        form.method = "POST";
        form.action = target;
        form.enctype = "text/plain";
        const input = doc.createElement("input");
        input.name = '{"body":"forged","x":"';
        input.value = '"}';
        form.appendChild(input);
        doc.body.appendChild(form);
        form.submit();
      }, apiUrl),
    ]);
    expect(response.status()).toBe(403);
    expect(await response.text()).toContain("cross_site_request");

    await ann.goto(caseUrl);
    await expect(ann.getByText("forged").count()).resolves.toBe(0);
  });

  it("grants, usage, audit and billing pages render, pass axe, and fit a phone", async () => {
    const admin = await signIn("ada@example.com", "admin");
    await admin.goto(`${gateway.baseUrl}/admin/grants`);
    await admin.getByRole("link", { name: "Globex Megacorp" }).click();
    await admin.getByRole("button", { name: "Revoke for good" }).waitFor();
    await admin.getByText("training cluster").waitFor();
    await expectAccessible(admin, "grant page");
    // An admin configures the organization's inference limits; the page reloads with them.
    await admin.getByLabel("Plan name").fill("enterprise");
    await admin.getByLabel("Requests per minute").fill("1200");
    await admin.getByRole("button", { name: "Save limits" }).click();
    await expect.poll(() => admin.locator("#limits").textContent(), { timeout: 10_000 }).toContain("plan enterprise");
    await expect(admin.getByLabel("Requests per minute").inputValue()).resolves.toBe("1200");

    // Use the demo token npm start mints, so the usage charts have a download and a call to show.
    const { demoToken } = JSON.parse(readFileSync(join(gateway.dir, "demo.json"), "utf8")) as {
      demoToken: { token: string };
    };
    const auth = { authorization: `Bearer ${demoToken.token}` };
    const manifest = await fetch(`${gateway.baseUrl}/v1/models/llama-2-7b/manifest`, { headers: auth });
    expect(manifest.status).toBe(200);
    const { files } = (await manifest.json()) as { files: { url: string; size: number }[] };
    const smallest = [...files].sort((a, b) => a.size - b.size)[0];
    const file = await fetch(smallest?.url ?? "", { headers: auth });
    expect(file.status).toBe(200);
    await file.arrayBuffer();
    const chat = await fetch(`${gateway.baseUrl}/v1/chat/completions`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content: "Hello" }], max_tokens: 8 }),
    });
    expect(chat.status).toBe(200);
    await chat.json();
    // The call reaches the ledger with its quota object's next batch, a fraction of a second later.
    await expect
      .poll(
        async () => {
          const usage = await fetch(`${gateway.baseUrl}/v1/usage`, { headers: auth });
          return ((await usage.json()) as { data: unknown[] }).data.length;
        },
        { timeout: 10_000, interval: 100 },
      )
      .toBeGreaterThan(0);

    // The console reads D1's hourly totals, which the quota objects write every USAGE_SYNC_SECONDS
    // (5 s under npm start).
    await expect
      .poll(
        async () => {
          await admin.goto(`${gateway.baseUrl}/admin/usage`);
          return admin.locator("svg[role=img]").count();
        },
        { timeout: 60_000, interval: 1_000 },
      )
      .toBe(3);
    // Each chart says what it plots under it, not only to screen readers.
    const captions = await admin.locator("figcaption strong").allTextContents();
    expect(captions.map((c) => c.split(",")[0])).toEqual([
      "Download requests per day",
      "Bytes served per day",
      "Inference tokens per day",
    ]);
    await admin.screenshot({ path: join(ARTIFACTS, "usage.png"), fullPage: true });
    await expectAccessible(admin, "usage page");

    await admin.goto(`${gateway.baseUrl}/admin/audit`);
    await expect(admin.locator("#chain-status").textContent()).resolves.toContain("Chain verified.");
    await expectAccessible(admin, "audit page");

    // npm start runs without a Stripe key: the billing view says so, and counts the call above as
    // unsent once its minute closed into a billing interval.
    await admin.getByRole("navigation", { name: "Console" }).getByRole("link", { name: "Billing" }).click();
    await admin.getByRole("heading", { name: "Billing", level: 1 }).waitFor();
    await expect
      .poll(
        async () => {
          await admin.reload();
          return admin.locator("#billing-off").textContent();
        },
        { timeout: 100_000, interval: 2_000 },
      )
      .toMatch(/Billing is off\..*Usage is still metered: [1-9][\d,]* calls? (is|are) in the ledger, unsent\./s);
    await admin.screenshot({ path: join(ARTIFACTS, "billing.png"), fullPage: true });
    await expectAccessible(admin, "billing page");

    const phone = await signIn("ada2@example.com", "admin", 375);
    for (const path of [
      "/admin/grants",
      "/admin/usage",
      "/admin/audit",
      "/admin/billing",
      "/admin/inference-servers",
    ]) {
      await phone.goto(`${gateway.baseUrl}${path}`);
      await expectAccessible(phone, `${path} at 375 px`);
    }
    await expectNoSidewaysScroll(phone, "billing at 375 px");
    await phone.screenshot({ path: join(ARTIFACTS, "billing-375.png"), fullPage: true });
    await phone.goto(`${gateway.baseUrl}/apply/llama-2`);
    await expectAccessible(phone, "application form at 375 px");
    await expectNoSidewaysScroll(phone, "application form at 375 px");
  });

  it("an admin adds, checks, disables and removes an inference server, and calls go to it", async () => {
    const admin = await signIn("grace@example.com", "admin");
    await admin.getByRole("navigation", { name: "Console" }).getByRole("link", { name: "Servers" }).click();
    await admin.getByRole("heading", { name: "Inference servers", level: 1 }).waitFor();
    // npm start routes every Llama 2 model to its simulator through INFERENCE_BACKENDS.
    const configured = await admin
      .locator("table tbody tr", { hasText: "llama-2-7b-chat" })
      .locator("code")
      .textContent();
    const simulatorUrl = new URL(configured ?? "").origin;
    const serverUrl = `${simulatorUrl}/scope/console-added`;

    const form = admin.locator("#add-server");
    await form.getByLabel("Model", { exact: true }).selectOption("llama-2-13b-chat");
    await form.getByLabel("URL (OpenAI-compatible server, without /v1)").fill(serverUrl);
    await form.getByLabel("Weight (default 1)").fill("3");
    await form.getByLabel(/API key/).fill("sk-from-the-console");
    await form.getByRole("button", { name: "Add server" }).click();
    const row = admin.locator("table tbody tr", { hasText: "/scope/console-added" });
    await row.waitFor({ timeout: 10_000 });
    await expect(row.textContent()).resolves.toMatch(/llama-2-13b-chat.*3.*yes.*enabled.*no failure seen/s);
    await expectAccessible(admin, "inference servers page");
    await admin.screenshot({ path: join(ARTIFACTS, "inference-servers.png"), fullPage: true });

    const controls = admin.locator("details", { hasText: "/scope/console-added" });
    await controls.locator("summary").click();
    await controls.getByRole("button", { name: "Check health" }).click();
    await expect
      .poll(() => controls.locator("output").nth(1).textContent(), { timeout: 10_000 })
      .toMatch(/^Up: answered its health check in \d+ ms\.$/);

    // Calls for the model are now balanced 3:1 between it and the simulator of INFERENCE_BACKENDS;
    // those that reach it carry the key the admin entered (as the simulator's log shows).
    const { demoToken } = JSON.parse(readFileSync(join(gateway.dir, "demo.json"), "utf8")) as {
      demoToken: { token: string };
    };
    for (let i = 0; i < 20; i++) {
      const chat = await fetch(`${gateway.baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${demoToken.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "llama-2-13b-chat", messages: [{ role: "user", content: "Hi" }], max_tokens: 4 }),
      });
      expect(chat.status).toBe(200);
      await chat.json();
    }
    const log = (await (await fetch(`${serverUrl}/_sim/requests`)).json()) as {
      path: string;
      headers: Record<string, string>;
    }[];
    const completions = log.filter((r) => r.path === "/v1/chat/completions");
    // None of 20 calls reaching a server of weight 3 against 1 would happen once in 10^12 runs.
    expect(completions.length).toBeGreaterThan(0);
    expect(new Set(completions.map((r) => r.headers.authorization))).toEqual(new Set(["Bearer sk-from-the-console"]));

    await controls.getByLabel("Enabled (takes traffic)").uncheck();
    await controls.getByRole("button", { name: "Save" }).click();
    await expect.poll(() => row.textContent(), { timeout: 10_000 }).toContain("disabled");
    // The admin's health check is what the gateway last saw of it.
    await expect(row.textContent()).resolves.toMatch(/disabled.*up since/s);

    admin.once("dialog", (dialog) => void dialog.accept());
    await admin.locator("details", { hasText: "/scope/console-added" }).locator("summary").click();
    // The page reloads once the server is gone: wait for that load, or the next navigation races it.
    await Promise.all([admin.waitForEvent("load"), admin.getByRole("button", { name: "Remove server" }).click()]);
    await expect.poll(() => row.count(), { timeout: 10_000 }).toBe(0);

    await admin.goto(`${gateway.baseUrl}/admin/audit?subjectType=inference_backend`);
    await expect(admin.locator("main").textContent()).resolves.toMatch(
      /inference_backend\.removed.*inference_backend\.changed.*inference_backend\.added/s,
    );
    await expect(admin.locator("main").textContent()).resolves.not.toContain("sk-from-the-console");
  });

  // Last in the file: it ends with the demo organization's grant suspended.
  it("content policy: an admin turns screening on, reviewers see the flags queue, an approver confirms a suspension", async () => {
    const { demoToken } = JSON.parse(readFileSync(join(gateway.dir, "demo.json"), "utf8")) as {
      demoToken: { token: string };
    };
    const ask = (content: string) =>
      fetch(`${gateway.baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${demoToken.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content }], max_tokens: 4 }),
      });
    const unsafe = `How do I do ${GUARD_UNSAFE_MARKER} to someone?`;

    // npm start's guard model is configured and every organization is off: an unsafe prompt is served unflagged.
    const unscreened = await ask(unsafe);
    expect(unscreened.status).toBe(200);
    await unscreened.json();

    const admin = await signIn("linus@example.com", "admin");
    await admin.goto(`${gateway.baseUrl}/admin/grants`);
    await admin.getByRole("link", { name: "Acme Robotics" }).click();
    await admin.getByRole("link", { name: "Content policy screening and flags" }).click();
    await admin.getByRole("heading", { name: "Content policy flags", level: 1 }).waitFor();
    await expect(admin.locator("main").textContent()).resolves.not.toContain("No guard model is configured");
    const organizationId = new URL(admin.url()).searchParams.get("organization") ?? "";
    expect(organizationId).not.toBe("");
    await expect(admin.getByText("Now: the deployment's default.").count()).resolves.toBe(1);
    await admin.getByLabel("Mode").selectOption("log");
    await admin.getByLabel("The organization allows keeping flagged text").check();
    await Promise.all([admin.waitForEvent("load"), admin.getByRole("button", { name: "Save" }).click()]);
    await admin.getByText("Now: set by an admin.").waitFor();
    await expect(admin.getByLabel("Mode").inputValue()).resolves.toBe("log");

    // In `log` mode an unsafe prompt is answered and flagged; the setting is in force within 5 s.
    const flagCount = async () => {
      const res = await harness.adminFetch(`/admin/api/guard/flags?organization=${encodeURIComponent(organizationId)}`);
      expect(res.status).toBe(200);
      return ((await res.json()) as { flags: unknown[] }).flags.length;
    };
    await expect
      .poll(
        async () => {
          const res = await ask(unsafe);
          expect(res.status).toBe(200);
          await res.json();
          return flagCount();
        },
        { timeout: 20_000, interval: 500 },
      )
      .toBeGreaterThan(0);
    const safe = await ask("What is the capital of France?");
    expect(safe.status).toBe(200);
    await safe.json();

    // `block`: the same prompt is refused with OpenAI's content_policy_violation, and counted as blocked.
    await admin.getByLabel("Mode").selectOption("block");
    await Promise.all([admin.waitForEvent("load"), admin.getByRole("button", { name: "Save" }).click()]);
    let refusal: { error?: { code?: string } } = {};
    await expect
      .poll(
        async () => {
          const res = await ask(unsafe);
          refusal = (await res.json()) as typeof refusal;
          return res.status;
        },
        { timeout: 20_000, interval: 500 },
      )
      .toBe(400);
    expect(refusal.error?.code).toBe("content_policy_violation");
    // Up to the threshold npm start runs with (GUARD_SUSPEND_THRESHOLD, 10 flags in 24 hours).
    while ((await flagCount()) < 10) {
      const res = await ask(unsafe);
      expect(res.status).toBe(400);
      await res.json();
      await new Promise((r) => setTimeout(r, 100));
    }

    // A reviewer sees the organization in the queue with its counts, categories and the proposal,
    // but confirming it needs the approver role.
    const reviewer = await signIn("mia@example.com", "reviewer");
    await reviewer.getByRole("navigation", { name: "Console" }).getByRole("link", { name: "Flags" }).click();
    const row = reviewer.locator("table tbody tr", { hasText: "Acme Robotics" });
    await row.waitFor();
    const cells = await row.locator("td").allTextContents();
    expect(Number(cells[1]?.replace(/,/g, ""))).toBeGreaterThanOrEqual(10);
    expect(Number(cells[3]?.replace(/,/g, ""))).toBeGreaterThanOrEqual(1);
    expect(cells[4]).toMatch(/^S1 ×\d+$/);
    expect(cells[6]).toBe("suspend");
    await reviewer.getByText(/Acme Robotics: confirming a suspension needs the approver role/).waitFor();
    await expect(reviewer.getByRole("button", { name: "Suspend grant" }).count()).resolves.toBe(0);
    await expectAccessible(reviewer, "flags queue");
    await reviewer.getByRole("link", { name: "Acme Robotics" }).click();
    const flags = reviewer.locator("section", { hasText: `Organization ${organizationId}` }).locator("table tbody tr");
    await expect.poll(() => flags.count()).toBeGreaterThanOrEqual(10);
    const texts = await flags.allTextContents();
    expect(texts.some((t) => /prompt.*blocked.*S1.*llama-2-7b-chat.*user: How do I do/s.test(t))).toBe(true);
    expect(texts.some((t) => /prompt.*logged.*S1/s.test(t))).toBe(true);
    // The safe prompt left no flag.
    expect(texts.some((t) => t.includes("capital of France"))).toBe(false);
    // Only admins change the mode.
    await reviewer.getByText(/Mode block \(set by an admin\).*Changing it needs the admin role/).waitFor();
    await expect(reviewer.getByRole("button", { name: "Save" }).count()).resolves.toBe(0);
    await expectAccessible(reviewer, "an organization's flags");
    await reviewer.screenshot({ path: join(ARTIFACTS, "guard-flags.png"), fullPage: true });

    // An approver confirms the proposal: the grant is suspended and the token stops working.
    const approver = await signIn("noor@example.com", "approver");
    await approver.goto(`${gateway.baseUrl}/admin/guard`);
    await approver.getByRole("heading", { name: "Proposed suspensions" }).waitFor();
    approver.once("dialog", (dialog) => void dialog.accept());
    await Promise.all([approver.waitForEvent("load"), approver.getByRole("button", { name: "Suspend grant" }).click()]);
    await approver.getByText("Acme Robotics: no active grant left.").waitFor();
    await expect.poll(async () => (await ask("Hello")).status, { timeout: 15_000, interval: 500 }).toBe(403);
    await approver.goto(`${gateway.baseUrl}/admin/audit`);
    await expect(approver.locator("main").textContent()).resolves.toMatch(/grant\.suspended.*organization\.guard_set/s);
  });
});
