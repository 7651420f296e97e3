import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { assertCovered } from "../grants/coverage";
import { reacceptanceOverdue, reacceptanceProblem } from "../licenses/reacceptance";
import { recordDownload } from "../observability/analytics";
import { findModel } from "../policy/families";
import { exportRefusal } from "../screening/use-country";
import { memberMayUseToken } from "../tokens/service";
import { findServableLink, reserveBytes } from "./budgets";
import { linkByteBudget } from "./links";
import { planRange } from "./range";
import { recordDownloadRow } from "./record";
import { verifyLink } from "./signing";

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
 * `GET`/`HEAD /v1/download/{model}/{revision}/{path}?sig=…`: checks the signed link (a manifest's
 * opens any file of its revision, an older one-file link only its file), that its grant, token and
 * member are still live and that they still cover the model, takes the answer's bytes from the
 * file's budget under the link, then streams the object from R2 with full single-range semantics.
 * Never buffers: the R2 body is piped through a byte counter to the client.
 */
export async function serveDownload(
  c: Context<HonoEnv>,
  model: string,
  revision: string,
  path: string,
): Promise<Response> {
  const services = c.get("services");
  const { db, clock, config } = services;
  const startedAt = clock.now().getTime();
  const signature = c.req.query("sig");
  if (!signature) throw new AppError("unauthorized", "This download URL needs its `sig` parameter.");
  const claims = await verifyLink(config, signature, clock.now());
  if (claims.mdl !== model || claims.rev !== revision || (claims.kind === "file" && claims.pth !== path)) {
    throw new AppError("forbidden", "This download link is for another file.");
  }

  const row = await findServableLink(db, claims, path);
  if (!row || row.grantId !== claims.gnt || row.tokenId !== claims.tok) {
    throw new AppError("forbidden", "This download link is not valid. Request a fresh one from the manifest.");
  }
  const now = clock.now().toISOString();
  if (row.grantStatus !== "active") {
    throw new AppError("forbidden", "Your organization's access to this model family is suspended or revoked.");
  }
  if (row.tokenRevokedAt || (row.tokenExpiresAt && row.tokenExpiresAt <= now)) {
    throw new AppError("forbidden", "The access token this link was made with is no longer valid.");
  }
  // The same rules as the token check: a member's links die with their membership.
  if (!memberMayUseToken(row.tokenUserId, row.memberRole)) {
    throw new AppError("forbidden", "The member whose token made this link no longer belongs to the organization.");
  }
  assertCovered({ grantModels: row.grantModels, tokenModels: row.tokenModels }, row.model);
  if (reacceptanceOverdue(row.reacceptBy, startedAt)) throw reacceptanceProblem(config.publicBaseUrl);
  const family = findModel(row.model)?.family;
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
  const file = row.file;
  if (!file) throw new AppError("forbidden", "This download link is for another file.");
  // The object the link serves: a one-file link names it, a manifest's is the revision's file.
  const etag = claims.kind === "file" ? claims.etg : file.etag;
  const headers = new Headers({
    "accept-ranges": "bytes",
    etag: `"${etag}"`,
    "content-type": file.contentType,
    "content-disposition": contentDisposition(file.path),
    "cache-control": "private, no-store",
    "repr-digest": `sha-256=:${hexToBase64(file.sha256)}:`,
    "x-checksum-sha256": file.sha256,
  });

  if (c.req.method === "HEAD") {
    const head = await c.env.WEIGHTS.head(file.r2Key);
    if (!head) throw new AppError("not_found", "The file is no longer stored.");
    if (head.etag !== etag) throw new AppError("precondition_failed", "The file changed since this link was made.");
    headers.set("content-length", String(file.size));
    return new Response(null, { status: 200, headers });
  }

  const plan = planRange(c.req.header("range") ?? null, c.req.header("if-range") ?? null, file.size, etag);
  if (plan.kind === "unsatisfiable") {
    throw new AppError("range_not_satisfiable", `The file is ${file.size} bytes long.`, {
      headers: { "content-range": `bytes */${file.size}` },
    });
  }
  const offset = plan.kind === "partial" ? plan.offset : 0;
  const length = plan.kind === "partial" ? plan.length : file.size;
  const object = await c.env.WEIGHTS.get(file.r2Key, {
    onlyIf: { etagMatches: etag },
    ...(plan.kind === "partial" ? { range: { offset, length } } : {}),
  });
  if (!object) throw new AppError("not_found", "The file is no longer stored.");
  if (!("body" in object) || !object.body) {
    // The object's etag differs: it was replaced since the link was made. Never mix bytes.
    throw new AppError("precondition_failed", "The file changed since this link was made.");
  }

  // The cap is in bytes, so a probe, a resumed range and a whole download all draw on one budget.
  const budget = linkByteBudget(row.maxDownloads, file.size);
  const wholeDownload = offset === 0 && length === file.size;
  if (!(await reserveBytes(db, claims, path, { length, budget, wholeDownload }))) {
    await object.body.cancel();
    throw new AppError(
      "forbidden",
      `This link has been used for as many downloads as it allows: ${budget} bytes, ranges included. Request a fresh one.`,
      { extensions: { maxBytes: budget } },
    );
  }

  const status = plan.kind === "partial" ? 206 : 200;
  headers.set("content-length", String(length));
  if (plan.kind === "partial") headers.set("content-range", `bytes ${offset}-${offset + length - 1}/${file.size}`);

  // Native streams end to end (R2 body → FixedLengthStream): workerd pumps the bytes without
  // running JavaScript per chunk, and the response keeps its Content-Length. The pipe settles when
  // the last byte was handed on (complete) or the client went away (not complete; the range says
  // what was asked, and a resumed range records what followed).
  const { readable, writable } = new FixedLengthStream(length);
  const finished = object.body.pipeTo(writable).then(
    () => true,
    () => false,
  );
  void finished.then((complete) =>
    recordDownload(c.env, {
      organizationId: row.organizationId,
      model,
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
        model,
        revisionId: revision,
        path,
        status,
        rangeStart: plan.kind === "partial" ? offset : null,
        rangeEnd: plan.kind === "partial" ? offset + length - 1 : null,
        bytesServed: complete ? length : 0,
        complete,
        at: clock.now().toISOString(),
      }),
    ),
  );
  return new Response(readable, { status, headers });
}
