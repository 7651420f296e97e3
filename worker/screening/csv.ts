/**
 * Reading a denied-party list in the shape of the US Consolidated Screening List CSV: a header row
 * naming the columns, among them `name`, `alt_names` (semicolon-separated), `source`, and
 * `addresses` (semicolon-separated) or `country`. Other columns are ignored.
 */
import { AppError } from "../errors";

/** One listed party, as the list gives it. */
export interface ListedParty {
  source: string;
  name: string;
  altNames: string[];
  country: string | null;
  addresses: string | null;
}

/** RFC 4180 records: quoted fields may hold commas, doubled quotes and line breaks. */
export function csvRecords(text: string): string[][] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let quoted = false;
  const input = text.startsWith("\uFEFF") ? text.slice(1) : text;
  for (let i = 0; i < input.length; i++) {
    const ch = input[i] as string;
    if (quoted) {
      if (ch === '"' && input[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (ch === '"') quoted = false;
      else field += ch;
    } else if (ch === '"' && field === "") quoted = true;
    else if (ch === ",") {
      record.push(field);
      field = "";
    } else if (ch === "\n" || ch === "\r") {
      if (ch === "\r" && input[i + 1] === "\n") i += 1;
      record.push(field);
      field = "";
      if (record.some((f) => f !== "")) records.push(record);
      record = [];
    } else field += ch;
  }
  if (quoted) throw new AppError("validation_failed", "The list ends inside a quoted field.");
  record.push(field);
  if (record.some((f) => f !== "")) records.push(record);
  return records;
}

function splitList(value: string | undefined): string[] {
  return (value ?? "")
    .split(";")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** The country of a party: the `country` column, else the last part of its first address. */
function countryOf(country: string | undefined, addresses: string[]): string | null {
  const declared = country?.trim();
  if (declared) return declared.toUpperCase();
  const last = addresses[0]?.split(",").at(-1)?.trim();
  return last ? last.toUpperCase() : null;
}

/** The parties of a screening list CSV; a list without `name` or `source` columns is `validation_failed`. */
export function parseScreeningList(text: string): ListedParty[] {
  const [header, ...rows] = csvRecords(text);
  const columns = (header ?? []).map((h) => h.trim().toLowerCase());
  const at = (name: string) => columns.indexOf(name);
  const missing = ["name", "source"].filter((c) => at(c) < 0);
  if (missing.length > 0) {
    throw new AppError("validation_failed", `The list has no ${missing.join(" or ")} column.`, {
      errors: missing.map((c) => ({ field: c, message: "Required column." })),
    });
  }
  const cell = (row: string[], name: string) => (at(name) < 0 ? undefined : row[at(name)]);
  const parties: ListedParty[] = [];
  for (const row of rows) {
    const name = cell(row, "name")?.trim() ?? "";
    if (name === "") continue;
    const addresses = splitList(cell(row, "addresses"));
    parties.push({
      source: cell(row, "source")?.trim() || "unknown",
      name,
      altNames: splitList(cell(row, "alt_names")),
      country: countryOf(cell(row, "country"), addresses),
      addresses: addresses.length > 0 ? addresses.join("; ") : null,
    });
  }
  return parties;
}
