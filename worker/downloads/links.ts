import { MAX_LINK_TTL_SECONDS } from "../config";
import { downloadLinks, type ModelFile } from "../db/schema";
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
  /** The link's byte budget (`linkByteBudget`). */
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
 * Issues one signed link per file, bound to the grant, the token, the model, the revision, the
 * path and the object's etag, and records each link so it can be capped and traced. A link lives
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
  const issued = await Promise.all(
    files.map(async (file) => {
      const jti = ids.id("dl");
      const token = await signLink(
        config,
        {
          jti,
          gnt: principal.grantId,
          tok: principal.tokenId,
          mdl: model,
          rev: revisionId,
          pth: file.path,
          etg: file.etag,
        },
        now,
        expires,
      );
      return { file, jti, token };
    }),
  );
  if (issued.length > 0) {
    const rows = issued.map(({ file, jti }) =>
      db.insert(downloadLinks).values({
        jti,
        grantId: principal.grantId,
        tokenId: principal.tokenId,
        model,
        revisionId,
        path: file.path,
        maxDownloads: downloadsAllowed,
        downloads: 0,
        expiresAt: expires.toISOString(),
        createdAt: now.toISOString(),
      }),
    );
    await db.batch(rows as [(typeof rows)[number], ...(typeof rows)[number][]]);
  }
  return {
    expiresAt: expires.toISOString(),
    downloadsAllowed,
    files: issued.map(({ file, token }) => ({
      path: file.path,
      size: file.size,
      sha256: file.sha256,
      url: downloadUrl(config.publicBaseUrl, model, revisionId, file.path, token),
      maxBytes: linkByteBudget(downloadsAllowed, file.size),
    })),
  };
}
