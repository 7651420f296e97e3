/**
 * One Workers Analytics Engine data point per completion and per download, so operators can chart
 * traffic, errors, latency and tokens by organization, model and backend without querying D1.
 * The `ANALYTICS` binding is optional: without it nothing is written. `writeDataPoint` queues the
 * point and returns at once (the runtime sends it after the response), and a failure to record is
 * swallowed: a chart must never cost a request.
 *
 * Layout of a data point (SQL API: `blob1`…, `double1`…, `index1`):
 *
 * | field   | completion                          | download                   |
 * | ------- | ----------------------------------- | -------------------------- |
 * | index1  | organization id                     | organization id            |
 * | blob1   | `completion`                        | `download`                 |
 * | blob2   | model                               | model                      |
 * | blob3   | backend URL (empty when none)       | empty                      |
 * | blob4   | outcome (`ok`, `partial`, …)        | `complete` or `cut`        |
 * | blob5   | endpoint (`chat.completions`, …)    | file path                  |
 * | double1 | HTTP status                         | HTTP status                |
 * | double2 | latency, ms (request to settlement) | ms (request to last byte)  |
 * | double3 | prompt tokens                       | 0                          |
 * | double4 | completion tokens                   | 0                          |
 * | double5 | 0                                   | bytes served               |
 */

/** What a completion's settlement knows, as its ledger row holds it. */
export interface CompletionPoint {
  organizationId: string;
  model: string;
  backend: string | null;
  endpoint: string;
  outcome: string;
  status: number;
  promptTokens: number;
  completionTokens: number;
}

/** What a download knows once its stream ended. */
export interface DownloadPoint {
  organizationId: string;
  model: string;
  path: string;
  status: number;
  latencyMs: number;
  bytes: number;
  complete: boolean;
}

/** The bindings this module reads; `ANALYTICS` may be absent. */
export type AnalyticsEnv = Pick<Env, "ANALYTICS">;

function write(env: AnalyticsEnv, point: AnalyticsEngineDataPoint): void {
  try {
    env.ANALYTICS?.writeDataPoint(point);
  } catch {
    // Analytics are best effort: a full buffer or a missing dataset must not fail the request.
  }
}

/** Records a settled completion; call where its ledger row is settled. */
export function recordCompletion(env: AnalyticsEnv, row: CompletionPoint, latencyMs: number): void {
  write(env, {
    indexes: [row.organizationId],
    blobs: ["completion", row.model, row.backend ?? "", row.outcome, row.endpoint],
    doubles: [row.status, latencyMs, row.promptTokens, row.completionTokens, 0],
  });
}

/** Records a served download once its stream ended (completely or cut by the client). */
export function recordDownload(env: AnalyticsEnv, download: DownloadPoint): void {
  write(env, {
    indexes: [download.organizationId],
    blobs: ["download", download.model, "", download.complete ? "complete" : "cut", download.path],
    doubles: [download.status, download.latencyMs, 0, 0, download.bytes],
  });
}
