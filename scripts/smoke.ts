/**
 * `npm run smoke`: the real thing, end to end, in Node. Runs `scripts/start.ts` (what `npm start`
 * runs) on a free port with its state in a fresh temporary directory, waits for its banner,
 * checks what a new developer would open first, then stops it with SIGTERM and checks that the
 * whole process tree is gone. Fails non-zero on any error; gives up after 90 seconds.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exitWithin, freePort, portAnswers, START_BANNER } from "./lib/gateway-process";
import { ROOT, wranglerEnv } from "./lib/local-state";
import type { DemoCase } from "./seed/demo";
import type { DemoToken } from "./seed/demo-token";
import { placeholderLlama2Texts, sha256OfText } from "./seed/license";

const DEADLINE_MS = 90_000;
const STOP_GRACE_MS = 10_000;

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

async function get(baseUrl: string, path: string): Promise<Response> {
  const res = await fetch(new URL(path, baseUrl), { redirect: "manual", signal: AbortSignal.timeout(10_000) });
  console.log(`  ${res.status} GET ${path.length > 70 ? `${path.slice(0, 70)}…` : path}`);
  return res;
}

async function checkGateway(baseUrl: string, demoPath: string): Promise<void> {
  const health = await get(baseUrl, "/health");
  check(health.status === 200, `/health answered ${health.status}`);
  check(((await health.json()) as { ok?: boolean }).ok === true, "/health is not ok");

  const texts = placeholderLlama2Texts();
  const license = await get(baseUrl, "/v1/licenses/llama-2");
  check(license.status === 200, `/v1/licenses/llama-2 answered ${license.status}`);
  const body = (await license.json()) as { placeholderText?: boolean; licenseSha256?: string; aupSha256?: string };
  check(body.placeholderText === true, "the seeded license is not marked as placeholder text");
  check(body.licenseSha256 === sha256OfText(texts.license), "the license hash is not that of the placeholder text");
  check(body.aupSha256 === sha256OfText(texts.aup), "the AUP hash is not that of the placeholder text");
  const text = await get(baseUrl, "/v1/licenses/llama-2/text");
  check((await text.text()) === texts.license, "/v1/licenses/llama-2/text is not the seeded text");

  const apply = await get(baseUrl, "/apply/llama-2");
  check(apply.status === 200, `/apply/llama-2 answered ${apply.status}`);
  check(apply.headers.get("content-type")?.startsWith("text/html"), "/apply/llama-2 is not HTML");
  await apply.body?.cancel();

  const docs = await get(baseUrl, "/docs");
  check(docs.status === 200, `/docs answered ${docs.status}`);
  check((await docs.text()).includes("/v1/licenses/{family}"), "/docs does not list /v1/licenses/{family}");
  const openapi = await get(baseUrl, "/openapi.json");
  check(((await openapi.json()) as { openapi?: string }).openapi === "3.1.0", "/openapi.json is not OpenAPI 3.1.0");

  // npm start gives the gateway a dev key for download links; its public half is published.
  const jwks = await get(baseUrl, "/.well-known/jwks.json");
  check(jwks.status === 200, `/.well-known/jwks.json answered ${jwks.status}`);
  const { keys } = (await jwks.json()) as { keys?: { crv?: string; d?: unknown }[] };
  check(keys?.length && keys.every((k) => k.crv === "Ed25519" && k.d === undefined), "no public Ed25519 download key");

  check(existsSync(demoPath), `no demo file at ${demoPath}`);
  const { cases } = JSON.parse(readFileSync(demoPath, "utf8")) as { cases: DemoCase[] };
  const statuses = cases.map((c) => c.status);
  check(
    JSON.stringify(statuses) === JSON.stringify(["approved", "pending_review", "pending_review"]),
    `demo applications have statuses ${statuses.join(", ")}`,
  );
  for (const demoCase of cases) {
    const page = await get(baseUrl, new URL(demoCase.statusUrl).pathname + new URL(demoCase.statusUrl).search);
    check(page.status === 200, `the status page of ${demoCase.label} answered ${page.status}`);
    await page.body?.cancel();
  }
  await checkWeightsAndInference(baseUrl, demoPath);
}

/** The demo token pulls the seeded weights of llama-2-7b and calls a model through the simulator. */
async function checkWeightsAndInference(baseUrl: string, demoPath: string): Promise<void> {
  const { demoToken } = JSON.parse(readFileSync(demoPath, "utf8")) as { demoToken?: DemoToken };
  check(demoToken?.token, "npm start recorded no demo access token");
  const auth = { authorization: `Bearer ${demoToken.token}` };

  const res = await fetch(`${baseUrl}/v1/models/llama-2-7b/manifest`, {
    headers: auth,
    signal: AbortSignal.timeout(10_000),
  });
  console.log(`  ${res.status} GET /v1/models/llama-2-7b/manifest (demo token)`);
  check(res.status === 200, `the manifest of llama-2-7b answered ${res.status}`);
  const manifest = (await res.json()) as { files: { path: string; size: number; sha256: string; url: string }[] };
  const paths = manifest.files.map((f) => f.path);
  check(paths.includes("config.json") && paths.includes("model-00001-of-00002.safetensors"), `manifest lists ${paths}`);

  const shard = manifest.files.find((f) => f.path === "model-00001-of-00002.safetensors");
  check(shard, "no first safetensors shard");
  const download = await fetch(shard.url, { signal: AbortSignal.timeout(10_000) });
  const bytes = Buffer.from(await download.arrayBuffer());
  console.log(`  ${download.status} GET ${shard.path} (${bytes.byteLength} bytes)`);
  check(download.status === 200, `the download of ${shard.path} answered ${download.status}`);
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  check(bytes.byteLength === shard.size && sha256 === shard.sha256, `${shard.path} does not match its manifest entry`);

  const chat = await fetch(`${baseUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify({ model: "llama-2-7b-chat", messages: [{ role: "user", content: "Hello" }], max_tokens: 4 }),
    signal: AbortSignal.timeout(10_000),
  });
  console.log(`  ${chat.status} POST /v1/chat/completions (llama-2-7b-chat, simulator)`);
  check(chat.status === 200, `/v1/chat/completions answered ${chat.status}: ${await chat.clone().text()}`);
  const completion = (await chat.json()) as { choices?: { message?: { content?: string } }[]; usage?: unknown };
  check(completion.choices?.[0]?.message?.content === "tok0 tok1 tok2 tok3 ", "the completion is not the simulator's");
}

async function main(): Promise<void> {
  const started = Date.now();
  const dir = mkdtempSync(join(tmpdir(), "modelgate-smoke-"));
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  console.log(`smoke: starting the gateway on ${baseUrl}, state in ${dir}`);

  // `node --import tsx` rather than the tsx CLI: one process, so our SIGTERM reaches start.ts
  // itself. Its own process group, so that a last-resort kill can take the whole tree.
  const child = spawn(process.execPath, ["--import", "tsx", join("scripts", "start.ts")], {
    cwd: ROOT,
    env: wranglerEnv({ PORT: String(port), PERSIST_TO: join(dir, "state"), FORCE_COLOR: "0" }),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  let output = "";
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);

  // On failure: ask start.ts to stop (it stops wrangler's own process group), then force it.
  const stopAnyway = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    await exitWithin(child, STOP_GRACE_MS);
    try {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  };
  const deadline = setTimeout(() => {
    console.error(`smoke: FAILED: gave up after ${DEADLINE_MS / 1000} s\n--- npm start output ---\n${output}`);
    void stopAnyway().finally(() => process.exit(1));
  }, DEADLINE_MS);

  try {
    while (!output.includes(START_BANNER)) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`npm start exited (${child.exitCode ?? child.signalCode}) before its banner`);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    console.log(`smoke: banner after ${((Date.now() - started) / 1000).toFixed(1)} s`);
    await checkGateway(baseUrl, join(dir, "demo.json"));

    child.kill("SIGTERM");
    const code = await exitWithin(child, STOP_GRACE_MS);
    check(code === 0, `npm start did not stop cleanly on SIGTERM: ${code}`);
    check(!(await portAnswers(baseUrl)), "the server still answers after npm start exited");
    console.log(`smoke: ok in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (error) {
    console.error(`--- npm start output ---\n${output}\n---`);
    throw error;
  } finally {
    clearTimeout(deadline);
    await stopAnyway();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(`smoke: FAILED: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
