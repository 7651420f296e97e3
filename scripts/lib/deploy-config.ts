/**
 * What a deployed environment of `wrangler.toml` must not carry: the development values that make
 * the top level work on a laptop (loopback URLs in applicants' mail, the dev sign-in page, an
 * inline Access JWKS) and the placeholders an operator has to replace before the first deploy;
 * and what it must carry: the vars the Worker has no default for (`REQUIRED_VARS`), which an
 * environment does not inherit from the top level. `npm run deploy:check` applies it to
 * `[env.staging]` and `[env.production]`.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { unstable_readConfig } from "wrangler";
import { REQUIRED_VARS } from "../../worker/config";

/** The part of a resolved Wrangler environment these checks read. */
export interface DeployedEnvironment {
  name: string | undefined;
  vars: Record<string, unknown>;
  bindings: string[];
  sendEmail: { name: string; allowed_sender_addresses?: string[] }[];
  d1DatabaseIds: string[];
  /** Route patterns (custom domains included). */
  routes: string[];
  uploadSourceMaps: boolean | undefined;
}

/** One thing wrong with an environment; `placeholder` findings fail only with `--strict`. */
export interface Finding {
  env: string;
  kind: "development" | "placeholder" | "missing";
  message: string;
}

/** Secrets only: set with `wrangler secret put`, never as vars (listed in `.dev.vars.example`). */
export function secretNames(root: string): string[] {
  const text = readFileSync(join(root, ".dev.vars.example"), "utf8");
  return [...text.matchAll(/^([A-Z][A-Z0-9_]*)=/gm)].map((m) => m[1] as string);
}

/**
 * The fields read here of Wrangler's resolved configuration. Its own `Config` type lives in a
 * package wrangler does not re-export for type checking, so the shape is stated here.
 */
interface ResolvedConfig {
  name: string | undefined;
  vars: Record<string, unknown>;
  d1_databases: { binding: string; database_id?: string }[];
  r2_buckets: { binding: string }[];
  durable_objects: { bindings: { name: string }[] };
  queues: { producers?: { binding: string }[] };
  send_email: { name: string; allowed_sender_addresses?: string[] }[];
  ratelimits: { name: string }[];
  routes?: (string | { pattern: string })[];
  upload_source_maps: boolean | undefined;
}

/** Reads one environment of `wrangler.toml` as Wrangler resolves it (top level when `env` is undefined). */
export function readEnvironment(root: string, env: string | undefined): DeployedEnvironment {
  const config: ResolvedConfig = unstable_readConfig({ config: join(root, "wrangler.toml"), env });
  const bindings = [
    ...config.d1_databases.map((b) => b.binding),
    ...config.r2_buckets.map((b) => b.binding),
    ...config.durable_objects.bindings.map((b) => b.name),
    ...(config.queues.producers ?? []).map((b) => b.binding),
    ...config.send_email.map((b) => b.name),
    ...config.ratelimits.map((b) => b.name),
  ];
  return {
    name: config.name,
    vars: { ...config.vars },
    bindings,
    sendEmail: config.send_email.map((b) => ({ name: b.name, allowed_sender_addresses: b.allowed_sender_addresses })),
    d1DatabaseIds: config.d1_databases.map((b) => b.database_id ?? ""),
    routes: (config.routes ?? []).map((r) => (typeof r === "string" ? r : r.pattern)),
    uploadSourceMaps: config.upload_source_maps,
  };
}

const LOOPBACK = /\b(localhost|127(?:\.\d{1,3}){3}|0\.0\.0\.0|\[::1?\])\b|\.local\b/i;
const PLACEHOLDER = /example\.(com|org|net)\b|your-team|-aud-tag\b|^0{8}-0{4}-0{4}-0{4}-0{12}$/i;

/**
 * Everything wrong with `deployed` as the environment `env`, given the top level (`development`)
 * whose bindings it must repeat and the names that may only be secrets.
 */
export function checkEnvironment(
  env: string,
  deployed: DeployedEnvironment,
  development: DeployedEnvironment,
  secrets: readonly string[],
): Finding[] {
  const out: Finding[] = [];
  const add = (kind: Finding["kind"], message: string) => out.push({ env, kind, message });
  // Checked by name, not by what is there: a var left out of an environment is no value the loops
  // below could judge, and the Worker would start without it — without the Access vars, with its
  // admin door shut to every reviewer.
  for (const name of REQUIRED_VARS) {
    const value = deployed.vars[name];
    if (value === undefined || (typeof value === "string" && value.trim() === "")) {
      add("missing", `${name} is missing (environments inherit no vars; the Worker needs it)`);
    }
  }
  for (const name of Object.keys(deployed.vars)) {
    if (secrets.includes(name)) add("development", `${name} is a var; it is a secret (wrangler secret put ${name})`);
  }
  for (const [name, value] of Object.entries(deployed.vars)) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    if (LOOPBACK.test(text)) add("development", `${name} is a development value: ${text}`);
    else if (PLACEHOLDER.test(text)) add("placeholder", `${name} is still the placeholder ${text}`);
  }
  const base = String(deployed.vars.PUBLIC_BASE_URL ?? "");
  if (!base.startsWith("https://")) add("development", `PUBLIC_BASE_URL must be an https origin, not "${base}"`);
  if (/"apiKey"/.test(String(deployed.vars.INFERENCE_BACKENDS ?? ""))) {
    add("development", "INFERENCE_BACKENDS carries an apiKey in plain text; add such servers in the console");
  }
  const mailFrom = String(deployed.vars.MAIL_FROM ?? "");
  const email = deployed.sendEmail.find((b) => b.name === "EMAIL");
  if (email?.allowed_sender_addresses && !email.allowed_sender_addresses.includes(mailFrom)) {
    add("development", `the EMAIL binding may not send as MAIL_FROM (${mailFrom})`);
  }
  for (const binding of development.bindings) {
    if (!deployed.bindings.includes(binding))
      add("missing", `binding ${binding} is missing (environments inherit none)`);
  }
  for (const route of deployed.routes) {
    if (LOOPBACK.test(route)) add("development", `route ${route} is a development host`);
    else if (PLACEHOLDER.test(route)) add("placeholder", `route ${route} is still the placeholder domain`);
  }
  for (const id of deployed.d1DatabaseIds) {
    if (PLACEHOLDER.test(id)) add("placeholder", `database_id ${id}: put the id \`wrangler d1 create\` printed`);
  }
  if (deployed.name === development.name && env !== "production") {
    add("development", `name "${deployed.name}" is the production Worker's`);
  }
  return out;
}
