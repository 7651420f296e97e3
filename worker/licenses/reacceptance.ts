/**
 * Re-acceptance of a new license version by organizations that accepted an earlier one: the
 * requirement an operator makes when loading the version (with a deadline), what changed, the
 * member's acceptance with its evidence, and the refusal downloads and inference answer once the
 * deadline passed unaccepted.
 */
import { and, desc, eq, inArray, isNull, ne } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { alias } from "drizzle-orm/sqlite-core";
import { writeAudited } from "../audit/log";
import { type MemberPrincipal, memberNow } from "../auth/members";
import type { Database } from "../db/client";
import {
  applications,
  documents,
  grants,
  type LicenseReacceptance,
  licenseReacceptances,
  licenseVersions,
} from "../db/schema";
import { AppError } from "../errors";
import { reacceptanceRequiredEvent } from "../events/record";
import { enqueueMail } from "../mail/outbox";
import type { Clock } from "../platform/clock";
import type { IdGenerator } from "../platform/ids";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import { type DiffLine, lineDiff } from "./diff";

/** Where members re-accept, relative to the gateway's public address. */
export const REACCEPT_PATH = "/account/license";

const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;

/**
 * The instant a re-acceptance deadline names: a date (`2027-01-31`) runs to the end of that day
 * UTC; a full ISO-8601 time is taken as it is. Undefined when it is neither or not after `now`.
 */
export function reacceptDeadline(value: string, now: Date): string | undefined {
  const at = DATE_ONLY.test(value) ? Date.parse(`${value}T00:00:00Z`) + 86_400_000 : Date.parse(value);
  if (Number.isNaN(at) || !/^\d{4}-\d{2}-\d{2}/.test(value) || at <= now.getTime()) return undefined;
  return new Date(at).toISOString();
}

/** Whether a grant's pending re-acceptance deadline (`reacceptBy`) has passed at `now` (ms). */
export function reacceptanceOverdue(reacceptBy: string | null | undefined, now: number): boolean {
  return typeof reacceptBy === "string" && Date.parse(reacceptBy) <= now;
}

/**
 * The refusal of a grant whose organization let a re-acceptance deadline pass: 403
 * `license_reacceptance_required`, with the page where an owner or admin accepts the new version.
 */
export function reacceptanceProblem(baseUrl: string, headers: Record<string, string> = {}): AppError {
  const reacceptUrl = `${baseUrl}${REACCEPT_PATH}`;
  return new AppError(
    "license_reacceptance_required",
    `A new version of the license must be accepted before access resumes. An owner or admin of your organization accepts it at ${reacceptUrl}.`,
    { extensions: { reacceptUrl }, headers },
  );
}

/** The header that warns, before the deadline, that the license must be accepted again by then. */
export const REACCEPT_WARNING_HEADER = "x-license-reaccept-by";

/**
 * The notice to a grant's contact that a new version must be accepted by `acceptBy`. Only the
 * gateway's own words and link: nothing an applicant typed.
 */
function reacceptanceMail(to: string, baseUrl: string, family: string, version: number, acceptBy: string) {
  const name = findFamily(family)?.displayName ?? family;
  return {
    to,
    subject: `${name} license: accept version ${version} by ${acceptBy.slice(0, 10)}`,
    text: [
      `Version ${version} of the ${name} license and Acceptable Use Policy now applies to your organization's access.`,
      `An owner or admin of your organization must accept it by ${acceptBy}; from then on, downloads and inference stop until it is accepted.`,
      "",
      `See what changed and accept it: ${baseUrl}${REACCEPT_PATH}`,
      "",
      "— modelgate licensing",
      "",
    ].join("\n"),
  };
}

/** The earlier of two deadlines (ISO-8601 instants). */
function earlierDeadline(a: string, b: string): string {
  return Date.parse(a) <= Date.parse(b) ? a : b;
}

/**
 * Plans the requirement that every live grant of `version.family` under another version accept
 * `version` by `acceptBy`: one pending row per grant, a `license.reacceptance_required` event for
 * its organization and, when the gateway's address is known (`config`), a notice to the grant's
 * contact, all in the same batch. A pending requirement for an older version is superseded and its
 * deadline carried over when it is the earlier one: a newer version asks for more, never for more
 * time, so a grant already refused for a missed deadline stays refused until it accepts the newest.
 */
export async function planReacceptanceRequirements(
  deps: { db: Database; clock: Clock; ids: IdGenerator; config?: { publicBaseUrl: string } | undefined },
  version: { id: string; family: string; version: number },
  acceptBy: string,
): Promise<{ statements: BatchItem<"sqlite">[]; grants: number }> {
  const affected = await deps.db
    .select({
      id: grants.id,
      organizationId: grants.organizationId,
      family: grants.family,
      licenseVersionId: grants.licenseVersionId,
      contactEmail: applications.contactEmail,
    })
    .from(grants)
    .innerJoin(applications, eq(applications.id, grants.applicationId))
    .where(
      and(
        eq(grants.family, version.family),
        inArray(grants.status, ["active", "suspended"]),
        ne(grants.licenseVersionId, version.id),
      ),
    );
  if (affected.length === 0) return { statements: [], grants: 0 };
  const pending = await deps.db
    .select({ grantId: licenseReacceptances.grantId, acceptBy: licenseReacceptances.acceptBy })
    .from(licenseReacceptances)
    .where(
      and(
        eq(licenseReacceptances.family, version.family),
        isNull(licenseReacceptances.acceptedAt),
        isNull(licenseReacceptances.supersededAt),
      ),
    );
  const pendingBy = new Map<string, string>();
  for (const p of pending) {
    const earlier = pendingBy.get(p.grantId);
    pendingBy.set(p.grantId, earlier ? earlierDeadline(earlier, p.acceptBy) : p.acceptBy);
  }
  const now = deps.clock.now().toISOString();
  const statements: BatchItem<"sqlite">[] = [
    deps.db
      .update(licenseReacceptances)
      .set({ supersededAt: now })
      .where(
        and(
          eq(licenseReacceptances.family, version.family),
          isNull(licenseReacceptances.acceptedAt),
          isNull(licenseReacceptances.supersededAt),
        ),
      ),
  ];
  for (const grant of affected) {
    const carried = pendingBy.get(grant.id);
    const deadline = carried ? earlierDeadline(carried, acceptBy) : acceptBy;
    statements.push(...reacceptanceRequirement(deps, grant, version.id, deadline, now));
    if (deps.config) {
      const mail = reacceptanceMail(
        grant.contactEmail,
        deps.config.publicBaseUrl,
        grant.family,
        version.version,
        deadline,
      );
      statements.push(enqueueMail(deps, mail));
    }
  }
  return { statements, grants: affected.length };
}

/** A pending requirement with both versions' numbers and hashes. */
export interface PendingReacceptance {
  id: string;
  grantId: string;
  family: string;
  acceptBy: string;
  requiredAt: string;
  from: { id: string; version: number; licenseSha256: string; aupSha256: string };
  to: { id: string; version: number; licenseSha256: string; aupSha256: string };
}

const fromVersion = alias(licenseVersions, "from_version");

/** The organization's pending re-acceptances, oldest deadline first. */
export async function pendingReacceptances(
  db: Database,
  organizationId: string,
  grantId?: string,
): Promise<PendingReacceptance[]> {
  const rows = await db
    .select({ requirement: licenseReacceptances, from: fromVersion, to: licenseVersions })
    .from(licenseReacceptances)
    .innerJoin(licenseVersions, eq(licenseVersions.id, licenseReacceptances.licenseVersionId))
    .innerJoin(fromVersion, eq(fromVersion.id, licenseReacceptances.fromLicenseVersionId))
    .where(
      and(
        eq(licenseReacceptances.organizationId, organizationId),
        grantId ? eq(licenseReacceptances.grantId, grantId) : undefined,
        isNull(licenseReacceptances.acceptedAt),
        isNull(licenseReacceptances.supersededAt),
      ),
    )
    .orderBy(licenseReacceptances.acceptBy);
  const pick = (v: (typeof rows)[number]["to"]) => ({
    id: v.id,
    version: v.version,
    licenseSha256: v.licenseSha256,
    aupSha256: v.aupSha256,
  });
  return rows.map(({ requirement: r, from, to }) => ({
    id: r.id,
    grantId: r.grantId,
    family: r.family,
    acceptBy: r.acceptBy,
    requiredAt: r.requiredAt,
    from: pick(from),
    to: pick(to),
  }));
}

/** What changed between the accepted and the new version: a line diff of each document. */
export interface LicenseChanges {
  license: DiffLine[];
  aup: DiffLine[];
}

/** The line diffs of the license and AUP texts from the accepted version to the new one. */
export async function licenseChanges(db: Database, pending: PendingReacceptance): Promise<LicenseChanges> {
  const hashes = [pending.from.licenseSha256, pending.to.licenseSha256, pending.from.aupSha256, pending.to.aupSha256];
  const rows = await db
    .select({ sha256: documents.sha256, body: documents.body })
    .from(documents)
    .where(inArray(documents.sha256, [...new Set(hashes)]));
  const text = new Map(rows.map((r) => [r.sha256, r.body]));
  const body = (sha256: string) => text.get(sha256) ?? "";
  return {
    license: lineDiff(body(pending.from.licenseSha256), body(pending.to.licenseSha256)),
    aup: lineDiff(body(pending.from.aupSha256), body(pending.to.aupSha256)),
  };
}

/** Where and how an acceptance was made: kept as evidence, as for an application's acceptance. */
export interface ReacceptanceEvidence {
  ip: string | null;
  country: string | null;
  userAgent: string | null;
}

/** What the member says they accept: the requirement and the hashes of the texts they were shown. */
export interface ReacceptanceInput {
  requirementId: string;
  licenseSha256: string;
  aupSha256: string;
}

/**
 * An owner or admin accepts the new version for their organization's grant: the requirement gets
 * the evidence (hashes, time, address, country, member) and the grant moves to the version, with
 * the audit event, in one batch. Another organization's requirement is unknown (404); hashes other
 * than the version's are `stale_license`; an accepted or superseded one is `invalid_state`.
 */
export async function reacceptLicense(
  services: Pick<Services, "db" | "clock" | "ids" | "auditAnchor">,
  member: MemberPrincipal,
  input: ReacceptanceInput,
  evidence: ReacceptanceEvidence,
): Promise<LicenseReacceptance> {
  const { db, clock } = services;
  return writeAudited(services, async () => {
    await memberNow(services, member, "admin");
    const [row] = await db
      .select({ requirement: licenseReacceptances, version: licenseVersions })
      .from(licenseReacceptances)
      .innerJoin(licenseVersions, eq(licenseVersions.id, licenseReacceptances.licenseVersionId))
      .where(
        and(
          eq(licenseReacceptances.id, input.requirementId),
          eq(licenseReacceptances.organizationId, member.organizationId),
        ),
      );
    if (!row) throw new AppError("not_found", "No such license change for your organization.");
    const { requirement, version } = row;
    if (requirement.acceptedAt || requirement.supersededAt) {
      throw new AppError(
        "invalid_state",
        requirement.acceptedAt
          ? "This license version was accepted already."
          : "A newer license version replaced this one: accept that instead.",
      );
    }
    if (input.licenseSha256 !== version.licenseSha256 || input.aupSha256 !== version.aupSha256) {
      throw new AppError("stale_license", "The texts you accepted are not the version this change asks for.", {
        extensions: { licenseSha256: version.licenseSha256, aupSha256: version.aupSha256 },
      });
    }
    const now = clock.now().toISOString();
    const accepted: LicenseReacceptance = {
      ...requirement,
      acceptedAt: now,
      acceptedByUserId: member.user.id,
      licenseSha256: version.licenseSha256,
      aupSha256: version.aupSha256,
      ip: evidence.ip,
      country: evidence.country,
      userAgent: evidence.userAgent?.slice(0, 512) ?? null,
    };
    return {
      statements: [
        db
          .update(licenseReacceptances)
          .set({
            acceptedAt: accepted.acceptedAt,
            acceptedByUserId: accepted.acceptedByUserId,
            licenseSha256: accepted.licenseSha256,
            aupSha256: accepted.aupSha256,
            ip: accepted.ip,
            country: accepted.country,
            userAgent: accepted.userAgent,
          })
          .where(and(eq(licenseReacceptances.id, requirement.id), isNull(licenseReacceptances.acceptedAt))),
        db
          .update(grants)
          .set({ licenseVersionId: version.id, updatedAt: now })
          .where(eq(grants.id, requirement.grantId)),
      ],
      events: [
        {
          actor: `member:${member.user.email}`,
          action: "license.reaccepted",
          subjectType: "grant",
          subjectId: requirement.grantId,
          data: {
            organizationId: member.organizationId,
            userId: member.user.id,
            licenseVersionId: version.id,
            fromLicenseVersionId: requirement.fromLicenseVersionId,
            licenseSha256: version.licenseSha256,
            aupSha256: version.aupSha256,
            country: evidence.country,
          },
        },
      ],
      result: accepted,
    };
  });
}

/** That `grant` must accept version `versionId` by `acceptBy`: the pending row, and the organization's event. */
function reacceptanceRequirement(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  grant: { id: string; organizationId: string; family: string; licenseVersionId: string },
  versionId: string,
  acceptBy: string,
  requiredAt: string,
): BatchItem<"sqlite">[] {
  return [
    deps.db.insert(licenseReacceptances).values({
      id: deps.ids.id("rac"),
      grantId: grant.id,
      organizationId: grant.organizationId,
      family: grant.family,
      fromLicenseVersionId: grant.licenseVersionId,
      licenseVersionId: versionId,
      acceptBy,
      requiredAt,
    }),
    reacceptanceRequiredEvent(deps, grant, versionId, acceptBy),
  ];
}

/**
 * A grant issued under a version older than one loaded since with a deadline (the case was applied
 * for, or sat in review, before it came) must accept that version by the same deadline as the
 * grants that were live then: otherwise it would be the one grant the new terms never reach. The
 * newest such version is the one to accept, by the earliest deadline of the versions newer than
 * the grant's, as a grant live through all of them keeps it; that deadline may have passed
 * already, and then the grant is of no use until an owner or admin accepts it.
 */
export async function reacceptanceOfNewerVersion(
  deps: { db: Database; ids: IdGenerator; clock: Clock },
  grant: { id: string; organizationId: string; family: string; licenseVersionId: string },
  at: string,
): Promise<BatchItem<"sqlite">[]> {
  const versions = await deps.db
    .select({ id: licenseVersions.id, version: licenseVersions.version, reacceptBy: licenseVersions.reacceptBy })
    .from(licenseVersions)
    .where(eq(licenseVersions.family, grant.family))
    .orderBy(desc(licenseVersions.version));
  const own = versions.find((v) => v.id === grant.licenseVersionId);
  if (!own) return [];
  const deadlines = versions.flatMap((v) =>
    v.version > own.version && v.reacceptBy !== null ? [{ id: v.id, reacceptBy: v.reacceptBy }] : [],
  );
  const [newest, ...older] = deadlines;
  if (!newest) return [];
  const acceptBy = older.reduce((by, v) => earlierDeadline(by, v.reacceptBy), newest.reacceptBy);
  return reacceptanceRequirement(deps, grant, newest.id, acceptBy, at);
}
