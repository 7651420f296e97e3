/**
 * Uploads a folder of model weights to R2 and publishes it as a new revision of a model: the one
 * code path behind `npm run weights:upload` (local or production) and the synthetic weights
 * `npm start` seeds.
 *
 * Each file's sha256 is computed from the bytes as they are read and sent to R2, never taken from
 * a checksum file the uploader brings, so the manifest vouches for what R2 actually holds; R2
 * checks the hash of each request's bytes (of a whole file, and over the S3 API of each part).
 * Files are streamed: a small file goes in one `put`, a large one as a multipart upload, and no
 * more than one part is ever held in memory. (Neither the `getPlatformProxy()` R2 binding nor a
 * signed S3 request can take a stream of unknown length, so a part is the unit of buffering.)
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

/** Files above this size go to R2 as multipart uploads. */
export const DEFAULT_MULTIPART_THRESHOLD = 64 * 1024 * 1024;
/** Size of every multipart part but the last; also the most the uploader holds in memory. */
export const DEFAULT_PART_SIZE = 64 * 1024 * 1024;
/** R2 refuses parts smaller than 5 MiB, except the last. */
export const MIN_PART_SIZE = 5 * 1024 * 1024;
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
  /** Removes the object under `key`, if there is one. */
  delete(key: string): Promise<void>;
}

/** A multipart upload under way. */
export interface WeightsMultipartUpload {
  /** Sends part `partNumber` (from 1). */
  uploadPart(partNumber: number, bytes: Uint8Array): Promise<R2UploadedPart>;
  /** Joins the parts into the object; resolves to its etag. */
  complete(parts: R2UploadedPart[]): Promise<{ etag: string }>;
  /** Drops the parts sent so far. */
  abort(): Promise<void>;
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
      const upload = await r2.createMultipartUpload(key, { httpMetadata: { contentType } });
      return {
        uploadPart: (partNumber, bytes) => upload.uploadPart(partNumber, bytes),
        complete: async (parts) => ({ etag: (await upload.complete(parts)).etag }),
        abort: () => upload.abort(),
      };
    },
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

/** One `put`, with R2 checking the sha256 we computed against the bytes it received. */
async function putWhole(bucket: WeightsBucket, key: string, file: LocalFile, contentType: string) {
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
  const { etag } = await bucket.put(key, data, { contentType, sha256 });
  return { sha256, etag };
}

/** A multipart upload; aborted if anything fails, so no half-object lingers. */
async function putInParts(
  bucket: WeightsBucket,
  key: string,
  file: LocalFile,
  contentType: string,
  partSize: number,
  log: (line: string) => void,
) {
  const parts = Math.ceil(file.size / partSize);
  if (parts > MAX_PARTS) {
    throw new WeightsUploadError(`${file.path} would need ${parts} parts; R2 allows ${MAX_PARTS}: raise --part-size`);
  }
  const upload = await bucket.createMultipartUpload(key, { contentType });
  try {
    const hash = createHash("sha256");
    const uploaded: R2UploadedPart[] = [];
    // One buffer, refilled for each part: the upload of a part is awaited before it is reused.
    const buffer = Buffer.allocUnsafe(partSize);
    let filled = 0;
    let read = 0;
    const sendPart = async () => {
      const bytes = new Uint8Array(buffer.buffer, buffer.byteOffset, filled);
      uploaded.push(await upload.uploadPart(uploaded.length + 1, bytes));
      log(`  ${file.path}: part ${uploaded.length}/${parts}`);
      filled = 0;
    };
    for await (const chunk of createReadStream(file.absolute, { highWaterMark: 1024 * 1024 })) {
      const bytes = chunk as Buffer;
      read += bytes.byteLength;
      if (read > file.size) throw changedWhileReading(file, read);
      hash.update(bytes);
      let offset = 0;
      while (offset < bytes.byteLength) {
        const n = Math.min(partSize - filled, bytes.byteLength - offset);
        bytes.copy(buffer, filled, offset, offset + n);
        filled += n;
        offset += n;
        if (filled === partSize) await sendPart();
      }
    }
    if (read !== file.size) throw changedWhileReading(file, read);
    if (filled > 0) await sendPart();
    const { etag } = await upload.complete(uploaded);
    return { sha256: hash.digest("hex"), etag };
  } catch (error) {
    await upload.abort().catch(() => undefined);
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

  const uploadId = randomIds(systemClock).id("upl");
  const uploaded: UploadedFile[] = [];
  try {
    for (const file of local) {
      const r2Key = `models/${model}/uploads/${uploadId}/${file.path}`;
      const contentType = contentTypeOf(file.path);
      log(`  ${file.path} (${file.size} bytes)${file.size > threshold ? " in parts" : ""}`);
      const { sha256, etag } =
        file.size > threshold
          ? await putInParts(target.bucket, r2Key, file, contentType, partSize, log)
          : await putWhole(target.bucket, r2Key, file, contentType);
      uploaded.push({ path: file.path, size: file.size, sha256, r2Key, etag, contentType });
    }
  } catch (error) {
    // Nothing is published, so the files this attempt stored would never be served: remove them
    // (best effort). A failure while publishing leaves them, as the revision may have landed.
    await Promise.all(uploaded.map((f) => target.bucket.delete(f.r2Key).catch(() => undefined)));
    throw error;
  }
  const revision = await publish(db, model, uploaded);
  return { model, revision, files: uploaded.length, totalBytes, outcome: "uploaded" };
}
