/**
 * The applicant's journey in a real browser, against the gateway started as `npm start` starts
 * it: apply → confirm the address from the mail → approved → invite a developer → the developer
 * accepts, signs in with a mailed link and mints a token for one model → the token is refused on
 * another model over real HTTP → its usage shows under that member in the portal and its CSV.
 * Mail is read as an operator reads it, through `GET /admin/api/mail`.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { GatewayProcess } from "../../scripts/lib/gateway-process";
import { ARTIFACTS, BrowserHarness, expectAccessible, expectNoSidewaysScroll, useLink } from "./harness";

let harness: BrowserHarness;
let gateway: GatewayProcess;

beforeAll(async () => {
  harness = await BrowserHarness.start();
  gateway = harness.gateway;
});

afterAll(async () => {
  await harness?.stop();
});

const mailedLink = (to: string, path: string): Promise<string> => harness.mailedLink(to, path);

describe("the applicant's portal in Chromium", () => {
  const run = Date.now().toString(36);
  const domain = `quillon-${run}.example`;
  const ownerEmail = `pat@${domain}`;
  const developerEmail = `dev@${domain}`;
  const organizationName = `Quillon Analytics ${run}`;

  it("apply, confirm, invite, sign in, mint a one-model token, call, and find the usage under the member", async () => {
    // The applicant applies; nothing is decided until the address is confirmed.
    const owner = await harness.newPage();
    await owner.goto(`${gateway.baseUrl}/apply/llama-2`);
    await owner.getByLabel("Legal name").fill(organizationName);
    await owner.getByLabel("Country of incorporation").selectOption("DE");
    await owner.getByLabel("Your name").fill("Pat Applicant");
    await owner.getByLabel("Work e-mail").fill(ownerEmail);
    await owner.getByLabel("Intended use").fill("Summarising our support tickets for our own agents.");
    await owner.getByLabel(/Monthly active users in June 2023/).fill("20000");
    await owner.getByLabel(/I accept the LLAMA 2 Community License/).check();
    await owner.getByLabel("I accept the Acceptable Use Policy.").check();
    await owner.getByRole("button", { name: "Submit application" }).click();
    await owner.getByRole("heading", { name: "Check your e-mail" }).waitFor();

    // The confirmation link from the mail: its page says what confirming accepts, for which
    // organization; accepting it is approved, and signs the owner in.
    const confirmLink = await mailedLink(ownerEmail, "/applications/confirm");
    await owner.goto(confirmLink);
    await owner.getByText(`${organizationName}, a new organization you will own`).waitFor();
    await owner.getByRole("link", { name: "text" }).first().waitFor();
    await expectAccessible(owner, "confirmation page");
    await useLink(owner, confirmLink, "Accept the license and confirm", /\/applications\/app_/);
    await expect(owner.locator(".status").first().textContent()).resolves.toMatch(/approved/i);

    await owner.goto(`${gateway.baseUrl}/account`);
    await owner.getByRole("heading", { name: organizationName }).waitFor();
    await expect(owner.locator("#members").textContent()).resolves.toContain(ownerEmail);
    await expect(owner.locator("#grants").textContent()).resolves.toContain("llama-2-13b-chat");
    await expectAccessible(owner, "portal, owner");

    // The owner invites a developer; the page reloads with the invitation pending.
    await owner.getByLabel("Invite by e-mail").fill(developerEmail);
    await owner.getByLabel("Role").selectOption("developer");
    await owner.getByRole("button", { name: "Send invitation" }).click();
    await expect.poll(() => owner.locator("#invitations").textContent(), { timeout: 10_000 }).toContain(developerEmail);

    // The developer accepts in their own browser, then later signs in with a mailed link.
    const invited = await harness.newPage();
    await useLink(invited, await mailedLink(developerEmail, "/invitations/accept"), "Accept", /\/account/);
    await invited.getByRole("heading", { name: organizationName }).waitFor();

    const developer = await harness.newPage(375, 800);
    await developer.goto(`${gateway.baseUrl}/account`);
    await developer.getByLabel("Work e-mail").fill(developerEmail);
    await developer.getByRole("button", { name: "Mail me a sign-in link" }).click();
    await developer.getByRole("heading", { name: "Check your mail" }).waitFor();
    await useLink(developer, await mailedLink(developerEmail, "/auth/sign-in"), "Sign in", /\/account/);
    await developer.getByRole("heading", { name: organizationName }).waitFor();
    await expect(developer.locator("main").textContent()).resolves.toContain(
      `Signed in as ${developerEmail}, developer`,
    );
    // A developer sees no invitations and cannot invite.
    await expect(developer.getByLabel("Invite by e-mail").count()).resolves.toBe(0);

    // A token for one model of the grant; its secret is shown once.
    await developer.getByLabel("Name", { exact: true }).fill("notebook");
    await developer.getByLabel("llama-2-7b-chat", { exact: true }).check();
    await developer.getByRole("button", { name: "Create token" }).click();
    const secretBox = developer.locator("#new-token-value");
    await expect.poll(() => secretBox.textContent(), { timeout: 10_000 }).toMatch(/^mg_/);
    const secret = (await secretBox.textContent()) ?? "";
    await expect(developer.locator("#token-list").textContent()).resolves.toContain("notebook");
    await expectAccessible(developer, "portal, developer, phone width");
    await expectNoSidewaysScroll(developer, "portal, developer, phone width");

    // Real HTTP calls with the token: refused on another model, served on its own.
    const chat = (model: string) =>
      fetch(`${gateway.baseUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "Hello" }], max_tokens: 8 }),
      });
    const refused = await chat("llama-2-13b-chat");
    expect(refused.status).toBe(403);
    await refused.text();
    const served = await chat("llama-2-7b-chat");
    expect(served.status).toBe(200);
    const { usage } = (await served.json()) as { usage: { total_tokens: number } };
    expect(usage.total_tokens).toBeGreaterThan(0);

    // The call reaches the ledger with the quota object's next batch; then it shows under the member.
    await expect
      .poll(
        async () => {
          const res = await fetch(`${gateway.baseUrl}/v1/usage?groupBy=member`, {
            headers: { authorization: `Bearer ${secret}` },
          });
          const body = (await res.json()) as { groups: { label: string; totalTokens: number }[] };
          return body.groups.find((g) => g.label === developerEmail)?.totalTokens ?? 0;
        },
        { timeout: 10_000, interval: 200 },
      )
      .toBe(usage.total_tokens);

    await owner.goto(`${gateway.baseUrl}/account?usage=member`);
    const row = owner.locator("#usage-groups tbody tr", { hasText: developerEmail });
    await expect(row.locator("td").last().textContent()).resolves.toBe(usage.total_tokens.toLocaleString("en-US"));
    await expect(owner.locator("#token-list").textContent()).resolves.toContain(developerEmail);
    await owner.screenshot({ path: join(ARTIFACTS, "portal.png"), fullPage: true });

    const [download] = await Promise.all([
      owner.waitForEvent("download"),
      owner.getByRole("link", { name: "by member" }).click(),
    ]);
    const csv = readFileSync(await download.path(), "utf8");
    const lines = csv.split("\r\n");
    expect(lines[0]).toBe("day,member,member_id,requests,prompt_tokens,completion_tokens,total_tokens");
    const memberLine = lines.find((line) => line.split(",")[1] === developerEmail);
    expect(memberLine?.split(",")[3]).toBe("1");
    expect(memberLine?.split(",")[6]).toBe(String(usage.total_tokens));

    // The licensor publishes a new license version that existing grants must accept by a deadline.
    const loaded = await harness.adminFetch("/admin/api/licenses/llama-2/versions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        license: `LLAMA 2 COMMUNITY LICENSE AGREEMENT\nRevised ${run}: a clause the licensor added.\n`,
        aup: `Llama 2 Acceptable Use Policy\nRevised ${run}.\n`,
        reacceptBy: "2099-01-31",
      }),
    });
    expect(loaded.status).toBe(200);
    const { version } = (await loaded.json()) as { version: number; grantsToReaccept: number };

    // The owner is told on the portal, sees what changed, and accepts it for the organization.
    await owner.goto(`${gateway.baseUrl}/account`);
    await owner.locator("#license-changes").getByRole("link", { name: "See what changed" }).click();
    await owner.getByRole("heading", { name: `llama-2: version ${version} replaces version ${version - 1}` }).waitFor();
    await expect(owner.locator("pre.diff").first().textContent()).resolves.toContain(
      `+ Revised ${run}: a clause the licensor added.`,
    );
    await expectAccessible(owner, "license change, owner");
    await owner.screenshot({ path: join(ARTIFACTS, "license-change.png"), fullPage: true });
    await owner.getByLabel(`I accept version ${version} of the license`, { exact: false }).check();
    await owner.getByRole("button", { name: `Accept version ${version}` }).click();
    await owner.getByText("Your organization has accepted every current license version.").waitFor();
    await owner.goto(`${gateway.baseUrl}/account`);
    await expect(owner.locator("#license-changes").count()).resolves.toBe(0);

    // A developer of the organization sees the change but may not accept it.
    await developer.goto(`${gateway.baseUrl}/account/license`);
    await expect(developer.getByRole("button", { name: /Accept version/ }).count()).resolves.toBe(0);
  });
});
