/**
 * Rows of the per-request tables (`usage_ledger`, `download_events`) carried into the hourly
 * aggregates as the part `ledger` of their hour. Those tables hold what gateways from before the
 * aggregates wrote (migration 0014 carries all of it at once) and what a quota object could not
 * take when a request ended (`recordUsage`); the cron carries those within a minute. Each row is
 * added once: the rows a run adds are marked in the same D1 batch.
 */

/** Rows one run of the cron carries, per table. */
export const CARRY_ROWS = 2_000;

/** The hour a ledger row or download event counts in: the one it was recorded in. */
const USAGE_CARRY = `insert into usage_hours (organization_id, hour, model, grant_id, token_id, part, requests,
    prompt_tokens, completion_tokens, total_tokens, error_requests, partial_requests, latency_ms_sum, last_at, updated_at)
  select organization_id, substr(created_at, 1, 13), model, grant_id, token_id, 'ledger', count(*),
    sum(prompt_tokens), sum(completion_tokens), sum(total_tokens), sum(status >= 400), sum(partial), sum(latency_ms),
    max(created_at), ?1
  from (select * from usage_ledger where aggregated_at is null order by id limit ?2) where true
  group by organization_id, substr(created_at, 1, 13), model, grant_id, token_id
  on conflict (organization_id, hour, model, grant_id, token_id, part) do update set
    requests = usage_hours.requests + excluded.requests,
    prompt_tokens = usage_hours.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = usage_hours.completion_tokens + excluded.completion_tokens,
    total_tokens = usage_hours.total_tokens + excluded.total_tokens,
    error_requests = usage_hours.error_requests + excluded.error_requests,
    partial_requests = usage_hours.partial_requests + excluded.partial_requests,
    latency_ms_sum = usage_hours.latency_ms_sum + excluded.latency_ms_sum,
    last_at = max(usage_hours.last_at, excluded.last_at),
    updated_at = excluded.updated_at`;

const USAGE_MARK = `update usage_ledger set aggregated_at = ?1
  where id in (select id from usage_ledger where aggregated_at is null order by id limit ?2)`;

const DOWNLOAD_CARRY = `insert into download_hours (organization_id, hour, grant_id, token_id, model, part, requests,
    complete_requests, error_requests, bytes_served, last_at, updated_at)
  select coalesce(g.organization_id, ''), substr(e.at, 1, 13), e.grant_id, e.token_id, e.model, 'ledger', count(*),
    sum(e.complete), sum(e.status >= 400), sum(e.bytes_served), max(e.at), ?1
  from (select * from download_events where aggregated_at is null order by id limit ?2) e
    left join grants g on g.id = e.grant_id where true
  group by g.organization_id, substr(e.at, 1, 13), e.grant_id, e.token_id, e.model
  on conflict (organization_id, hour, grant_id, token_id, model, part) do update set
    requests = download_hours.requests + excluded.requests,
    complete_requests = download_hours.complete_requests + excluded.complete_requests,
    error_requests = download_hours.error_requests + excluded.error_requests,
    bytes_served = download_hours.bytes_served + excluded.bytes_served,
    last_at = max(download_hours.last_at, excluded.last_at),
    updated_at = excluded.updated_at`;

const DOWNLOAD_MARK = `update download_events set aggregated_at = ?1
  where id in (select id from download_events where aggregated_at is null order by id limit ?2)`;

/**
 * Carries up to `limit` uncarried rows of each table into the aggregates, each table in one batch
 * (the adding and the marking commit together). Returns how many rows were carried.
 */
export async function carryLedgerRows(
  d1: D1Database,
  now: Date,
  limit = CARRY_ROWS,
): Promise<{ usage: number; downloads: number }> {
  const at = now.toISOString();
  const [, usage] = await d1.batch([d1.prepare(USAGE_CARRY).bind(at, limit), d1.prepare(USAGE_MARK).bind(at, limit)]);
  const [, downloads] = await d1.batch([
    d1.prepare(DOWNLOAD_CARRY).bind(at, limit),
    d1.prepare(DOWNLOAD_MARK).bind(at, limit),
  ]);
  return { usage: usage?.meta.changes ?? 0, downloads: downloads?.meta.changes ?? 0 };
}

/** The migration's form of the same statements: every row at once (`-1`: no limit). */
export const CARRY_ALL_SQL = [USAGE_CARRY, USAGE_MARK, DOWNLOAD_CARRY, DOWNLOAD_MARK].map((sql) =>
  sql.replaceAll("?1", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')").replaceAll("?2", "-1"),
);
