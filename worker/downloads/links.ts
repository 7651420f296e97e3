import { inArray, type SQL, type SQLWrapper, sql } from "drizzle-orm";
import { MAX_LINK_TTL_SECONDS } from "../config";
import type { Database } from "../db/client";
import { downloadManifests, type ModelFile, modelRevisions } from "../db/schema";
import type { Services } from "../services";
import type { TokenPrincipal } from "../tokens/service";
import type { RevisionIdQuery } from "./catalog";
import { signLink } from "./signing";

/**
 * Bytes a link may serve beyond its downloads' worth: room for a handful of one-byte probes
 * (`Range: bytes=0-0`), which `@huggingface/hub` sends before it downloads a file.
 */
export const PROBE_ALLOWANCE_BYTES = 16;

/**
 * All the bytes a link may serve: its downloads times the file's size, plus the probe allowance.
 * Full downloads, resumed ranges and probes all draw from this one budget.
 */
export function linkByteBudget(maxDownloads: number, size: number): number {
  return maxDownloads * size + PROBE_ALLOWANCE_BYTES;
}

/** `linkByteBudget` in SQL, over a link row's `max_downloads` column, for a statement that reserves. */
export function linkByteBudgetSql(maxDownloads: SQLWrapper, size: number): SQL {
  return sql`${maxDownloads} * ${size} + ${PROBE_ALLOWANCE_BYTES}`;
}

/** A file with the signed link that downloads it. */
export interface LinkedFile {
  path: string;
  size: number;
  sha256: string;
  url: string;
  /** This file's byte budget under the link (`linkByteBudget`). */
  maxBytes: number;
}

/** Encodes a file path for a URL, keeping its slashes. */
export function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

/** The URL a download link token opens. */
export function downloadUrl(base: string, model: string, revision: string, path: string, token: string): string {
  return `${base}/v1/download/${encodeURIComponent(model)}/${revision}/${encodePath(path)}?sig=${token}`;
}

/** What a manifest's link will be before its revision is read: its id, lifetime and budget. */
export interface DownloadLinkPlan {
  jti: string;
  grantId: string;
  tokenId: string;
  model: string;
  issuedAt: Date;
  expiresAt: Date;
  downloadsAllowed: number;
}

/**
 * A new link for `principal` to a revision of `model`: one token, bound to the grant, the token,
 * the model and the revision, will open every file of that revision (the file's path is in the
 * URL). It lives `ttlSeconds` (the configured default when absent), never more than
 * `MAX_LINK_TTL_SECONDS`; each file has its own byte budget under it (`linkByteBudget`), kept
 * from the file's first byte served.
 */
export function planDownloadLink(
  services: Services,
  principal: TokenPrincipal,
  model: string,
  ttlSeconds?: number,
): DownloadLinkPlan {
  const { config, clock, ids } = services;
  const ttl = Math.min(ttlSeconds ?? config.downloads.linkTtlSeconds, MAX_LINK_TTL_SECONDS);
  const issuedAt = clock.now();
  return {
    jti: ids.id("dl"),
    grantId: principal.grantId,
    tokenId: principal.tokenId,
    model,
    issuedAt,
    expiresAt: new Date(issuedAt.getTime() + ttl * 1000),
    downloadsAllowed: config.downloads.maxDownloadsPerLink,
  };
}

/**
 * The `download_manifests` row that records a planned link, so it can be capped and traced, for
 * the revision whose id `revisionIds` selects: no row when it selects none.
 */
export function recordDownloadLink(db: Database, plan: DownloadLinkPlan, revisionIds: RevisionIdQuery) {
  // Columns in the table's order, as an INSERT … SELECT takes them.
  const row = db
    .select({
      jti: sql<string>`${plan.jti}`.as("jti"),
      grantId: sql<string>`${plan.grantId}`.as("grant_id"),
      tokenId: sql<string>`${plan.tokenId}`.as("token_id"),
      model: sql<string>`${plan.model}`.as("model"),
      revisionId: modelRevisions.id,
      maxDownloads: sql<number>`${plan.downloadsAllowed}`.as("max_downloads"),
      expiresAt: sql<string>`${plan.expiresAt.toISOString()}`.as("expires_at"),
      createdAt: sql<string>`${plan.issuedAt.toISOString()}`.as("created_at"),
    })
    .from(modelRevisions)
    .where(inArray(modelRevisions.id, revisionIds));
  return db.insert(downloadManifests).select(row);
}

/** Signs a planned link for the revision it was recorded for, and gives each file its URL. */
export async function signDownloadLinks(
  services: Services,
  plan: DownloadLinkPlan,
  revisionId: string,
  files: ModelFile[],
): Promise<{ expiresAt: string; downloadsAllowed: number; files: LinkedFile[] }> {
  const { config } = services;
  const claims = { jti: plan.jti, gnt: plan.grantId, tok: plan.tokenId, mdl: plan.model, rev: revisionId };
  const token = await signLink(config, claims, plan.issuedAt, plan.expiresAt);
  return {
    expiresAt: plan.expiresAt.toISOString(),
    downloadsAllowed: plan.downloadsAllowed,
    files: files.map((file) => ({
      path: file.path,
      size: file.size,
      sha256: file.sha256,
      url: downloadUrl(config.publicBaseUrl, plan.model, revisionId, file.path, token),
      maxBytes: linkByteBudget(plan.downloadsAllowed, file.size),
    })),
  };
}

/**
 * Issues and records a link to files of a revision already read (a Hub `resolve`): the link
 * opens every file of the revision, as a manifest's does.
 */
export async function issueDownloadLinks(
  services: Services,
  principal: TokenPrincipal,
  model: string,
  revisionId: string,
  files: ModelFile[],
  ttlSeconds?: number,
): Promise<{ expiresAt: string; downloadsAllowed: number; files: LinkedFile[] }> {
  const plan = planDownloadLink(services, principal, model, ttlSeconds);
  const [links] = await Promise.all([
    signDownloadLinks(services, plan, revisionId, files),
    services.db.insert(downloadManifests).values({
      jti: plan.jti,
      grantId: plan.grantId,
      tokenId: plan.tokenId,
      model,
      revisionId,
      maxDownloads: plan.downloadsAllowed,
      expiresAt: plan.expiresAt.toISOString(),
      createdAt: plan.issuedAt.toISOString(),
    }),
  ]);
  return links;
}
