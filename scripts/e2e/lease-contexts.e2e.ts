/**
 * `QuotaLeases` in the runtime's own request contexts (workerd, through Miniflare): a request
 * waits for its ledger row to be stored only on promises and timers of its own, so its answer does
 * not depend on another request's context staying alive. Inside the test pool every call runs in
 * the one context of the test, where this cannot be seen.
 */
import { join } from "node:path";
import { build } from "esbuild";
import { convertV4MiniflareOptions, Miniflare } from "miniflare";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../lib/local-state";

let mf: Miniflare;
let origin: URL;

beforeAll(async () => {
  const bundle = await build({
    entryPoints: [join(ROOT, "scripts", "e2e", "fixtures", "leases-worker.ts")],
    bundle: true,
    format: "esm",
    platform: "browser",
    conditions: ["workerd", "worker", "browser"],
    write: false,
  });
  const script = bundle.outputFiles[0]?.text;
  if (!script) throw new Error("the leases Worker did not build");
  mf = new Miniflare(convertV4MiniflareOptions({ modules: true, script, compatibilityDate: "2026-07-30" }));
  origin = await mf.ready;
});

afterAll(async () => {
  await mf?.dispose();
});

describe("quota leases in request contexts of their own", () => {
  it("tell a request that its row is stored when another request opened the batch it is in and has answered", async () => {
    const sender = fetch(new URL("/sender", origin));
    const other = await fetch(new URL("/other", origin));
    expect(await other.text()).toBe("settled");
    const answer = await sender;
    expect(await answer.json()).toEqual({ first: "stored", second: "stored", commits: 2 });
  });
});
