import { defineConfig } from "vitest/config";

// End-to-end checks in Node (not inside workerd): each file starts the real gateway the way
// `npm start` does, on a free port with throwaway state, and drives it with real tools (sh, curl).
// One file at a time: each runs a whole gateway.
export default defineConfig({
  test: {
    include: ["scripts/e2e/**/*.e2e.ts"],
    environment: "node",
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
