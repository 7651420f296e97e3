import Stripe from "stripe";
import type { BillingConfig } from "../config";

const clients = new WeakMap<BillingConfig, Stripe>();

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
      timeout: 15_000,
      telemetry: false,
      ...(config.api ?? {}),
    });
    clients.set(config, client);
  }
  return client;
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
