import type { Services } from "../services";
import { dispatchEvents, EVENTS_PER_RUN, requeueStuckDeliveries } from "./deliveries";
import { tellReviewers } from "./reviewers";
import { eventSettings } from "./settings";

/** Dispatch runs in one cron: 50 events each, 2,000 a minute at most. */
const MAX_DISPATCH_RUNS = 40;
/** The cron's time for dispatching; the rest of its runs wait for the next minute. */
const DISPATCH_BUDGET_MS = 20_000;

/** What one run of `tendEvents` did. */
export interface EventsReport {
  events: number;
  deliveries: number;
  requeued: number;
  reviewersTold: number;
}

/**
 * The events' share of the every-minute cron: dispatch recorded events into deliveries, queue
 * again deliveries nobody attempted, and tell reviewers of new and ageing cases. Each part runs
 * even when another fails; failures are logged.
 */
export async function tendEvents(services: Services, env: Env): Promise<EventsReport> {
  const report: EventsReport = { events: 0, deliveries: 0, requeued: 0, reviewersTold: 0 };
  const attempt = async (what: string, work: () => Promise<void>) => {
    try {
      await work();
    } catch (error) {
      services.log.error(`events: ${what} failed`, { error: String(error) });
    }
  };
  await attempt("dispatching events", async () => {
    // Run after run until none are left, within the cron's share of time: a burst of events (a new
    // revision for every organization, a mass suspension) goes out in this minute, not over many.
    const started = Date.now();
    for (let run = 0; run < MAX_DISPATCH_RUNS && Date.now() - started < DISPATCH_BUDGET_MS; run++) {
      const dispatched = await dispatchEvents(services, env.EVENTS_QUEUE);
      report.events += dispatched.events;
      report.deliveries += dispatched.deliveries;
      if (dispatched.events < EVENTS_PER_RUN) break;
    }
  });
  await attempt("queueing stuck deliveries", async () => {
    report.requeued = await requeueStuckDeliveries(services, env.EVENTS_QUEUE);
  });
  await attempt("telling reviewers", async () => {
    report.reviewersTold = (await tellReviewers(services, eventSettings(env), env.EVENTS_QUEUE)).told;
  });
  return report;
}
