/**
 * A reviewer's decision on a case: approve, reject, or ask the applicant for more information.
 */
import { z } from "@hono/zod-openapi";
import { and, eq } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { Context } from "hono";
import { applyDecision } from "../applications/review";
import { type AuditEntry, isUniqueViolation } from "../audit/log";
import { type AdminIdentity, currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { APPLICATION_STATUSES, type ApplicationStatus, applications, DECISIONS, decisions } from "../db/schema";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { caseEvents } from "../events/record";
import { grantForApproval } from "../grants/approve";
import { newRouter, problemResponses, readBody } from "../http/router";
import { deliverDueMail, enqueueMailWithinLimits } from "../mail/outbox";
import { caseNotice, decisionMail } from "../mail/templates";
import { addDays } from "../platform/clock";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import { documentedJsonBody, registerBodySchema } from "./body";
import { refusalIfParty, reviewerActor, writeAuditedUnlessParty } from "./conflict";

/** What a reviewer submits. */
export const DecisionRequestSchema = z
  .object({
    decision: z.enum(DECISIONS),
    reason: z.string().trim().min(1).max(4000),
    visibleToApplicant: z.boolean(),
  })
  .openapi("DecisionRequest");

export type DecisionRequest = z.infer<typeof DecisionRequestSchema>;

const DecisionOutcomeSchema = z
  .object({
    applicationId: z.string(),
    status: z.enum(APPLICATION_STATUSES),
    previousStatus: z.enum(APPLICATION_STATUSES),
    /** Approvals in the round the decision was made in. */
    approvals: z.number().int(),
    requiredApprovals: z.number().int(),
    grantId: z.string().nullable(),
  })
  .openapi("DecisionOutcome");

export type DecisionOutcome = z.infer<typeof DecisionOutcomeSchema>;

/** Statuses whose notice to the applicant `decisionMail` writes. */
function noticeStatus(status: ApplicationStatus): "approved" | "rejected" | "info_requested" | undefined {
  return status === "approved" || status === "rejected" || status === "info_requested" ? status : undefined;
}

/**
 * Records a reviewer's decision, and its consequences, in one atomic batch: the decision row, the
 * case's new status, a grant when the last required approval came in, the applicant's notice, and
 * the audit events. All reads happen inside the plan so that a concurrent change (another
 * approver, say) makes the batch fail on the audit chain and the decision is re-judged on fresh
 * state — which is how two approvers approving at once still end with exactly one grant.
 */
export async function decideApplication(
  services: Pick<Services, "db" | "clock" | "ids" | "config">,
  reviewer: Pick<AdminIdentity, "email">,
  applicationId: string,
  request: DecisionRequest,
): Promise<DecisionOutcome> {
  const { db, clock, ids, config } = services;
  const actor = reviewerActor(reviewer);
  try {
    return await writeAuditedUnlessParty<DecisionOutcome>(services, async () => {
      const [application] = await db.select().from(applications).where(eq(applications.id, applicationId));
      if (!application) throw new AppError("not_found", `No application ${applicationId}.`);
      // The refusal is evidence too: someone party to the case tried to decide it.
      const refused = await refusalIfParty(db, reviewer, application, {
        action: "application.decision_refused",
        subjectType: "application",
        subjectId: applicationId,
        data: { decision: request.decision, round: application.reviewRound },
      });
      if (refused) return refused;
      const family = findFamily(application.family);
      if (!family) throw new Error(`application ${applicationId} names unknown family ${application.family}`);
      const approvalsThisRound = await db
        .select({ reviewer: decisions.reviewerEmail })
        .from(decisions)
        .where(
          and(
            eq(decisions.applicationId, applicationId),
            eq(decisions.reviewRound, application.reviewRound),
            eq(decisions.decision, "approve"),
          ),
        );
      const transition = applyDecision(
        {
          status: application.status,
          requiredApprovals: application.requiredApprovals,
          approvalsThisRound: approvalsThisRound.map((row) => row.reviewer),
        },
        reviewer.email,
        request.decision,
      );
      if (!transition.ok) throw new AppError(transition.code, transition.detail);

      const now = clock.now();
      const at = now.toISOString();
      const final = transition.status === "approved" || transition.status === "rejected";
      const statusChanged = transition.status !== application.status;
      // A message is shown with the status it explains: a new status without a visible reason
      // must not keep showing the previous one's message.
      const applicantMessage = request.visibleToApplicant
        ? request.reason
        : statusChanged
          ? null
          : application.applicantMessage;
      const statements: BatchItem<"sqlite">[] = [
        db.insert(decisions).values({
          id: ids.id("dec"),
          applicationId,
          reviewRound: application.reviewRound,
          reviewerEmail: reviewer.email,
          decision: request.decision,
          reason: request.reason,
          visibleToApplicant: request.visibleToApplicant,
          createdAt: at,
        }),
        db
          .update(applications)
          .set({
            status: transition.status,
            updatedAt: at,
            decidedAt: final ? at : application.decidedAt,
            applicantMessage,
            reapplyAfter:
              transition.status === "rejected"
                ? addDays(now, family.reapplyCooldownDays).toISOString()
                : application.reapplyAfter,
          })
          .where(eq(applications.id, applicationId)),
      ];
      const events: AuditEntry[] = [
        {
          actor,
          action: "application.decided",
          subjectType: "application",
          subjectId: applicationId,
          data: {
            decision: request.decision,
            reason: request.reason,
            visibleToApplicant: request.visibleToApplicant,
            round: application.reviewRound,
            approvals: transition.approvals,
            requiredApprovals: application.requiredApprovals,
            reviewer: reviewer.email,
            from: application.status,
            to: transition.status,
          },
        },
      ];
      let grantId: string | null = null;
      if (transition.issueGrant) {
        const granted = await grantForApproval(services, application, at, actor);
        grantId = granted.grantId;
        statements.push(...granted.statements);
        events.push(...granted.events);
      }
      statements.push(...caseEvents(services, application, application.status, transition.status, request));
      const notice = statusChanged ? noticeStatus(transition.status) : undefined;
      if (notice) {
        const mail = decisionMail(
          caseNotice(config.publicBaseUrl, application, family.displayName),
          notice,
          request.visibleToApplicant ? request.reason : null,
        );
        statements.push(...(await enqueueMailWithinLimits(services, mail)));
      }
      return {
        statements,
        events,
        result: {
          applicationId,
          status: transition.status,
          previousStatus: application.status,
          approvals: transition.approvals,
          requiredApprovals: application.requiredApprovals,
          grantId,
        },
      };
    });
  } catch (error) {
    // The database's four-eyes index caught the same approver twice in one round, racing itself.
    if (isUniqueViolation(error, "decisions")) {
      throw new AppError("conflict", "You have already approved this case in this round.", { cause: error });
    }
    throw error;
  }
}

/** Delivers queued mail after the response, so the reviewer does not wait on the mail server. */
export function deliverMailSoon(c: Context<HonoEnv>): void {
  const services = c.get("services");
  c.executionCtx.waitUntil(
    deliverDueMail(services).catch((error: unknown) => {
      services.log.warn("mail delivery run failed", { error: String(error) });
    }),
  );
}

const decide = adminRoute("approver", {
  method: "post",
  path: "/admin/api/applications/{id}/decision",
  summary: "Approve, reject, or ask for more information",
  description:
    "Cases over the license's threshold need two distinct approvers in one review round; the grant is issued with the last required approval. A reason marked visible is shown to the applicant. An approver party to the applicant organization (the contact of one of its cases however spelt, a member or invitee, at the domain of one of its contacts or websites or one it verified; free-mail domains aside) is refused with `conflict_of_interest`, and the refusal is audited.",
  request: {
    params: z.object({ id: z.string().min(1).max(100) }),
    body: documentedJsonBody(DecisionRequestSchema, "DecisionRequest"),
  },
  responses: {
    200: {
      description: "The case after the decision",
      content: { "application/json": { schema: DecisionOutcomeSchema } },
    },
    ...problemResponses(400, 401, 403, 404, 409, 415),
  },
});

/** The decision route. */
export const decisionRoutes = registerBodySchema(newRouter(), "DecisionRequest", DecisionRequestSchema).openapi(
  decide,
  async (c) => {
    const request = await readBody(c, DecisionRequestSchema);
    const outcome = await decideApplication(c.get("services"), currentAdmin(c), c.req.valid("param").id, request);
    deliverMailSoon(c);
    return c.json(outcome, 200);
  },
);
