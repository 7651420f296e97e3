/**
 * Vitest global setup, run in Node before any workerd test: three inference-backend simulators
 * on free loopback ports, so tests can route a model across several backends and make one of
 * them misbehave, and the Stripe stand-in the billing tests point the real `stripe` SDK at. Their URLs reach the workers as the `TEST_BACKEND_URLS` binding (see
 * vitest.config.ts); the simulators stop when the run ends.
 */
import type { TestProject } from "vitest/node";
import { type BackendSimulator, startBackendSimulator } from "../scripts/backend-sim";
import { startStripeStandin } from "../scripts/stripe-standin";
import { llama2 } from "../worker/policy/families/llama-2";

declare module "vitest" {
  interface ProvidedContext {
    /** Base URLs of the backend simulators, e.g. `http://127.0.0.1:40123`. */
    backendUrls: string[];
    /** Base URL of the Stripe stand-in. */
    stripeUrl: string;
  }
}

/** How many simulators the tests get: enough for a pool with failover past one bad backend. */
export const BACKEND_COUNT = 3;

export default async function startTestBackends(project: TestProject): Promise<() => Promise<void>> {
  const models = llama2.models.map((model) => model.id);
  const simulators: BackendSimulator[] = [];
  try {
    for (let i = 0; i < BACKEND_COUNT; i++) {
      simulators.push(await startBackendSimulator({ host: "127.0.0.1", models, tokenLatencyMs: 0, name: `sim-${i}` }));
    }
  } catch (error) {
    await Promise.all(simulators.map((sim) => sim.close()));
    throw error;
  }
  project.provide(
    "backendUrls",
    simulators.map((sim) => sim.url),
  );
  const stripe = await startStripeStandin();
  project.provide("stripeUrl", stripe.url);
  return async () => {
    await Promise.all([...simulators.map((sim) => sim.close()), stripe.close()]);
  };
}
