/**
 * `quota.threshold_reached`, seen where the month's standing is exact: the organization's quota
 * object. After each commit it compares the tokens counted this month (settled usage and what open
 * leases still hold) with the monthly budget; the first time in a month that 80 % or 100 % is
 * reached, it records the event (its id names organization, month and threshold, so it is recorded
 * once however often the object restarts) and dispatches it at once.
 */
import { createServices } from "../services";
import { dispatchEvents } from "./deliveries";
import { quotaThresholdEvent } from "./record";
import { QUOTA_THRESHOLDS, type QuotaThreshold } from "./types";

/** Thresholds each object already recorded this month, so a busy object checks D1 once per threshold. */
const recorded = new WeakMap<DurableObjectState, { month: string; thresholds: Set<QuotaThreshold> }>();

/**
 * Called by the quota object after a commit, with its month (`YYYY-MM`), the tokens counted in it,
 * the organization's budget and the caller's time. Below 80 % (nearly always) it returns at once.
 */
export function noteMonthlyStanding(
  ctx: DurableObjectState,
  env: Env,
  month: string,
  used: number,
  budget: number,
  now: number,
): void {
  if (!(budget > 0) || used * 100 < budget * QUOTA_THRESHOLDS[0]) return;
  let seen = recorded.get(ctx);
  if (!seen || seen.month !== month) {
    seen = { month, thresholds: new Set() };
    recorded.set(ctx, seen);
  }
  const known = seen.thresholds;
  const reached = QUOTA_THRESHOLDS.filter((t) => used * 100 >= budget * t && !known.has(t));
  const organizationId = ctx.id.name;
  if (reached.length === 0 || organizationId === undefined) return;
  for (const t of reached) known.add(t);
  ctx.waitUntil(
    recordThresholds(env, organizationId, { month, budget, used }, reached, now).catch((error: unknown) => {
      // Recorded nothing: the next commit tries again.
      for (const t of reached) known.delete(t);
      console.error(
        JSON.stringify({ level: "error", message: "recording a quota threshold failed", error: String(error) }),
      );
    }),
  );
}

async function recordThresholds(
  env: Env,
  organizationId: string,
  standing: { month: string; budget: number; used: number },
  thresholds: QuotaThreshold[],
  now: number,
): Promise<void> {
  const services = createServices(env, { clock: { now: () => new Date(now) } }, { organizationId });
  const at = new Date(now).toISOString();
  const [first, ...rest] = thresholds.map((threshold) =>
    quotaThresholdEvent(services.db, organizationId, { ...standing, threshold }, at),
  );
  if (!first) return;
  const inserted = (await services.db.batch([first, ...rest])).flat().map((row) => row.id);
  if (inserted.length > 0) await dispatchEvents(services, env.EVENTS_QUEUE, inserted);
}
