import type { Child } from "hono/jsx";

/**
 * A list's filters: a GET form inside a `search` landmark named by `label`, so the chosen filters
 * end up in the address and a filtered view can be bookmarked or shared.
 */
export function FilterForm(props: { label: string; action: string; submit?: string; children: Child }) {
  return (
    <search aria-label={props.label}>
      <form class="filters" method="get" action={props.action}>
        {props.children}
        <button type="submit">{props.submit ?? "Filter"}</button>
      </form>
    </search>
  );
}

/** A labelled choice of one value; `""` is the "any" choice where one is offered. */
export function SelectFilter(props: {
  label: string;
  name: string;
  value: string;
  options: readonly { value: string; label: string }[];
}) {
  return (
    <label>
      {props.label}
      <select name={props.name}>
        {props.options.map((option) => (
          <option value={option.value} selected={option.value === props.value}>
            {option.label}
          </option>
        ))}
      </select>
    </label>
  );
}

/**
 * A labelled text filter. The `search` kind is the page's main search box: the `/` key focuses it
 * (`data-search`), and the browser does not offer earlier entries over the results.
 */
export function TextFilter(props: {
  label: string;
  name: string;
  value: string;
  kind?: "text" | "search";
  placeholder?: string;
}) {
  const search = props.kind === "search";
  return (
    <label>
      {props.label}
      <input
        type={search ? "search" : "text"}
        name={props.name}
        value={props.value}
        placeholder={props.placeholder}
        data-search={search ? true : undefined}
        autocomplete={search ? "off" : undefined}
      />
    </label>
  );
}
