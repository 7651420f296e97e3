/**
 * `npm run weights:upload -- --model llama-2-7b --dir PATH [--multipart-threshold BYTES] [--part-size BYTES]`
 *
 * Uploads every file under PATH (recursively) to the local R2 bucket as a new revision of the
 * model, hashing each file as it streams, and publishes it as the model's `main` revision with an
 * audit event (actor `operator`). Prints the revision id, the number of files and the total size.
 * Uploading the same files again changes nothing.
 *
 * `--remote` is refused for now: see the README ("Uploading weights") for what it needs.
 */
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { withLocalBindings } from "./lib/local-state";
import { DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, uploadWeights, WeightsUploadError } from "./lib/weights";

const USAGE =
  "usage: npm run weights:upload -- --model MODEL --dir PATH [--multipart-threshold BYTES] [--part-size BYTES]";

function byteCount(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new WeightsUploadError(`${flag} must be a positive number of bytes`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: "string" },
      dir: { type: "string" },
      remote: { type: "boolean", default: false },
      "multipart-threshold": { type: "string" },
      "part-size": { type: "string" },
    },
    strict: true,
  });
  if (!values.model || !values.dir) throw new WeightsUploadError(USAGE);
  if (values.remote) {
    // Reaching production R2 needs either S3 API credentials or wrangler's remote bindings, and
    // the catalog rows need the remote D1; neither is wired up yet, and a half-remote upload
    // (bytes in R2, no revision) would be worse than none.
    throw new WeightsUploadError(
      "remote upload is not supported by this command yet; see README, 'Uploading weights', for what it needs",
    );
  }
  const options = {
    model: values.model,
    dir: resolve(values.dir),
    multipartThreshold: byteCount("--multipart-threshold", values["multipart-threshold"], DEFAULT_MULTIPART_THRESHOLD),
    partSize: byteCount("--part-size", values["part-size"], DEFAULT_PART_SIZE),
    log: (line: string) => console.log(line),
  };
  console.log(`Uploading ${options.dir} as a revision of ${options.model} (local R2)`);
  const report = await withLocalBindings((env) => uploadWeights(env, options));
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
  if (error instanceof WeightsUploadError) {
    console.error(`weights:upload: ${error.message}`);
  } else {
    console.error("weights:upload failed:", error);
  }
  process.exit(1);
});
