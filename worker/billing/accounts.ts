import { and, asc, eq, inArray, ne } from "drizzle-orm";
import type Stripe from "stripe";
import { type AuditedWrite, writeAudited } from "../audit/log";
import type { Database } from "../db/client";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { type BillingAccount, billingAccounts, grants, organizationLimits, organizations } from "../db/schema";
import type { Services } from "../services";

/**
 * The organization's billing account, created on first need: a Stripe customer and a subscription
 * to its family's plan, each created with an idempotency key derived from the organization, so two
 * workers racing here end up with the same customer and subscription. The plan's limits become the
 * organization's quota limits. The account and the limits are written with their audit events in
 * one atomic write. Each Stripe call goes through `guarded` (the caller's circuit breaker), the
 * database reads do not: an account that exists is found whatever state Stripe is in.
 */
export async function ensureBillingAccount(
  services: Pick<Services, "db" | "clock" | "ids" | "config"> & Partial<Pick<Services, "auditAnchor">>,
  stripe: Stripe,
  organizationId: string,
  guarded: <T>(call: () => Promise<T>) => Promise<T> = (call) => call(),
): Promise<BillingAccount | undefined> {
  const [existing] = await services.db
    .select()
    .from(billingAccounts)
    .where(eq(billingAccounts.organizationId, organizationId));
  if (existing) return existing;
  const [org] = await services.db.select().from(organizations).where(eq(organizations.id, organizationId));
  if (!org) return undefined;
  const [grant] = await services.db
    .select({ family: grants.family })
    .from(grants)
    .where(and(eq(grants.organizationId, organizationId), eq(grants.status, "active")))
    .limit(1);
  const family = grant?.family ?? "llama-2";
  const plan = services.config.billing.plans[family] ?? { plan: "standard", prices: [] };
  const customer = await guarded(() =>
    stripe.customers.create(
      { name: org.name, metadata: { organization_id: org.id, family } },
      { idempotencyKey: `modelgate-customer-${org.id}` },
    ),
  );
  const subscription =
    plan.prices.length > 0
      ? await guarded(() =>
          stripe.subscriptions.create(
            {
              customer: customer.id,
              items: plan.prices.map((price) => ({ price })),
              metadata: { organization_id: org.id, plan: plan.plan },
            },
            { idempotencyKey: `modelgate-subscription-${org.id}-${family}` },
          ),
        )
      : undefined;
  return writeAudited(services, async () => {
    // Planned again on a lost race: the other writer's account is the one to keep.
    const [opened] = await services.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, organizationId));
    if (opened) return { statements: [], events: [], result: opened };
    const at = services.clock.now().toISOString();
    const account: BillingAccount = {
      organizationId: org.id,
      stripeCustomerId: customer.id,
      stripeSubscriptionId: subscription?.id ?? null,
      plan: plan.plan,
      status: "active",
      paymentFailedAt: null,
      subscriptionEventCreated: 0,
      invoiceEventCreated: 0,
      createdAt: at,
      updatedAt: at,
    };
    const write: AuditedWrite<BillingAccount> = {
      statements: [services.db.insert(billingAccounts).values(account)],
      events: [
        {
          actor: "system",
          action: "billing.account_opened",
          subjectType: "organization",
          subjectId: org.id,
          data: { family, plan: plan.plan, customer: customer.id, subscription: subscription?.id ?? null },
        },
      ],
      result: account,
    };
    if (plan.limits) {
      const limits = { plan: plan.plan, ...plan.limits, updatedAt: at };
      write.statements.push(
        services.db
          .insert(organizationLimits)
          .values({ organizationId: org.id, ...limits })
          .onConflictDoUpdate({ target: organizationLimits.organizationId, set: limits }),
      );
      // The same event an admin's change of limits records, by the system and for the plan.
      write.events.push({
        actor: "system",
        action: "organization.limits_set",
        subjectType: "organization",
        subjectId: org.id,
        data: { plan: plan.plan, ...plan.limits, source: "billing_plan" },
      });
    }
    return write;
  });
}

/** When inference of an account stops for lack of payment, if it does. */
export function suspendedSince(
  account: Pick<BillingAccount, "status" | "paymentFailedAt">,
  graceDays: number,
): Date | undefined {
  if (account.status === "active" || !account.paymentFailedAt) return undefined;
  return new Date(Date.parse(account.paymentFailedAt) + graceDays * 86_400_000);
}

/** Whether inference of an account is stopped for lack of payment at `now`, and from when it stops or stopped. */
export function paymentStanding(
  account: Pick<BillingAccount, "status" | "paymentFailedAt">,
  graceDays: number,
  now: Date,
): { suspended: boolean; suspendedSince: string | null } {
  const since = suspendedSince(account, graceDays);
  return { suspended: since !== undefined && since <= now, suspendedSince: since?.toISOString() ?? null };
}

/** The billing accounts of these organizations, by organization id; organizations without one are absent. */
export async function billingAccountsOf(
  db: Database,
  organizationIds: readonly string[],
): Promise<Map<string, BillingAccount>> {
  const accounts = new Map<string, BillingAccount>();
  for (const ids of chunked(organizationIds, D1_IDS_PER_STATEMENT)) {
    const batch = await db.select().from(billingAccounts).where(inArray(billingAccounts.organizationId, ids));
    for (const account of batch) accounts.set(account.organizationId, account);
  }
  return accounts;
}

/** Accounts whose Stripe status is anything but active, with the organization's name, longest-failing first. */
export async function accountsInArrears(db: Database, limit = 100) {
  return db
    .select({ account: billingAccounts, organization: organizations.name })
    .from(billingAccounts)
    .innerJoin(organizations, eq(organizations.id, billingAccounts.organizationId))
    .where(ne(billingAccounts.status, "active"))
    .orderBy(asc(billingAccounts.paymentFailedAt), asc(organizations.name))
    .limit(limit);
}
