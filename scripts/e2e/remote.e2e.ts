/**
 * The operator commands' `--remote`, end to end: `weights:upload` and `license:load` as an operator
 * runs them, against local stand-ins for R2's S3 API (signatures and payload hashes checked) and
 * D1's REST API (a real SQLite database with the project's migrations). The bytes must land in the
 * bucket intact, the revision in the catalog with an audit event that keeps the chain, a license
 * version once, and nothing may be published when the bucket refuses a part or the credentials
 * are wrong.
 */
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyAuditChain } from "../../worker/audit/log";
import { createDatabase } from "../../worker/db/client";
import { d1OverHttp, inlineParams } from "../lib/d1-http";
import { ROOT, wranglerEnv } from "../lib/local-state";
import { type ChildOutput, outputOf } from "./child-output";
import { type CloudflareStandIn, startCloudflareStandIn } from "./cloudflare-standin";

const MODEL = "llama-2-7b";
const MiB = 1024 * 1024;
const DATABASE_ID = "3f1c2a9e-5b7d-4e21-9c3a-0d8e6f4b1a27";
const CREDENTIALS = {
  apiToken: "cf-api-token-for-tests",
  accessKeyId: "r2-access-key-id",
  secretAccessKey: "r2-secret-access-key",
  bucket: "modelgate-weights",
};

let work: string;
let standIn: CloudflareStandIn;

/** A model folder: a small file, a nested one, and a shard large enough for three 5 MiB parts. */
function writeFolder(dir: string, shardBytes: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>([
    ["config.json", Buffer.from(JSON.stringify({ model_type: "llama", hidden_size: 4096 }))],
    ["original/params.json", Buffer.from('{"dim": 4096}')],
    ["model-00001-of-00001.safetensors", shardBytes],
  ]);
  for (const [path, bytes] of files) {
    mkdirSync(join(dir, path, ".."), { recursive: true });
    writeFileSync(join(dir, path), bytes);
  }
  return files;
}

/** `npm run <script> -- …args --remote` with the stand-ins' addresses and `env` over the credentials. */
function runRemote(script: string, args: string[], env: Record<string, string> = {}): Promise<ChildOutput> {
  const child = spawn(process.execPath, ["--import", "tsx", join("scripts", script), ...args, "--remote"], {
    cwd: ROOT,
    env: wranglerEnv({
      CLOUDFLARE_ACCOUNT_ID: "0123456789abcdef0123456789abcdef",
      CLOUDFLARE_API_TOKEN: CREDENTIALS.apiToken,
      R2_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
      R2_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
      CLOUDFLARE_API_BASE_URL: standIn.apiBase,
      R2_ENDPOINT: standIn.s3Endpoint,
      ...env,
    }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  return outputOf(child);
}

/** `weights:upload --remote` of `dir`, in 5 MiB parts above 6 MiB. */
const upload = (dir: string, env: Record<string, string> = {}) =>
  runRemote(
    "weights-upload.ts",
    [
      "--model",
      MODEL,
      "--dir",
      dir,
      "--database-id",
      DATABASE_ID,
      "--multipart-threshold",
      String(6 * MiB),
      "--part-size",
      String(5 * MiB),
      "--journal-dir",
      join(work, "journal"),
      "--retry-delay-ms",
      "20",
    ],
    env,
  );

const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");
const mainRevision = () =>
  (
    standIn.db.prepare("SELECT revision_id FROM model_refs WHERE model = ? AND ref = 'main'").get(MODEL) as
      | { revision_id: string }
      | undefined
  )?.revision_id;
const revisionCount = () =>
  Number((standIn.db.prepare("SELECT count(*) AS n FROM model_revisions").get() as { n: number }).n);
const writes = () => standIn.s3Requests.filter((r) => !r.startsWith("HEAD "));

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), "modelgate-remote-upload-"));
  standIn = await startCloudflareStandIn({ dbFile: join(work, "d1.sqlite"), ...CREDENTIALS });
});

afterAll(async () => {
  await standIn?.close();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("weights:upload --remote", () => {
  let first: { dir: string; files: Map<string, Buffer>; revision: string };

  it("puts every file in the production bucket, checked, and publishes the revision in the production database", async () => {
    const dir = join(work, "v1");
    const files = writeFolder(dir, randomBytes(12 * MiB + 123));
    const run = await upload(dir);
    expect(run.code, run.stderr).toBe(0);
    const revision = /revision ([0-9a-f]{40}) \(published\)/.exec(run.stdout)?.[1] ?? "";
    expect(revision).toMatch(/^[0-9a-f]{40}$/);
    expect(mainRevision()).toBe(revision);

    const rows = standIn.db
      .prepare(
        "SELECT path, size, sha256, r2_key, etag, content_type FROM model_files WHERE revision_id = ? ORDER BY path",
      )
      .all(revision) as {
      path: string;
      size: number;
      sha256: string;
      r2_key: string;
      etag: string;
      content_type: string;
    }[];
    expect(rows.map((r) => r.path)).toEqual([...files.keys()].sort());
    for (const row of rows) {
      const local = files.get(row.path) as Buffer;
      const stored = standIn.objects.get(row.r2_key);
      expect(stored, row.path).toBeDefined();
      expect(Buffer.compare(stored?.bytes ?? Buffer.alloc(0), local), row.path).toBe(0);
      expect(row.sha256).toBe(sha256(local));
      expect(Number(row.size)).toBe(local.byteLength);
      expect(row.etag).toBe(stored?.etag);
      expect(row.r2_key).toMatch(new RegExp(`^models/${MODEL}/uploads/[^/]+/${row.path}$`));
    }
    const shard = rows.find((r) => r.path.endsWith(".safetensors"));
    expect(standIn.objects.get(shard?.r2_key ?? "")?.parts).toBe(3);
    expect(standIn.objects.get(rows.find((r) => r.path === "config.json")?.r2_key ?? "")?.contentType).toBe(
      "application/json",
    );
    expect(standIn.uploads.size).toBe(0);

    // The audit event went in with the revision and the chain holds, read back over the D1 API.
    const event = standIn.db
      .prepare("SELECT action, actor, data FROM audit_events ORDER BY seq DESC LIMIT 1")
      .get() as {
      action: string;
      actor: string;
      data: string;
    };
    expect(event).toMatchObject({ action: "model.revision_published", actor: "operator" });
    expect(JSON.parse(event.data)).toMatchObject({ revision, files: 3 });
    const remote = createDatabase(
      d1OverHttp({ apiBase: standIn.apiBase, accountId: "a", databaseId: DATABASE_ID, apiToken: CREDENTIALS.apiToken }),
    );
    expect(await verifyAuditChain(remote)).toMatchObject({ ok: true, checked: 1 });
    first = { dir, files, revision };
  });

  it("sends nothing when the same files are uploaded again", async () => {
    const before = writes().length;
    const run = await upload(first.dir);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`revision ${first.revision} (already main; nothing uploaded)`);
    expect(writes().length).toBe(before);
    expect(revisionCount()).toBe(1);
  });

  it("keeps what R2 stored when it refuses a part, and the same command resumes without sending it again", async () => {
    const dir = join(work, "v2");
    const files = writeFolder(dir, randomBytes(11 * MiB));
    const before = writes().length;
    standIn.refuseParts.add(2);
    try {
      const run = await upload(dir);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("BadDigest");
      expect(run.stdout).toContain("run the same command again to resume");
    } finally {
      standIn.refuseParts.clear();
    }
    // Nothing published, nothing aborted or deleted: the parts and files R2 acknowledged stay.
    expect(mainRevision()).toBe(first.revision);
    expect(revisionCount()).toBe(1);
    const failed = writes().slice(before);
    expect(failed.filter((r) => r.startsWith("DELETE "))).toEqual([]);
    expect(failed.filter((r) => /partNumber=[13]&/.test(r))).toHaveLength(2);
    expect(readdirSync(join(work, "journal", "remote-modelgate-weights"))).toHaveLength(1);

    const resumedAt = writes().length;
    const run = await upload(dir);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain("resuming an interrupted upload");
    expect(run.stdout).toContain("2/3 parts already stored");
    const resumed = writes().slice(resumedAt);
    // Only what was missing: part 2, the completion, and the file after the shard.
    expect(resumed.filter((r) => /[?&]uploads/.test(r))).toEqual([]);
    expect(resumed.filter((r) => /partNumber=/.test(r))).toEqual([expect.stringMatching(/partNumber=2&/)]);
    expect(resumed.filter((r) => r.includes("config.json"))).toEqual([]);
    expect(resumed.filter((r) => r.startsWith("POST ") && r.includes("uploadId="))).toHaveLength(1);
    expect(resumed.filter((r) => r.startsWith("PUT ") && r.endsWith("original/params.json"))).toHaveLength(1);
    const revision = /revision ([0-9a-f]{40}) \(published\)/.exec(run.stdout)?.[1];
    expect(mainRevision()).toBe(revision);
    for (const [path, local] of files) {
      const row = standIn.db
        .prepare("SELECT r2_key, sha256 FROM model_files WHERE revision_id = ? AND path = ?")
        .get(revision ?? "", path) as { r2_key: string; sha256: string };
      expect(Buffer.compare(standIn.objects.get(row.r2_key)?.bytes ?? Buffer.alloc(0), local), path).toBe(0);
      expect(row.sha256).toBe(sha256(local));
    }
    expect(standIn.uploads.size).toBe(0);
    // Published: nothing left to resume.
    expect(readdirSync(join(work, "journal", "remote-modelgate-weights"))).toEqual([]);
  });

  it("retries a part answered 500 and a part whose connection dropped, and finishes", async () => {
    const dir = join(work, "v3");
    const files = writeFolder(dir, randomBytes(11 * MiB));
    const before = writes().length;
    standIn.failPartOnce.set(2, "500");
    standIn.failPartOnce.set(3, "drop");
    const run = await upload(dir);
    expect(run.code, run.stderr).toBe(0);
    expect(standIn.failPartOnce.size).toBe(0);
    expect(run.stdout).toMatch(/part 2: .*InternalError.*retrying in \d+ ms \(attempt 2\/6\)/);
    expect(run.stdout).toMatch(/part 3: .*fetch failed.*retrying in \d+ ms \(attempt 2\/6\)/);
    const sent = writes().slice(before);
    const partPuts = (n: number) => sent.filter((r) => new RegExp(`partNumber=${n}&`).test(r)).length;
    expect([partPuts(1), partPuts(2), partPuts(3)]).toEqual([1, 2, 2]);
    const revision = /revision ([0-9a-f]{40}) \(published\)/.exec(run.stdout)?.[1];
    expect(mainRevision()).toBe(revision);
    const shard = standIn.db
      .prepare("SELECT r2_key FROM model_files WHERE revision_id = ? AND path = ?")
      .get(revision ?? "", "model-00001-of-00001.safetensors") as { r2_key: string };
    const local = files.get("model-00001-of-00001.safetensors") ?? Buffer.alloc(0);
    expect(Buffer.compare(standIn.objects.get(shard.r2_key)?.bytes ?? Buffer.alloc(0), local)).toBe(0);
  });

  it("refuses wrong credentials before sending any file", async () => {
    const before = writes().length;
    const badSecret = await upload(first.dir, { R2_SECRET_ACCESS_KEY: "not-the-secret" });
    expect(badSecret.code).toBe(1);
    expect(badSecret.stderr).toContain("cannot reach bucket modelgate-weights");
    expect(badSecret.stderr).toContain("AccessDenied");
    const badToken = await upload(first.dir, { CLOUDFLARE_API_TOKEN: "not-the-token" });
    expect(badToken.code).toBe(1);
    expect(badToken.stderr).toContain(`cannot reach the production database ${DATABASE_ID}`);
    expect(badToken.stderr).toContain("Authentication error");
    const missing = await upload(first.dir, { R2_ACCESS_KEY_ID: "", CLOUDFLARE_ACCOUNT_ID: "" });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("--remote needs CLOUDFLARE_ACCOUNT_ID, R2_ACCESS_KEY_ID in the environment");
    expect(writes().length).toBe(before);
  });

  it("says to apply the migrations when the production database has no catalog", async () => {
    const bare = await startCloudflareStandIn({ dbFile: join(work, "bare.sqlite"), ...CREDENTIALS, migrate: false });
    try {
      const run = await upload(first.dir, { CLOUDFLARE_API_BASE_URL: bare.apiBase, R2_ENDPOINT: bare.s3Endpoint });
      expect(run.code).toBe(1);
      expect(run.stderr).toContain("npx wrangler d1 migrations apply DB --remote");
      expect(bare.s3Requests).toEqual([]);
    } finally {
      await bare.close();
    }
  });
});

describe("license:load --remote", () => {
  const load = (license: string, aup: string, env: Record<string, string> = {}) => {
    writeFileSync(join(work, "LICENSE"), license);
    writeFileSync(join(work, "USE_POLICY.md"), aup);
    return runRemote(
      "license-load.ts",
      [
        "--family",
        "llama-2",
        "--license",
        join(work, "LICENSE"),
        "--aup",
        join(work, "USE_POLICY.md"),
        "--database-id",
        DATABASE_ID,
      ],
      env,
    );
  };
  const versions = () =>
    standIn.db
      .prepare(
        "SELECT v.version, v.license_sha256, d.body FROM license_versions v JOIN documents d ON d.sha256 = v.license_sha256 WHERE v.family = 'llama-2' ORDER BY v.version",
      )
      .all() as { version: number; license_sha256: string; body: string }[];

  it("loads the texts into the production database once, byte for byte", async () => {
    // Quotes, a question mark and non-ASCII text travel inside the SQL the API receives.
    const license = "LLAMA 2 COMMUNITY LICENSE AGREEMENT\nIt's \"Meta's\" text? — 700 million MAU; ';-- not SQL\n";
    const aup = "# Llama 2 Acceptable Use Policy\n\nDon't.\n";
    const first = await load(license, aup);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/version\s+1\n/);
    expect(first.stdout).toContain("new version    yes");
    expect(versions()).toEqual([{ version: 1, license_sha256: sha256(Buffer.from(license)), body: license }]);

    const again = await load(license, aup);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toContain("new version    no (these texts were already current)");
    expect(versions()).toHaveLength(1);

    const changed = await load(`${license}Amended.\n`, aup);
    expect(changed.code, changed.stderr).toBe(0);
    expect(versions().map((v) => v.version)).toEqual([1, 2]);
  });

  it("refuses a wrong API token without writing", async () => {
    const run = await load("Another license\n", "Another policy\n", { CLOUDFLARE_API_TOKEN: "not-the-token" });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("license:load: cannot reach the production database");
    expect(versions().map((v) => v.version)).toEqual([1, 2]);
  });
});

describe("values written into SQL for the D1 API", () => {
  it("replaces only the placeholders outside quotes and comments, quoting every value", () => {
    expect(
      inlineParams(`select "a?" , '?''?', [b?] /* ? */ from t where x = ? and y = ? -- ?\nand z in (?, ?, ?)`, [
        "it's",
        42,
        null,
        true,
        new Uint8Array([0, 255]),
      ]),
    ).toBe(`select "a?" , '?''?', [b?] /* ? */ from t where x = 'it''s' and y = 42 -- ?\nand z in (NULL, 1, X'00ff')`);
    expect(() => inlineParams("select ?", [])).toThrow(/more parameters/);
    expect(() => inlineParams("select ?", [1, 2])).toThrow(/1 parameters, 2 given/);
    expect(() => inlineParams("select ?1", [1])).toThrow(/numbered/);
    expect(() => inlineParams("select ?", [Number.NaN])).toThrow(/cannot be stored/);
    // SQLite stops reading SQL at a NUL: a string with one goes as bytes, as a bound value would.
    expect(inlineParams("select ?", ["a\u0000b"])).toBe("select CAST(X'610062' AS TEXT)");
  });
});
