import { and, eq, gt, isNull, or, sql } from "drizzle-orm";
import { writeAudited } from "../audit/log";
import { bearerToken } from "../auth/bearer";
import { type Application, applications, grants, memberships, statusLinks, users } from "../db/schema";
import { AppError } from "../errors";
import { caseEvents } from "../events/record";
import { sha256Hex } from "../platform/hash";
import { findFamily } from "../policy/families";
import type { Services } from "../services";

/** The status-page capability of a request, from `Authorization: Bearer` or `?token=`. */
export function capability(c: {
  req: { header(name: string): string | undefined; query(name: string): string | undefined };
}) {
  return bearerToken(c.req.header("authorization")) ?? c.req.query("token") ?? undefined;
}

/** An application as its applicant may see it. */
export interface ApplicantView {
  id: string;
  family: string;
  familyName: string;
  organization: { name: string; country: string };
  contactName: string;
  status: Application["status"];
  reasons: Application["policyReasons"];
  message: string | null;
  applicantResponse: string | null;
  next: string;
  reapplyAfter: string | null;
  submittedAt: string;
  updatedAt: string;
  grant: { id: string; status: "active" | "suspended" | "revoked" } | null;
}

function nextStep(app: Application, grant: ApplicantView["grant"]): string {
  switch (app.status) {
    case "pending_review":
      return app.requiredApprovals > 1
        ? "Your declared user count is over the license threshold, so the licensor decides; two approvers review the case. This usually takes one to two weeks."
        : "A reviewer will decide your case, usually within five working days. You will get an e-mail.";
    case "info_requested":
      return "A reviewer needs more information: answer on this page. The review continues once you have.";
    case "rejected":
      return app.reapplyAfter
        ? `You may apply again after ${app.reapplyAfter.slice(0, 10)}.`
        : "This application cannot be approved.";
    case "approved":
      if (grant?.status === "revoked") return "Access was revoked. Under the license you must delete the materials.";
      if (grant?.status === "suspended")
        return "Access is suspended for now. You will get an e-mail when it is reinstated.";
      return "Approved. Sign in to your account to create access tokens, download the weights and call the model.";
  }
}

/** A case as a status link opens it, with the owner who holds the link. */
export type CaseByStatusLink = Application & { holder: { userId: string; email: string } };

/**
 * Finds the application a status-page secret opens, and the owner who holds the link. A link
 * works only while its holder owns the case's organization, checked in the same query, so
 * removing or demoting them ends it at once. A wrong id, a wrong secret, a secret for another
 * application, an expired or revoked link and one whose holder is no longer an owner all answer
 * the same 404, so the link reveals nothing but its own case.
 */
export async function applicationBySecret(
  services: Pick<Services, "db" | "clock">,
  id: string,
  secret: string | undefined,
): Promise<CaseByStatusLink> {
  if (!secret || secret.length > 200) throw new AppError("not_found", "No such application.");
  const hash = await sha256Hex(secret);
  // Links from before holders were kept belong to the case's contact.
  const holderId = sql<string>`coalesce(${statusLinks.userId}, ${applications.contactUserId})`;
  const [row] = await services.db
    .select({ application: applications, holderId: users.id, holderEmail: users.email })
    .from(statusLinks)
    .innerJoin(applications, eq(applications.id, statusLinks.applicationId))
    .innerJoin(
      memberships,
      and(
        eq(memberships.organizationId, applications.organizationId),
        eq(memberships.userId, holderId),
        isNull(memberships.removedAt),
        eq(memberships.role, "owner"),
      ),
    )
    .innerJoin(users, eq(users.id, memberships.userId))
    .where(
      and(
        eq(statusLinks.secretHash, hash),
        eq(statusLinks.applicationId, id),
        isNull(statusLinks.revokedAt),
        or(isNull(statusLinks.expiresAt), gt(statusLinks.expiresAt, services.clock.now().toISOString())),
      ),
    );
  if (!row) throw new AppError("not_found", "No such application.");
  return { ...row.application, holder: { userId: row.holderId, email: row.holderEmail } };
}

/** The applicant's view of a case. */
export async function applicantView(services: Pick<Services, "db">, app: Application): Promise<ApplicantView> {
  const [grant] = await services.db
    .select({ id: grants.id, status: grants.status })
    .from(grants)
    .where(eq(grants.applicationId, app.id));
  const g = grant ?? null;
  return {
    id: app.id,
    family: app.family,
    familyName: findFamily(app.family)?.displayName ?? app.family,
    organization: { name: app.organizationName, country: app.country },
    contactName: app.contactName,
    status: app.status,
    reasons: app.policyReasons,
    message: app.applicantMessage,
    applicantResponse: app.applicantResponse,
    next: nextStep(app, g),
    reapplyAfter: app.reapplyAfter,
    submittedAt: app.createdAt,
    updatedAt: app.updatedAt,
    grant: g,
  };
}

/**
 * The applicant answers a request for information: the case goes back to review in a new round,
 * so approvals given before the answer no longer count. The answer is recorded as the link
 * holder's.
 */
export async function answerInformationRequest(
  services: Services,
  app: CaseByStatusLink,
  message: string,
): Promise<void> {
  await writeAudited(services, async () => {
    const [current] = await services.db.select().from(applications).where(eq(applications.id, app.id));
    if (current?.status !== "info_requested") {
      throw new AppError("invalid_state", "This case is not waiting for information from you.");
    }
    const at = services.clock.now().toISOString();
    return {
      statements: [
        services.db
          .update(applications)
          .set({
            status: "pending_review",
            applicantResponse: message,
            reviewRound: current.reviewRound + 1,
            updatedAt: at,
          })
          .where(and(eq(applications.id, app.id), eq(applications.status, "info_requested"))),
        ...caseEvents(services, current, "info_requested", "pending_review"),
      ],
      events: [
        {
          actor: `applicant:${app.holder.email}`,
          action: "application.info_provided",
          subjectType: "application",
          subjectId: app.id,
          data: { round: current.reviewRound + 1, length: message.length },
        },
      ],
      result: undefined,
    };
  });
}
