/**
 * The production resources the operator commands' `--remote` reaches: the database and the bucket
 * wrangler.toml names, through Cloudflare's APIs, with credentials from the environment. Each is
 * checked before the command does any work, and every problem is a `RemoteSetupError` that says
 * what to fix.
 */
import { join } from "node:path";
import { unstable_readConfig } from "wrangler";
import { d1OverHttp } from "./d1-http";
import { ROOT } from "./local-state";
import { s3Bucket } from "./r2-s3";

/** A production resource missing, unreachable or not set up. */
export class RemoteSetupError extends Error {
  override name = "RemoteSetupError";
}

/** wrangler.toml's placeholder database id, which `wrangler d1 create`'s id replaces. */
const PLACEHOLDER_ID = /^0{8}-0{4}-0{4}-0{4}-0{12}$/;

const env = (name: string) => process.env[name]?.trim() ?? "";

/** What `remoteDatabase` and `remoteBucket` read from the environment, for a command to check up front. */
export const DATABASE_ENV = ["CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN"];
export const BUCKET_ENV = ["CLOUDFLARE_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"];

/** Refuses, naming every one of `names` that is unset. */
export function requireEnv(names: string[]): void {
  const missing = names.filter((name) => !env(name));
  if (missing.length > 0) throw new RemoteSetupError(`--remote needs ${missing.join(", ")} in the environment`);
}

/**
 * The deployed environment of wrangler.toml whose resources `--remote` reaches: `[env.production]`,
 * or the one `CLOUDFLARE_ENV` names (`staging`), as wrangler itself reads that variable. The top
 * level is local development and names no production resource.
 */
function wranglerConfig(): {
  d1_databases: { binding: string; database_id?: string }[];
  r2_buckets: { binding: string; bucket_name?: string }[];
} {
  const environment = env("CLOUDFLARE_ENV") || "production";
  return unstable_readConfig({ config: join(ROOT, "wrangler.toml"), env: environment }, { hideWarnings: true });
}

/**
 * The production D1 database (`DB` in wrangler.toml, or `databaseId`) over the REST API, once a
 * read of `probeTable` shows the credentials work and the migrations are applied. Needs
 * `CLOUDFLARE_ACCOUNT_ID` and `CLOUDFLARE_API_TOKEN` (D1 edit); `CLOUDFLARE_API_BASE_URL` moves the API.
 */
export async function remoteDatabase(probeTable: string, databaseId?: string): Promise<{ db: D1Database; id: string }> {
  requireEnv(DATABASE_ENV);
  const id = databaseId ?? wranglerConfig().d1_databases.find((d) => d.binding === "DB")?.database_id;
  if (!id || PLACEHOLDER_ID.test(id)) {
    throw new RemoteSetupError(
      "wrangler.toml has no production database id: put the one `wrangler d1 create` printed in [env.production] (or CLOUDFLARE_ENV's), or pass --database-id",
    );
  }
  const db = d1OverHttp({
    apiBase: env("CLOUDFLARE_API_BASE_URL") || "https://api.cloudflare.com/client/v4",
    accountId: env("CLOUDFLARE_ACCOUNT_ID"),
    databaseId: id,
    apiToken: env("CLOUDFLARE_API_TOKEN"),
  });
  try {
    await db.prepare(`SELECT count(*) FROM "${probeTable}"`).all();
  } catch (error) {
    const text = String(error);
    throw new RemoteSetupError(
      text.includes("no such table")
        ? "the production database lacks the gateway's tables: run `npx wrangler d1 migrations apply DB --remote` first"
        : `cannot reach the production database ${id}: ${text}`,
    );
  }
  return { db, id };
}

/**
 * The production R2 bucket (`WEIGHTS` in wrangler.toml, or `bucketName`) over the S3 API, once a
 * HeadBucket shows the credentials reach it. Needs `CLOUDFLARE_ACCOUNT_ID`, `R2_ACCESS_KEY_ID` and
 * `R2_SECRET_ACCESS_KEY`; `R2_ENDPOINT` names another endpoint (a jurisdiction's).
 */
export async function remoteBucket(bucketName?: string) {
  requireEnv(BUCKET_ENV);
  const name = bucketName ?? wranglerConfig().r2_buckets.find((b) => b.binding === "WEIGHTS")?.bucket_name;
  if (!name) throw new RemoteSetupError("wrangler.toml names no bucket for WEIGHTS: pass --bucket");
  const endpoint = env("R2_ENDPOINT") || `https://${env("CLOUDFLARE_ACCOUNT_ID")}.r2.cloudflarestorage.com`;
  const bucket = s3Bucket({
    endpoint,
    bucket: name,
    accessKeyId: env("R2_ACCESS_KEY_ID"),
    secretAccessKey: env("R2_SECRET_ACCESS_KEY"),
  });
  await bucket.check().catch((error: unknown) => {
    throw new RemoteSetupError(`cannot reach bucket ${name} at ${endpoint}: ${String(error)}`);
  });
  return { bucket, name };
}
