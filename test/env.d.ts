import type { D1Migration } from "cloudflare:test";

declare global {
  namespace Cloudflare {
    /** Test-only bindings, defined in vitest.config.ts. */
    interface Env {
      TEST_MIGRATIONS: D1Migration[];
      TEST_ACCESS_PRIVATE_JWK: string;
      /** JSON array of the backend simulators' base URLs (test/global-setup.ts). */
      TEST_BACKEND_URLS: string;
      /** Base URL of the Stripe stand-in (test/global-setup.ts). */
      TEST_STRIPE_URL: string;
    }
  }
}
