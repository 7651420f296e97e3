/**
 * The outbox, readable by operators: what the gateway mailed to an address and how delivery went,
 * so support, demos and tests can follow a mailed link without reading the mail server. Admins
 * only: messages hold live single-use links.
 */
import { z } from "@hono/zod-openapi";
import { desc, eq, sql } from "drizzle-orm";
import { adminRoute } from "../auth/admin-door";
import { normalizeEmail } from "../auth/users";
import { MAIL_STATUSES, mailOutbox } from "../db/schema";
import { newRouter, problemResponses } from "../http/router";
import type { Services } from "../services";

/** How many messages one answer lists at most. */
export const MAIL_LIST_MAX = 50;

const MessageSchema = z
  .object({
    id: z.string(),
    to: z.string(),
    subject: z.string(),
    text: z.string(),
    status: z.enum(MAIL_STATUSES),
    attempts: z.number().int(),
    lastError: z.string().nullable(),
    createdAt: z.string(),
    sentAt: z.string().nullable(),
  })
  .openapi("OutboxMessage");

const listMail = adminRoute("admin", {
  method: "get",
  path: "/admin/api/mail",
  summary: "Mail sent (or queued, or suppressed) to an address, newest first",
  request: {
    query: z.object({
      to: z.string().trim().min(3).max(254).openapi({ description: "The recipient's address (any case)." }),
      limit: z.coerce.number().int().min(1).max(MAIL_LIST_MAX).default(MAIL_LIST_MAX),
    }),
  },
  responses: {
    200: {
      description: "Messages, newest first",
      content: { "application/json": { schema: z.object({ messages: z.array(MessageSchema) }) } },
    },
    ...problemResponses(400),
  },
});

/** The outbox's messages to `to` (compared without case), newest first. */
export async function mailTo(services: Pick<Services, "db">, to: string, limit = MAIL_LIST_MAX) {
  return services.db
    .select({
      id: mailOutbox.id,
      to: mailOutbox.to,
      subject: mailOutbox.subject,
      text: mailOutbox.text,
      status: mailOutbox.status,
      attempts: mailOutbox.attempts,
      lastError: mailOutbox.lastError,
      createdAt: mailOutbox.createdAt,
      sentAt: mailOutbox.sentAt,
    })
    .from(mailOutbox)
    .where(eq(sql`lower(${mailOutbox.to})`, normalizeEmail(to)))
    .orderBy(desc(mailOutbox.createdAt), desc(mailOutbox.id))
    .limit(Math.min(limit, MAIL_LIST_MAX));
}

/** The outbox for operators, mounted behind the admin door. */
export const mailAdminRoutes = newRouter().openapi(listMail, async (c) => {
  const { to, limit } = c.req.valid("query");
  return c.json({ messages: await mailTo(c.get("services"), to, limit) }, 200);
});
