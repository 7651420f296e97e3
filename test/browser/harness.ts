/**
 * What every browser test file needs: the gateway started exactly as `npm start` starts it (with
 * the file's own flags), the Chromium the global setup found (`CHROMIUM_PATH`) driven by
 * playwright-core, a context (cookie jar) per person, the local sign-in, and the checks every page
 * must pass (axe-core, no sideways scrolling).
 */
import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { expect } from "vitest";
import { CHROMIUM_PATH_VAR } from "../../scripts/lib/chromium";
import { type AdminRoleName, mintDevAccessToken } from "../../scripts/lib/dev-access-token";
import { type GatewayProcess, startGateway } from "../../scripts/lib/gateway-process";
import { ROOT } from "../../scripts/lib/local-state";

const require = createRequire(import.meta.url);
const AXE_PATH = require.resolve("axe-core");
/** Where screenshots go. */
export const ARTIFACTS = join(ROOT, "test-artifacts");
/** A second site for cross-site requests: Chromium resolves it to the gateway's own address. */
export const EVIL_HOST = "evil.test";

/** A running gateway and browser; `stop()` takes both down. */
export class BrowserHarness {
  private readonly contexts: BrowserContext[] = [];

  private constructor(
    readonly gateway: GatewayProcess,
    private readonly browser: Browser,
  ) {}

  /** Starts `npm start -- …gatewayArgs` on throwaway state, then Chromium. */
  static async start(gatewayArgs: string[] = []): Promise<BrowserHarness> {
    mkdirSync(ARTIFACTS, { recursive: true });
    const executablePath = process.env[CHROMIUM_PATH_VAR];
    if (!executablePath)
      throw new Error(`${CHROMIUM_PATH_VAR} is not set: run the browser tests with npm run test:browser`);
    const gateway = await startGateway(gatewayArgs);
    try {
      await gateway.ready(90_000);
      return new BrowserHarness(gateway, await launchChromium(executablePath));
    } catch (error) {
      // Nobody else holds the gateway yet: a failed start must not leave it running.
      console.error(gateway.output());
      await gateway.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    try {
      for (const context of this.contexts) await context.close().catch(() => undefined);
      await this.browser.close();
    } finally {
      await this.gateway.stop();
    }
  }

  async newPage(width = 1280, height = 900): Promise<Page> {
    // bypassCSP only so that the tests can inject axe-core; the pages' own policy stays in force otherwise.
    const context = await this.browser.newContext({ viewport: { width, height }, bypassCSP: true });
    this.contexts.push(context);
    return context.newPage();
  }

  /** The newest link to `path` mailed to `to`, as an operator finds it in the outbox (`/admin/api/mail`). */
  async mailedLink(to: string, path: string): Promise<string> {
    const { token } = await mintDevAccessToken(ROOT, { email: "ops@example.com", role: "admin", ttlSeconds: 600 });
    const base = this.gateway.baseUrl;
    const pattern = new RegExp(`${base.replace(/[.]/g, "\\.")}${path}\\?token=[A-Za-z0-9_-]+`);
    let link = "";
    await expect
      .poll(
        async () => {
          const res = await fetch(`${base}/admin/api/mail?to=${encodeURIComponent(to)}`, {
            headers: { "cf-access-jwt-assertion": token },
          });
          if (!res.ok) throw new Error(`mail list: ${res.status} ${await res.text()}`);
          const { messages } = (await res.json()) as { messages: { text: string }[] };
          link = messages.map((m) => pattern.exec(m.text)?.[0]).find((found) => found !== undefined) ?? "";
          return link;
        },
        { timeout: 15_000, interval: 200 },
      )
      .not.toBe("");
    return link;
  }

  /** Calls the admin API as an operator with the admin role would, from this site. */
  async adminFetch(path: string, init: RequestInit = {}): Promise<Response> {
    const { token } = await mintDevAccessToken(ROOT, { email: "ops@example.com", role: "admin", ttlSeconds: 600 });
    return fetch(`${this.gateway.baseUrl}${path}`, {
      ...init,
      headers: { "cf-access-jwt-assertion": token, origin: this.gateway.baseUrl, ...init.headers },
    });
  }

  /** Signs a reviewer in through the local sign-in page, as the README tells a developer to. */
  async signIn(email: string, role: AdminRoleName, width?: number): Promise<Page> {
    const page = await this.newPage(width);
    const res = await page.goto(`${this.gateway.baseUrl}/admin`);
    expect(res?.status()).toBe(401);
    await page.getByRole("link", { name: "Sign in with a local token" }).click();
    const { token } = await mintDevAccessToken(ROOT, { email, role, ttlSeconds: 3600 });
    await page.getByLabel("Access token (JWT)").fill(token);
    await Promise.all([
      page.waitForURL(`${this.gateway.baseUrl}/admin`),
      page.getByRole("button", { name: "Sign in" }).click(),
    ]);
    await page.getByRole("heading", { name: "Review queue" }).waitFor();
    return page;
  }
}

/**
 * Launches Chromium headless. launch() gives every run a fresh temporary profile (its own
 * --user-data-dir), and each newContext() is a separate cookie jar: one per person in a story.
 */
function launchChromium(executablePath: string): Promise<Browser> {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--host-resolver-rules=MAP ${EVIL_HOST} 127.0.0.1`,
    ],
  });
}

/** Opens a mailed single-use link and presses its button; resolves once the browser landed. */
export async function useLink(page: Page, link: string, button: string, landing: RegExp): Promise<void> {
  await page.goto(link);
  await page.getByRole("button", { name: button }).click();
  await page.waitForURL(landing, { timeout: 15_000 }).catch(async (error: unknown) => {
    // Say what the page said instead, which is what went wrong.
    throw new Error(`${String(error)}\n${page.url()}: ${(await page.content()).slice(0, 2000)}`);
  });
}

/** Runs axe-core in the page and fails on serious or critical violations. */
export async function expectAccessible(page: Page, label: string): Promise<void> {
  await page.addScriptTag({ path: AXE_PATH });
  const violations = await page.evaluate(async () => {
    const axe = (
      globalThis as unknown as {
        axe: { run(): Promise<{ violations: { id: string; impact: string; nodes: { target: string[] }[] }[] }> };
      }
    ).axe;
    const result = await axe.run();
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      targets: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
    }));
  });
  const serious = violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(serious, `${label}: ${JSON.stringify(serious, null, 2)}`).toEqual([]);
}

/** Nothing on the page is wider than the viewport (no sideways scrolling at phone width). */
export async function expectNoSidewaysScroll(page: Page, label: string): Promise<void> {
  const overflow = await page.evaluate(() => {
    const doc = (
      globalThis as unknown as { document: { documentElement: { scrollWidth: number; clientWidth: number } } }
    ).document;
    return doc.documentElement.scrollWidth - doc.documentElement.clientWidth;
  });
  expect(overflow, `${label} scrolls sideways by ${overflow}px`).toBeLessThanOrEqual(0);
}
