/**
 * What reviewers are told: a case that reached review, and a case still waiting past each
 * threshold of `REVIEW_AGEING_HOURS`, each once (`reviewer_notices` is keyed by case and kind). By
 * mail from the outbox to the reviewers and approvers `ADMIN_ROLES` names by address (groups and
 * domains name nobody to write to), and, with `REVIEWER_WEBHOOK_URL`, as a Slack-compatible chat
 * message (`{"text": …}`) through the events queue, retried as deliveries are. The cron looks every
 * minute. The case's organization name is the applicant's claim: it is repeated only as
 * `mailSafeName` allows, so nothing an applicant typed becomes a link in reviewers' mail or chat.
 */
import { and, asc, eq, gte, isNull, lte } from "drizzle-orm";
import { isUniqueViolation } from "../audit/log";
import { applications, reviewerNotices } from "../db/schema";
import { gatewayLink } from "../mail/links";
import type { OutgoingMail } from "../mail/mailer";
import { enqueueMail } from "../mail/outbox";
import { mailSafeName } from "../mail/templates";
import { findFamily } from "../policy/families";
import type { Services } from "../services";
import type { AttemptOutcome, DeliveryOptions } from "./deliveries";
import { deliveryRetrySeconds, MAX_DELIVERY_ATTEMPTS, USER_AGENT } from "./deliveries";
import { checkEndpointUrl, ENDPOINT_URL_PROBLEMS } from "./endpoint-url";
import type { EventSettings } from "./settings";
import type { EventMessage } from "./types";

/** A case newer than this that reached review is "new"; older ones were there before reviewers were told. */
export const NEW_CASE_WINDOW_MS = 24 * 3_600_000;

/** Cases told of per kind in one run: the rest wait for the next minute. */
const CASES_PER_RUN = 25;

/** A chat message still unsent this long after it was made (its queue message was lost) is queued again. */
const CHAT_STUCK_MS = 10 * 60_000;

type Deps = Pick<Services, "db" | "clock" | "ids" | "log" | "config">;

/** The reviewers and approvers `ADMIN_ROLES` names by e-mail address, lower-cased, once each. */
export function reviewerAddresses(config: Pick<Services["config"], "adminRoles">): string[] {
  const entries = [...(config.adminRoles.reviewer ?? []), ...(config.adminRoles.approver ?? [])];
  const addresses = entries
    .map((entry) => entry.trim().toLowerCase())
    .filter((entry) => !entry.startsWith("group:") && !entry.startsWith("*@") && /^[^@\s]+@[^@\s]+$/.test(entry));
  return [...new Set(addresses)];
}

/** One case reviewers are to be told of. */
interface CaseToTell {
  id: string;
  family: string;
  organizationName: string;
  requiredApprovals: number;
  createdAt: string;
}

/** `new`, or `ageing:<hours>`. */
type NoticeKind = "new" | `ageing:${number}`;

function caseWords(c: CaseToTell, kind: NoticeKind) {
  const family = findFamily(c.family)?.displayName ?? c.family;
  const organization = mailSafeName(c.organizationName, { verified: false });
  const from = organization ? ` from ${organization}` : "";
  const headline =
    kind === "new"
      ? `New ${family} case to review${from}`
      : `${family} case${from} has waited ${kind.slice("ageing:".length)} hours for review`;
  return { family, headline };
}

/** The mail to one reviewer about a case. */
export function reviewerMail(publicBaseUrl: string, to: string, c: CaseToTell, kind: NoticeKind): OutgoingMail {
  const { family, headline } = caseWords(c, kind);
  const link = gatewayLink(publicBaseUrl, `/admin/applications/${encodeURIComponent(c.id)}`);
  const approvals = c.requiredApprovals > 1 ? `It needs ${c.requiredApprovals} approvers.\n` : "";
  return {
    to,
    subject:
      kind === "new"
        ? `New ${family} case to review: ${c.id}`
        : `${family} case ${c.id} waiting ${kind.slice("ageing:".length)} hours`,
    text: `${headline}.\n${approvals}In review since ${c.createdAt}.\n\nOpen it in the console:\n${link}\n\n— modelgate\n`,
  };
}

/** Slack's mrkdwn reads `<…>` as links and `&` as entities: the three are escaped. */
function slackEscape(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;");
}

/** The chat message about a case: `{"text": …}`, which Slack, Mattermost and others take. */
export function reviewerChatMessage(publicBaseUrl: string, c: CaseToTell, kind: NoticeKind): { text: string } {
  const { headline } = caseWords(c, kind);
  const link = gatewayLink(publicBaseUrl, `/admin/applications/${encodeURIComponent(c.id)}`);
  return { text: `${slackEscape(headline)}: <${link}|${c.id}>` };
}

const caseColumns = {
  id: applications.id,
  family: applications.family,
  organizationName: applications.organizationName,
  requiredApprovals: applications.requiredApprovals,
  createdAt: applications.createdAt,
};

/** Cases in review not yet told of as `kind`, created in [`from`, `to`]. */
async function untold(deps: Pick<Deps, "db">, kind: NoticeKind, window: { from?: string; to?: string }) {
  return deps.db
    .select(caseColumns)
    .from(applications)
    .leftJoin(reviewerNotices, and(eq(reviewerNotices.applicationId, applications.id), eq(reviewerNotices.kind, kind)))
    .where(
      and(
        eq(applications.status, "pending_review"),
        window.from ? gte(applications.createdAt, window.from) : undefined,
        window.to ? lte(applications.createdAt, window.to) : undefined,
        isNull(reviewerNotices.applicationId),
      ),
    )
    .orderBy(asc(applications.createdAt))
    .limit(CASES_PER_RUN);
}

/**
 * Tells reviewers of new cases and of cases past each ageing threshold, each once: the notice row
 * and the mails are one batch, which a concurrent run's notice makes fail whole. Chat messages are
 * queued after, and queued again by a later run if that failed.
 */
export async function tellReviewers(
  deps: Deps,
  settings: Pick<EventSettings, "ageingHours" | "reviewerChatUrl">,
  queue: Queue,
): Promise<{ told: number }> {
  const now = deps.clock.now();
  const at = now.toISOString();
  const hoursAgo = (hours: number) => new Date(now.getTime() - hours * 3_600_000).toISOString();
  const work: { c: CaseToTell; kind: NoticeKind }[] = [];
  for (const c of await untold(deps, "new", { from: new Date(now.getTime() - NEW_CASE_WINDOW_MS).toISOString() })) {
    work.push({ c, kind: "new" });
  }
  for (const hours of settings.ageingHours) {
    const kind: NoticeKind = `ageing:${hours}`;
    for (const c of await untold(deps, kind, { to: hoursAgo(hours) })) work.push({ c, kind });
  }
  const addresses = reviewerAddresses(deps.config);
  const chat = settings.reviewerChatUrl !== undefined;
  let told = 0;
  for (const { c, kind } of work) {
    const notice = deps.db.insert(reviewerNotices).values({
      applicationId: c.id,
      kind,
      createdAt: at,
      chatState: chat ? "pending" : "none",
    });
    const mails = addresses.map((to) => enqueueMail(deps, reviewerMail(deps.config.publicBaseUrl, to, c, kind)));
    try {
      await deps.db.batch([notice, ...mails]);
    } catch (error) {
      if (isUniqueViolation(error, "reviewer_notices")) continue;
      throw error;
    }
    told++;
    if (chat) await queueChat(deps, queue, [{ applicationId: c.id, kind }]);
  }
  if (chat) await requeueStuckChat(deps, queue);
  return { told };
}

async function queueChat(
  deps: Pick<Deps, "log">,
  queue: Queue,
  notices: { applicationId: string; kind: string }[],
): Promise<void> {
  if (notices.length === 0) return;
  try {
    await queue.sendBatch(notices.map((reviewerNotice) => ({ body: { reviewerNotice } satisfies EventMessage })));
  } catch (error) {
    deps.log.warn("queueing reviewer chat messages failed; a later run queues them again", { error: String(error) });
  }
}

/** Chat messages never attempted long after they were made: their queue message was lost. */
async function requeueStuckChat(deps: Deps, queue: Queue): Promise<void> {
  const before = new Date(deps.clock.now().getTime() - CHAT_STUCK_MS).toISOString();
  const stuck = await deps.db
    .select({ applicationId: reviewerNotices.applicationId, kind: reviewerNotices.kind })
    .from(reviewerNotices)
    .where(
      and(
        eq(reviewerNotices.chatState, "pending"),
        eq(reviewerNotices.chatAttempts, 0),
        lte(reviewerNotices.createdAt, before),
      ),
    )
    .limit(CASES_PER_RUN);
  await queueChat(deps, queue, stuck);
}

/**
 * Posts one chat message, if it is still to be sent: the attempt is claimed in D1 first, so a
 * repeated message posts nothing twice. A failure is tried again with the deliveries' backoff, up
 * to `MAX_DELIVERY_ATTEMPTS` (then `failed`).
 */
export async function sendReviewerChat(
  deps: Deps,
  settings: Pick<EventSettings, "reviewerChatUrl" | "allowedHosts">,
  target: { applicationId: string; kind: string },
  options: DeliveryOptions = {},
): Promise<AttemptOutcome> {
  const { db } = deps;
  const key = and(eq(reviewerNotices.applicationId, target.applicationId), eq(reviewerNotices.kind, target.kind));
  const [row] = await db
    .select({ notice: reviewerNotices, c: caseColumns })
    .from(reviewerNotices)
    .innerJoin(applications, eq(applications.id, reviewerNotices.applicationId))
    .where(key);
  if (row?.notice.chatState !== "pending") return {};
  const url = settings.reviewerChatUrl;
  const attempts = row.notice.chatAttempts + 1;
  const claimed = await db
    .update(reviewerNotices)
    .set({ chatAttempts: attempts })
    .where(and(key, eq(reviewerNotices.chatState, "pending"), eq(reviewerNotices.chatAttempts, attempts - 1)))
    .returning({ kind: reviewerNotices.kind });
  if (claimed.length === 0) return {};
  const mine = and(key, eq(reviewerNotices.chatAttempts, attempts));
  const refused = url === undefined ? undefined : checkEndpointUrl(url, settings.allowedHosts);
  if (url === undefined || refused) {
    const why = refused ? `REVIEWER_WEBHOOK_URL ${ENDPOINT_URL_PROBLEMS[refused]}` : "no REVIEWER_WEBHOOK_URL is set";
    await db.update(reviewerNotices).set({ chatState: "failed", chatError: why }).where(mine);
    deps.log.error("reviewer chat message not sent", { applicationId: target.applicationId, error: why });
    return {};
  }
  const kind = target.kind as NoticeKind;
  let error: string;
  try {
    const response = await (options.fetch ?? fetch)(url, {
      method: "POST",
      headers: { "content-type": "application/json", "user-agent": USER_AGENT },
      body: JSON.stringify(reviewerChatMessage(deps.config.publicBaseUrl, row.c, kind)),
      redirect: "manual",
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
    await response.body?.cancel();
    if (response.ok) {
      await db.update(reviewerNotices).set({ chatState: "sent", chatError: null }).where(mine);
      return {};
    }
    error = `answered ${response.status}`;
  } catch (caught) {
    error = `could not post: ${String(caught).slice(0, 200)}`;
  }
  const giveUp = attempts >= MAX_DELIVERY_ATTEMPTS;
  await db
    .update(reviewerNotices)
    .set({ chatError: error, ...(giveUp ? { chatState: "failed" as const } : {}) })
    .where(mine);
  return giveUp ? {} : { retryInSeconds: deliveryRetrySeconds(attempts) };
}

/** Marks chat messages the queue gave up on as failed. */
export async function buryReviewerChat(
  deps: Pick<Deps, "db">,
  notices: readonly { applicationId: string; kind: string }[],
): Promise<void> {
  for (const n of notices) {
    await deps.db
      .update(reviewerNotices)
      .set({ chatState: "failed", chatError: "the events queue gave up on it" })
      .where(
        and(
          eq(reviewerNotices.applicationId, n.applicationId),
          eq(reviewerNotices.kind, n.kind),
          eq(reviewerNotices.chatState, "pending"),
        ),
      );
  }
}
