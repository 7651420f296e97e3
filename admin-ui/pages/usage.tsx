import type { Child } from "hono/jsx";
import type { DownloadDay, TokenDay } from "../../worker/admin/usage";
import type { AdminIdentity } from "../../worker/auth/access";
import { type ChartPoint, DailyBarChart } from "../../worker/pages/chart";
import { formatBytes, formatCount } from "../../worker/pages/format";
import { FilterForm, SelectFilter } from "../filters";
import { ConsolePage, type SignOut } from "../layout";
import { type Column, DataTable } from "../table";

/** A usage row: one day of one organization's use of one model. */
interface UsageDay {
  day: string;
  organizationId: string;
  organization: string;
  model: string;
}

/** The names of a row's numeric fields. */
type Counted<R> = { [K in keyof R]: R[K] extends number ? K : never }[keyof R];

/** One organization's and model's sums over the period. */
type Totals<R extends UsageDay, K extends Counted<R>> = { organization: string; model: string } & Record<K, number>;

/** Sums the chosen fields per organization and model, in the order the pairs first appear. */
function totalsByOrganizationAndModel<R extends UsageDay, K extends Counted<R>>(
  rows: readonly R[],
  fields: readonly K[],
): Totals<R, K>[] {
  const totals = new Map<string, Totals<R, K>>();
  for (const row of rows) {
    const key = `${row.organizationId} ${row.model}`;
    const sums =
      totals.get(key) ??
      ({
        organization: row.organization,
        model: row.model,
        ...Object.fromEntries(fields.map((field) => [field, 0])),
      } as Totals<R, K>);
    for (const field of fields) (sums as Record<K, number>)[field] += row[field] as number;
    totals.set(key, sums);
  }
  return [...totals.values()];
}

/** A table of totals per organization and model: both names, then one numeric column per figure. */
function TotalsTable<T extends { organization: string; model: string }>(props: {
  caption: string;
  totals: readonly T[];
  figures: readonly { label: string; cell: (t: T) => string }[];
}) {
  const columns: Column<T>[] = [
    { label: "Organization", cell: (t) => t.organization },
    { label: "Model", cell: (t) => t.model },
    ...props.figures.map((figure) => ({ ...figure, numeric: true })),
  ];
  return <DataTable rows={props.totals} caption={props.caption} columns={columns} />;
}

/** One figure charted per day. */
interface DailyChart<R> {
  id: string;
  title: string;
  value: (row: R) => number;
  format: (value: number) => string;
}

/** A headed section of per-day charts over the period, with a note on what they count and a totals table. */
function UsageSection<R extends { day: string }>(props: {
  id: string;
  heading: string;
  note: Child;
  days: string[];
  rows: readonly R[];
  charts: readonly DailyChart<R>[];
  children: Child;
}) {
  const perDay = (value: (row: R) => number): ChartPoint[] =>
    props.days.map((day) => ({
      day,
      value: props.rows.filter((r) => r.day === day).reduce((sum, r) => sum + value(r), 0),
    }));
  return (
    <section aria-labelledby={`${props.id}-heading`}>
      <h2 id={`${props.id}-heading`}>{props.heading}</h2>
      <p class="muted">{props.note}</p>
      {props.charts.map((chart) => (
        <DailyBarChart id={chart.id} title={chart.title} points={perDay(chart.value)} format={chart.format} />
      ))}
      {props.children}
    </section>
  );
}

const wholeCount = (v: number) => formatCount(Math.round(v));

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
  const range = `${props.days[0]} to ${props.days.at(-1)}`;
  return (
    <ConsolePage title="Usage" section="usage" admin={props.admin} signOut={props.signOut}>
      <h1>Usage</h1>
      <FilterForm label="Choose organization and model" action="/admin/usage" submit="Show">
        <SelectFilter
          label="Organization"
          name="organization"
          value={props.organizationId}
          options={[
            { value: "", label: "All organizations" },
            ...props.organizations.map((o) => ({ value: o.id, label: o.name })),
          ]}
        />
        <SelectFilter
          label="Model"
          name="model"
          value={props.model}
          options={[{ value: "", label: "All models" }, ...props.models.map((m) => ({ value: m, label: m }))]}
        />
      </FilterForm>

      <UsageSection
        id="downloads"
        heading="Downloads per day"
        note={`UTC days, ${range}. A request is one file or one resumed range of it.`}
        days={props.days}
        rows={props.rows}
        charts={[
          {
            id: "chart-requests",
            title: `Download requests per day, ${range}`,
            value: (r) => r.requests,
            format: wholeCount,
          },
          { id: "chart-bytes", title: `Bytes served per day, ${range}`, value: (r) => r.bytes, format: formatBytes },
        ]}
      >
        <TotalsTable
          caption="Totals for the period"
          totals={totalsByOrganizationAndModel(props.rows, ["requests", "completed", "bytes"])}
          figures={[
            { label: "Requests", cell: (t) => formatCount(t.requests) },
            { label: "Completed", cell: (t) => formatCount(t.completed) },
            { label: "Served", cell: (t) => formatBytes(t.bytes) },
          ]}
        />
      </UsageSection>

      <UsageSection
        id="tokens"
        heading="Inference tokens per day"
        note="From the hourly usage totals: prompt plus completion tokens of every metered call, by the hour it was recorded. Hours still open reach these totals within the sync interval."
        days={props.days}
        rows={props.tokenRows}
        charts={[
          {
            id: "chart-tokens",
            title: `Inference tokens per day, ${range}`,
            value: (r) => r.totalTokens,
            format: wholeCount,
          },
        ]}
      >
        <TotalsTable
          caption="Inference totals for the period"
          totals={totalsByOrganizationAndModel(props.tokenRows, [
            "requests",
            "promptTokens",
            "completionTokens",
            "totalTokens",
          ])}
          figures={[
            { label: "Calls", cell: (t) => formatCount(t.requests) },
            { label: "Prompt tokens", cell: (t) => formatCount(t.promptTokens) },
            { label: "Completion tokens", cell: (t) => formatCount(t.completionTokens) },
            { label: "Total tokens", cell: (t) => formatCount(t.totalTokens) },
          ]}
        />
      </UsageSection>
    </ConsolePage>
  );
}
