import type { AdminIdentity } from "../../worker/admin/access";
import type { DownloadDay, TokenDay } from "../../worker/admin/usage";
import { type ChartPoint, DailyBarChart } from "../chart";
import { formatBytes, formatCount } from "../format";
import { ConsolePage, type SignOut } from "../layout";

/** Usage per organization and model: downloads and inference tokens per day. */
export function UsagePage(props: {
  admin: AdminIdentity;
  signOut: SignOut;
  organizations: { id: string; name: string }[];
  models: string[];
  organizationId: string;
  model: string;
  days: string[];
  rows: DownloadDay[];
  tokenRows: TokenDay[];
}) {
  const perDay = <R extends { day: string }>(rows: R[], pick: (row: R) => number): ChartPoint[] =>
    props.days.map((day) => ({
      day,
      value: rows.filter((r) => r.day === day).reduce((sum, r) => sum + pick(r), 0),
    }));
  const tokenTotals = new Map<
    string,
    {
      organization: string;
      model: string;
      requests: number;
      promptTokens: number;
      completionTokens: number;
      totalTokens: number;
    }
  >();
  for (const row of props.tokenRows) {
    const key = `${row.organizationId} ${row.model}`;
    const t = tokenTotals.get(key) ?? {
      organization: row.organization,
      model: row.model,
      requests: 0,
      promptTokens: 0,
      completionTokens: 0,
      totalTokens: 0,
    };
    t.requests += row.requests;
    t.promptTokens += row.promptTokens;
    t.completionTokens += row.completionTokens;
    t.totalTokens += row.totalTokens;
    tokenTotals.set(key, t);
  }
  const totals = new Map<
    string,
    { organization: string; model: string; requests: number; completed: number; bytes: number }
  >();
  for (const row of props.rows) {
    const key = `${row.organizationId} ${row.model}`;
    const t = totals.get(key) ?? {
      organization: row.organization,
      model: row.model,
      requests: 0,
      completed: 0,
      bytes: 0,
    };
    t.requests += row.requests;
    t.completed += row.completed;
    t.bytes += row.bytes;
    totals.set(key, t);
  }
  const range = `${props.days[0]} to ${props.days.at(-1)}`;
  return (
    <ConsolePage title="Usage" section="usage" admin={props.admin} signOut={props.signOut}>
      <h1>Usage</h1>
      <form class="filters" method="get" action="/admin/usage" aria-label="Choose organization and model">
        <label>
          Organization
          <select name="organization">
            <option value="">All organizations</option>
            {props.organizations.map((o) => (
              <option value={o.id} selected={o.id === props.organizationId}>
                {o.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          Model
          <select name="model">
            <option value="">All models</option>
            {props.models.map((m) => (
              <option value={m} selected={m === props.model}>
                {m}
              </option>
            ))}
          </select>
        </label>
        <button type="submit">Show</button>
      </form>

      <section aria-labelledby="downloads-heading">
        <h2 id="downloads-heading">Downloads per day</h2>
        <p class="muted">UTC days, {range}. A request is one file or one resumed range of it.</p>
        <DailyBarChart
          id="chart-requests"
          title={`Download requests per day, ${range}`}
          points={perDay(props.rows, (r) => r.requests)}
          format={(v) => formatCount(Math.round(v))}
        />
        <DailyBarChart
          id="chart-bytes"
          title={`Bytes served per day, ${range}`}
          points={perDay(props.rows, (r) => r.bytes)}
          format={formatBytes}
        />
        {totals.size === 0 ? null : (
          <div class="table-wrap">
            <table class="stack">
              <caption>Totals for the period</caption>
              <thead>
                <tr>
                  <th scope="col">Organization</th>
                  <th scope="col">Model</th>
                  <th scope="col" class="num">
                    Requests
                  </th>
                  <th scope="col" class="num">
                    Completed
                  </th>
                  <th scope="col" class="num">
                    Served
                  </th>
                </tr>
              </thead>
              <tbody>
                {[...totals.values()].map((t) => (
                  <tr>
                    <td data-label="Organization">{t.organization}</td>
                    <td data-label="Model">{t.model}</td>
                    <td data-label="Requests" class="num">
                      {formatCount(t.requests)}
                    </td>
                    <td data-label="Completed" class="num">
                      {formatCount(t.completed)}
                    </td>
                    <td data-label="Served" class="num">
                      {formatBytes(t.bytes)}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>

      <section aria-labelledby="tokens-heading">
        <h2 id="tokens-heading">Inference tokens per day</h2>
        <p class="muted">
          From the usage ledger: prompt plus completion tokens of every metered call, by the day it started.
        </p>
        <DailyBarChart
          id="chart-tokens"
          title={`Inference tokens per day, ${range}`}
          points={perDay(props.tokenRows, (r) => r.totalTokens)}
          format={(v) => formatCount(Math.round(v))}
        />
        {tokenTotals.size === 0 ? null : (
          <div class="table-wrap">
            <table class="stack">
              <caption>Inference totals for the period</caption>
              <thead>
                <tr>
                  <th scope="col">Organization</th>
                  <th scope="col">Model</th>
                  <th scope="col" class="num">
                    Calls
                  </th>
                  <th scope="col" class="num">
                    Prompt tokens
                  </th>
                  <th scope="col" class="num">
                    Completion tokens
                  </th>
                  <th scope="col" class="num">
                    Total tokens
                  </th>
                </tr>
              </thead>
              <tbody>
                {[...tokenTotals.values()].map((t) => (
                  <tr>
                    <td data-label="Organization">{t.organization}</td>
                    <td data-label="Model">{t.model}</td>
                    <td data-label="Calls" class="num">
                      {formatCount(t.requests)}
                    </td>
                    <td data-label="Prompt tokens" class="num">
                      {formatCount(t.promptTokens)}
                    </td>
                    <td data-label="Completion tokens" class="num">
                      {formatCount(t.completionTokens)}
                    </td>
                    <td data-label="Total tokens" class="num">
                      {formatCount(t.totalTokens)}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </ConsolePage>
  );
}
