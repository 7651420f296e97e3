import { defineConfig } from "vitest/config";

// Browser tests run in Node (not inside workerd): they start the real gateway the way `npm start`
// does and drive Debian's Chromium with playwright-core. One file at a time: each starts its own
// gateway and browser, and the machine's CPU is better spent on one than on contention.
export default defineConfig({
  test: {
    include: ["test/browser/**/*.test.ts"],
    environment: "node",
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 150_000,
  },
});
