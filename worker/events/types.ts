/**
 * The events organizations receive at their webhook endpoints, and what each one's `data` holds.
 * A payload is `{type, timestamp, data}` as Standard Webhooks recommends; `timestamp` is when the
 * thing happened, the `webhook-timestamp` header when the attempt was sent.
 */
import type { ApplicationStatus, GrantStatus, WebhookEventType } from "../db/schema";

/** What each event type's `data` holds. Every field is the gateway's own, never text an applicant typed. */
export interface EventData {
  /** A case was filed (`from` null) or moved to another status. */
  "application.status_changed": {
    applicationId: string;
    family: string;
    from: ApplicationStatus | null;
    to: ApplicationStatus;
  };
  /** A reviewer asked for more information; `message` is their question when they chose to show it. */
  "application.info_requested": { applicationId: string; family: string; message: string | null };
  "grant.suspended": GrantChange;
  "grant.reinstated": GrantChange;
  "grant.revoked": GrantChange;
  /** A new license version must be accepted before `acceptBy` for the grant to go on. */
  "license.reacceptance_required": {
    grantId: string;
    family: string;
    licenseVersionId: string;
    acceptBy: string | null;
  };
  /** A new revision of a model the organization's grant covers; `main` now points at it. */
  "model.revision_published": { model: string; revision: string; files: number; bytes: number };
  /** The organization's usage this month reached `threshold` percent of its monthly token budget. */
  "quota.threshold_reached": { month: string; threshold: QuotaThreshold; budget: number; used: number };
  /** Stripe could not collect an invoice; inference stops at `suspendsAt` unless a payment succeeds. */
  "billing.payment_failed": { invoiceId: string | null; billingStatus: string; suspendsAt: string | null };
}

/** A grant's new status, and the reason the reviewer gave (also mailed to the licensee's contact). */
export interface GrantChange {
  grantId: string;
  applicationId: string;
  family: string;
  from: GrantStatus;
  to: GrantStatus;
  reason: string;
}

/** The shares of the monthly token budget an organization is told of, once a month each. */
export const QUOTA_THRESHOLDS = [80, 100] as const;
export type QuotaThreshold = (typeof QUOTA_THRESHOLDS)[number];

/** An event as its endpoints receive it. */
export interface EventPayload<T extends WebhookEventType = WebhookEventType> {
  type: T;
  timestamp: string;
  data: EventData[T];
}

/** What the events queue carries: a delivery to attempt, or a chat message to reviewers. */
export type EventMessage = { delivery: string } | { reviewerNotice: { applicationId: string; kind: string } };
