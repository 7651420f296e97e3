import type { Child } from "hono/jsx";

/** One column of a data table: its header, and what each row shows under it. */
export interface Column<Row> {
  label: string;
  /** Right-aligned with tabular figures, for counts and sizes. */
  numeric?: boolean;
  cell: (row: Row) => Child;
}

/**
 * The console's table: column headers with `scope`, an optional caption, and every cell labelled
 * with its column (`data-label`) so that at phone width, where the header row is hidden, each row
 * reads as a card of labelled values. With no rows it shows `empty` (or nothing) instead.
 */
export function DataTable<Row>(props: {
  rows: readonly Row[];
  columns: readonly Column<Row>[];
  caption?: Child;
  empty?: Child;
}) {
  if (props.rows.length === 0) return <>{props.empty ?? null}</>;
  const numeric = (column: Column<Row>) => (column.numeric ? "num" : undefined);
  return (
    <div class="table-wrap">
      <table class="stack">
        {props.caption === undefined ? null : <caption>{props.caption}</caption>}
        <thead>
          <tr>
            {props.columns.map((column) => (
              <th scope="col" class={numeric(column)}>
                {column.label}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {props.rows.map((row) => (
            <tr>
              {props.columns.map((column) => (
                <td data-label={column.label} class={numeric(column)}>
                  {column.cell(row)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/**
 * A row's organization, linked to the row's page (the whole row opens it, see `data-row-link`),
 * with its contact below.
 */
export function OrganizationCell(props: { href: string; name: Child; contact: Child }) {
  return (
    <>
      <a href={props.href} data-row-link>
        {props.name}
      </a>
      <div class="muted">{props.contact}</div>
    </>
  );
}

/** The link to the next page of a list, when there is one. */
export function NextPageLink(props: { href: string | null; label?: string }) {
  if (!props.href) return null;
  return (
    <p>
      <a href={props.href}>{props.label ?? "Next page"}</a>
    </p>
  );
}
