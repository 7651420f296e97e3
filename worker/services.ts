import { type AuditAnchor, auditAnchorFor } from "./audit/anchor";
import type { Config } from "./config";
import { readConfig } from "./config";
import { createDatabase, type Database } from "./db/client";
import { type Mailer, sendEmailMailer } from "./mail/mailer";
import { type Clock, systemClock } from "./platform/clock";
import { type IdGenerator, randomIds } from "./platform/ids";
import { jsonLogger, type Logger } from "./platform/logger";

/** Everything a handler may use, built once per request by the `init` middleware. */
export interface Services {
  db: Database;
  clock: Clock;
  ids: IdGenerator;
  mailer: Mailer;
  log: Logger;
  config: Config;
  /** Signs checkpoints of the audit chain's head into R2; undefined when no signing key is set. */
  auditAnchor: AuditAnchor | undefined;
}

/**
 * How services are made. Every field defaults to production behaviour; tests pass a fixed clock,
 * predictable ids or a recording mailer instead of mocking modules.
 */
export interface ServiceOptions {
  clock?: Clock;
  ids?: (clock: Clock) => IdGenerator;
  mailer?: (env: Env, config: Config) => Mailer;
}

/** Builds the services for one request (or one queue batch, or one cron tick). */
export function createServices(
  env: Env,
  options: ServiceOptions = {},
  logFields: Record<string, unknown> = {},
): Services {
  const config = readConfig(env);
  const clock = options.clock ?? systemClock;
  const log = jsonLogger(logFields);
  return {
    db: createDatabase(env.DB),
    clock,
    ids: (options.ids ?? randomIds)(clock),
    mailer: (options.mailer ?? ((e, c) => sendEmailMailer(e.EMAIL, c.mailFrom)))(env, config),
    log,
    config,
    auditAnchor: auditAnchorFor(env.AUDIT_BUCKET, config, log),
  };
}
