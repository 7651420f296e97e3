/**
 * `npm run bench:download`: how fast the gateway streams weights, against the floor and the disk.
 *
 * R2 and D1 persist to a temporary directory, as under `npm start`, so objects live on disk rather
 * than in workerd's memory. A 1 GiB and a 100 MiB file are uploaded with the operator's own upload
 * code (multipart), and an approved application's download token is minted through the public API.
 * Then each round serves both files, each from a workerd process started for that one download:
 *
 * - through the gateway's full path: the token fetches the manifest, whose signed link for the
 *   file is then downloaded (link check, grant and token check, download count, R2 stream);
 * - through a no-op Worker: `WEIGHTS.get(key)` piped to the response;
 * - and the 1 GiB source file is read straight from disk (warm in the page cache, as it is right
 *   after writing).
 *
 * Every body is counted to the byte and must be exactly the file's size. It prints MB/s of each
 * (median of the rounds), the ratios gateway ÷ no-op and gateway ÷ disk, and the peak resident
 * memory (VmHWM) of the workerd process while it served the 100 MiB and the 1 GiB file: a fresh
 * process per download, so one download's garbage never shows in another's peak. Streaming means
 * the peak should not grow with the file. Temporary files are deleted at the end, also on failure
 * or interruption; the whole run is bounded by a deadline.
 *
 *   npm run bench:download [-- --rounds 3]
 */
import { createReadStream, createWriteStream, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { request } from "node:http";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { exportJWK, generateKeyPair } from "jose";
import type { Miniflare, V4MiniflareOptions as MiniflareOptions, V4WorkerOptions as WorkerOptions } from "miniflare";
import { freePort } from "../scripts/lib/gateway-process";
import { bindingBucket, uploadWeights } from "../scripts/lib/weights";
import {
  approvedAccessToken,
  buildGateway,
  gatewayWorkerOptions,
  newMiniflare,
  prepareDatabase,
  runtimeOutput,
} from "./lib/gateway-miniflare";
import { residentMemory, workerdListeningOn } from "./lib/workerd-memory";

const MIB = 1024 * 1024;
const MODEL = "llama-2-7b";
const SMALL = { label: "100 MiB", path: "bench-100mib.bin", size: 100 * MIB };
const BIG = { label: "1 GiB", path: "bench-1gib.bin", size: 1024 * MIB };
const FILES = [SMALL, BIG];
type File = typeof SMALL;
const TARGET_VS_NOOP = 0.95;
/** What workerd prints during setup that is no news: the application's e-mail, multipart warnings. */
const SETUP_NOISE = /NOSENTRY|send_email binding called|^(From|To|Subject|Text|HTML): |^\s*$/;

/** The no-op Worker, the whole of it: the least any Worker serving an R2 object does. */
const NOOP_WORKER = `
export default {
  async fetch(request, env) {
    const object = await env.WEIGHTS.get(new URL(request.url).searchParams.get("key"));
    if (!object) return new Response("not found", { status: 404 });
    return new Response(object.body, { headers: { "content-length": String(object.size) } });
  },
};`;

/** Writes `size` bytes that do not compress and differ per MiB, without holding them in memory. */
async function writeTestFile(path: string, size: number): Promise<void> {
  const block = Buffer.alloc(MIB);
  for (let i = 0; i < MIB; i += 4) block.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ (i << 7)) >>> 0, i);
  const out = createWriteStream(path);
  for (let written = 0; written < size; written += MIB) {
    const chunk = Buffer.from(block);
    chunk.writeUInt32LE(written / MIB, 0);
    if (!out.write(chunk)) await new Promise<void>((drained) => out.once("drain", () => drained()));
  }
  await new Promise<void>((done, fail) => out.end((error?: Error | null) => (error ? fail(error) : done())));
}

/**
 * GETs a URL and counts its body to the byte, discarding it. Fails unless the answer is a 200
 * whose headers match `expect`, with a Content-Length of `size` if it has one, and whose body
 * arrives complete and exactly `size` bytes long. Resolves with whether it had a Content-Length.
 */
function download(url: string, size: number, expect: Record<string, string> = {}): Promise<boolean> {
  return new Promise((done, fail) => {
    const req = request(url, (res) => {
      const length = res.headers["content-length"];
      const wrong = Object.entries({ ...expect, ...(length === undefined ? {} : { "content-length": String(size) }) })
        .filter(([name, value]) => res.headers[name] !== value)
        .map(([name]) => `${name}: ${res.headers[name]}`);
      if (res.statusCode !== 200 || wrong.length) {
        res.resume();
        const got = wrong.length ? ` with ${wrong.join(", ")}` : "";
        fail(new Error(`GET ${new URL(url).pathname} answered ${res.statusCode}${got}`));
        return;
      }
      let bytes = 0;
      res.on("data", (chunk: Buffer) => {
        bytes += chunk.byteLength;
      });
      res.on("error", fail);
      res.on("close", () => {
        if (res.complete && bytes === size) done(length !== undefined);
        else
          fail(new Error(`GET ${new URL(url).pathname}: read ${bytes} of ${size} bytes (complete: ${res.complete})`));
      });
    });
    req.on("error", fail);
    req.end();
  });
}

async function readDisk(path: string, size: number): Promise<void> {
  let bytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: MIB })) bytes += (chunk as Buffer).byteLength;
  if (bytes !== size) throw new Error(`read ${bytes} of ${size} bytes from ${path}`);
}

/** One download: its speed and the serving workerd's resident memory before and at its peak. */
interface Served {
  mbPerSecond: number;
  idleRss: number;
  peakRss: number;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length / 2;
  return Number.isInteger(middle)
    ? ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2
    : (sorted[Math.floor(middle)] as number);
}
const mib = (bytes: number) => `${Math.round(bytes / MIB)} MiB`;
const since = (started: number) => `${((performance.now() - started) / 1000).toFixed(1)} s`;
const seconds = async (work: () => Promise<void>) => {
  const started = performance.now();
  await work();
  return (performance.now() - started) / 1000;
};

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" } }, strict: true });
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 10) throw new Error("--rounds must be 1 to 10");
  const deadlineSeconds = 240 + 200 * rounds;
  const startedAt = performance.now();

  const tmp = mkdtempSync(join(tmpdir(), "modelgate-bench-download-"));
  const removeTmp = () => rmSync(tmp, { recursive: true, force: true });
  // Also when the deadline, Ctrl-C or Miniflare's own signal handler ends the process.
  process.on("exit", removeTmp);
  let mf: Miniflare | undefined;
  /** Disposes the running Miniflare, if any; never twice (a second dispose throws). */
  const stopWorkerd = async () => {
    const running = mf;
    mf = undefined;
    await running?.dispose();
  };
  const giveUp = (message: string, code: number) => {
    console.error(`bench:download: ${message}`);
    const forced = new Promise((r) => setTimeout(r, 10_000).unref());
    void Promise.race([stopWorkerd(), forced]).finally(() => process.exit(code));
  };
  const deadline = setTimeout(() => giveUp(`gave up after ${deadlineSeconds} s`, 1), deadlineSeconds * 1000);
  process.once("SIGINT", () => giveUp("interrupted", 130));
  process.once("SIGTERM", () => giveUp("terminated", 143));

  try {
    const weights = join(tmp, "weights");
    mkdirSync(weights);
    const [script] = await Promise.all([
      buildGateway(join(tmp, "build")),
      (async () => {
        for (const file of FILES) await writeTestFile(join(weights, file.path), file.size);
      })(),
    ]);
    console.log(`built the gateway and wrote ${mib(SMALL.size + BIG.size)} of test files in ${since(startedAt)}`);

    const signing = await generateKeyPair("Ed25519", { extractable: true });
    const downloadKey = { ...(await exportJWK(signing.privateKey)), kid: "bench-download-key", alg: "EdDSA" };
    /** One Worker on its own direct socket, in a workerd of its own, with state in `tmp`. */
    const startWorkerd = async (worker: (origin: string) => WorkerOptions, setup = false) => {
      const port = await freePort();
      const origin = `http://127.0.0.1:${port}`;
      mf = newMiniflare({
        host: "127.0.0.1",
        port: 0,
        // One state directory for every workerd of the run: the weights written by the setup are read later.
        resourcePersistencePath: join(tmp, "state"),
        handleRuntimeStdio: runtimeOutput(setup ? SETUP_NOISE : /^$/),
        workers: [{ ...worker(origin), unsafeDirectSockets: [{ host: "127.0.0.1", port }] }],
      } as MiniflareOptions);
      await mf.ready;
      return { mf, origin, port };
    };
    const gateway = (origin: string): WorkerOptions => ({
      name: "modelgate",
      ...gatewayWorkerOptions(script, {
        PUBLIC_BASE_URL: origin,
        DOWNLOAD_SIGNING_KEYS: JSON.stringify({ keys: [downloadKey] }),
      }),
    });
    const noop = (): WorkerOptions => ({
      name: "r2-noop",
      modules: true,
      script: NOOP_WORKER,
      compatibilityDate: "2026-07-30",
      r2Buckets: { WEIGHTS: "modelgate-weights" },
    });

    // Setup: schema, license, upload, token, all persisted for the workerd processes that follow.
    const setupStarted = performance.now();
    const setup = await startWorkerd(gateway, true);
    const env = {
      DB: (await setup.mf.getD1Database("DB", "modelgate")) as unknown as D1Database,
      WEIGHTS: (await setup.mf.getR2Bucket("WEIGHTS", "modelgate")) as unknown as R2Bucket,
    };
    const licenseSha256 = await prepareDatabase(env.DB);
    const upload = await uploadWeights(
      { db: env.DB, bucket: bindingBucket(env.WEIGHTS) },
      { model: MODEL, dir: weights },
    );
    const rows = await env.DB.prepare("SELECT path, r2_key, size FROM model_files WHERE revision_id = ?")
      .bind(upload.revision)
      .all<{ path: string; r2_key: string; size: number }>();
    const r2Keys = new Map(rows.results.map((r) => [r.path, r.r2_key]));
    for (const file of FILES) {
      const row = rows.results.find((r) => r.path === file.path);
      if (row?.size !== file.size) throw new Error(`${file.path} was published as ${row?.size} bytes`);
    }
    const token = await approvedAccessToken(setup.origin, env.DB, licenseSha256, ["download"], [MODEL]);
    await stopWorkerd();
    console.log(
      `uploaded revision ${upload.revision} (${mib(upload.totalBytes)}, multipart) in ${since(setupStarted)}`,
    );

    const manifestMs: number[] = [];
    /** Which answered without a Content-Length (chunked), which clients cannot show progress for. */
    const unsized = new Set<string>();
    /** The gateway's whole path for one file: the manifest with the token, then its signed link. */
    const viaGateway = async (origin: string, file: File) => {
      const started = performance.now();
      const res = await fetch(`${origin}/v1/models/${MODEL}/manifest`, {
        headers: { authorization: `Bearer ${token}` },
      });
      const manifest = (await res.json()) as { files?: { path: string; size: number; sha256: string; url: string }[] };
      manifestMs.push(performance.now() - started);
      const entry = manifest.files?.find((f) => f.path === file.path);
      if (res.status !== 200 || !entry)
        throw new Error(`the manifest answered ${res.status} ${JSON.stringify(manifest)}`);
      if (entry.size !== file.size || !entry.url.startsWith(`${origin}/v1/download/`) || !entry.url.includes("sig=")) {
        throw new Error(
          `the manifest's entry for ${file.path} is not a signed link of ${file.size} bytes: ${JSON.stringify(entry)}`,
        );
      }
      // Only the gateway's signed-link handler sends the checksum header.
      if (!(await download(entry.url, file.size, { "x-checksum-sha256": entry.sha256 }))) unsized.add("gateway");
    };
    const viaNoop = async (origin: string, file: File) => {
      const url = `${origin}/?key=${encodeURIComponent(r2Keys.get(file.path) ?? "")}`;
      if (!(await download(url, file.size))) unsized.add("no-op Worker");
    };

    /** Starts a fresh workerd for `worker`, serves `file` once through it, and stops it. */
    const serveOnce = async (worker: "gateway" | "noop", file: File): Promise<Served> => {
      const started = await startWorkerd(worker === "gateway" ? gateway : noop);
      try {
        const pid = workerdListeningOn(started.port);
        const idleRss = residentMemory(pid).now;
        const elapsed = await seconds(() => (worker === "gateway" ? viaGateway : viaNoop)(started.origin, file));
        return { mbPerSecond: file.size / 1e6 / elapsed, idleRss, peakRss: residentMemory(pid).peak };
      } finally {
        await stopWorkerd();
      }
    };

    const results = new Map<string, Served[]>();
    const record = (key: string, served: Served) => {
      results.set(key, [...(results.get(key) ?? []), served]);
      return served;
    };
    const disk: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      // Alternate which goes first, so neither always follows the other's page-cache and heap use.
      const order = round % 2 === 1 ? (["gateway", "noop"] as const) : (["noop", "gateway"] as const);
      const big: Record<string, number> = {};
      for (const worker of order) {
        for (const file of FILES) {
          const served = record(`${worker} ${file.label}`, await serveOnce(worker, file));
          if (file === BIG) big[worker] = served.mbPerSecond;
        }
      }
      const diskSpeed = BIG.size / 1e6 / (await seconds(() => readDisk(join(weights, BIG.path), BIG.size)));
      disk.push(diskSpeed);
      console.log(
        `round ${round} (1 GiB): gateway ${big.gateway?.toFixed(0)} MB/s, no-op ${big.noop?.toFixed(0)} MB/s, disk ${diskSpeed.toFixed(0)} MB/s`,
      );
    }

    const speed = (key: string) => median((results.get(key) ?? []).map((s) => s.mbPerSecond));
    const peak = (key: string) => Math.max(...(results.get(key) ?? []).map((s) => s.peakRss));
    const idle = (key: string) => median((results.get(key) ?? []).map((s) => s.idleRss));
    const pad = (n: number) => n.toFixed(0).padStart(6);
    console.log(
      `\nMB/s, median of ${rounds} round(s); ${availableParallelism()} CPUs shared by the client, workerd and the disk reads;`,
    );
    console.log("R2 is Miniflare's local simulator on disk, so absolute figures are its, not production R2's:");
    console.log("                                                          100 MiB   1 GiB");
    for (const [label, worker] of [
      ["gateway (token → manifest → signed link → R2 stream)", "gateway"],
      ["no-op Worker (R2 get → response)                    ", "noop"],
    ] as const) {
      console.log(`  ${label}   ${pad(speed(`${worker} 100 MiB`))}  ${pad(speed(`${worker} 1 GiB`))}`);
    }
    console.log(`  disk (1 GiB source file, page cache)                             ${pad(median(disk))}`);
    for (const size of ["100 MiB", "1 GiB"]) {
      const vsNoop = speed(`gateway ${size}`) / speed(`noop ${size}`);
      console.log(
        `  gateway ÷ no-op (${size})${size === "1 GiB" ? "  " : ""}  ${vsNoop.toFixed(2)}   target ≥ ${TARGET_VS_NOOP.toFixed(2)}: ${vsNoop >= TARGET_VS_NOOP ? "met" : "NOT MET"}`,
      );
    }
    console.log(`  gateway ÷ disk  (1 GiB)  ${(speed("gateway 1 GiB") / median(disk)).toFixed(2)}`);
    console.log(`  manifest request (part of the gateway's time): median ${median(manifestMs).toFixed(0)} ms`);
    for (const name of unsized) console.log(`  note: the ${name}'s downloads came without a Content-Length (chunked)`);

    console.log(
      "\nworkerd resident memory, a fresh process per download (idle: median before; peak: VmHWM, highest of the rounds):",
    );
    console.log("                 idle      peak 100 MiB   peak 1 GiB   1 GiB − 100 MiB");
    for (const [label, worker] of [
      ["gateway     ", "gateway"],
      ["no-op Worker", "noop"],
    ] as const) {
      const small = peak(`${worker} 100 MiB`);
      const large = peak(`${worker} 1 GiB`);
      const growth = large - small;
      console.log(
        `  ${label}  ${mib(idle(`${worker} 100 MiB`)).padStart(8)}  ${mib(small).padStart(12)}  ${mib(large).padStart(11)}  ${`${growth >= 0 ? "+" : "−"}${mib(Math.abs(growth))}`.padStart(16)}`,
      );
    }
    console.log(`\nbench:download took ${since(startedAt)}`);
  } finally {
    clearTimeout(deadline);
    await stopWorkerd();
    removeTmp();
  }
}

main().catch((error: unknown) => {
  console.error(`bench:download failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exit(1);
});
