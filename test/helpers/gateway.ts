import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { type AppOptions, newApp } from "../../worker/app";
import { createDatabase } from "../../worker/db/client";
import { loadLicenseVersion } from "../../worker/licenses/store";
import { memoryMailer } from "../../worker/mail/mailer";
import { createServices } from "../../worker/services";

/**
 * The gateway as tests drive it: the real app over the real bindings, with a recording mailer,
 * and every `waitUntil` awaited before a request returns so no work leaks into the next test.
 */
export function testGateway(options: AppOptions = {}) {
  const mailer = memoryMailer();
  const appOptions: AppOptions = { mailer: () => mailer, ...options };
  const app = newApp(appOptions);
  async function request(path: string, init?: RequestInit): Promise<Response> {
    const ctx = createExecutionContext();
    const response = await app.request(`http://gw${path}`, init, env, ctx);
    // Read the body before awaiting the context: work deferred until a stream ends (download
    // events) would otherwise wait for a reader that never comes.
    const body = response.body ? await response.arrayBuffer() : null;
    await waitOnExecutionContext(ctx);
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  }
  return {
    app,
    mailer,
    request,
    /** Services as the app builds them, for calling service functions directly. */
    services: () => createServices(env, appOptions),
    db: createDatabase(env.DB),
  };
}

/** Loads a license version for llama-2 and returns its hashes. */
export async function seedLicense(
  text = "LLAMA 2 COMMUNITY LICENSE (test text)",
  aup = "ACCEPTABLE USE POLICY (test text)",
) {
  const { version } = await loadLicenseVersion(createServices(env), {
    family: "llama-2",
    license: text,
    aup,
    source: "placeholder",
  });
  return version;
}

/** JSON request options. */
export function json(body: unknown, headers: Record<string, string> = {}): RequestInit {
  return { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) };
}
