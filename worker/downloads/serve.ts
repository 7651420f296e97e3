import type { Context } from "hono";
import type { ModelFile } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { assertCovered } from "../grants/coverage";
import { reacceptanceOverdue, reacceptanceProblem } from "../licenses/reacceptance";
import { recordDownload } from "../observability/analytics";
import { IsolateMemory } from "../platform/isolate-memory";
import { findModel } from "../policy/families";
import type { LicenseFamily } from "../policy/types";
import { exportRefusal, fromRestrictedCountry } from "../screening/use-country";
import { memberMayUseToken } from "../tokens/service";
import {
  budgetHasRoom,
  findAndReserve,
  findServableLink,
  reserveBytes,
  returnBytes,
  type ServableLink,
} from "./budgets";
import { forgetFile, knownFile, rememberFile } from "./catalog";
import { linkByteBudget } from "./links";
import { planRange, type RangePlan } from "./range";
import { recordDownloadRow } from "./record";
import { type VerifiedLink, verifyLink } from "./signing";

/**
 * `Content-Disposition` for a file's last path segment (RFC 6266): an ASCII `filename` fallback
 * with anything that could end the quoted string or the header replaced, and the exact name as
 * UTF-8 in `filename*` (RFC 8187), so the header stays ASCII whatever the file is called.
 */
function contentDisposition(path: string): string {
  const base = path.split("/").at(-1) || "download";
  const fallback = base.replace(/[^\x20-\x7e]|["\\%]/g, "_");
  let encoded = "";
  for (const byte of new TextEncoder().encode(base)) {
    const ch = String.fromCharCode(byte);
    encoded += /[A-Za-z0-9!#$&+.^_`|~-]/.test(ch) ? ch : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return `attachment; filename="${fallback}"; filename*=UTF-8''${encoded}`;
}

function hexToBase64(hex: string): string {
  let binary = "";
  for (let i = 0; i < hex.length; i += 2) binary += String.fromCharCode(Number.parseInt(hex.slice(i, i + 2), 16));
  return btoa(binary);
}

/**
 * Links refused for good in this isolate, by database and signed claims, with the refusal's
 * detail. A revoked grant, or a revoked or expired token, never comes back (revocation is final),
 * so such a link is refused again before any call to D1 or R2: hammering a dead link costs one
 * lookup per isolate.
 */
const deadLinks = new IsolateMemory<string>(10_000);

/** A link's key among the dead: its id with the grant and token it was signed for. */
const deadKey = (claims: VerifiedLink) => `${claims.jti} ${claims.gnt} ${claims.tok}`;

/** The refusal of a link this isolate found dead, if it did. */
function deadLinkRefusal(db: object, claims: VerifiedLink): AppError | undefined {
  const detail = deadLinks.get(db, deadKey(claims));
  return detail === undefined ? undefined : new AppError("forbidden", detail);
}

/** Refuses a link for good: remembered for `deadLinkRefusal`, then thrown. */
function refuseForGood(db: object, claims: VerifiedLink, detail: string): never {
  deadLinks.set(db, deadKey(claims), detail);
  throw new AppError("forbidden", detail);
}

/**
 * Why a file's last answer under a link was refused in this isolate: by what its lookup or budget
 * said (`link`: a suspended grant, a narrowed model, a spent budget…) or by R2 (`object`: replaced
 * or gone). Neither need be final, so it is a doubt, not a refusal kept.
 */
type Doubt = "link" | "object";

/**
 * A link's files whose last answer in this isolate was refused, by database, link and path, with
 * why. Their next request looks the link up, and judges it and its budget, before anything else is
 * asked. Then a file doubted for the link reserves and reads together; one doubted for its object
 * reads first and reserves only once R2 served. So a link that keeps being refused reads R2 once
 * per isolate, and gives bytes back once, not on every request; an answer served lifts the doubt.
 */
const doubtedFiles = new IsolateMemory<Doubt>(10_000);

/**
 * The file `row` lets the link open, once everything the link depends on is still live: its row
 * matches its claims, the grant is active, the token valid, its member still a member, the model
 * covered by both, the license not overdue for re-acceptance and the export rules met where the
 * request comes from (`family`: the license family of the link's model). Throws the refusal otherwise.
 */
function servableFile(
  c: Context<HonoEnv>,
  claims: VerifiedLink,
  row: ServableLink | undefined,
  family: LicenseFamily | undefined,
  startedAt: number,
): { row: ServableLink; file: ModelFile } {
  const services = c.get("services");
  const { clock, config } = services;
  if (!row || row.grantId !== claims.gnt || row.tokenId !== claims.tok) {
    throw new AppError("forbidden", "This download link is not valid. Request a fresh one from the manifest.");
  }
  const now = clock.now().toISOString();
  if (row.grantStatus !== "active") {
    const detail = "Your organization's access to this model family is suspended or revoked.";
    // A suspended grant may be reinstated; a revoked one never is.
    if (row.grantStatus === "revoked") refuseForGood(services.db, claims, detail);
    throw new AppError("forbidden", detail);
  }
  if (row.tokenRevokedAt || (row.tokenExpiresAt && row.tokenExpiresAt <= now)) {
    refuseForGood(services.db, claims, "The access token this link was made with is no longer valid.");
  }
  // The same rules as the token check: a member's links die with their membership.
  if (!memberMayUseToken(row.tokenUserId, row.memberRole)) {
    throw new AppError("forbidden", "The member whose token made this link no longer belongs to the organization.");
  }
  assertCovered({ grantModels: row.grantModels, tokenModels: row.tokenModels }, row.model);
  if (reacceptanceOverdue(row.reacceptBy, startedAt)) throw reacceptanceProblem(config.publicBaseUrl);
  const refusal = family
    ? exportRefusal(services, {
        family,
        organizationId: row.organizationId,
        surface: "downloads",
        request: c.req.raw,
        waitUntil: (work) => c.executionCtx.waitUntil(work),
      })
    : undefined;
  if (refusal) throw refusal;
  // A path that is no file of the link's revision: the link does not open it.
  if (!row.file) throw new AppError("forbidden", "This download link is for another file.");
  return { row, file: row.file };
}

/** Whether two rows of one file name the same stored object. */
function sameObject(a: ModelFile, b: ModelFile): boolean {
  return a.r2Key === b.r2Key && a.etag === b.etag && a.size === b.size && a.sha256 === b.sha256;
}

/** The request's signed link, verified, for this file, and not found dead in this isolate. */
async function checkedLink(c: Context<HonoEnv>, model: string, revision: string, path: string): Promise<VerifiedLink> {
  const { db, clock, config } = c.get("services");
  const signature = c.req.query("sig");
  if (!signature) throw new AppError("unauthorized", "This download URL needs its `sig` parameter.");
  const claims = await verifyLink(config, signature, clock.now());
  if (claims.mdl !== model || claims.rev !== revision || (claims.kind === "file" && claims.pth !== path)) {
    throw new AppError("forbidden", "This download link is for another file.");
  }
  const dead = deadLinkRefusal(db, claims);
  if (dead) throw dead;
  return claims;
}

/** The headers of every answer for `file`, served as the object whose etag is `etag`. */
function fileHeaders(file: ModelFile, etag: string): Headers {
  return new Headers({
    "accept-ranges": "bytes",
    etag: `"${etag}"`,
    "content-type": file.contentType,
    "content-disposition": contentDisposition(file.path),
    "cache-control": "private, no-store",
    "repr-digest": `sha-256=:${hexToBase64(file.sha256)}:`,
    "x-checksum-sha256": file.sha256,
  });
}

type Read = R2Object | R2ObjectBody | null;

/** The refusals of a file R2 no longer has, and of one replaced since the link was made. */
const fileGone = () => new AppError("not_found", "The file is no longer stored.");
const fileChanged = () => new AppError("precondition_failed", "The file changed since this link was made.");

/** Why R2's answer to the read serves nothing, if it does not. */
function readRefusal(read: PromiseSettledResult<Read>): unknown {
  if (read.status === "rejected") return read.reason;
  if (!read.value) return fileGone();
  // No body: the object's etag differs, it was replaced since the link was made. Never mix bytes.
  if (!("body" in read.value)) return fileChanged();
  return undefined;
}

/**
 * The answer's bytes taken from the file's budget and its range read from R2: both at once, or,
 * `readFirst`, the bytes taken only once R2 served (none taken, and `undefined` for them, when
 * it did not).
 */
async function takeAndRead<T>(
  taking: () => Promise<T>,
  reading: () => Promise<Read>,
  readFirst: boolean,
): Promise<[PromiseSettledResult<T> | undefined, PromiseSettledResult<Read>]> {
  if (!readFirst) return Promise.allSettled([taking(), reading()]);
  const [read] = await Promise.allSettled([reading()]);
  if (readRefusal(read) !== undefined) return [undefined, read];
  const [taken] = await Promise.allSettled([taking()]);
  return [taken, read];
}

/** The refusal of an answer its link's budget for a file of `size` bytes has no room for. */
function budgetSpent(row: ServableLink, size: number): AppError {
  const budget = linkByteBudget(row.maxDownloads, size);
  return new AppError(
    "forbidden",
    `This link has been used for as many downloads as it allows: ${budget} bytes, ranges included. Request a fresh one.`,
    { extensions: { maxBytes: budget } },
  );
}

/** What a served answer is recorded with. */
interface ServedAnswer {
  claims: VerifiedLink;
  row: ServableLink;
  revision: string;
  path: string;
  plan: RangePlan;
  /** The bytes sent: the range's, or the file's size. */
  length: number;
  startedAt: number;
}

/**
 * The answer that pipes `body` to the client, recorded (in analytics and in the ledger) once its
 * last byte was handed on or the client went away. Native streams end to end (R2 body →
 * `FixedLengthStream`): workerd pumps the bytes without running JavaScript per chunk, and the
 * response keeps its `Content-Length`. A client that leaves early is recorded as not complete: the
 * range says what was asked, and a resumed range records what followed.
 */
function streamedAnswer(c: Context<HonoEnv>, body: ReadableStream, headers: Headers, answer: ServedAnswer): Response {
  const services = c.get("services");
  const { clock } = services;
  const { claims, row, revision, path, plan, length, startedAt } = answer;
  const status = plan.kind === "partial" ? 206 : 200;
  const { readable, writable } = new FixedLengthStream(length);
  const finished = body.pipeTo(writable).then(
    () => true,
    () => false,
  );
  void finished.then((complete) =>
    recordDownload(c.env, {
      organizationId: row.organizationId,
      model: claims.mdl,
      path,
      status,
      complete,
      latencyMs: clock.now().getTime() - startedAt,
      bytes: complete ? length : 0,
    }),
  );
  c.executionCtx.waitUntil(
    finished.then((complete) =>
      recordDownloadRow(services, c.env, {
        id: services.ids.id("dle"),
        organizationId: row.organizationId,
        jti: claims.jti,
        grantId: claims.gnt,
        tokenId: claims.tok,
        model: claims.mdl,
        revisionId: revision,
        path,
        status,
        rangeStart: plan.kind === "partial" ? plan.offset : null,
        rangeEnd: plan.kind === "partial" ? plan.offset + length - 1 : null,
        bytesServed: complete ? length : 0,
        complete,
        at: clock.now().toISOString(),
      }),
    ),
  );
  return new Response(readable, { status, headers });
}

/**
 * `GET`/`HEAD /v1/download/{model}/{revision}/{path}?sig=…`: checks the signed link (a manifest's
 * opens any file of its revision, an older one-file link only its file), that its grant, token and
 * member are still live and that they still cover the model, takes the answer's bytes from the
 * file's budget under the link, then streams the object from R2 with full single-range semantics.
 * Never buffers: the R2 body is piped to the client (`streamedAnswer`).
 *
 * A file this isolate has served before (`knownFile`) costs one wait: the link's lookup, the byte
 * reservation and the R2 read all begin at once, and an answer that is then refused cancels the
 * read and gives the bytes back. The first request for a file looks the link up first, for the
 * file's size and where it is stored, and judges it and its budget; then the reservation and the
 * read begin together. So does a file whose last answer here was refused (`doubtedFiles`), but for
 * one R2 refused, which reads before it reserves. A request from a restricted country is judged by
 * the lookup before anything is taken.
 */
export async function serveDownload(
  c: Context<HonoEnv>,
  model: string,
  revision: string,
  path: string,
  fresh = false,
): Promise<Response> {
  const services = c.get("services");
  const { db, clock } = services;
  const startedAt = clock.now().getTime();
  const claims = await checkedLink(c, model, revision, path);
  const doubtKey = `${deadKey(claims)} ${path}`;
  const doubt = doubtedFiles.get(db, doubtKey);
  // A request from where the model may not be used is refused by the lookup (which notes the
  // country) before any bytes are taken, so it never holds bytes a range from elsewhere needs.
  const family = findModel(model)?.family;
  const restrictedHere = family !== undefined && fromRestrictedCountry(c.req.raw, family);

  /** The link judged from a lookup of its own, before anything else is asked. */
  const lookUp = async () => servableFile(c, claims, await findServableLink(db, claims, path), family, startedAt);
  let file = c.req.method === "HEAD" || fresh || doubt || restrictedHere ? undefined : knownFile(db, revision, path);
  /** The link, judged from a lookup made before the bytes are taken (a file not served here before). */
  let judged: { row: ServableLink; file: ModelFile } | undefined;
  if (!file) {
    judged = await lookUp();
    file = judged.file;
    rememberFile(db, file);
  }
  // The object the link serves: a one-file link names it, a manifest's is the revision's file.
  const etag = claims.kind === "file" ? claims.etg : file.etag;
  const headers = fileHeaders(file, etag);
  if (c.req.method === "HEAD") {
    const head = await c.env.WEIGHTS.head(file.r2Key);
    if (!head) throw fileGone();
    if (head.etag !== etag) throw fileChanged();
    headers.set("content-length", String(file.size));
    return new Response(null, { status: 200, headers });
  }

  const plan = planRange(c.req.header("range") ?? null, c.req.header("if-range") ?? null, file.size, etag);
  if (plan.kind === "unsatisfiable") {
    // A link that is no longer live learns nothing, not even the size.
    if (!judged) await lookUp();
    throw new AppError("range_not_satisfiable", `The file is ${file.size} bytes long.`, {
      headers: { "content-range": `bytes */${file.size}` },
    });
  }
  const offset = plan.kind === "partial" ? plan.offset : 0;
  const length = plan.kind === "partial" ? plan.length : file.size;
  if (judged && !budgetHasRoom(judged.row, file.size, length)) {
    // Spent as the lookup saw it: nothing is asked of the budget or R2, now or on the next request.
    doubtedFiles.set(db, doubtKey, "link");
    throw budgetSpent(judged.row, file.size);
  }

  // The cap is in bytes, so a probe, a resumed range and a whole download all draw on one budget.
  const reservation = { length, size: file.size, wholeDownload: offset === 0 && length === file.size };
  const r2Key = file.r2Key;
  const [found, read] = await takeAndRead(
    () =>
      judged
        ? reserveBytes(db, claims, path, reservation).then((reserved) => ({ row: judged.row, reserved }))
        : findAndReserve(db, claims, path, reservation),
    () =>
      c.env.WEIGHTS.get(r2Key, {
        onlyIf: { etagMatches: etag },
        ...(plan.kind === "partial" ? { range: { offset, length } } : {}),
      }),
    doubt === "object",
  );
  const body = read.status === "fulfilled" && read.value && "body" in read.value ? read.value.body : undefined;
  const reserved = found?.status === "fulfilled" && found.value.reserved;
  /** Cancels the read and gives the reserved bytes back: the answer is not sent, and the file is doubted. */
  const abandon = async (why: Doubt) => {
    doubtedFiles.set(db, doubtKey, why);
    await body?.cancel();
    if (reserved) {
      c.executionCtx.waitUntil(
        returnBytes(db, claims, path, reservation).catch((error) =>
          services.log.warn("reserved download bytes not given back", { jti: claims.jti, path, error: String(error) }),
        ),
      );
    }
  };
  /** Abandons the answer for `refusal`, which it throws. */
  const refuse = async (refusal: unknown, why: Doubt = "link"): Promise<never> => {
    await abandon(why);
    throw refusal;
  };
  // Read first, and R2 served nothing: the link was judged, and nothing taken.
  if (!found) return refuse(readRefusal(read), "object");
  if (found.status === "rejected") return refuse(found.reason);
  let live = judged;
  try {
    live ??= servableFile(c, claims, found.value.row, family, startedAt);
  } catch (refusal) {
    return refuse(refusal);
  }
  const { row } = live;
  if (!sameObject(live.file, file)) {
    // The kept row is not D1's (a database rebuilt under this isolate): begin again from D1's. Only a
    // kept row can differ, and the second time reads none, so this happens at most once.
    forgetFile(db, file);
    await abandon("link");
    return serveDownload(c, model, revision, path, true);
  }
  if (!reserved) return refuse(budgetSpent(row, file.size));
  // No body: R2 refused the read, which says why.
  if (!body) return refuse(readRefusal(read), "object");
  if (doubt) doubtedFiles.delete(db, doubtKey);

  headers.set("content-length", String(length));
  if (plan.kind === "partial") headers.set("content-range", `bytes ${offset}-${offset + length - 1}/${file.size}`);
  return streamedAnswer(c, body, headers, { claims, row, revision, path, plan, length, startedAt });
}
