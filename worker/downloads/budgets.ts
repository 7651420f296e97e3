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
import { linkByteBudget, linkByteBudgetSql } from "./links";
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
 * The query for the link's row and live state: undefined for a link no row recorded. `path` is the
 * file asked for: a manifest's link opens any file of its revision, a one-file link only the path
 * it was made for (which the caller compared with its claims). The bytes the file's budget has
 * served come with it, for a refusal judged before any are taken (`reserveStatement` alone takes).
 */
function servableLinkQuery(db: Database, link: VerifiedLink, path: string) {
  if (link.kind === "file") {
    return db
      .select({
        grantId: downloadLinks.grantId,
        tokenId: downloadLinks.tokenId,
        model: downloadLinks.model,
        maxDownloads: downloadLinks.maxDownloads,
        bytesServed: downloadLinks.bytesServed,
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
  }
  return db
    .select({
      grantId: downloadManifests.grantId,
      tokenId: downloadManifests.tokenId,
      model: downloadManifests.model,
      maxDownloads: downloadManifests.maxDownloads,
      // None before the file's first byte was served under the link.
      bytesServed: downloadBudgets.bytesServed,
      ...liveState,
    })
    .from(downloadManifests)
    .innerJoin(accessTokens, eq(accessTokens.id, downloadManifests.tokenId))
    .innerJoin(grants, eq(grants.id, downloadManifests.grantId))
    .leftJoin(memberships, liveMembershipOfTokenMember)
    .leftJoin(licenseReacceptances, pendingReacceptanceOfGrant)
    .leftJoin(modelFiles, and(eq(modelFiles.revisionId, downloadManifests.revisionId), eq(modelFiles.path, path)))
    .leftJoin(downloadBudgets, and(eq(downloadBudgets.jti, downloadManifests.jti), eq(downloadBudgets.path, path)))
    .where(eq(downloadManifests.jti, link.jti));
}

export type ServableLink = Awaited<ReturnType<typeof servableLinkQuery>>[number];

/** The link's row and live state, in one query; undefined for a link no row recorded. */
export async function findServableLink(
  db: Database,
  link: VerifiedLink,
  path: string,
): Promise<ServableLink | undefined> {
  const [row] = await servableLinkQuery(db, link, path);
  return row;
}

/** What one answer takes from its file's budget under a link. */
export interface ByteReservation {
  /** The bytes the answer sends: the range's length, or the file's size. */
  length: number;
  /** The file's size, which with the link's `max_downloads` sets the budget (`linkByteBudget`). */
  size: number;
  /** Whether the answer begins a whole download: for the record only. */
  wholeDownload: boolean;
}

/**
 * Whether the file's budget under the link, as its lookup `row` saw it, has room for `length` more
 * bytes of a file of `size`: the rule `reserveStatement` applies when it takes them. Only that
 * statement takes; this lets a request be refused before anything is asked of the budget.
 */
export function budgetHasRoom(row: ServableLink, size: number, length: number): boolean {
  return (row.bytesServed ?? 0) + length <= linkByteBudget(row.maxDownloads, size);
}

/** The counters of a budget row: a one-file link's own (`download_links`) or a manifest's file's. */
type BudgetCounters = typeof downloadLinks | typeof downloadBudgets;

/** The counters after `reservation` is taken: its bytes, and one more download if it begins one. */
function taken(table: BudgetCounters, reservation: ByteReservation) {
  return {
    bytesServed: sql`${table.bytesServed} + ${reservation.length}`,
    downloads: sql`${table.downloads} + ${reservation.wholeDownload ? 1 : 0}`,
  };
}

/** The counters after `reservation` is given back, never below zero. */
function givenBack(table: BudgetCounters, reservation: ByteReservation) {
  return {
    bytesServed: sql`max(0, ${table.bytesServed} - ${reservation.length})`,
    downloads: sql`max(0, ${table.downloads} - ${reservation.wholeDownload ? 1 : 0})`,
  };
}

/**
 * Takes `length` bytes from the file's budget under the link in one conditional statement, atomic
 * in D1, so no number of concurrent requests can together take more than the budget. The budget is
 * read from the link's row in the same statement, so the statement needs nothing the link's lookup
 * returns and can go to D1 at the same time. A manifest's budget for a file is made by the first
 * answer that serves it (an insert from the manifest's row, whose update only happens while the sum
 * stays within the budget); a one-file link's row holds its own. Whether the request began a whole
 * download is kept for the record only. Returns the served total: empty when the bytes were refused.
 */
function reserveStatement(db: Database, link: VerifiedLink, path: string, reservation: ByteReservation) {
  const { length, size, wholeDownload } = reservation;
  const started = wholeDownload ? 1 : 0;
  // A link whose token or grant was revoked takes nothing (so hammering one writes nothing); what
  // else refuses an answer is judged from the lookup, and the bytes given back.
  const live = sql`exists (select 1 from ${accessTokens} where ${accessTokens.id} = ${link.tok} and ${accessTokens.revokedAt} is null)
    and exists (select 1 from ${grants} where ${grants.id} = ${link.gnt} and ${grants.status} = 'active')`;
  if (link.kind === "file") {
    return db
      .update(downloadLinks)
      .set(taken(downloadLinks, reservation))
      .where(
        and(
          eq(downloadLinks.jti, link.jti),
          sql`${downloadLinks.bytesServed} + ${length} <= ${linkByteBudgetSql(downloadLinks.maxDownloads, size)}`,
          live,
        ),
      )
      .returning({ bytesServed: downloadLinks.bytesServed });
  }
  const budgetOfManifest = sql`(select ${linkByteBudgetSql(downloadManifests.maxDownloads, size)} from ${downloadManifests} where ${downloadManifests.jti} = ${link.jti})`;
  return db
    .insert(downloadBudgets)
    .select((qb) =>
      qb
        .select({
          jti: downloadManifests.jti,
          path: sql<string>`${path}`.as("path"),
          downloads: sql<number>`${started}`.as("downloads"),
          bytesServed: sql<number>`${length}`.as("bytes_served"),
        })
        .from(downloadManifests)
        .where(
          and(
            eq(downloadManifests.jti, link.jti),
            sql`${length} <= ${linkByteBudgetSql(downloadManifests.maxDownloads, size)}`,
            live,
          ),
        ),
    )
    .onConflictDoUpdate({
      target: [downloadBudgets.jti, downloadBudgets.path],
      set: taken(downloadBudgets, reservation),
      setWhere: sql`${downloadBudgets.bytesServed} + ${length} <= ${budgetOfManifest} and ${live}`,
    })
    .returning({ bytesServed: downloadBudgets.bytesServed });
}

/** Takes the answer's bytes from the file's budget (`reserveStatement`); false when they were refused. */
export async function reserveBytes(
  db: Database,
  link: VerifiedLink,
  path: string,
  reservation: ByteReservation,
): Promise<boolean> {
  return (await reserveStatement(db, link, path, reservation)).length > 0;
}

/**
 * The link's row and live state and, at the same time, the answer's bytes taken from the file's
 * budget: two statements on their way to D1 together, so that the answer waits for one round trip.
 * (Not one `batch`: D1 answers a batch's rows keyed by column name, and the lookup's joined tables
 * share names.) The bytes are taken before the row is judged: a caller that then refuses the answer
 * gives them back (`returnBytes`).
 */
export async function findAndReserve(
  db: Database,
  link: VerifiedLink,
  path: string,
  reservation: ByteReservation,
): Promise<{ row: ServableLink | undefined; reserved: boolean }> {
  const [rows, reserved] = await Promise.all([
    servableLinkQuery(db, link, path),
    reserveBytes(db, link, path, reservation),
  ]);
  return { row: rows[0], reserved };
}

/** Gives back what `findAndReserve` took for an answer that was then not sent. */
export async function returnBytes(
  db: Database,
  link: VerifiedLink,
  path: string,
  reservation: ByteReservation,
): Promise<void> {
  if (link.kind === "file") {
    await db.update(downloadLinks).set(givenBack(downloadLinks, reservation)).where(eq(downloadLinks.jti, link.jti));
    return;
  }
  await db
    .update(downloadBudgets)
    .set(givenBack(downloadBudgets, reservation))
    .where(and(eq(downloadBudgets.jti, link.jti), eq(downloadBudgets.path, path)));
}
