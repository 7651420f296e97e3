/**
 * Recording events: each function answers the insert that puts an event in the outbox
 * (`webhook_events`), to go in the same `db.batch()` as the change it reports, so that the change
 * and its event are written together or not at all. `dispatchEvents` (./deliveries.ts) then makes
 * one delivery per subscribed endpoint and queues them.
 */
import type { BatchItem } from "drizzle-orm/batch";
import type { Database } from "../db/client";
import {
  type Application,
  type ApplicationStatus,
  type BillingAccount,
  type Grant,
  type GrantStatus,
  type WebhookEventType,
  webhookEvents,
} from "../db/schema";
import type { Clock } from "../platform/clock";
import type { IdGenerator } from "../platform/ids";
import type { EventData, QuotaThreshold } from "./types";

/** What recording an event needs: the database, ids and the time. */
export interface EventRecorder {
  db: Database;
  ids: IdGenerator;
  clock: Clock;
}

/** The insert of one event about `organizationId`. */
export function organizationEvent<T extends WebhookEventType>(
  deps: EventRecorder,
  organizationId: string,
  type: T,
  data: EventData[T],
) {
  return deps.db.insert(webhookEvents).values({
    id: deps.ids.id("msg"),
    organizationId,
    type,
    data: data as unknown as Record<string, unknown>,
    occurredAt: deps.clock.now().toISOString(),
  });
}

/**
 * The events of a case moving from `from` (null: just filed) to `to`: `application.status_changed`,
 * and `application.info_requested` when a reviewer asked for more, with their question when they
 * chose to show it to the applicant. Nothing when the status stays.
 */
export function caseEvents(
  deps: EventRecorder,
  application: Pick<Application, "id" | "organizationId" | "family">,
  from: ApplicationStatus | null,
  to: ApplicationStatus,
  request?: { reason: string; visibleToApplicant: boolean },
): BatchItem<"sqlite">[] {
  if (from === to) return [];
  const { id: applicationId, organizationId, family } = application;
  const out: BatchItem<"sqlite">[] = [
    organizationEvent(deps, organizationId, "application.status_changed", { applicationId, family, from, to }),
  ];
  if (to === "info_requested") {
    const message = request?.visibleToApplicant ? request.reason : null;
    out.push(organizationEvent(deps, organizationId, "application.info_requested", { applicationId, family, message }));
  }
  return out;
}

const GRANT_EVENT: Record<GrantStatus, "grant.suspended" | "grant.reinstated" | "grant.revoked"> = {
  suspended: "grant.suspended",
  active: "grant.reinstated",
  revoked: "grant.revoked",
};

/** The event of a grant moving to `to` (suspended, reinstated, revoked), with the reviewer's reason. */
export function grantEvent(
  deps: EventRecorder,
  grant: Pick<Grant, "id" | "applicationId" | "organizationId" | "family" | "status">,
  to: GrantStatus,
  reason: string,
) {
  return organizationEvent(deps, grant.organizationId, GRANT_EVENT[to], {
    grantId: grant.id,
    applicationId: grant.applicationId,
    family: grant.family,
    from: grant.status,
    to,
    reason,
  });
}

/**
 * `billing.payment_failed` when a Stripe event is a failed invoice payment the account took in;
 * nothing for any other event. `suspendsAt` is when the grace period (`BILLING_GRACE_DAYS`) ends.
 */
export function paymentFailedEvents(
  deps: EventRecorder & { config: { billing: { graceDays: number } } },
  account: Pick<BillingAccount, "organizationId" | "status" | "paymentFailedAt">,
  stripeEvent: { type: string; data: { object: unknown } },
): BatchItem<"sqlite">[] {
  if (stripeEvent.type !== "invoice.payment_failed") return [];
  const invoice = stripeEvent.data.object as { id?: unknown } | null;
  const failedAt = account.paymentFailedAt ? Date.parse(account.paymentFailedAt) : Number.NaN;
  const graceMs = deps.config.billing.graceDays * 86_400_000;
  return [
    organizationEvent(deps, account.organizationId, "billing.payment_failed", {
      invoiceId: typeof invoice?.id === "string" ? invoice.id : null,
      billingStatus: account.status,
      suspendsAt: Number.isNaN(failedAt) ? null : new Date(failedAt + graceMs).toISOString(),
    }),
  ];
}

/**
 * `license.reacceptance_required` for a grant whose organization must accept `licenseVersionId`
 * (by `acceptBy`, when there is a deadline) for the grant to go on.
 */
export function reacceptanceRequiredEvent(
  deps: EventRecorder,
  grant: Pick<Grant, "id" | "organizationId" | "family">,
  licenseVersionId: string,
  acceptBy: string | null,
) {
  return organizationEvent(deps, grant.organizationId, "license.reacceptance_required", {
    grantId: grant.id,
    family: grant.family,
    licenseVersionId,
    acceptBy,
  });
}

/**
 * `model.revision_published` for every organization whose active grant covers `model` (found when
 * the event is dispatched). Its id is the revision's, so publishing the same revision again (moving
 * `main` back to it) records nothing new.
 */
export function modelRevisionEvent(
  db: Database,
  model: string,
  revision: string,
  files: readonly { size: number }[],
  at: string,
) {
  const data: EventData["model.revision_published"] = {
    model,
    revision,
    files: files.length,
    bytes: files.reduce((n, f) => n + f.size, 0),
  };
  return db
    .insert(webhookEvents)
    .values({ id: `msg_rev_${revision}`, organizationId: null, type: "model.revision_published", data, occurredAt: at })
    .onConflictDoNothing();
}

/** The id of an organization's event for `threshold` in `month`: one a month, however often it is recorded. */
export function quotaEventId(organizationId: string, month: string, threshold: QuotaThreshold): string {
  return `msg_quota_${organizationId}_${month}_${threshold}`;
}

/** `quota.threshold_reached`, recorded once per organization, month and threshold. */
export function quotaThresholdEvent(
  db: Database,
  organizationId: string,
  data: EventData["quota.threshold_reached"],
  at: string,
) {
  return db
    .insert(webhookEvents)
    .values({
      id: quotaEventId(organizationId, data.month, data.threshold),
      organizationId,
      type: "quota.threshold_reached",
      data,
      occurredAt: at,
    })
    .onConflictDoNothing()
    .returning({ id: webhookEvents.id });
}
