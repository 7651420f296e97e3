/** The settings of events out: webhook endpoints and what reviewers are told. Read once per environment. */

/** Secrets this feature reads; set with `wrangler secret put`, absent when not set. */
interface EventSecrets {
  /** A Slack-compatible incoming-webhook URL reviewers' chat messages are posted to. */
  REVIEWER_WEBHOOK_URL?: string;
}

export interface EventSettings {
  /** `WEBHOOK_ALLOWED_HOSTS`: private or loopback hosts endpoints may have, also over http. */
  allowedHosts: string[];
  /** `REVIEW_AGEING_HOURS`: after how many hours in review a case is brought up again, ascending. */
  ageingHours: number[];
  /** `REVIEWER_WEBHOOK_URL`; undefined: reviewers are told by mail only. */
  reviewerChatUrl: string | undefined;
}

function list(value: string | undefined): string[] {
  return (value ?? "")
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

/** `REVIEW_AGEING_HOURS` as whole hours; throws on anything else, a deployment error. */
function ageingHours(value: string | undefined): number[] {
  const hours = list(value).map((item) => {
    const n = Number(item);
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`REVIEW_AGEING_HOURS must list whole hours, not "${item}"`);
    return n;
  });
  return [...new Set(hours)].sort((a, b) => a - b);
}

const cache = new WeakMap<object, EventSettings>();

/** The settings from the Worker's vars and secrets. */
export function eventSettings(env: Env): EventSettings {
  const hit = cache.get(env);
  if (hit) return hit;
  const settings: EventSettings = {
    allowedHosts: list(env.WEBHOOK_ALLOWED_HOSTS).map((host) => host.toLowerCase()),
    ageingHours: ageingHours(env.REVIEW_AGEING_HOURS),
    reviewerChatUrl: (env as Env & EventSecrets).REVIEWER_WEBHOOK_URL?.trim() || undefined,
  };
  cache.set(env, settings);
  return settings;
}
