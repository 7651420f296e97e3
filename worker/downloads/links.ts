import { MAX_LINK_TTL_SECONDS } from "../config";
import { downloadManifests, type ModelFile } from "../db/schema";
import type { Services } from "../services";
import type { TokenPrincipal } from "../tokens/service";
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

/**
 * Issues the signed link of a manifest: one token, bound to the grant, the token, the model and
 * the revision, opens every file of that revision (the file's path is in the URL), and one
 * `download_manifests` row records it so it can be capped and traced. Each file has its own byte
 * budget under the link (`linkByteBudget`), kept from its first byte served. A link lives
 * `ttlSeconds` (the configured default when absent), never more than `MAX_LINK_TTL_SECONDS`.
 */
export async function issueDownloadLinks(
  services: Services,
  principal: TokenPrincipal,
  model: string,
  revisionId: string,
  files: ModelFile[],
  ttlSeconds?: number,
): Promise<{ expiresAt: string; downloadsAllowed: number; files: LinkedFile[] }> {
  const { config, clock, ids, db } = services;
  const ttl = Math.min(ttlSeconds ?? config.downloads.linkTtlSeconds, MAX_LINK_TTL_SECONDS);
  const downloadsAllowed = config.downloads.maxDownloadsPerLink;
  const now = clock.now();
  const expires = new Date(now.getTime() + ttl * 1000);
  const jti = ids.id("dl");
  const link = { jti, grantId: principal.grantId, tokenId: principal.tokenId, model, revisionId };
  const [token] = await Promise.all([
    signLink(config, { jti, gnt: link.grantId, tok: link.tokenId, mdl: model, rev: revisionId }, now, expires),
    db.insert(downloadManifests).values({
      ...link,
      maxDownloads: downloadsAllowed,
      expiresAt: expires.toISOString(),
      createdAt: now.toISOString(),
    }),
  ]);
  return {
    expiresAt: expires.toISOString(),
    downloadsAllowed,
    files: files.map((file) => ({
      path: file.path,
      size: file.size,
      sha256: file.sha256,
      url: downloadUrl(config.publicBaseUrl, model, revisionId, file.path, token),
      maxBytes: linkByteBudget(downloadsAllowed, file.size),
    })),
  };
}
