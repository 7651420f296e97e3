import { defineConfig } from "vitest/config";

// End-to-end checks in Node (not inside workerd): the real gateway started the way `npm start`
// does, on a free port with throwaway state, driven with real tools (sh, curl); and the operator
// commands that reach production, run against local stand-ins for Cloudflare's APIs.
// Also modules of the gateway in workerd's own request contexts, which the test pool (one context
// for a whole test) cannot show.
// One file at a time: a file may run a whole gateway.
export default defineConfig({
  test: {
    include: ["scripts/e2e/**/*.e2e.ts"],
    environment: "node",
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
