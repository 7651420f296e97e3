/**
 * `npm run weights:upload -- --model llama-2-7b --dir PATH [--remote [--database-id ID] [--bucket NAME]]
 *   [--multipart-threshold BYTES] [--part-size BYTES] [--concurrency N] [--retry-delay-ms MS] [--journal-dir PATH]`
 *
 * Uploads every file under PATH (recursively) to R2 as a new revision of the model, hashing each
 * file as it streams, and publishes it as the model's `main` revision with an audit event (actor
 * `operator`). Prints the revision id, the number of files and the total size. Uploading the same
 * files again changes nothing.
 *
 * Made for real weights (13–140 GB a model): up to `--concurrency` parts (default 4) are in flight
 * at once, every request is retried with exponential backoff (from `--retry-delay-ms`, default
 * 1000) on network errors and 5xx answers, and progress (bytes, rate, time left) is one updating
 * line on a terminal, plain lines otherwise. An upload that stops anyway keeps what R2 stored and
 * a journal in `.wrangler/weights-upload/` (or `--journal-dir`): the same command again resumes it,
 * sending only the files and parts R2 has not acknowledged.
 *
 * Without `--remote`: the local bucket and database (`.wrangler/state`, what `npm start` serves).
 * With `--remote`: the production bucket through R2's S3 API and the production database through
 * Cloudflare's D1 REST API, named by wrangler.toml's `[env.production]` (or `CLOUDFLARE_ENV`'s, or
 * `--bucket`, `--database-id`), with
 * credentials from the environment: `CLOUDFLARE_ACCOUNT_ID`, `CLOUDFLARE_API_TOKEN` (D1 edit),
 * `R2_ACCESS_KEY_ID` and `R2_SECRET_ACCESS_KEY` (Object Read & Write on the bucket); optional
 * `R2_ENDPOINT` (e.g. an EU bucket's) and `CLOUDFLARE_API_BASE_URL`. Both are checked before any
 * file is read.
 */
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { D1HttpError } from "./lib/d1-http";
import { ROOT, withLocalBindings } from "./lib/local-state";
import { ProgressMeter } from "./lib/progress";
import { S3Error } from "./lib/r2-s3";
import { BUCKET_ENV, DATABASE_ENV, RemoteSetupError, remoteBucket, remoteDatabase, requireEnv } from "./lib/remote";
import {
  bindingBucket,
  DEFAULT_CONCURRENCY,
  DEFAULT_MULTIPART_THRESHOLD,
  DEFAULT_PART_SIZE,
  uploadWeights,
  type WeightsBucket,
  WeightsUploadError,
} from "./lib/weights";

const USAGE =
  "usage: npm run weights:upload -- --model MODEL --dir PATH [--remote [--database-id ID] [--bucket NAME]] [--multipart-threshold BYTES] [--part-size BYTES] [--concurrency N] [--retry-delay-ms MS] [--journal-dir PATH]";

/** The production database and bucket, both checked before hashing what may be hundreds of gigabytes. */
async function remoteTarget(flags: { databaseId?: string; bucket?: string }) {
  requireEnv([...new Set([...DATABASE_ENV, ...BUCKET_ENV])]);
  const database = await remoteDatabase("model_revisions", flags.databaseId);
  const { bucket, name } = await remoteBucket(flags.bucket);
  return { db: database.db, bucket, bucketName: name, where: `bucket ${name}, database ${database.id}` };
}

function positiveCount(flag: string, value: string | undefined, fallback: number, unit = "bytes"): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new WeightsUploadError(`${flag} must be a positive number of ${unit}`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      dir: { type: "string" },
      remote: { type: "boolean", default: false },
      "database-id": { type: "string" },
      bucket: { type: "string" },
      "multipart-threshold": { type: "string" },
      "part-size": { type: "string" },
      concurrency: { type: "string" },
      "retry-delay-ms": { type: "string" },
      "journal-dir": { type: "string" },
    },
    strict: true,
  });
  if (!values.model || !values.dir) throw new WeightsUploadError(USAGE);
  if (!values.remote && (values["database-id"] || values.bucket)) {
    throw new WeightsUploadError("--database-id and --bucket name production resources: give them with --remote");
  }
  const options = {
    model: values.model,
    // npm runs scripts from the project root; the folder is named relative to where the user stood.
    dir: resolve(process.env.INIT_CWD ?? process.cwd(), values.dir),
    multipartThreshold: positiveCount(
      "--multipart-threshold",
      values["multipart-threshold"],
      DEFAULT_MULTIPART_THRESHOLD,
    ),
    partSize: positiveCount("--part-size", values["part-size"], DEFAULT_PART_SIZE),
    concurrency: positiveCount("--concurrency", values.concurrency, DEFAULT_CONCURRENCY, "parts"),
    retryDelayMs: positiveCount("--retry-delay-ms", values["retry-delay-ms"], 1_000, "milliseconds"),
    log: (line: string) => console.log(line),
    progress: (total: number) => new ProgressMeter(total),
  };
  // A journal per target: a local and a production upload of the same folder are different uploads.
  const journalRoot = values["journal-dir"]
    ? resolve(process.env.INIT_CWD ?? process.cwd(), values["journal-dir"])
    : join(ROOT, ".wrangler", "weights-upload");
  const upload = (target: { db: D1Database; bucket: WeightsBucket }, where: string) =>
    uploadWeights(target, { ...options, journalDir: join(journalRoot, where) });
  let report: Awaited<ReturnType<typeof upload>>;
  if (values.remote) {
    const target = await remoteTarget({ databaseId: values["database-id"], bucket: values.bucket });
    console.log(`Uploading ${options.dir} as a revision of ${options.model} (production: ${target.where})`);
    report = await upload(target, `remote-${target.bucketName}`);
  } else {
    console.log(`Uploading ${options.dir} as a revision of ${options.model} (local R2)`);
    report = await withLocalBindings((env) => upload({ db: env.DB, bucket: bindingBucket(env.WEIGHTS) }, "local"));
  }
  const what = {
    uploaded: "published",
    republished: "already stored; main points at it again",
    unchanged: "already main; nothing uploaded",
  }[report.outcome];
  console.log(`revision ${report.revision} (${what})`);
  console.log(`files    ${report.files}`);
  console.log(`bytes    ${report.totalBytes}`);
}

main().catch((error: unknown) => {
  // What the operator can act on is said in a line; anything else keeps its stack.
  const known = [WeightsUploadError, RemoteSetupError, S3Error, D1HttpError].some((type) => error instanceof type);
  if (known) {
    console.error(`weights:upload: ${(error as Error).message}`);
  } else {
    console.error("weights:upload failed:", error);
  }
  process.exit(1);
});
