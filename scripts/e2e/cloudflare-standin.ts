/**
 * A local stand-in for the two Cloudflare APIs `weights:upload --remote` talks to, for tests:
 *
 * - D1's REST endpoint `POST /client/v4/accounts/{account}/d1/database/{id}/raw` (bearer token;
 *   `{sql}` or `{batch: [{sql}]}`; rows as `{columns, rows}`; a batch is one transaction; errors as
 *   `{success: false, errors: [{code, message}]}`), over a real SQLite file with the project's
 *   migrations applied.
 * - R2's S3 API, path-style: HeadBucket, PutObject, DeleteObject, CreateMultipartUpload,
 *   UploadPart, CompleteMultipartUpload, AbortMultipartUpload. Every request's AWS Signature V4 is checked
 *   (computed here independently of the client's signer) and so is its `x-amz-content-sha256`
 *   against the bytes received, as S3 does; parts other than the last must be at least 5 MiB.
 *   Tests can make a part fail: refused for good, or once with a 500 or a dropped connection.
 */
import { createHash, createHmac } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { ROOT } from "../lib/local-state";

const MIN_PART_BYTES = 5 * 1024 * 1024;

export interface StoredObject {
  bytes: Buffer;
  contentType: string;
  etag: string;
  parts: number;
}

interface PendingUpload {
  key: string;
  contentType: string;
  parts: Map<number, { bytes: Buffer; etag: string }>;
}

export interface CloudflareStandIn {
  /** For `CLOUDFLARE_API_BASE_URL`. */
  apiBase: string;
  /** For `R2_ENDPOINT`. */
  s3Endpoint: string;
  /** The D1 database, to read what the upload wrote. */
  db: DatabaseSync;
  objects: Map<string, StoredObject>;
  uploads: Map<string, PendingUpload>;
  /** Every S3 request, as `METHOD /path?query`. */
  s3Requests: string[];
  /** S3 `UploadPart` calls to refuse, by part number. */
  refuseParts: Set<number>;
  /**
   * S3 `UploadPart` calls to fail once, by part number: `500` answers InternalError, `drop` closes
   * the connection without an answer. Each is taken out of the map when it fires.
   */
  failPartOnce: Map<number, "500" | "drop">;
  close(): Promise<void>;
}

export interface StandInOptions {
  dbFile: string;
  apiToken: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** Apply the migrations (default); off to see a database that lacks them. */
  migrate?: boolean;
}

const sha256 = (data: Buffer | string) => createHash("sha256").update(data).digest("hex");
const hmac = (key: Buffer | string, data: string) => createHmac("sha256", key).update(data).digest();

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((done, fail) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => done(Buffer.concat(chunks)));
    req.on("error", fail);
  });
}

function listen(server: Server): Promise<string> {
  return new Promise((done) =>
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      done(`http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`);
    }),
  );
}

/** S3's percent-encoding: everything but unreserved characters. */
const s3Encode = (text: string) =>
  encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** Why a request's Signature V4 does not hold, or null when it does. */
function signatureProblem(
  req: IncomingMessage,
  body: Buffer,
  credentials: { accessKeyId: string; secretAccessKey: string },
): { code: string; message: string } | null {
  const auth = req.headers.authorization ?? "";
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/s3\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(
      auth,
    );
  if (!match) return { code: "AccessDenied", message: "no AWS4-HMAC-SHA256 authorization" };
  const [, keyId, day, region, signedHeaders, signature] = match as unknown as string[];
  if (keyId !== credentials.accessKeyId) return { code: "InvalidAccessKeyId", message: "unknown access key" };
  if (region !== "auto") return { code: "AuthorizationHeaderMalformed", message: `region ${region}` };
  const amzDate = String(req.headers["x-amz-date"] ?? "");
  if (!amzDate.startsWith(day as string))
    return { code: "AccessDenied", message: "x-amz-date does not match the credential" };
  const payloadHash = String(req.headers["x-amz-content-sha256"] ?? "");
  if (!/^[0-9a-f]{64}$/.test(payloadHash)) {
    return { code: "InvalidRequest", message: "x-amz-content-sha256 must be the payload's sha256" };
  }
  if (payloadHash !== sha256(body)) return { code: "XAmzContentSHA256Mismatch", message: "payload hash mismatch" };
  const names = (signedHeaders as string).split(";");
  if (!names.includes("host") || !names.includes("x-amz-content-sha256")) {
    return { code: "AccessDenied", message: "host and x-amz-content-sha256 must be signed" };
  }
  const url = new URL(req.url ?? "/", "http://x");
  const path = url.pathname
    .split("/")
    .map((segment) => s3Encode(decodeURIComponent(segment)))
    .join("/");
  const query = [...url.searchParams]
    .map(([k, v]) => `${s3Encode(k)}=${s3Encode(v)}`)
    .sort()
    .join("&");
  const headers = names
    .map(
      (name) =>
        `${name}:${String(req.headers[name] ?? "")
          .trim()
          .replace(/\s+/g, " ")}\n`,
    )
    .join("");
  const canonical = [req.method, path, query, headers, signedHeaders, payloadHash].join("\n");
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonical)].join("\n");
  let key = hmac(`AWS4${credentials.secretAccessKey}`, day as string);
  for (const part of [region as string, "s3", "aws4_request"]) key = hmac(key, part);
  if (hmac(key, toSign).toString("hex") !== signature) {
    return { code: "SignatureDoesNotMatch", message: "the request signature does not match" };
  }
  return null;
}

function s3Error(res: ServerResponse, status: number, code: string, message: string) {
  res.writeHead(status, { "content-type": "application/xml" });
  res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message></Error>`);
}

const md5 = (data: Buffer) => createHash("md5").update(data).digest("hex");

export async function startCloudflareStandIn(options: StandInOptions): Promise<CloudflareStandIn> {
  const db = new DatabaseSync(options.dbFile);
  if (options.migrate !== false) {
    const dir = join(ROOT, "migrations");
    for (const file of readdirSync(dir)
      .filter((f) => f.endsWith(".sql"))
      .sort()) {
      db.exec(readFileSync(join(dir, file), "utf8"));
    }
  }
  const objects = new Map<string, StoredObject>();
  const uploads = new Map<string, PendingUpload>();
  const s3Requests: string[] = [];
  const refuseParts = new Set<number>();
  const failPartOnce = new Map<number, "500" | "drop">();

  const api = createServer(async (req, res) => {
    const body = await readBody(req);
    const reply = (status: number, payload: unknown) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(payload));
    };
    if (req.method !== "POST" || !/^\/client\/v4\/accounts\/[^/]+\/d1\/database\/[^/]+\/raw$/.test(req.url ?? "")) {
      return reply(404, { success: false, errors: [{ code: 7003, message: "Could not route" }], result: null });
    }
    if (req.headers.authorization !== `Bearer ${options.apiToken}`) {
      return reply(403, { success: false, errors: [{ code: 10000, message: "Authentication error" }], result: null });
    }
    const input = JSON.parse(body.toString()) as { sql?: string; batch?: { sql: string }[] };
    const statements = input.batch ?? (input.sql ? [{ sql: input.sql }] : []);
    const results: unknown[] = [];
    try {
      db.exec("BEGIN");
      for (const { sql } of statements) {
        const statement = db.prepare(sql);
        const columns = statement.columns().map((c) => c.name);
        statement.setReturnArrays(true);
        if (columns.length > 0) {
          results.push({ results: { columns, rows: statement.all() }, success: true, meta: {} });
        } else {
          const run = statement.run();
          results.push({ results: { columns: [], rows: [] }, success: true, meta: { changes: Number(run.changes) } });
        }
      }
      db.exec("COMMIT");
    } catch (error) {
      if (db.isTransaction) db.exec("ROLLBACK");
      return reply(400, {
        success: false,
        errors: [{ code: 7500, message: `${(error as Error).message}: SQLITE_ERROR` }],
        messages: [],
        result: null,
      });
    }
    reply(200, { success: true, errors: [], messages: [], result: results });
  });

  const s3 = createServer(async (req, res) => {
    const body = await readBody(req);
    const url = new URL(req.url ?? "/", "http://x");
    s3Requests.push(`${req.method} ${url.pathname}${url.search}`);
    const problem = signatureProblem(req, body, options);
    if (problem) return s3Error(res, 403, problem.code, problem.message);
    const [bucket, ...keyParts] = url.pathname.slice(1).split("/").map(decodeURIComponent);
    if (bucket !== options.bucket) return s3Error(res, 404, "NoSuchBucket", "no such bucket");
    const key = keyParts.join("/");
    const uploadId = url.searchParams.get("uploadId");
    const upload = uploadId ? uploads.get(uploadId) : undefined;
    if (uploadId && (!upload || upload.key !== key)) return s3Error(res, 404, "NoSuchUpload", "no such upload");

    if (req.method === "HEAD" && !key) {
      res.writeHead(200);
      return res.end();
    }
    if (req.method === "PUT" && upload) {
      const partNumber = Number(url.searchParams.get("partNumber"));
      if (!Number.isInteger(partNumber) || partNumber < 1) return s3Error(res, 400, "InvalidArgument", "partNumber");
      if (refuseParts.has(partNumber)) return s3Error(res, 400, "BadDigest", "refused on request");
      const failure = failPartOnce.get(partNumber);
      failPartOnce.delete(partNumber);
      if (failure === "500") return s3Error(res, 500, "InternalError", "failed once on request");
      if (failure === "drop") return req.socket.destroy();
      const etag = md5(body);
      upload.parts.set(partNumber, { bytes: body, etag });
      res.writeHead(200, { etag: `"${etag}"` });
      return res.end();
    }
    if (req.method === "PUT" && key) {
      const etag = md5(body);
      objects.set(key, { bytes: body, contentType: String(req.headers["content-type"] ?? ""), etag, parts: 0 });
      res.writeHead(200, { etag: `"${etag}"` });
      return res.end();
    }
    if (req.method === "POST" && url.searchParams.has("uploads")) {
      const id = `u${uploads.size + 1}-${Date.now()}`;
      uploads.set(id, { key, contentType: String(req.headers["content-type"] ?? ""), parts: new Map() });
      res.writeHead(200, { "content-type": "application/xml" });
      return res.end(
        `<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${key}</Key><UploadId>${id}</UploadId></InitiateMultipartUploadResult>`,
      );
    }
    if (req.method === "POST" && upload && uploadId) {
      const listed = [
        ...body.toString().matchAll(/<Part><PartNumber>(\d+)<\/PartNumber><ETag>"?([0-9a-f]+)"?<\/ETag><\/Part>/g),
      ];
      const chosen = listed.map(([, n, etag]) => ({ n: Number(n), etag, part: upload.parts.get(Number(n)) }));
      if (
        chosen.length === 0 ||
        chosen.some((c, i) => !c.part || c.part.etag !== c.etag || (i > 0 && c.n <= (chosen[i - 1] as { n: number }).n))
      ) {
        return s3Error(res, 400, "InvalidPart", "a listed part was not uploaded, or not in order");
      }
      if (chosen.slice(0, -1).some((c) => (c.part as { bytes: Buffer }).bytes.byteLength < MIN_PART_BYTES)) {
        return s3Error(res, 400, "EntityTooSmall", "a part other than the last is under 5 MiB");
      }
      const bytes = Buffer.concat(chosen.map((c) => (c.part as { bytes: Buffer }).bytes));
      const etag = `${md5(Buffer.concat(chosen.map((c) => Buffer.from(c.etag as string, "hex"))))}-${chosen.length}`;
      objects.set(key, { bytes, contentType: upload.contentType, etag, parts: chosen.length });
      uploads.delete(uploadId);
      res.writeHead(200, { "content-type": "application/xml" });
      return res.end(
        `<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${key}</Key><ETag>&quot;${etag}&quot;</ETag></CompleteMultipartUploadResult>`,
      );
    }
    if (req.method === "DELETE" && upload && uploadId) {
      uploads.delete(uploadId);
      res.writeHead(204);
      return res.end();
    }
    if (req.method === "DELETE" && key) {
      objects.delete(key);
      res.writeHead(204);
      return res.end();
    }
    s3Error(res, 501, "NotImplemented", `${req.method} ${url.pathname}${url.search}`);
  });

  const [apiOrigin, s3Origin] = await Promise.all([listen(api), listen(s3)]);
  return {
    apiBase: `${apiOrigin}/client/v4`,
    s3Endpoint: s3Origin,
    db,
    objects,
    uploads,
    s3Requests,
    refuseParts,
    failPartOnce,
    async close() {
      await Promise.all([api, s3].map((server) => new Promise((done) => server.close(done))));
      db.close();
    },
  };
}
