/**
 * What an organization's own usage views add to D1's hourly totals: the parts its quota object
 * holds open with totals D1 does not have yet (it takes them at most every `USAGE_SYNC_SECONDS`).
 * A part's totals are absolute, so a live part *replaces* D1's rows of the same hour and part:
 * adding them would count the part twice.
 *
 * The live parts are read before D1. A part the object syncs in between is then taken from the
 * object (D1's newer rows of it are left out) and never from both; reading D1 first could miss a
 * part that closed in between.
 */
import { quotaStub } from "../quota/org-quota";
import type { LiveParts } from "../quota/usage-book";
import type { Services } from "../services";
import type { UsagePeriod } from "./totals";

/** One open part of an hour, with its totals as the object has them. */
export type LivePart = LiveParts["parts"][number];

/** Reads an organization's live parts; the routes pass its quota object's (`liveUsageFor`). */
export type LiveUsage = () => Promise<LiveParts>;

/** A usage view answers from D1 alone when the quota object has not answered by then. */
export const LIVE_USAGE_TIMEOUT_MS = 2_000;

/**
 * The organization's quota object's live parts, asked once however often it is called: a page
 * that shows inference and downloads reads them for both.
 */
export function liveUsageFor(env: Env, organizationId: string): LiveUsage {
  let answer: Promise<LiveParts> | undefined;
  return () => {
    // The RPC stub's type widens the `[key, counts]` tuples to arrays; the values are the object's own.
    answer ??= quotaStub(env, organizationId).liveUsage() as unknown as Promise<LiveParts>;
    return answer;
  };
}

/**
 * The live parts of hours in `period` (UTC days, both included), or none when the object cannot
 * be reached in `LIVE_USAGE_TIMEOUT_MS`: the view then shows D1's figures, which lag at most
 * `USAGE_SYNC_SECONDS`, rather than failing.
 */
export async function livePartsIn(
  services: Pick<Services, "log">,
  organizationId: string,
  live: LiveUsage,
  period: UsagePeriod,
): Promise<LivePart[]> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${LIVE_USAGE_TIMEOUT_MS} ms`)), LIVE_USAGE_TIMEOUT_MS);
  });
  try {
    const { parts } = await Promise.race([live(), late]);
    return parts.filter((p) => {
      const day = p.hour.slice(0, 10);
      return day >= period.from && day <= period.to;
    });
  } catch (error) {
    services.log.warn("usage of open hours not read from the quota object; D1's totals shown", {
      organizationId,
      error: String(error),
    });
    return [];
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The parts D1's rows are left out for, as the JSON array of `<hour>:<part>` that a query takes as
 * one parameter (`… not in (select value from json_each(?))`), however many parts there are.
 */
export function replacedParts(parts: readonly LivePart[]): string {
  return JSON.stringify(parts.map((p) => `${p.hour}:${p.part}`));
}
