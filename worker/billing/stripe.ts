import Stripe from "stripe";
import type { BillingConfig } from "../config";
import { CircuitBreaker } from "./breaker";

/**
 * How long one Stripe call may take. Short: a hanging Stripe must cost a batch seconds, not
 * minutes, and a call that timed out after Stripe took it is harmless to repeat (idempotency keys,
 * meter-event identifiers). Stripe answers a meter event in well under a second.
 */
export const STRIPE_TIMEOUT_MS = 5_000;

const clients = new WeakMap<BillingConfig, Stripe>();
const breakers = new WeakMap<BillingConfig, CircuitBreaker>();

/**
 * The Stripe client for this deployment, or undefined when billing is off. Uses `fetch` (the
 * Workers runtime has no Node HTTP stack) and never retries by itself: the usage queue and the
 * reconciler own retries, with idempotency keys so a retry never bills twice.
 */
export function stripeClient(config: BillingConfig): Stripe | undefined {
  if (!config.secretKey) return undefined;
  let client = clients.get(config);
  if (!client) {
    client = new Stripe(config.secretKey, {
      httpClient: Stripe.createFetchHttpClient(),
      maxNetworkRetries: 0,
      timeout: STRIPE_TIMEOUT_MS,
      telemetry: false,
      ...(config.api ?? {}),
    });
    clients.set(config, client);
  }
  return client;
}

/** This isolate's circuit breaker in front of the deployment's Stripe account. */
export function stripeBreaker(config: BillingConfig): CircuitBreaker {
  let breaker = breakers.get(config);
  if (!breaker) {
    breaker = new CircuitBreaker();
    breakers.set(config, breaker);
  }
  return breaker;
}

/**
 * Whether an error says Stripe itself is failing (no answer in time, no connection, a 5xx, a 429)
 * rather than refusing one request: what trips the circuit breaker.
 */
export function isStripeUnavailable(error: unknown): boolean {
  if (error instanceof Stripe.errors.StripeConnectionError) return true;
  if (!(error instanceof Stripe.errors.StripeError)) return false;
  const status = error.statusCode ?? 0;
  return status >= 500 || status === 429;
}

/** Verifies webhooks with WebCrypto (`constructEventAsync`), as the Workers runtime requires. */
export const webhookCrypto = Stripe.createSubtleCryptoProvider();

/** Whether a Stripe error says the meter event is already recorded (a duplicate `identifier`). */
export function isAlreadyRecorded(error: unknown): boolean {
  const e = error as { code?: string; raw?: { code?: string }; message?: string };
  return e?.code === "resource_already_exists" || e?.raw?.code === "resource_already_exists";
}

/** Whether Stripe refused the event for being older than it accepts. */
export function isTooOld(error: unknown): boolean {
  const e = error as { code?: string; raw?: { code?: string } };
  return e?.code === "timestamp_out_of_range" || e?.raw?.code === "timestamp_out_of_range";
}
