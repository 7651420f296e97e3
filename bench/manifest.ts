/**
 * `npm run bench:manifest [-- --requests 200 --rounds 3 --files 12]`
 *
 * What a warm weights manifest costs. The gateway bundle `wrangler deploy` would upload runs in
 * workerd (Miniflare, wrangler.toml's bindings, in-memory D1 and R2); a revision of `--files`
 * small files is uploaded with the operator's upload code and an approved application's download
 * token is minted through the public API. Then, in each round, one client sends `--requests`
 * manifests one after another over one kept-alive connection, each checked (200, every file with
 * a signed link), and the same number of requests to the no-op Worker (`bench/noop-worker.js`),
 * which forwards to a local server answering with the same manifest's bytes: the floor for any
 * Worker answering that document. The peers take turns going first.
 *
 * It prints, per target, the latency p50 and p99 over every request of every round, and the CPU
 * time of the target's own workerd process per request (median of the rounds; /proc counts in
 * 10 ms ticks, so a round spans hundreds of requests), with the gateway ÷ no-op ratios. It also
 * prints the D1 rows each manifest leaves in `download_links` and `download_manifests`, and then times warm one-byte ranged
 * downloads of one signed link (the budget check of every served range) against the no-op.
 */

import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Agent, createServer, request } from "node:http";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { exportJWK, generateKeyPair } from "jose";
import type { Miniflare, V4MiniflareOptions as MiniflareOptions } from "miniflare";
import { ROOT } from "../scripts/lib/local-state";
import { bindingBucket, uploadWeights } from "../scripts/lib/weights";
import {
  approvedAccessToken,
  buildGateway,
  gatewayWorkerOptions,
  newMiniflare,
  prepareDatabase,
  runtimeOutput,
} from "./lib/gateway-miniflare";
import { cpuMillis, workerdListeningOn } from "./lib/workerd-memory";
import { percentile } from "./sequential-client";

const MODEL = "llama-2-7b";
const TARGET_P50_MS = 10;

interface Answer {
  status: number;
  body: string;
  ms: number;
}

/** One GET over `agent`, timed from the request to the last byte of the body. */
function get(agent: Agent, url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((done, fail) => {
    const started = process.hrtime.bigint();
    const req = request(url, { agent, headers }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (text: string) => {
        body += text;
      });
      res.on("end", () =>
        done({ status: res.statusCode ?? 0, body, ms: Number(process.hrtime.bigint() - started) / 1e6 }),
      );
      res.on("error", fail);
    });
    req.on("error", fail);
    req.end();
  });
}

/** What one target did in one round. */
interface Round {
  latencies: number[];
  cpuMsPerRequest: number;
}

/** A running Worker under test: how to ask it once, and its workerd process. */
interface Peer {
  name: string;
  pid: number;
  ask(agent: Agent): Promise<Answer>;
  /** Throws unless the answer is what this peer must answer. */
  check(answer: Answer): void;
}

/** `requests` sequential requests to `peer`, with its process's CPU time over them. */
async function runRound(peer: Peer, requests: number): Promise<Round> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  try {
    for (let i = 0; i < 10; i++) peer.check(await peer.ask(agent));
    const latencies: number[] = [];
    const cpuBefore = cpuMillis(peer.pid);
    for (let i = 0; i < requests; i++) {
      const answer = await peer.ask(agent);
      peer.check(answer);
      latencies.push(answer.ms);
    }
    return { latencies, cpuMsPerRequest: (cpuMillis(peer.pid) - cpuBefore) / requests };
  } finally {
    agent.destroy();
  }
}

function median(values: number[]): number {
  return percentile(values, 50);
}

const fmt = (ms: number) => (ms >= 10 ? ms.toFixed(1) : ms.toFixed(2));

/** The gateway and the no-op Worker, `rounds` times each, taking turns going first; returns the table's figures. */
async function compare(peers: [Peer, Peer], rounds: number, requests: number) {
  const results = new Map<string, Round[]>(peers.map((p) => [p.name, []]));
  for (let round = 1; round <= rounds; round++) {
    const order = round % 2 === 1 ? peers : ([peers[1], peers[0]] as const);
    const line: string[] = [];
    for (const peer of order) {
      const result = await runRound(peer, requests);
      results.get(peer.name)?.push(result);
      line.push(`${peer.name} p50 ${fmt(median(result.latencies))} ms, CPU ${fmt(result.cpuMsPerRequest)} ms/req`);
    }
    console.log(`  round ${round}: ${line.join("; ")}`);
  }
  return peers.map((peer) => {
    const rows = results.get(peer.name) ?? [];
    const latencies = rows.flatMap((r) => r.latencies);
    return {
      name: peer.name,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      cpu: median(rows.map((r) => r.cpuMsPerRequest)),
    };
  });
}

function printTable(title: string, rows: { name: string; p50: number; p99: number; cpu: number }[]): void {
  const [gateway, noop] = rows as [(typeof rows)[0], (typeof rows)[0]];
  console.log(`\n${title}`);
  console.log("                      p50 ms    p99 ms   CPU ms/req");
  for (const r of rows) {
    console.log(`  ${r.name.padEnd(18)}${fmt(r.p50).padStart(8)}${fmt(r.p99).padStart(10)}${fmt(r.cpu).padStart(13)}`);
  }
  console.log(
    `  gateway ÷ no-op   ${`${(gateway.p50 / noop.p50).toFixed(1)}×`.padStart(9)}${`${(gateway.p99 / noop.p99).toFixed(1)}×`.padStart(10)}${`${(gateway.cpu / noop.cpu).toFixed(1)}×`.padStart(13)}`,
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      requests: { type: "string", default: "200" },
      rounds: { type: "string", default: "3" },
      files: { type: "string", default: "12" },
    },
    strict: true,
  });
  const requests = Number(values.requests);
  const rounds = Number(values.rounds);
  const fileCount = Number(values.files);
  if (!Number.isInteger(requests) || requests < 50) throw new Error("--requests must be an integer of at least 50");
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) throw new Error("--rounds must be 1 to 20");
  if (!Number.isInteger(fileCount) || fileCount < 1 || fileCount > 500) throw new Error("--files must be 1 to 500");

  const tmp = mkdtempSync(join(tmpdir(), "modelgate-bench-manifest-"));
  const removeTmp = () => rmSync(tmp, { recursive: true, force: true });
  process.on("exit", removeTmp);
  const running: Miniflare[] = [];
  const upstream = createServer();
  const deadline = setTimeout(
    () => {
      console.error("bench:manifest: gave up after its deadline");
      process.exit(1);
    },
    (120 + rounds * requests * 0.2) * 1000,
  );
  deadline.unref();

  try {
    const script = await buildGateway(join(tmp, "build"));
    const weights = join(tmp, "weights");
    mkdirSync(weights);
    for (let i = 1; i <= fileCount; i++) {
      const name = `model-${String(i).padStart(5, "0")}-of-${String(fileCount).padStart(5, "0")}.safetensors`;
      writeFileSync(join(weights, name), Buffer.alloc(4096, i));
    }

    const signing = await generateKeyPair("Ed25519", { extractable: true });
    const downloadKey = { ...(await exportJWK(signing.privateKey)), kid: "bench-manifest-key", alg: "EdDSA" };
    const direct = { host: "127.0.0.1", unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }] };
    const quiet = runtimeOutput(/NOSENTRY|send_email binding called|^(From|To|Subject|Text|HTML): |^\s*$/);

    // The gateway's base URL is only known once it listens, and its links are made from
    // PUBLIC_BASE_URL: links are checked by path, which does not depend on it.
    const gatewayMf = newMiniflare({
      ...gatewayWorkerOptions(script, { DOWNLOAD_SIGNING_KEYS: JSON.stringify({ keys: [downloadKey] }) }),
      ...direct,
      handleRuntimeStdio: quiet,
    } as MiniflareOptions);
    running.push(gatewayMf);
    await gatewayMf.ready;
    const gatewayOrigin = (await gatewayMf.unsafeGetDirectURL()).origin;
    const db = (await gatewayMf.getD1Database("DB")) as unknown as D1Database;
    const bucket = (await gatewayMf.getR2Bucket("WEIGHTS")) as unknown as R2Bucket;
    const licenseSha256 = await prepareDatabase(db);
    const upload = await uploadWeights({ db, bucket: bindingBucket(bucket) }, { model: MODEL, dir: weights });
    const token = await approvedAccessToken(gatewayOrigin, db, licenseSha256, ["download"], [MODEL]);
    console.log(`published revision ${upload.revision} of ${upload.files} files; measuring`);

    const manifestUrl = `${gatewayOrigin}/v1/models/${MODEL}/manifest`;
    const auth = { authorization: `Bearer ${token}` };
    const first = await get(new Agent(), manifestUrl, auth);
    const sample = JSON.parse(first.body) as { files?: { path: string; url: string }[] };
    if (first.status !== 200 || sample.files?.length !== fileCount) {
      throw new Error(`the manifest answered ${first.status}: ${first.body.slice(0, 500)}`);
    }

    upstream.on("request", (_req, res) => {
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(first.body) });
      res.end(first.body);
    });
    await new Promise<void>((listening) => upstream.listen(0, "127.0.0.1", listening));
    const address = upstream.address();
    if (!address || typeof address === "string") throw new Error("the upstream server has no port");
    const noopMf = newMiniflare({
      modules: true,
      scriptPath: join(ROOT, "bench", "noop-worker.js"),
      compatibilityDate: "2026-07-30",
      bindings: { UPSTREAM: `http://127.0.0.1:${address.port}` },
      ...direct,
      handleRuntimeStdio: runtimeOutput(/^$/),
    } as MiniflareOptions);
    running.push(noopMf);
    await noopMf.ready;
    const noopOrigin = (await noopMf.unsafeGetDirectURL()).origin;
    const pidOf = (origin: string) => workerdListeningOn(Number(new URL(origin).port));

    // Link rows a manifest writes: one per file in download_links before download_manifests existed.
    const linkTables = await db
      .prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('download_links', 'download_manifests')",
      )
      .all<{ name: string }>();
    const linkRows = async () => {
      let rows = 0;
      for (const { name } of linkTables.results) {
        rows += (await db.prepare(`SELECT count(*) AS n FROM ${name}`).first<{ n: number }>())?.n ?? 0;
      }
      return rows;
    };
    const linksBefore = await linkRows();
    let manifests = 0;
    const gateway: Peer = {
      name: "gateway",
      pid: pidOf(gatewayOrigin),
      ask: (agent) => get(agent, manifestUrl, auth),
      check: (answer) => {
        const body = JSON.parse(answer.body) as { files?: { url?: string }[] };
        const signed = body.files?.filter((f) => f.url?.includes("/v1/download/") && f.url.includes("sig="));
        if (answer.status !== 200 || signed?.length !== fileCount) {
          throw new Error(`a manifest answered ${answer.status}: ${answer.body.slice(0, 500)}`);
        }
        manifests++;
      },
    };
    const noop: Peer = {
      name: "no-op Worker",
      pid: pidOf(noopOrigin),
      ask: (agent) => get(agent, `${noopOrigin}/v1/models/${MODEL}/manifest`),
      check: (answer) => {
        if (answer.status !== 200 || answer.body.length !== first.body.length) {
          throw new Error(`the no-op Worker answered ${answer.status} with ${answer.body.length} bytes`);
        }
      },
    };
    console.log(`warm manifests of ${fileCount} files, ${requests} sequential requests per round:`);
    const manifestRows = await compare([gateway, noop], rounds, requests);
    const rowsPerManifest = ((await linkRows()) - linksBefore) / manifests;

    // One signed link, asked for its first byte again and again: each answer checks the link and
    // takes its byte from the link's budget (4096 × downloads allowed + probes: enough).
    const link = new URL(sample.files?.[0]?.url ?? "");
    const linkUrl = `${gatewayOrigin}${link.pathname}${link.search}`;
    const range = { range: "bytes=0-0" };
    const ranged: Peer = {
      name: "gateway",
      pid: gateway.pid,
      ask: (agent) => get(agent, linkUrl, range),
      check: (answer) => {
        if (answer.status !== 206 || answer.body.length !== 1) {
          throw new Error(`a ranged download answered ${answer.status}: ${answer.body.slice(0, 500)}`);
        }
      },
    };
    const noopRanged: Peer = { ...noop, ask: (agent) => get(agent, `${noopOrigin}/range`, range) };
    console.log(`warm one-byte ranged downloads of one link, ${requests} requests:`);
    const rangeRows = await compare([ranged, noopRanged], 1, requests);

    console.log(
      `\n${availableParallelism()} CPUs shared by the client, both workerd processes and anything else on the machine;`,
    );
    console.log("D1 and R2 are Miniflare's local simulators, in the gateway's own workerd process.");
    printTable(`manifest of ${fileCount} files (${rounds} × ${requests} requests)`, manifestRows);
    const p50 = manifestRows[0]?.p50 ?? Number.NaN;
    console.log(`  target p50 ≤ ${TARGET_P50_MS} ms: ${p50 <= TARGET_P50_MS ? "met" : "NOT MET"}`);
    console.log(`  link rows written per manifest (download_links, download_manifests): ${rowsPerManifest.toFixed(2)}`);
    printTable("signed link, Range: bytes=0-0 (the no-op Worker answers the manifest's bytes)", rangeRows);
  } finally {
    clearTimeout(deadline);
    upstream.close();
    for (const mf of running) await mf.dispose();
    removeTmp();
  }
}

main().catch((error: unknown) => {
  console.error(`bench:manifest failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  process.exit(1);
});
