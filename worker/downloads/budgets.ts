/**
 * What a signed link may serve: the row that recorded it, joined with everything that must still
 * be live (token, grant, member, license acceptance) and the file asked for, and the byte budget
 * each answer draws from. A manifest's link has a budget per file (`download_budgets`), made with
 * the file's first byte served; an older one-file link (`download_links`) keeps its own.
 */
import { and, eq, sql } from "drizzle-orm";
import type { Database } from "../db/client";
import {
  accessTokens,
  downloadBudgets,
  downloadLinks,
  downloadManifests,
  grants,
  licenseReacceptances,
  memberships,
  modelFiles,
} from "../db/schema";
import { liveMembershipOfTokenMember, pendingReacceptanceOfGrant } from "../tokens/service";
import type { VerifiedLink } from "./signing";

/** What must be live for any link, read in the one query that finds the link. */
const liveState = {
  tokenRevokedAt: accessTokens.revokedAt,
  tokenExpiresAt: accessTokens.expiresAt,
  tokenUserId: accessTokens.userId,
  tokenModels: accessTokens.models,
  memberRole: memberships.role,
  grantStatus: grants.status,
  organizationId: grants.organizationId,
  grantModels: grants.models,
  reacceptBy: licenseReacceptances.acceptBy,
  file: modelFiles,
};

/**
 * The link's row and live state, in one query; undefined for a link no row recorded. `path` is
 * the file asked for: a manifest's link opens any file of its revision, a one-file link only the
 * path it was made for (which the caller compared with its claims).
 */
export async function findServableLink(db: Database, link: VerifiedLink, path: string) {
  if (link.kind === "file") {
    const [row] = await db
      .select({
        grantId: downloadLinks.grantId,
        tokenId: downloadLinks.tokenId,
        model: downloadLinks.model,
        maxDownloads: downloadLinks.maxDownloads,
        ...liveState,
      })
      .from(downloadLinks)
      .innerJoin(accessTokens, eq(accessTokens.id, downloadLinks.tokenId))
      .innerJoin(grants, eq(grants.id, downloadLinks.grantId))
      .leftJoin(memberships, liveMembershipOfTokenMember)
      .leftJoin(licenseReacceptances, pendingReacceptanceOfGrant)
      .leftJoin(
        modelFiles,
        and(eq(modelFiles.revisionId, downloadLinks.revisionId), eq(modelFiles.path, downloadLinks.path)),
      )
      .where(eq(downloadLinks.jti, link.jti));
    return row;
  }
  const [row] = await db
    .select({
      grantId: downloadManifests.grantId,
      tokenId: downloadManifests.tokenId,
      model: downloadManifests.model,
      maxDownloads: downloadManifests.maxDownloads,
      ...liveState,
    })
    .from(downloadManifests)
    .innerJoin(accessTokens, eq(accessTokens.id, downloadManifests.tokenId))
    .innerJoin(grants, eq(grants.id, downloadManifests.grantId))
    .leftJoin(memberships, liveMembershipOfTokenMember)
    .leftJoin(licenseReacceptances, pendingReacceptanceOfGrant)
    .leftJoin(modelFiles, and(eq(modelFiles.revisionId, downloadManifests.revisionId), eq(modelFiles.path, path)))
    .where(eq(downloadManifests.jti, link.jti));
  return row;
}

/**
 * Takes `length` bytes from the file's budget under the link in one conditional statement, atomic
 * in D1, so no number of concurrent requests can together take more than the budget. A manifest's
 * budget for a file is made by the first answer that serves it (an upsert whose update only
 * happens while the sum stays within the budget); a one-file link's row holds its own. Whether
 * the request began a whole download is kept for the record only.
 */
export async function reserveBytes(
  db: Database,
  link: VerifiedLink,
  path: string,
  reservation: { length: number; budget: number; wholeDownload: boolean },
): Promise<boolean> {
  const { length, budget, wholeDownload } = reservation;
  if (length > budget) return false;
  const started = wholeDownload ? 1 : 0;
  if (link.kind === "file") {
    const reserved = await db
      .update(downloadLinks)
      .set({
        bytesServed: sql`${downloadLinks.bytesServed} + ${length}`,
        downloads: sql`${downloadLinks.downloads} + ${started}`,
      })
      .where(and(eq(downloadLinks.jti, link.jti), sql`${downloadLinks.bytesServed} + ${length} <= ${budget}`))
      .returning({ bytesServed: downloadLinks.bytesServed });
    return reserved.length > 0;
  }
  const reserved = await db
    .insert(downloadBudgets)
    .values({ jti: link.jti, path, bytesServed: length, downloads: started })
    .onConflictDoUpdate({
      target: [downloadBudgets.jti, downloadBudgets.path],
      set: {
        bytesServed: sql`${downloadBudgets.bytesServed} + ${length}`,
        downloads: sql`${downloadBudgets.downloads} + ${started}`,
      },
      setWhere: sql`${downloadBudgets.bytesServed} + ${length} <= ${budget}`,
    })
    .returning({ bytesServed: downloadBudgets.bytesServed });
  return reserved.length > 0;
}
