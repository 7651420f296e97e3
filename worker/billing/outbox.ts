/**
 * The billing outbox as operators see it: billing intervals (an organization's closed part of an
 * hour, one pair of meter events each) and ledger rows (requests recorded one by one: by gateways
 * from before the hourly aggregates, or when a quota object could not take them) by billing
 * state, and those that failed to reach Stripe (retrying, dead-lettered, or too old to send), so
 * what keeps failing is visible rather than silently unbilled.
 */
import { and, asc, count, desc, eq, gt, inArray, min, or, sql } from "drizzle-orm";
import { type AuditEntry, writeAudited } from "../audit/log";
import type { Database } from "../db/client";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { billingIntervals, organizations, usageLedger } from "../db/schema";
import type { Services } from "../services";
import { queueIntervals, queueLedgerRows, type UsageMessage } from "./queue";

/** What the outbox holds: billing intervals, or ledger rows billed one by one. */
export const BILLABLE_KINDS = ["interval", "row"] as const;
export type BillableKind = (typeof BILLABLE_KINDS)[number];

/** Billing states of intervals and ledger rows alike. */
export type BillingState = (typeof billingIntervals.$inferSelect)["state"];

/**
 * Intervals and ledger rows per billing state: how many, the requests they carry (a row is one),
 * and when the oldest of them was written.
 */
export async function outboxStates(
  db: Database,
): Promise<{ kind: BillableKind; state: BillingState; rows: number; requests: number; oldest: string | null }[]> {
  const [intervals, rows] = await db.batch([
    db
      .select({
        state: billingIntervals.state,
        rows: count(),
        requests: sql<number>`coalesce(sum(${billingIntervals.requests}), 0)`,
        oldest: min(billingIntervals.createdAt),
      })
      .from(billingIntervals)
      .groupBy(billingIntervals.state)
      .orderBy(asc(billingIntervals.state)),
    db
      .select({ state: usageLedger.billingState, rows: count(), oldest: min(usageLedger.createdAt) })
      .from(usageLedger)
      .groupBy(usageLedger.billingState)
      .orderBy(asc(usageLedger.billingState)),
  ]);
  return [
    ...intervals.map((s) => ({ kind: "interval" as const, ...s, requests: Number(s.requests) })),
    ...rows.map((s) => ({ kind: "row" as const, state: s.state, rows: s.rows, requests: s.rows, oldest: s.oldest })),
  ];
}

/** Pending intervals and rows that Stripe has already refused at least once, and the oldest of each kind. */
export async function retryingBillables(
  db: Database,
): Promise<Record<BillableKind, { rows: number; oldest: string | null }>> {
  const [[intervals], [rows]] = await db.batch([
    db
      .select({ rows: count(), oldest: min(billingIntervals.createdAt) })
      .from(billingIntervals)
      .where(and(eq(billingIntervals.state, "pending"), gt(billingIntervals.attempts, 0))),
    db
      .select({ rows: count(), oldest: min(usageLedger.createdAt) })
      .from(usageLedger)
      .where(and(eq(usageLedger.billingState, "pending"), gt(usageLedger.billingAttempts, 0))),
  ]);
  return { interval: intervals ?? { rows: 0, oldest: null }, row: rows ?? { rows: 0, oldest: null } };
}

/** An interval or ledger row that did not reach Stripe in its first attempt, as the outbox lists it. */
export interface BillingFailure {
  kind: BillableKind;
  id: string;
  organizationId: string;
  organization: string | null;
  /** The row's model; null for an interval, which sums every model of its hour. */
  model: string | null;
  /** The hour (`YYYY-MM-DDTHH`) an interval bills, or a row was recorded in. */
  hour: string;
  requests: number;
  promptTokens: number;
  completionTokens: number;
  state: BillingState;
  attempts: number;
  error: string | null;
  createdAt: string;
}

/**
 * The most recent intervals and rows that did not reach Stripe in their first attempt and are not
 * sent yet: retrying, dead-lettered or expired, with the organization's name and the last error,
 * newest first.
 */
export async function billingFailures(db: Database, limit = 50): Promise<BillingFailure[]> {
  const [intervals, rows] = await db.batch([
    db
      .select({
        id: billingIntervals.id,
        organizationId: billingIntervals.organizationId,
        organization: organizations.name,
        hour: billingIntervals.hour,
        requests: billingIntervals.requests,
        promptTokens: billingIntervals.promptTokens,
        completionTokens: billingIntervals.completionTokens,
        state: billingIntervals.state,
        attempts: billingIntervals.attempts,
        error: billingIntervals.error,
        createdAt: billingIntervals.createdAt,
      })
      .from(billingIntervals)
      .leftJoin(organizations, eq(organizations.id, billingIntervals.organizationId))
      .where(
        or(
          inArray(billingIntervals.state, ["dead", "expired"]),
          and(eq(billingIntervals.state, "pending"), gt(billingIntervals.attempts, 0)),
        ),
      )
      .orderBy(desc(billingIntervals.createdAt))
      .limit(limit),
    db
      .select({
        id: usageLedger.id,
        organizationId: usageLedger.organizationId,
        organization: organizations.name,
        model: usageLedger.model,
        promptTokens: usageLedger.promptTokens,
        completionTokens: usageLedger.completionTokens,
        state: usageLedger.billingState,
        attempts: usageLedger.billingAttempts,
        error: usageLedger.billingError,
        createdAt: usageLedger.createdAt,
      })
      .from(usageLedger)
      .leftJoin(organizations, eq(organizations.id, usageLedger.organizationId))
      .where(
        or(
          inArray(usageLedger.billingState, ["dead", "expired"]),
          and(eq(usageLedger.billingState, "pending"), gt(usageLedger.billingAttempts, 0)),
        ),
      )
      .orderBy(desc(usageLedger.createdAt))
      .limit(limit),
  ]);
  const failures: BillingFailure[] = [
    ...intervals.map((i) => ({ kind: "interval" as const, model: null, ...i })),
    ...rows.map((r) => ({ kind: "row" as const, ...r, hour: r.createdAt.slice(0, 13), requests: 1 })),
  ];
  return failures.sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0)).slice(0, limit);
}

/** The most dead-lettered intervals and rows one resend takes, together. */
export const MAX_RESEND = 500;
/** The most ids one resend may name: one statement's worth. */
export const MAX_RESEND_IDS = D1_IDS_PER_STATEMENT;

/** What a resend put back on its way to Stripe. */
export interface Resent {
  intervals: string[];
  rows: string[];
}

/**
 * Puts dead-lettered intervals and ledger rows back on their way to Stripe: state `pending`,
 * attempts and error cleared, with an audit event per kind naming who did it, then a queue
 * message for each. `ids` may name either kind; without it, every dead one, intervals first and
 * oldest first, up to `MAX_RESEND`. Only `dead` ones move (an `expired` one is past what Stripe
 * accepts; a `sent` one is done). Their record of the parts Stripe accepted stays: a resend days
 * after the first attempt, past Stripe's ~24 h memory of identifiers, sends only the parts Stripe
 * has not accepted. If the queue send fails they are pending all the same, and the reconciler
 * queues them within minutes.
 */
export async function resendDeadLetters(
  services: Pick<Services, "db" | "clock" | "ids" | "log">,
  queue: Queue<UsageMessage>,
  actor: string,
  ids: readonly string[] | undefined,
): Promise<Resent> {
  const { db } = services;
  const moved = await writeAudited(services, async () => {
    const intervalIds = (
      await db
        .select({ id: billingIntervals.id })
        .from(billingIntervals)
        .where(
          ids
            ? and(eq(billingIntervals.state, "dead"), inArray(billingIntervals.id, [...ids]))
            : eq(billingIntervals.state, "dead"),
        )
        .orderBy(billingIntervals.createdAt)
        .limit(MAX_RESEND)
    ).map((i) => i.id);
    const rowIds =
      intervalIds.length < MAX_RESEND
        ? (
            await db
              .select({ id: usageLedger.id })
              .from(usageLedger)
              .where(
                ids
                  ? and(eq(usageLedger.billingState, "dead"), inArray(usageLedger.id, [...ids]))
                  : eq(usageLedger.billingState, "dead"),
              )
              .orderBy(usageLedger.createdAt)
              .limit(MAX_RESEND - intervalIds.length)
          ).map((r) => r.id)
        : [];
    const result: Resent = { intervals: intervalIds, rows: rowIds };
    const events: AuditEntry[] = [];
    const subject = (moved: string[], noun: string) =>
      moved.length === 1 ? (moved[0] as string) : `${moved.length} ${noun}`;
    if (intervalIds.length) {
      events.push({
        actor,
        action: "billing.dead_letters_resent",
        subjectType: "billing_intervals",
        subjectId: subject(intervalIds, "intervals"),
        data: { intervals: intervalIds.length, ids: intervalIds },
      });
    }
    if (rowIds.length) {
      events.push({
        actor,
        action: "billing.dead_letters_resent",
        subjectType: "usage_ledger",
        subjectId: subject(rowIds, "rows"),
        data: { rows: rowIds.length, ids: rowIds },
      });
    }
    return {
      statements: [
        ...chunked(intervalIds, D1_IDS_PER_STATEMENT).map((chunk) =>
          db
            .update(billingIntervals)
            .set({ state: "pending", attempts: 0, error: null })
            .where(and(eq(billingIntervals.state, "dead"), inArray(billingIntervals.id, chunk))),
        ),
        ...chunked(rowIds, D1_IDS_PER_STATEMENT).map((chunk) =>
          db
            .update(usageLedger)
            .set({ billingState: "pending", billingAttempts: 0, billingError: null })
            .where(and(eq(usageLedger.billingState, "dead"), inArray(usageLedger.id, chunk))),
        ),
      ],
      events,
      result,
    };
  });
  const notQueued = (_ids: string[], error: unknown) =>
    services.log.warn("resent usage not queued; the reconciler will send it", { error: String(error) });
  await queueIntervals(queue, moved.intervals, notQueued);
  await queueLedgerRows(queue, moved.rows, notQueued);
  return moved;
}
