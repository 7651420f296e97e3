/**
 * `download.sh` end to end: the script the gateway writes, run by `sh` with the machine's curl and
 * sha256sum against the gateway as `npm start` runs it (synthetic weights, demo token). It must
 * download and verify everything, resume an interrupted file with a range request, fetch a
 * corrupted file again, and fail loudly when a file cannot be verified.
 */
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DownloadRow } from "../../worker/usage/hours";
import { mintDevAccessToken } from "../lib/dev-access-token";
import { type GatewayProcess, startGateway } from "../lib/gateway-process";
import { ROOT } from "../lib/local-state";
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
/** The demo token's organization, whose usage the operator reads. */
let organizationId: string;
/** When the first run of the script began. */
let firstRunAt: number;

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
  const whoami = await fetch(`${gateway.baseUrl}/api/whoami-v2`, { headers: { authorization: `Bearer ${token}` } });
  const org = ((await whoami.json()) as { orgs: { id: string }[] }).orgs[0];
  if (!org) throw new Error("whoami-v2 named no organization for the demo token");
  organizationId = org.id;
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

/** Every hour (`YYYY-MM-DDTHH`, UTC) from `since` to now. */
function hoursSince(since: number): string[] {
  const hours: string[] = [];
  for (let at = since - (since % 3_600_000); at <= Date.now(); at += 3_600_000) {
    hours.push(new Date(at).toISOString().slice(0, 13));
  }
  return hours;
}

/**
 * The recorded downloads of a path since `since`, as an operator reads them: the admin API's
 * archive of the organization's hours (NDJSON, whether archived or still held by its quota
 * object). A download is recorded after its response finished streaming, and the object lists
 * it once it has folded it into its hour (within a second), so poll briefly.
 */
async function downloadRows(path: string, since: number, atLeast: number): Promise<DownloadRow[]> {
  const { token: adminToken } = await mintDevAccessToken(ROOT, {
    email: "ops@example.com",
    role: "admin",
    ttlSeconds: 600,
  });
  let rows: DownloadRow[] = [];
  for (let attempt = 0; attempt < 100 && rows.length < atLeast; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 100));
    rows = [];
    for (const hour of hoursSince(since)) {
      const query = new URLSearchParams({ organization: organizationId, hour, kind: "downloads" });
      const res = await fetch(`${gateway.baseUrl}/admin/api/usage/archive?${query}`, {
        headers: { "cf-access-jwt-assertion": adminToken },
      });
      if (!res.ok) throw new Error(`usage archive: ${res.status} ${await res.text()}`);
      for (const line of (await res.text()).split("\n")) {
        if (line.trim()) rows.push(JSON.parse(line) as DownloadRow);
      }
    }
    rows = rows.filter((row) => row.path === path && row.at >= new Date(since).toISOString());
  }
  return rows.sort((a, b) => a.at.localeCompare(b.at) || a.id.localeCompare(b.id));
}

describe("download.sh", () => {
  it("downloads every file of the revision and verifies each sha256", async () => {
    expect(files.length).toBeGreaterThan(5);
    firstRunAt = Date.now();
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
    const resumedAt = Date.now();

    const run = await runScript(await fetchScript());
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`downloading ${SHARD}`);
    expect(run.stdout.match(/^downloading /gm)).toHaveLength(1);
    expectAllVerified();

    expect(await downloadRows(SHARD, firstRunAt, 2)).toEqual([
      expect.objectContaining({ status: 200, rangeStart: null, bytesServed: shard.size, complete: true }),
      expect.objectContaining({
        organizationId,
        status: 206,
        rangeStart: half,
        rangeEnd: shard.size - 1,
        bytesServed: shard.size - half,
        complete: true,
      }),
    ]);
    // The resume is the only download of the shard since: nothing was fetched twice.
    expect(await downloadRows(SHARD, resumedAt, 1)).toHaveLength(1);
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
