import { createExecutionContext, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { type AppOptions, newApp } from "../../worker/app";
import { createDatabase } from "../../worker/db/client";
import { type LicenseTexts, type LicenseVersion, planLicenseVersion } from "../../worker/licenses/store";
import { memoryMailer } from "../../worker/mail/mailer";
import { createServices, type Services } from "../../worker/services";

/**
 * The gateway as tests drive it: the real app over the real bindings, with a recording mailer,
 * and every `waitUntil` awaited before a request returns so no work leaks into the next test.
 */
export function testGateway(options: AppOptions & { bindings?: Partial<Env>; origin?: string } = {}) {
  const mailer = memoryMailer();
  const { bindings, origin = "http://gw", ...rest } = options;
  const appOptions: AppOptions = { mailer: () => mailer, ...rest };
  const app = newApp(appOptions);
  // Bindings merged over the test environment: a new object, so configuration is read afresh.
  const gatewayEnv: Env = bindings ? { ...env, ...bindings } : env;
  async function request(path: string, init?: RequestInit): Promise<Response> {
    const ctx = createExecutionContext();
    const response = await app.request(`${origin}${path}`, init, gatewayEnv, ctx);
    // Read the body before awaiting the context: work deferred until a stream ends (download
    // events, usage metering) would otherwise wait for a reader that never comes.
    const chunks: Uint8Array[] = [];
    let failure: unknown;
    if (response.body) {
      const reader = response.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          chunks.push(value);
        }
      } catch (error) {
        failure = error;
      }
    }
    await waitOnExecutionContext(ctx);
    const init2 = { status: response.status, statusText: response.statusText, headers: response.headers };
    if (!response.body) return new Response(null, init2);
    // Replay what arrived; a body that broke off breaks off for the caller too, as on the network.
    return new Response(
      new ReadableStream<Uint8Array>({
        // Erroring a stream discards what is queued, so the error comes only after the last chunk was read.
        pull(controller) {
          const next = chunks.shift();
          if (next) controller.enqueue(next);
          else if (failure === undefined) controller.close();
          else controller.error(failure);
        },
      }),
      init2,
    );
  }
  return {
    app,
    mailer,
    request,
    /** Services as the app builds them, for calling service functions directly. */
    services: () => createServices(gatewayEnv, appOptions),
    env: gatewayEnv,
    db: createDatabase(env.DB),
  };
}

/**
 * Writes a license version's rows straight into D1, without the audit event a real load records
 * (`loadLicenseVersion`), so that a test's audit log holds only the events the test caused.
 */
export async function insertLicenseVersion(
  services: Pick<Services, "db" | "clock" | "ids">,
  texts: Omit<LicenseTexts, "actor">,
): Promise<LicenseVersion> {
  const plan = await planLicenseVersion(services, { ...texts, actor: "operator" });
  const [first, ...rest] = plan.statements;
  if (first) await services.db.batch([first, ...rest]);
  return plan.result.version;
}

/** Loads a license version for llama-2 and returns its hashes. */
export async function seedLicense(
  text = "LLAMA 2 COMMUNITY LICENSE (test text)",
  aup = "ACCEPTABLE USE POLICY (test text)",
) {
  return insertLicenseVersion(createServices(env), { family: "llama-2", license: text, aup, source: "placeholder" });
}

/** JSON request options. */
export function json(body: unknown, headers: Record<string, string> = {}): RequestInit {
  return { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) };
}
