import { defineConfig } from "vitest/config";

// Browser tests run in Node (not inside workerd): they start the real gateway the way `npm start`
// does and drive the machine's Chromium with playwright-core. One file at a time: each starts its own
// gateway and browser, and the machine's CPU is better spent on one than on contention. The global
// setup finds (or installs) Chromium once and passes its path on as CHROMIUM_PATH.
export default defineConfig({
  test: {
    include: ["test/browser/**/*.test.ts"],
    globalSetup: ["test/browser/global-setup.ts"],
    environment: "node",
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 150_000,
  },
});
