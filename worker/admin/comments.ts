/**
 * Comments between reviewers on a case: questions, findings, hand-overs. They decide nothing (a
 * comment is never an approval) and the applicant never sees them, but each one is audited, since
 * what reviewers knew when they decided is part of the record. For that very reason a reviewer
 * party to the case (`conflict.ts`) may read the thread but not add to it: a finding written by
 * the applicant's colleague, or an insider's "checked, all fine", would steer the approvers who
 * decide it.
 */
import { z } from "@hono/zod-openapi";
import { asc, eq } from "drizzle-orm";
import { type AdminIdentity, currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import type { Database } from "../db/client";
import { applications, type ReviewComment, reviewComments } from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses, readBody } from "../http/router";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";
import { documentedJsonBody, registerBodySchema } from "./body";
import { refusalIfParty, reviewerActor, writeAuditedUnlessParty } from "./conflict";

/** What a reviewer writes. */
export const NewCommentSchema = z.object({ body: z.string().trim().min(1).max(4000) }).openapi("NewReviewComment");

const CommentSchema = z
  .object({ id: z.string(), reviewer: z.string(), body: z.string(), createdAt: z.string() })
  .openapi("ReviewComment");

/** A stored comment as the API shows it. */
export function commentView(row: ReviewComment): z.infer<typeof CommentSchema> {
  return { id: row.id, reviewer: row.reviewerEmail, body: row.body, createdAt: row.createdAt };
}

/** The comments on a case, oldest first, so the thread reads top to bottom. */
export async function caseComments(db: Database, applicationId: string): Promise<ReviewComment[]> {
  return db
    .select()
    .from(reviewComments)
    .where(eq(reviewComments.applicationId, applicationId))
    .orderBy(asc(reviewComments.createdAt), asc(reviewComments.id));
}

/**
 * Adds a reviewer's comment to a case with its audit event (`application.commented`) in one
 * batch. The event carries the text's sha256 rather than the text, so the chain proves what was
 * written without copying reviewers' notes into every export of the log. A reviewer party to the
 * case is refused with `conflict_of_interest`, the attempt audited as `application.comment_refused`.
 */
export async function addReviewComment(
  services: Pick<Services, "db" | "clock" | "ids">,
  reviewer: Pick<AdminIdentity, "email">,
  applicationId: string,
  body: string,
): Promise<ReviewComment> {
  const { db, clock, ids } = services;
  const bodySha256 = await sha256Hex(body);
  return writeAuditedUnlessParty<ReviewComment>(services, async () => {
    const [application] = await db
      .select({
        organizationId: applications.organizationId,
        contactEmail: applications.contactEmail,
        website: applications.website,
      })
      .from(applications)
      .where(eq(applications.id, applicationId));
    if (!application) throw new AppError("not_found", `No application ${applicationId}.`);
    const refused = await refusalIfParty(db, reviewer, application, {
      action: "application.comment_refused",
      subjectType: "application",
      subjectId: applicationId,
      data: { bodySha256, length: body.length },
      remedy: "leave the case to other reviewers",
    });
    if (refused) return refused;
    const row: ReviewComment = {
      id: ids.id("cmt"),
      applicationId,
      reviewerEmail: reviewer.email,
      body,
      createdAt: clock.now().toISOString(),
    };
    return {
      statements: [db.insert(reviewComments).values(row)],
      events: [
        {
          actor: reviewerActor(reviewer),
          action: "application.commented",
          subjectType: "application",
          subjectId: applicationId,
          data: { commentId: row.id, bodySha256, length: body.length },
        },
      ],
      result: row,
    };
  });
}

const Params = z.object({ id: z.string().min(1).max(100) });

const listComments = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/applications/{id}/comments",
  summary: "Reviewers' comments on a case, oldest first",
  request: { params: Params },
  responses: {
    200: {
      description: "The comments",
      content: { "application/json": { schema: z.object({ items: z.array(CommentSchema) }) } },
    },
    ...problemResponses(401, 403, 404),
  },
});

const postComment = adminRoute("reviewer", {
  method: "post",
  path: "/admin/api/applications/{id}/comments",
  summary: "Comment on a case (visible to reviewers only)",
  description:
    "A reviewer party to the case (its contact, at its domain, a member or invitee of its organization) is " +
    "refused with `conflict_of_interest`, and the refusal is audited as `application.comment_refused`.",
  request: { params: Params, body: documentedJsonBody(NewCommentSchema, "NewReviewComment") },
  responses: {
    201: { description: "The new comment", content: { "application/json": { schema: CommentSchema } } },
    ...problemResponses(400, 401, 403, 404, 415),
  },
});

/** The comment routes. */
export const commentRoutes = registerBodySchema(newRouter(), "NewReviewComment", NewCommentSchema)
  .openapi(listComments, async (c) => {
    const { db } = c.get("services");
    const { id } = c.req.valid("param");
    const [application] = await db.select({ id: applications.id }).from(applications).where(eq(applications.id, id));
    if (!application) throw new AppError("not_found", `No application ${id}.`);
    return c.json({ items: (await caseComments(db, id)).map(commentView) }, 200);
  })
  .openapi(postComment, async (c) => {
    const { body } = await readBody(c, NewCommentSchema);
    const row = await addReviewComment(c.get("services"), currentAdmin(c), c.req.valid("param").id, body);
    return c.json(commentView(row), 201);
  });
