/**
 * R2 through its S3-compatible API (`https://<account>.r2.cloudflarestorage.com`), as a
 * `WeightsBucket`: how `weights:upload --remote` reaches the production bucket. Requests are
 * signed with AWS Signature V4 (aws4fetch) and carry the sha256 of their bytes in
 * `x-amz-content-sha256`, which R2 checks against what it receives, for whole files and each part.
 */
import { createHash } from "node:crypto";
import { AwsClient } from "aws4fetch";
import type { WeightsBucket, WeightsMultipartUpload } from "./weights";

/** How to reach one bucket. */
export interface S3BucketOptions {
  /** `https://<account>.r2.cloudflarestorage.com` (or a jurisdiction's, or a stand-in's). */
  endpoint: string;
  bucket: string;
  /** An R2 API token's S3 credentials (Object Read & Write on the bucket). */
  accessKeyId: string;
  secretAccessKey: string;
  /**
   * Attempts after a 5xx or 429 answer inside one call (default 0: `uploadWeights` retries every
   * request itself, network errors included, and logs each retry).
   */
  retries?: number;
}

/** A refusal from the S3 API, with its code (`SignatureDoesNotMatch`, `BadDigest`, …). */
export class S3Error extends Error {
  override name = "S3Error";
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

const ENTITIES: Record<string, string> = { quot: '"', amp: "&", lt: "<", gt: ">", apos: "'" };

/** The text of the first `<name>` element of an S3 XML answer. */
function xmlText(xml: string, name: string): string | undefined {
  const match = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
  return match?.[1]?.replace(/&(quot|amp|lt|gt|apos);/g, (_, entity: string) => ENTITIES[entity] ?? "");
}

/** An ETag without its quotes: the form the R2 binding gives and the catalog keeps. */
function bareEtag(etag: string | null | undefined): string {
  if (!etag) throw new S3Error(502, "MissingETag", "R2 answered without an ETag");
  return etag.replace(/^"|"$/g, "");
}

/** S3's error codes for the statuses a body-less answer can carry. */
const STATUS_CODES: Record<number, string> = { 403: "AccessDenied", 404: "NoSuchBucket" };

const sha256Hex = (bytes: Uint8Array | string) => createHash("sha256").update(bytes).digest("hex");

/** The bucket, with a check that the credentials reach it. */
export function s3Bucket(options: S3BucketOptions): WeightsBucket & { check(): Promise<void> } {
  const client = new AwsClient({
    accessKeyId: options.accessKeyId,
    secretAccessKey: options.secretAccessKey,
    service: "s3",
    region: "auto",
    retries: options.retries ?? 0,
  });
  const base = `${options.endpoint.replace(/\/+$/, "")}/${encodeURIComponent(options.bucket)}`;
  const objectUrl = (key: string, query = "") =>
    `${base}/${key.split("/").map(encodeURIComponent).join("/")}${query ? `?${query}` : ""}`;

  /** One signed request; anything but 2xx becomes an `S3Error` with S3's code and message. */
  async function call(
    method: string,
    url: string,
    init: { body?: Uint8Array | string; sha256?: string; headers?: Record<string, string> } = {},
  ): Promise<Response> {
    const body = init.body ?? "";
    const response = await client.fetch(url, {
      method,
      headers: { ...init.headers, "x-amz-content-sha256": init.sha256 ?? sha256Hex(body) },
      body: init.body,
    });
    if (response.ok) return response;
    // A HEAD answer has no body to name the error; its status says enough.
    const text = method === "HEAD" ? "" : await response.text();
    const code = xmlText(text, "Code") ?? STATUS_CODES[response.status] ?? `HTTP${response.status}`;
    throw new S3Error(
      response.status,
      code,
      `R2 refused ${method} ${new URL(url).pathname}: ${code}${xmlText(text, "Message") ? ` (${xmlText(text, "Message")})` : ""}`,
    );
  }

  /** The multipart upload `uploadId` of `key`, new or started by an earlier run. */
  function multipartUpload(key: string, uploadId: string): WeightsMultipartUpload {
    const upload = `uploadId=${encodeURIComponent(uploadId)}`;
    return {
      uploadId,
      async uploadPart(partNumber, bytes) {
        // `call` sends the part's own sha256, which R2 checks against the bytes it receives.
        const response = await call("PUT", objectUrl(key, `partNumber=${partNumber}&${upload}`), { body: bytes });
        return { partNumber, etag: bareEtag(response.headers.get("etag")) };
      },
      async complete(parts) {
        const xml = `<CompleteMultipartUpload>${parts
          .map((p) => `<Part><PartNumber>${p.partNumber}</PartNumber><ETag>"${p.etag}"</ETag></Part>`)
          .join("")}</CompleteMultipartUpload>`;
        const response = await call("POST", objectUrl(key, upload), {
          body: xml,
          headers: { "content-type": "application/xml" },
        });
        const text = await response.text();
        // S3 may answer a completion 200 and report its failure in the body.
        const failed = xmlText(text, "Code");
        if (failed) throw new S3Error(response.status, failed, `R2 did not complete ${key}: ${failed}`);
        return { etag: bareEtag(xmlText(text, "ETag")) };
      },
      async abort() {
        await call("DELETE", objectUrl(key, upload));
      },
    };
  }

  return {
    async check() {
      await call("HEAD", base);
    },

    async put(key, bytes, { contentType, sha256 }) {
      const response = await call("PUT", objectUrl(key), {
        body: bytes,
        sha256,
        headers: { "content-type": contentType },
      });
      return { etag: bareEtag(response.headers.get("etag")) };
    },

    async createMultipartUpload(key, { contentType }): Promise<WeightsMultipartUpload> {
      const started = await call("POST", objectUrl(key, "uploads"), { headers: { "content-type": contentType } });
      const uploadId = xmlText(await started.text(), "UploadId");
      if (!uploadId) throw new S3Error(502, "MissingUploadId", `R2 started no multipart upload of ${key}`);
      return multipartUpload(key, uploadId);
    },

    resumeMultipartUpload: (key, uploadId) => multipartUpload(key, uploadId),

    async delete(key) {
      await call("DELETE", objectUrl(key));
    },
  };
}
