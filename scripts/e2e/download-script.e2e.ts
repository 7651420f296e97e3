/**
 * `download.sh` end to end: the script the gateway writes, run by `sh` with the machine's curl and
 * sha256sum against the gateway as `npm start` runs it (synthetic weights, demo token). It must
 * download and verify everything, resume an interrupted file with a range request, fetch a
 * corrupted file again, and fail loudly when a file cannot be verified.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type GatewayProcess, startGateway } from "../lib/gateway-process";
import type { DemoToken } from "../seed/demo-token";
import { type ChildOutput, outputOf } from "./child-output";

const MODEL = "llama-2-7b";
const SHARD = "model-00001-of-00002.safetensors";
const SCRIPT_TIMEOUT_MS = 30_000;

interface ManifestFile {
  path: string;
  size: number;
  sha256: string;
}

let gateway: GatewayProcess;
let token: string;
let work: string;
let dest: string;
let files: ManifestFile[];

beforeAll(async () => {
  gateway = await startGateway();
  try {
    await gateway.ready(110_000);
  } catch (error) {
    await gateway.stop();
    throw new Error(`${(error as Error).message}\n${gateway.output()}`);
  }
  const demo = JSON.parse(readFileSync(join(gateway.dir, "demo.json"), "utf8")) as { demoToken?: DemoToken };
  if (!demo.demoToken) throw new Error("npm start recorded no demo token");
  token = demo.demoToken.token;
  work = mkdtempSync(join(tmpdir(), "modelgate-download-sh-"));
  dest = join(work, MODEL);
  const manifest = await fetch(`${gateway.baseUrl}/v1/models/${MODEL}/manifest`, {
    headers: { authorization: `Bearer ${token}` },
  });
  files = ((await manifest.json()) as { files: ManifestFile[] }).files;
});

afterAll(async () => {
  await gateway?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A fresh script from the gateway (fresh links each time, as a user would fetch it). */
async function fetchScript(): Promise<string> {
  const res = await fetch(`${gateway.baseUrl}/v1/models/${MODEL}/download.sh`, {
    headers: { authorization: `Bearer ${token}` },
  });
  expect(res.status).toBe(200);
  return res.text();
}

/** Runs a script with `sh` into `dest`; resolves with its exit code and output. */
function runScript(script: string): Promise<ChildOutput> {
  const path = join(work, "download.sh");
  writeFileSync(path, script);
  return outputOf(spawn("sh", [path, dest], { stdio: ["ignore", "pipe", "pipe"], timeout: SCRIPT_TIMEOUT_MS }));
}

function sha256Of(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

function expectAllVerified(): void {
  for (const file of files) expect(sha256Of(join(dest, file.path)), file.path).toBe(file.sha256);
}

/**
 * The gateway's `download_events` rows for a path, read from its D1 database file (SQLite, WAL)
 * while it runs: the event is written after the response finishes streaming, so poll briefly.
 */
async function downloadEvents(path: string, atLeast: number) {
  const dir = join(gateway.dir, "state", "v3", "d1", "miniflare-D1DatabaseObject");
  const file = readdirSync(dir).find((f) => f.endsWith(".sqlite") && f !== "metadata.sqlite");
  if (!file) throw new Error(`no D1 database under ${dir}`);
  type Row = { status: number; range_start: number | null; bytes_served: number; complete: number };
  let rows: Row[] = [];
  for (let attempt = 0; attempt < 50 && rows.length < atLeast; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 100));
    const db = new DatabaseSync(join(dir, file), { readOnly: true });
    try {
      rows = db
        .prepare(
          "SELECT status, range_start, bytes_served, complete FROM download_events WHERE path = ? ORDER BY at, id",
        )
        .all(path) as Row[];
    } finally {
      db.close();
    }
  }
  return rows;
}

describe("download.sh", () => {
  it("downloads every file of the revision and verifies each sha256", async () => {
    expect(files.length).toBeGreaterThan(5);
    const run = await runScript(await fetchScript());
    expect(run.stderr).toBe("");
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`all ${files.length} files verified`);
    expectAllVerified();
  });

  it("resumes an interrupted file with a range request from where it stopped", async () => {
    const shard = files.find((f) => f.path === SHARD) as ManifestFile;
    const half = Math.floor(shard.size / 2);
    truncateSync(join(dest, SHARD), half);

    const run = await runScript(await fetchScript());
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`downloading ${SHARD}`);
    expect(run.stdout.match(/^downloading /gm)).toHaveLength(1);
    expectAllVerified();

    const events = await downloadEvents(SHARD, 2);
    expect(events[0]).toMatchObject({ status: 200, range_start: null, bytes_served: shard.size });
    expect(events.at(-1)).toMatchObject({
      status: 206,
      range_start: half,
      bytes_served: shard.size - half,
      complete: 1,
    });
  });

  it("downloads a corrupted file again and verifies it", async () => {
    const shard = join(dest, SHARD);
    const bytes = readFileSync(shard);
    bytes[1000] = (bytes[1000] as number) ^ 0xff;
    writeFileSync(shard, bytes);

    const run = await runScript(await fetchScript());
    expect(run.stderr).toContain(`${SHARD} does not match its sha256; downloading it again`);
    expect(run.code).toBe(0);
    expectAllVerified();
  });

  it("exits non-zero with CHECKSUM MISMATCH when a file does not verify", async () => {
    const shard = files.find((f) => f.path === SHARD) as ManifestFile;
    const wrong = "0".repeat(64);
    const script = await fetchScript();
    expect(script).toContain(shard.sha256);
    const run = await runScript(script.replace(shard.sha256, wrong));
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`CHECKSUM MISMATCH for ${SHARD}`);
    expect(run.stderr).toContain(`these files failed verification: ${SHARD}`);
  });
});
