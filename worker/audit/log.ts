import { desc, sql } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { Database } from "../db/client";
import { auditEvents } from "../db/schema";
import type { Clock } from "../platform/clock";
import { canonicalJson, sha256Hex } from "../platform/hash";
import type { IdGenerator } from "../platform/ids";
import {
  type AuditAnchor,
  anchorHead,
  type CheckpointVerification,
  type CheckpointWrite,
  passesCheckpointMark,
  UNANCHORED,
  verifyCheckpoints,
  writeCheckpoint,
} from "./anchor";

/** The hash the first event chains from. */
export const GENESIS_HASH = "0".repeat(64);

/** One state change as recorded in the audit log. */
export interface AuditEntry {
  /** Who: `applicant:<email>`, `reviewer:<email>`, `operator`, `system`. */
  actor: string;
  /** What, as `subject.verb`: `application.submitted`, `grant.revoked`, … */
  action: string;
  subjectType: string;
  subjectId: string;
  data?: Record<string, unknown>;
}

/** The fields a hash covers, in canonical form. */
export function auditHashInput(event: {
  seq: number;
  id: string;
  at: string;
  actor: string;
  action: string;
  subjectType: string;
  subjectId: string;
  data: Record<string, unknown>;
  prevHash: string;
}): string {
  return canonicalJson({
    seq: event.seq,
    id: event.id,
    at: event.at,
    actor: event.actor,
    action: event.action,
    subjectType: event.subjectType,
    subjectId: event.subjectId,
    data: event.data,
    prevHash: event.prevHash,
  });
}

/** What a plan returns: the statements to run and the events that record them. */
export interface AuditedWrite<T> {
  statements: BatchItem<"sqlite">[];
  events: AuditEntry[];
  result: T;
}

/** Enough for every writer in a burst of concurrent audited writes to land eventually. */
const MAX_ATTEMPTS = 40;

/** A short, growing, jittered pause before planning again, so racing writers spread out. */
function backoff(attempt: number): Promise<void> {
  // Jitter only spreads retries in time; it decides nothing, so it need not be an injected service.
  const ms = Math.random() * Math.min(50, 2 * attempt);
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A D1 error's message with its cause's, where drizzle puts the database's own words. */
function errorText(error: unknown): string {
  return `${String(error)} ${String((error as { cause?: unknown })?.cause ?? "")}`;
}

/** Whether a D1 error is a unique constraint failing (on `table.` when given). */
export function isUniqueViolation(error: unknown, table?: string): boolean {
  return errorText(error).includes(table ? `UNIQUE constraint failed: ${table}.` : "UNIQUE constraint failed");
}

/**
 * Whether a D1 error is `column` (`table.column`) refusing a NULL: how a statement that works out
 * in SQL whether it may write (a NULL where none may be) fails its batch whole.
 */
export function isNotNullViolation(error: unknown, column: string): boolean {
  return errorText(error).includes(`NOT NULL constraint failed: ${column}`);
}

/** The chain's newest event, or undefined before the first. */
export async function readHead(db: Database) {
  const [head] = await db
    .select({ seq: auditEvents.seq, hash: auditEvents.hash })
    .from(auditEvents)
    .orderBy(desc(auditEvents.seq))
    .limit(1);
  return head;
}

/**
 * Runs a read-decide-write plan atomically with its audit events. The chain's head is read first,
 * then the plan reads what it needs and returns statements; all go in one `db.batch()` together
 * with the hash-chained events. Because every audited change appends at `head + 1`, a concurrent
 * writer makes the batch fail whole on a unique key (the `seq`, or a row both tried to create),
 * and the plan is run again on fresh state.
 * The audit chain is thereby the optimistic lock for every audited change (D1 has no interactive
 * transactions).
 * A write that carries the chain past a multiple of `checkpointEvery` checkpoints the head it
 * reached, when anchoring is configured (`anchor.ts`).
 */
export async function writeAudited<T>(
  deps: { db: Database; clock: Clock; ids: IdGenerator; auditAnchor?: AuditAnchor | undefined },
  plan: () => Promise<AuditedWrite<T>>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const head = await readHead(deps.db);
    const { statements, events, result } = await plan();
    let seq = head?.seq ?? 0;
    let prevHash = head?.hash ?? GENESIS_HASH;
    const at = deps.clock.now().toISOString();
    const rows: (typeof auditEvents.$inferInsert)[] = [];
    for (const entry of events) {
      seq += 1;
      const row = {
        seq,
        id: deps.ids.id("evt"),
        at,
        actor: entry.actor,
        action: entry.action,
        subjectType: entry.subjectType,
        subjectId: entry.subjectId,
        data: entry.data ?? {},
        prevHash,
      };
      const hash = await sha256Hex(auditHashInput(row));
      rows.push({ ...row, hash });
      prevHash = hash;
    }
    const all: BatchItem<"sqlite">[] = [...statements];
    if (rows.length > 0) all.push(deps.db.insert(auditEvents).values(rows));
    if (all.length === 0) return result;
    try {
      await deps.db.batch(all as [BatchItem<"sqlite">, ...BatchItem<"sqlite">[]]);
    } catch (error) {
      // A unique key failing after another audited write landed is a lost race (on the chain's
      // `seq`, or on a row the other write created): plan again on the new state. A unique key
      // failing with the head unchanged is a real conflict for the caller.
      if (attempt < MAX_ATTEMPTS && isUniqueViolation(error) && (await readHead(deps.db))?.seq !== head?.seq) {
        await backoff(attempt);
        continue;
      }
      throw error;
    }
    const anchor = deps.auditAnchor;
    if (anchor && rows.length > 0 && passesCheckpointMark(head?.seq ?? 0, seq, anchor.config.audit.checkpointEvery)) {
      await anchorHead(anchor, { seq, hash: prevHash, signedAt: at });
    }
    return result;
  }
}

/** The result of walking the chain. */
export interface ChainVerification {
  ok: boolean;
  checked: number;
  headSeq: number;
  headHash: string;
  /** The first event whose link or hash does not hold, or that stands outside the chain, when any. */
  firstBroken?: {
    seq: number;
    id: string;
    problem: "hash_mismatch" | "prev_hash_mismatch" | "sequence_gap" | "outside_chain";
  };
}

/**
 * Walks the whole chain in pages and reports the first broken link. An event numbered below the
 * chain's first (written straight into the table) is in no link, but listed all the same: it breaks
 * the log as a bad link does.
 */
export async function verifyAuditChain(db: Database, pageSize = 500): Promise<ChainVerification> {
  let expectedPrev = GENESIS_HASH;
  let expectedSeq = 1;
  let checked = 0;
  const [outside] = await db
    .select({ seq: auditEvents.seq, id: auditEvents.id })
    .from(auditEvents)
    .where(sql`${auditEvents.seq} < 1`)
    .orderBy(auditEvents.seq)
    .limit(1);
  if (outside) {
    return {
      ok: false,
      checked,
      headSeq: 0,
      headHash: GENESIS_HASH,
      firstBroken: { seq: outside.seq, id: outside.id, problem: "outside_chain" },
    };
  }
  for (;;) {
    const page = await db
      .select()
      .from(auditEvents)
      .where(sql`${auditEvents.seq} >= ${expectedSeq}`)
      .orderBy(auditEvents.seq)
      .limit(pageSize);
    for (const event of page) {
      const broken = (problem: "hash_mismatch" | "prev_hash_mismatch" | "sequence_gap"): ChainVerification => ({
        ok: false,
        checked,
        headSeq: expectedSeq - 1,
        headHash: expectedPrev,
        firstBroken: { seq: event.seq, id: event.id, problem },
      });
      if (event.seq !== expectedSeq) return broken("sequence_gap");
      if (event.prevHash !== expectedPrev) return broken("prev_hash_mismatch");
      const hash = await sha256Hex(auditHashInput(event));
      if (hash !== event.hash) return broken("hash_mismatch");
      expectedPrev = event.hash;
      expectedSeq += 1;
      checked += 1;
    }
    if (page.length < pageSize) {
      return { ok: true, checked, headSeq: expectedSeq - 1, headHash: expectedPrev };
    }
  }
}

/**
 * Checkpoints the chain's current head unless it already is (the cron's every-minute anchoring).
 * Undefined when there is nothing to anchor: anchoring is off, or the chain is empty.
 */
export async function anchorAuditHead(deps: {
  db: Database;
  clock: Clock;
  auditAnchor: AuditAnchor | undefined;
}): Promise<{ seq: number; outcome: CheckpointWrite } | undefined> {
  const head = deps.auditAnchor ? await readHead(deps.db) : undefined;
  if (!deps.auditAnchor || !head) return undefined;
  const signedAt = deps.clock.now().toISOString();
  return { seq: head.seq, outcome: await writeCheckpoint(deps.auditAnchor, { ...head, signedAt }) };
}

/** The chain walked, and compared with every checkpoint; `ok` only when both hold. */
export type AuditVerification = ChainVerification & CheckpointVerification;

/**
 * Verifies the audit log: the hash chain link by link, then against every signed checkpoint in R2,
 * which is what catches a history re-hashed or cut short by someone able to write to D1. A log
 * that holds on every count has its head checkpointed when it is past the newest checkpoint.
 */
export async function verifyAuditLog(deps: {
  db: Database;
  clock: Clock;
  auditAnchor: AuditAnchor | undefined;
}): Promise<AuditVerification> {
  const chain = await verifyAuditChain(deps.db);
  const anchor = deps.auditAnchor;
  const anchoring = anchor ? await verifyCheckpoints(deps.db, anchor) : UNANCHORED;
  const ok = chain.ok && !anchoring.truncated && !anchoring.rewritten && !anchoring.forged;
  if (anchor && ok && chain.headSeq > (anchoring.newestCheckpoint?.seq ?? 0)) {
    await anchorHead(anchor, { seq: chain.headSeq, hash: chain.headHash, signedAt: deps.clock.now().toISOString() });
  }
  return { ...chain, ...anchoring, ok };
}
