import type { Services } from "../services";
import { dispatchEvents, requeueStuckDeliveries } from "./deliveries";
import { tellReviewers } from "./reviewers";
import { eventSettings } from "./settings";

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
    const dispatched = await dispatchEvents(services, env.EVENTS_QUEUE);
    report.events = dispatched.events;
    report.deliveries = dispatched.deliveries;
  });
  await attempt("queueing stuck deliveries", async () => {
    report.requeued = await requeueStuckDeliveries(services, env.EVENTS_QUEUE);
  });
  await attempt("telling reviewers", async () => {
    report.reviewersTold = (await tellReviewers(services, eventSettings(env), env.EVENTS_QUEUE)).told;
  });
  return report;
}
