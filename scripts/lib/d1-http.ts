/**
 * A D1 database reached over Cloudflare's REST API (`POST /accounts/{account}/d1/database/{id}/raw`),
 * shaped like the Workers binding, so that a script runs the gateway's own Drizzle code (catalog
 * reads, audited writes) against the production database: what `getPlatformProxy()` cannot do
 * without remote bindings in wrangler.toml.
 *
 * Each statement's values are written into its SQL as literals rather than sent as `params`, which
 * the API takes only as strings; a `batch()` is one API call with one entry per statement, which
 * D1 runs as a batch, as it does the binding's `batch()`. Only what Drizzle uses is here:
 * `prepare().bind()` with `raw()`, `all()` and `run()`, and `batch()`.
 */
import { hexOf } from "../../worker/platform/hash";

/** How to reach one database. */
export interface D1HttpOptions {
  /** `https://api.cloudflare.com/client/v4`, or a stand-in's. */
  apiBase: string;
  accountId: string;
  databaseId: string;
  /** An API token with D1 edit permission. */
  apiToken: string;
  fetch?: typeof fetch;
}

/** A refusal from the API or the database, with D1's own message (e.g. `UNIQUE constraint failed: …`). */
export class D1HttpError extends Error {
  override name = "D1HttpError";
}

/** One statement's result as the `/raw` endpoint gives it. */
interface RawResult {
  results?: { columns?: string[]; rows?: unknown[][] };
  meta?: Record<string, unknown>;
}

/** A value as an SQLite literal. */
export function sqlLiteral(value: unknown): string {
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "string") {
    // SQLite stops reading SQL text at a NUL: such a string travels as its UTF-8 bytes.
    if (value.includes("\u0000")) return `CAST(X'${hexOf(new TextEncoder().encode(value))}' AS TEXT)`;
    return `'${value.replaceAll("'", "''")}'`;
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`${value} cannot be stored in SQLite`);
    return String(value);
  }
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "boolean") return value ? "1" : "0";
  if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) {
    const bytes =
      value instanceof ArrayBuffer
        ? new Uint8Array(value)
        : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    return `X'${hexOf(bytes)}'`;
  }
  throw new TypeError(`a ${typeof value} cannot be written into SQL`);
}

/** Where the quoted text or comment that starts at `start` ends (the index after it). */
function skipQuoted(sql: string, start: number): number {
  const open = sql[start];
  if (open === "-") {
    const end = sql.indexOf("\n", start);
    return end < 0 ? sql.length : end + 1;
  }
  if (open === "/") {
    const end = sql.indexOf("*/", start + 2);
    return end < 0 ? sql.length : end + 2;
  }
  const close = open === "[" ? "]" : open;
  let at = start + 1;
  for (;;) {
    const end = sql.indexOf(close as string, at);
    if (end < 0) return sql.length;
    // A doubled quote inside quotes is the quote itself.
    if (close !== "]" && sql[end + 1] === close) {
      at = end + 2;
      continue;
    }
    return end + 1;
  }
}

/**
 * `sql` with each `?` outside string literals, quoted identifiers and comments replaced by the next
 * value as a literal. Numbered (`?1`) and named parameters are refused: Drizzle writes neither.
 */
export function inlineParams(sql: string, values: readonly unknown[]): string {
  let out = "";
  let next = 0;
  let i = 0;
  while (i < sql.length) {
    const c = sql[i] as string;
    const startsQuoted =
      c === "'" ||
      c === '"' ||
      c === "`" ||
      c === "[" ||
      (c === "-" && sql[i + 1] === "-") ||
      (c === "/" && sql[i + 1] === "*");
    if (startsQuoted) {
      const end = skipQuoted(sql, i);
      out += sql.slice(i, end);
      i = end;
      continue;
    }
    if (c === "?") {
      if (/[0-9]/.test(sql[i + 1] ?? "")) throw new TypeError("numbered parameters (?1) are not supported");
      if (next >= values.length)
        throw new TypeError(`the statement has more parameters than the ${values.length} given`);
      out += sqlLiteral(values[next++]);
      i++;
      continue;
    }
    if ((c === ":" || c === "@" || c === "$") && /[A-Za-z_]/.test(sql[i + 1] ?? "")) {
      throw new TypeError("named parameters are not supported");
    }
    out += c;
    i++;
  }
  if (next !== values.length) throw new TypeError(`the statement has ${next} parameters, ${values.length} given`);
  return out;
}

/** A `/raw` result as the binding's `D1Result`: rows as objects keyed by column name. */
function asD1Result(raw: RawResult): D1Result<Record<string, unknown>> {
  const columns = raw.results?.columns ?? [];
  const results = (raw.results?.rows ?? []).map((row) => Object.fromEntries(columns.map((c, i) => [c, row[i]])));
  return { success: true, results, meta: (raw.meta ?? {}) as D1Result["meta"] };
}

class HttpStatement {
  constructor(
    private readonly send: (statements: string[]) => Promise<RawResult[]>,
    private readonly sql: string,
    private readonly values: readonly unknown[] = [],
  ) {}

  bind(...values: unknown[]): HttpStatement {
    return new HttpStatement(this.send, this.sql, values);
  }

  /** The statement as sent: values inlined. */
  text(): string {
    return inlineParams(this.sql, this.values);
  }

  async raw(): Promise<unknown[][]> {
    const [result] = await this.send([this.text()]);
    return result?.results?.rows ?? [];
  }

  async all(): Promise<D1Result<Record<string, unknown>>> {
    const [result] = await this.send([this.text()]);
    return asD1Result(result ?? {});
  }

  run(): Promise<D1Result<Record<string, unknown>>> {
    return this.all();
  }
}

/** The database as a `D1Database` for Drizzle (`createDatabase(d1OverHttp(…))`). */
export function d1OverHttp(options: D1HttpOptions): D1Database {
  const fetcher = options.fetch ?? fetch;
  const url = `${options.apiBase.replace(/\/+$/, "")}/accounts/${encodeURIComponent(options.accountId)}/d1/database/${encodeURIComponent(options.databaseId)}/raw`;

  const send = async (statements: string[]): Promise<RawResult[]> => {
    const body = statements.length === 1 ? { sql: statements[0] } : { batch: statements.map((sql) => ({ sql })) };
    const response = await fetcher(url, {
      method: "POST",
      headers: { authorization: `Bearer ${options.apiToken}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    let payload: { success?: boolean; errors?: { code?: number; message?: string }[]; result?: RawResult[] };
    try {
      payload = JSON.parse(text);
    } catch {
      throw new D1HttpError(`the D1 API answered ${response.status} with: ${text.slice(0, 200)}`);
    }
    if (!response.ok || payload.success !== true) {
      const reasons = (payload.errors ?? []).map((e) => `${e.message ?? "error"}${e.code ? ` (${e.code})` : ""}`);
      throw new D1HttpError(`the D1 API refused (${response.status}): ${reasons.join("; ") || text.slice(0, 200)}`);
    }
    const results = payload.result ?? [];
    if (results.length !== statements.length) {
      throw new D1HttpError(`the D1 API returned ${results.length} results for ${statements.length} statements`);
    }
    return results;
  };

  const database = {
    prepare: (sql: string) => new HttpStatement(send, sql),
    async batch(statements: HttpStatement[]) {
      if (statements.length === 0) return [];
      return (await send(statements.map((s) => s.text()))).map(asD1Result);
    },
  };
  return database as unknown as D1Database;
}
