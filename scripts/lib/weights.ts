/**
 * Uploads a folder of model weights to R2 and publishes it as a new revision of a model: the one
 * code path behind `npm run weights:upload` (local or production) and the synthetic weights
 * `npm start` seeds.
 *
 * Each file's sha256 is computed from the bytes as they are read and sent to R2, never taken from
 * a checksum file the uploader brings, so the manifest vouches for what R2 actually holds; R2
 * checks the hash of each request's bytes (of a whole file, and over the S3 API of each part).
 * Files are streamed: a small file goes in one `put`, a large one as a multipart upload with a few
 * parts in flight at once (so at most that many parts, plus the one being read, are in memory:
 * neither the `getPlatformProxy()` R2 binding nor a signed S3 request can take a stream of unknown
 * length, so a part is the unit of buffering). Every request is retried with exponential backoff
 * on network errors and 5xx/429 answers. With a journal file (`weights:upload` keeps one under
 * `.wrangler/weights-upload/`), an interrupted upload keeps what R2 stored and the next run sends
 * only the rest: files and parts already acknowledged are read (to hash them) but not sent again.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { writeAudited } from "../../worker/audit/log";
import { createDatabase, type Database } from "../../worker/db/client";
import {
  listRevisionFiles,
  publishRevision,
  resolveRevision,
  revisionId,
  type UploadedFile,
} from "../../worker/downloads/catalog";
import { systemClock } from "../../worker/platform/clock";
import { randomIds } from "../../worker/platform/ids";
import { findModel } from "../../worker/policy/families";
import type { ProgressMeter } from "./progress";
import { S3Error } from "./r2-s3";
import { UploadJournal } from "./upload-journal";

/** Files above this size go to R2 as multipart uploads. */
export const DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024;
/** Size of every multipart part but the last; also the most the uploader holds in memory. */
export const DEFAULT_PART_SIZE = 64 * 1024 * 1024;
/** R2 refuses parts smaller than 5 MiB, except the last. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
/** Parts in flight at once for one file. */
export const DEFAULT_CONCURRENCY = 4;
/** Attempts of one request before the upload stops (and can be resumed). */
const MAX_ATTEMPTS = 6;
/** R2 allows at most 10,000 parts per object. */
const MAX_PARTS = 10_000;
/** Who publishes, as the audit log names them. */
const OPERATOR = "operator";

/**
 * Where the bytes go: the R2 binding locally (`bindingBucket`), R2's S3 API in production
 * (`s3Bucket`). A sha256 given with bytes is checked by R2 against the bytes it received.
 */
export interface WeightsBucket {
  /** Stores `bytes` under `key` in one request; resolves to the object's etag. */
  put(key: string, bytes: Uint8Array, options: { contentType: string; sha256: string }): Promise<{ etag: string }>;
  /** Starts a multipart upload of `key`. */
  createMultipartUpload(key: string, options: { contentType: string }): Promise<WeightsMultipartUpload>;
  /** Continues a multipart upload an earlier run started. */
  resumeMultipartUpload(key: string, uploadId: string): WeightsMultipartUpload;
  /** Removes the object under `key`, if there is one. */
  delete(key: string): Promise<void>;
}

/** A multipart upload under way. */
export interface WeightsMultipartUpload {
  /** What `resumeMultipartUpload` takes to continue it. */
  uploadId: string;
  /** Sends part `partNumber` (from 1). */
  uploadPart(partNumber: number, bytes: Uint8Array): Promise<R2UploadedPart>;
  /** Joins the parts into the object; resolves to its etag. */
  complete(parts: R2UploadedPart[]): Promise<{ etag: string }>;
  /** Drops the parts sent so far. */
  abort(): Promise<void>;
}

function multipart(upload: R2MultipartUpload): WeightsMultipartUpload {
  return {
    uploadId: upload.uploadId,
    uploadPart: (partNumber, bytes) => upload.uploadPart(partNumber, bytes),
    complete: async (parts) => ({ etag: (await upload.complete(parts)).etag }),
    abort: () => upload.abort(),
  };
}

/** The R2 binding (`getPlatformProxy()`, Miniflare) as a `WeightsBucket`. */
export function bindingBucket(r2: R2Bucket): WeightsBucket {
  return {
    async put(key, bytes, { contentType, sha256 }) {
      const object = await r2.put(key, bytes, { httpMetadata: { contentType }, sha256 });
      if (!object) throw new Error(`R2 did not store ${key}`);
      return { etag: object.etag };
    },
    async createMultipartUpload(key, { contentType }) {
      return multipart(await r2.createMultipartUpload(key, { httpMetadata: { contentType } }));
    },
    resumeMultipartUpload: (key, uploadId) => multipart(r2.resumeMultipartUpload(key, uploadId)),
    delete: (key) => r2.delete(key),
  };
}

/** A problem the operator can fix (wrong model id, empty folder): exit 1 with the message, no stack. */
export class WeightsUploadError extends Error {
  override name = "WeightsUploadError";
}

/** What an upload should do. */
export interface WeightsUploadOptions {
  /** A model id of a known license family, e.g. `llama-2-7b`. */
  model: string;
  /** The local folder whose files (recursively) make the revision. */
  dir: string;
  /** Files larger than this many bytes are uploaded in parts (default 64 MiB). */
  multipartThreshold?: number;
  /** Bytes per part (default 64 MiB, at least 5 MiB). */
  partSize?: number;
  /** Progress lines; default silent. */
  log?: (line: string) => void;
  /** Bytes done, rate and time left; default none. */
  progress?: (total: number) => ProgressMeter;
  /** Parts of one file in flight at once (default 4). */
  concurrency?: number;
  /** The first pause before a retry, doubled each time (default 1 s; jittered). */
  retryDelayMs?: number;
  /**
   * Where to keep the journal that lets an interrupted upload resume (a file per model and
   * revision is made in this folder). Without it, a failed upload removes what it stored.
   */
  journalDir?: string;
}

/** What an upload did. */
export interface WeightsUploadReport {
  model: string;
  revision: string;
  files: number;
  totalBytes: number;
  /**
   * `uploaded`: new bytes went to R2 and the revision was published. `republished`: the revision
   * existed already and `main` was moved back to it. `unchanged`: `main` already is this revision.
   */
  outcome: "uploaded" | "republished" | "unchanged";
}

/** A file found in the folder. */
interface LocalFile {
  /** Relative to the folder, with `/` separators: the path clients see. */
  path: string;
  absolute: string;
  size: number;
}

/** Every regular file under `dir`, by relative path; symlinks and other special files are skipped. */
export async function listLocalFiles(dir: string): Promise<LocalFile[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const files: LocalFile[] = [];
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const absolute = join(entry.parentPath, entry.name);
    files.push({ path: relative(dir, absolute).split(sep).join("/"), absolute, size: (await stat(absolute)).size });
  }
  return files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The content type a file is served with, from its name. */
export function contentTypeOf(path: string): string {
  const name = path.split("/").at(-1) ?? path;
  if (name.endsWith(".json")) return "application/json";
  if (name.endsWith(".md")) return "text/markdown; charset=utf-8";
  if (name.endsWith(".txt") || name.endsWith(".chk") || name === "LICENSE" || name === "NOTICE") {
    return "text/plain; charset=utf-8";
  }
  return "application/octet-stream";
}

/** sha256 of a local file, streamed. */
async function hashLocalFile(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function changedWhileReading(file: LocalFile, read: number): WeightsUploadError {
  return new WeightsUploadError(
    `${file.path} changed while it was uploaded (${read} bytes read, ${file.size} expected)`,
  );
}

/** How one upload run sends: retries, parallel parts, the journal and progress. */
interface Transfer {
  bucket: WeightsBucket;
  journal: UploadJournal;
  meter: ProgressMeter | undefined;
  log: (line: string) => void;
  concurrency: number;
  retryDelayMs: number;
}

const NETWORK_CODES = new Set(["ECONNRESET", "ECONNREFUSED", "ETIMEDOUT", "EPIPE", "EAI_AGAIN", "ENOTFOUND"]);

/**
 * Whether a failed request may succeed when sent again: the network failed (fetch's `TypeError`,
 * a reset socket) or R2 answered 5xx or 429. A refusal (a bad digest, wrong credentials) is final.
 */
export function isRetryable(error: unknown): boolean {
  if (error instanceof S3Error) return error.status >= 500 || error.status === 429;
  if (error instanceof WeightsUploadError) return false;
  if (error instanceof TypeError) return true;
  const code = (error as { code?: unknown; cause?: { code?: unknown } } | null)?.code;
  const causeCode = (error as { cause?: { code?: unknown } } | null)?.cause?.code;
  return NETWORK_CODES.has(String(code)) || NETWORK_CODES.has(String(causeCode));
}

/** `send`, again after 1, 2, 4 … × `retryDelayMs` (with jitter) while it fails retryably. */
async function withRetries<T>(transfer: Transfer, what: string, send: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await send();
    } catch (error) {
      if (attempt >= MAX_ATTEMPTS || !isRetryable(error)) throw error;
      const pause = Math.round(transfer.retryDelayMs * 2 ** (attempt - 1) * (0.5 + Math.random() / 2));
      transfer.log(`  ${what}: ${String(error)}; retrying in ${pause} ms (attempt ${attempt + 1}/${MAX_ATTEMPTS})`);
      await new Promise((done) => setTimeout(done, pause));
    }
  }
}

/** One `put`, with R2 checking the sha256 we computed against the bytes it received. */
async function putWhole(transfer: Transfer, key: string, file: LocalFile, contentType: string) {
  const hash = createHash("sha256");
  const data = Buffer.allocUnsafe(file.size);
  let read = 0;
  for await (const chunk of createReadStream(file.absolute)) {
    const bytes = chunk as Buffer;
    if (read + bytes.byteLength > file.size) throw changedWhileReading(file, read + bytes.byteLength);
    hash.update(bytes);
    bytes.copy(data, read);
    read += bytes.byteLength;
  }
  if (read !== file.size) throw changedWhileReading(file, read);
  const sha256 = hash.digest("hex");
  const { etag } = await withRetries(transfer, file.path, () =>
    transfer.bucket.put(key, data, { contentType, sha256 }),
  );
  transfer.meter?.sentBytes(file.size);
  return { sha256, etag };
}

/**
 * A multipart upload with up to `transfer.concurrency` parts in flight, continuing the one the
 * journal recorded for this file (its acknowledged parts are read and hashed, not sent again).
 */
async function putInParts(transfer: Transfer, key: string, file: LocalFile, contentType: string, partSize: number) {
  const { bucket, journal } = transfer;
  const earlier = journal.entry(file.path)?.multipart;
  // A resumed file keeps the part size its parts were cut with.
  const size = earlier?.partSize ?? partSize;
  const parts = Math.ceil(file.size / size);
  if (parts > MAX_PARTS) {
    throw new WeightsUploadError(`${file.path} would need ${parts} parts; R2 allows ${MAX_PARTS}: raise --part-size`);
  }
  const upload = earlier
    ? bucket.resumeMultipartUpload(key, earlier.uploadId)
    : await withRetries(transfer, file.path, () => bucket.createMultipartUpload(key, { contentType }));
  if (!earlier) journal.multipartStarted(file.path, upload.uploadId, size);
  const stored = new Map((earlier?.parts ?? []).map((p) => [p.partNumber, p.etag]));
  if (stored.size > 0) transfer.log(`  ${file.path}: ${stored.size}/${parts} parts already stored`);
  try {
    const hash = createHash("sha256");
    const inFlight = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;
    let buffer = Buffer.allocUnsafe(size);
    let filled = 0;
    let read = 0;
    let partNumber = 0;
    const sendPart = async () => {
      partNumber++;
      const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, filled);
      filled = 0;
      if (stored.has(partNumber)) {
        transfer.meter?.skippedBytes(bytes.byteLength);
        return;
      }
      // A part in flight keeps its buffer; the next part is read into a fresh one.
      buffer = Buffer.allocUnsafe(size);
      while (inFlight.size >= transfer.concurrency) await Promise.race(inFlight);
      if (failure) throw failure.error;
      const number = partNumber;
      const sending: Promise<void> = withRetries(transfer, `${file.path} part ${number}`, () =>
        upload.uploadPart(number, bytes),
      )
        .then((part) => {
          stored.set(number, part.etag);
          journal.partStored(file.path, { partNumber: number, etag: part.etag });
          transfer.meter?.sentBytes(bytes.byteLength);
          if (!transfer.meter?.tty) transfer.log(`  ${file.path}: part ${number}/${parts}`);
        })
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => inFlight.delete(sending));
      inFlight.add(sending);
    };
    for await (const chunk of createReadStream(file.absolute, { highWaterMark: 1024 * 1024 })) {
      const bytes = chunk as Buffer;
      read += bytes.byteLength;
      if (read > file.size) throw changedWhileReading(file, read);
      hash.update(bytes);
      let offset = 0;
      while (offset < bytes.byteLength) {
        const n = Math.min(size - filled, bytes.byteLength - offset);
        bytes.copy(buffer, filled, offset, offset + n);
        filled += n;
        offset += n;
        if (filled === size) await sendPart();
      }
    }
    if (read !== file.size) throw changedWhileReading(file, read);
    if (filled > 0) await sendPart();
    await Promise.all(inFlight);
    // Narrowed by the callbacks above, which TypeScript cannot see.
    const failed = failure as { error: unknown } | undefined;
    if (failed) throw failed.error;
    const list = [...stored].map(([n, etag]) => ({ partNumber: n, etag })).sort((a, b) => a.partNumber - b.partNumber);
    const { etag } = await withRetries(transfer, `${file.path} completion`, () => upload.complete(list));
    return { sha256: hash.digest("hex"), etag };
  } catch (error) {
    // With a journal the parts stay for the next run; without one nothing could resume them.
    if (!journal.persistent) await upload.abort().catch(() => undefined);
    throw error;
  }
}

/** Publishes a revision and its audit event in one batch (the audit chain is the lock). */
async function publish(db: Database, model: string, files: UploadedFile[]): Promise<string> {
  const clock = systemClock;
  return writeAudited({ db, clock, ids: randomIds(clock) }, async () => {
    const published = await publishRevision(db, model, files, clock.now().toISOString(), OPERATOR);
    return { statements: published.statements, events: [published.event], result: published.id };
  });
}

/**
 * Uploads every file under `options.dir` as a new revision of `options.model` and points `main`
 * at it. Idempotent: the revision id is a hash of the files' paths, sizes and sha256s, so when a
 * revision with exactly these files exists already nothing is uploaded again; `main` is moved
 * back to it if it points elsewhere, and left alone (no audit event) if it already points there.
 */
export async function uploadWeights(
  target: { db: D1Database; bucket: WeightsBucket },
  options: WeightsUploadOptions,
): Promise<WeightsUploadReport> {
  const { model } = options;
  const log = options.log ?? (() => {});
  const threshold = options.multipartThreshold ?? DEFAULT_MULTIPART_THRESHOLD;
  const partSize = options.partSize ?? DEFAULT_PART_SIZE;
  if (!findModel(model)) throw new WeightsUploadError(`unknown model ${model}: not in any license family`);
  if (!Number.isInteger(partSize) || partSize < MIN_PART_SIZE) {
    throw new WeightsUploadError(`the part size must be at least ${MIN_PART_SIZE} bytes (R2's minimum)`);
  }
  const local = await listLocalFiles(options.dir).catch((error: NodeJS.ErrnoException) => {
    throw new WeightsUploadError(`cannot read ${options.dir}: ${error.code ?? error.message}`);
  });
  if (local.length === 0) throw new WeightsUploadError(`${options.dir} holds no files`);
  const totalBytes = local.reduce((n, f) => n + f.size, 0);
  const db = createDatabase(target.db);

  // Hash first to learn the revision id, so an unchanged folder costs a local read, not an upload.
  // The hashes stored are still those of the upload pass below, should a file change meanwhile.
  const planned = await Promise.all(
    local.map(async (f) => ({ path: f.path, size: f.size, sha256: await hashLocalFile(f.absolute) })),
  );
  const plannedId = await revisionId(
    model,
    planned.map((f) => ({ ...f, r2Key: "", etag: "", contentType: "" })),
  );
  const existing = await resolveRevision(db, model, plannedId);
  if (existing) {
    const main = await resolveRevision(db, model);
    const report = { model, revision: existing.id, files: existing.fileCount, totalBytes: existing.totalBytes };
    if (main?.id === existing.id) return { ...report, outcome: "unchanged" };
    await publish(db, model, await listRevisionFiles(db, existing.id));
    return { ...report, outcome: "republished" };
  }

  const journal = UploadJournal.open(
    options.journalDir ? join(options.journalDir, `${model}-${plannedId}.json`) : undefined,
    model,
    plannedId,
    randomIds(systemClock).id("upl"),
  );
  const meter = options.progress?.(totalBytes);
  const transfer: Transfer = {
    bucket: target.bucket,
    journal,
    meter,
    log: meter ? (line) => meter.line(line) : log,
    concurrency: options.concurrency ?? DEFAULT_CONCURRENCY,
    retryDelayMs: options.retryDelayMs ?? 1_000,
  };
  if (journal.resumed) transfer.log(`  resuming an interrupted upload (${journal.uploadKey})`);
  const uploaded: UploadedFile[] = [];
  try {
    for (const file of local) {
      const r2Key = `models/${model}/uploads/${journal.uploadKey}/${file.path}`;
      const contentType = contentTypeOf(file.path);
      const done = journal.entry(file.path)?.stored;
      if (done) {
        // The revision id covers every file's sha256, so a stored file is this very file.
        meter?.skippedBytes(file.size);
        uploaded.push({ path: file.path, size: file.size, ...done, r2Key, contentType });
        continue;
      }
      transfer.log(`  ${file.path} (${file.size} bytes)${file.size > threshold ? " in parts" : ""}`);
      const { sha256, etag } =
        file.size > threshold
          ? await putInParts(transfer, r2Key, file, contentType, partSize)
          : await putWhole(transfer, r2Key, file, contentType);
      journal.stored(file.path, { sha256, etag });
      uploaded.push({ path: file.path, size: file.size, sha256, r2Key, etag, contentType });
    }
  } catch (error) {
    meter?.finish();
    if (journal.persistent) {
      // What R2 acknowledged stays; the next run with the same folder sends only the rest.
      transfer.log("  stopped; run the same command again to resume where it stopped");
      throw error;
    }
    // Nothing is published, so the files this attempt stored would never be served: remove them
    // (best effort). A failure while publishing leaves them, as the revision may have landed.
    await Promise.all(uploaded.map((f) => target.bucket.delete(f.r2Key).catch(() => undefined)));
    throw error;
  }
  meter?.finish();
  const revision = await publish(db, model, uploaded);
  journal.remove();
  return { model, revision, files: uploaded.length, totalBytes, outcome: "uploaded" };
}
