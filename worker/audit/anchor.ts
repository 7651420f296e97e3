import { inArray } from "drizzle-orm";
import { CompactSign, type CryptoKey, compactVerify, importJWK, type JWK } from "jose";
import type { Config } from "../config";
import type { Database } from "../db/client";
import { chunked, D1_IDS_PER_STATEMENT } from "../db/limits";
import { auditEvents } from "../db/schema";
import type { Logger } from "../platform/logger";

/**
 * Anchoring the audit chain outside its database. The chain's hashes show an edit that leaves the
 * rest alone, but whoever can write to D1 can also re-hash every event after the one they changed,
 * or delete the newest events. So the head (sequence number and hash) is signed at intervals with
 * a key that is not in D1 (the `AUDIT_SIGNING_KEYS` secret) and each signed checkpoint is written
 * to R2 (`AUDIT_BUCKET`) under its own key, never replaced. A rewrite or truncation of anything at
 * or before the newest checkpoint then disagrees with a checkpoint nobody could re-sign.
 */

/** Where checkpoints live in the bucket: one object per checkpoint, named by its sequence number. */
export const CHECKPOINT_PREFIX = "audit/checkpoints/";

/** Checkpoint object key of `seq`: zero-padded so that keys list in sequence order. */
export function checkpointKey(seq: number): string {
  return `${CHECKPOINT_PREFIX}${String(seq).padStart(12, "0")}.json`;
}

/** What a checkpoint attests: the chain's event `seq` had hash `hash` when it was signed. */
export interface Checkpoint {
  seq: number;
  hash: string;
  signedAt: string;
}

/** The protected header's `typ`: a checkpoint signature is good for nothing else. */
const CHECKPOINT_TYPE = "modelgate-audit-checkpoint+jws";
const ALGORITHM = "EdDSA";

/** What anchoring needs: the bucket, the keys, a log, and a way to run work after the response. */
export interface AuditAnchor {
  bucket: R2Bucket;
  config: Pick<Config, "audit">;
  log: Logger;
  /** Runs `work`: at once, or after the response when a request's context is at hand. */
  defer(work: () => Promise<void>): Promise<void>;
}

/**
 * The anchor of a deployment, or undefined when no signing key is configured (anchoring is off;
 * verification then checks the hash chain alone). Its work runs before returning: services have
 * no request context; `deferredTo` moves it after the response where one is at hand.
 */
export function auditAnchorFor(
  bucket: R2Bucket | undefined,
  config: Pick<Config, "audit">,
  log: Logger,
): AuditAnchor | undefined {
  if (!bucket || config.audit.signingKeys.length === 0) return undefined;
  return { bucket, config, log, defer: (work) => work() };
}

/** The same anchor, deferring its work to `ctx` so that it runs after the response. */
export function deferredTo(anchor: AuditAnchor, ctx: Pick<ExecutionContext, "waitUntil">): AuditAnchor {
  return { ...anchor, defer: async (work) => ctx.waitUntil(work()) };
}

interface KeyRing {
  signing: { kid: string; key: CryptoKey };
  verifying: Map<string, CryptoKey>;
}

const rings = new WeakMap<object, Promise<KeyRing>>();

/** Imports the configured keys once per isolate; the first signs, every one verifies. */
function keyRing(config: Pick<Config, "audit">): Promise<KeyRing> {
  let ring = rings.get(config.audit);
  if (!ring) {
    ring = (async () => {
      const jwks = config.audit.signingKeys as JWK[];
      const verifying = new Map<string, CryptoKey>();
      for (const jwk of jwks) {
        if (!jwk.kid || jwk.crv !== "Ed25519")
          throw new Error("AUDIT_SIGNING_KEYS: every key must be an Ed25519 JWK with a kid");
        verifying.set(jwk.kid, (await importJWK({ ...jwk, d: undefined }, ALGORITHM)) as CryptoKey);
      }
      const first = jwks[0];
      if (!first?.kid || !first.d) throw new Error("AUDIT_SIGNING_KEYS: the first key must be a private key");
      return { signing: { kid: first.kid, key: (await importJWK(first, ALGORITHM)) as CryptoKey }, verifying };
    })();
    ring.catch(() => rings.delete(config.audit));
    rings.set(config.audit, ring);
  }
  return ring;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Signs a checkpoint as a compact JWS whose payload is the checkpoint itself. */
export async function signCheckpoint(config: Pick<Config, "audit">, checkpoint: Checkpoint): Promise<string> {
  const { signing } = await keyRing(config);
  const payload = { seq: checkpoint.seq, hash: checkpoint.hash, signedAt: checkpoint.signedAt };
  return new CompactSign(encoder.encode(JSON.stringify(payload)))
    .setProtectedHeader({ alg: ALGORITHM, kid: signing.kid, typ: CHECKPOINT_TYPE })
    .sign(signing.key);
}

/**
 * The checkpoint a stored signature attests, or undefined when it attests nothing: missing, not
 * verifying with a configured key, or signing a sequence number other than the one its object is
 * named after (a checkpoint copied to another key).
 */
export async function readCheckpoint(
  config: Pick<Config, "audit">,
  key: string,
  jws: string | undefined,
): Promise<Checkpoint | undefined> {
  const { verifying } = await keyRing(config);
  if (!jws) return undefined;
  let payload: unknown;
  try {
    const verified = await compactVerify(
      jws,
      async (header) => {
        const found = header.kid && header.typ === CHECKPOINT_TYPE ? verifying.get(header.kid) : undefined;
        if (!found) throw new Error("unknown key");
        return found;
      },
      { algorithms: [ALGORITHM] },
    );
    payload = JSON.parse(decoder.decode(verified.payload));
  } catch {
    return undefined;
  }
  if (!payload || typeof payload !== "object") return undefined;
  const own = (name: string) => (Object.hasOwn(payload, name) ? (payload as Record<string, unknown>)[name] : undefined);
  const seq = own("seq");
  const hash = own("hash");
  const signedAt = own("signedAt");
  if (!Number.isSafeInteger(seq) || (seq as number) < 1 || typeof hash !== "string" || typeof signedAt !== "string")
    return undefined;
  if (checkpointKey(seq as number) !== key) return undefined;
  return { seq: seq as number, hash, signedAt };
}

/** What writing a checkpoint did: a new object, or one already there (never replaced). */
export type CheckpointWrite = "written" | "exists";

/**
 * Signs `checkpoint` and stores it under its own key unless an object is already there: R2's
 * conditional put refuses to replace it, so no writer (this one included) rewrites a checkpoint.
 */
export async function writeCheckpoint(anchor: AuditAnchor, checkpoint: Checkpoint): Promise<CheckpointWrite> {
  const key = checkpointKey(checkpoint.seq);
  if (await anchor.bucket.head(key)) return "exists";
  const jws = await signCheckpoint(anchor.config, checkpoint);
  const stored = await anchor.bucket.put(key, JSON.stringify({ ...checkpoint, jws }), {
    onlyIf: { etagDoesNotMatch: "*" },
    httpMetadata: { contentType: "application/json" },
    // The signature again as metadata, so verification reads a thousand checkpoints per listing.
    customMetadata: { jws },
  });
  return stored ? "written" : "exists";
}

/** Whether appending from `fromSeq` (exclusive) to `toSeq` (inclusive) passes a multiple of `every`. */
export function passesCheckpointMark(fromSeq: number, toSeq: number, every: number): boolean {
  return Math.floor(toSeq / every) > Math.floor(fromSeq / every);
}

/**
 * Checkpoints a head the chain just reached, after the response when possible. A failure is
 * logged, never thrown: the write it follows has landed, and the cron anchors the head again.
 */
export function anchorHead(anchor: AuditAnchor, checkpoint: Checkpoint): Promise<void> {
  return anchor.defer(async () => {
    try {
      await writeCheckpoint(anchor, checkpoint);
    } catch (error) {
      anchor.log.error("audit checkpoint failed", { seq: checkpoint.seq, error: String(error) });
    }
  });
}

/** One stored checkpoint object, read and checked. */
export interface StoredCheckpoint {
  key: string;
  /** The attested checkpoint, or undefined when the object attests nothing (see `readCheckpoint`). */
  checkpoint: Checkpoint | undefined;
}

/**
 * Every checkpoint object in the bucket, in sequence order, its signature checked. The signature is
 * read from the object's metadata; an object without one there attests nothing.
 */
export async function listCheckpoints(anchor: Pick<AuditAnchor, "bucket" | "config">): Promise<StoredCheckpoint[]> {
  const found: StoredCheckpoint[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await anchor.bucket.list({
      prefix: CHECKPOINT_PREFIX,
      include: ["customMetadata"],
      ...(cursor ? { cursor } : {}),
    });
    for (const object of page.objects) {
      const metadata = object.customMetadata ?? {};
      const jws = Object.hasOwn(metadata, "jws") ? metadata.jws : undefined;
      found.push({ key: object.key, checkpoint: await readCheckpoint(anchor.config, object.key, jws) });
    }
    if (!page.truncated) return found;
    cursor = page.cursor;
  }
}

/** A checkpoint that does not hold, and why. */
export interface CheckpointProblem {
  key: string;
  /** The signed sequence number; null when the object attests nothing. */
  seq: number | null;
  /**
   * `invalid_signature`: the object is not a checkpoint this gateway signed (forged, or copied to
   * another key); `event_missing`: the attested event is gone (history truncated at or below it);
   * `hash_mismatch`: the attested event has another hash now (history rewritten at or before it).
   */
  problem: "invalid_signature" | "event_missing" | "hash_mismatch";
}

/** How the chain stands against every stored checkpoint. */
export interface CheckpointVerification {
  /** Whether checkpoints are signed and checked here; without a signing key nothing below was. */
  anchored: boolean;
  /** Checkpoint objects examined. */
  checkpoints: number;
  /** The newest checkpoint whose signature holds. */
  newestCheckpoint: Checkpoint | null;
  /** Events at or below a checkpoint are missing, or the head is below the newest checkpoint. */
  truncated: boolean;
  /** An event at a checkpoint has another hash than the one signed. */
  rewritten: boolean;
  /** An object under the checkpoint prefix does not carry a valid signature. */
  forged: boolean;
  /** The first problems found, in key order (at most `MAX_REPORTED_PROBLEMS`). */
  checkpointProblems: CheckpointProblem[];
}

/** Enough problems to act on without answering with one per deleted event. */
export const MAX_REPORTED_PROBLEMS = 100;

/** Verification when anchoring is off: nothing to compare with. */
export const UNANCHORED: CheckpointVerification = {
  anchored: false,
  checkpoints: 0,
  newestCheckpoint: null,
  truncated: false,
  rewritten: false,
  forged: false,
  checkpointProblems: [],
};

/**
 * Compares the chain in D1 with every stored checkpoint: each must carry a valid signature, and
 * the event at its sequence number must still exist with the hash it signed.
 */
export async function verifyCheckpoints(
  db: Database,
  anchor: Pick<AuditAnchor, "bucket" | "config">,
): Promise<CheckpointVerification> {
  const stored = await listCheckpoints(anchor);
  const seqs = stored.flatMap((s) => (s.checkpoint ? [s.checkpoint.seq] : []));
  const hashes = new Map<number, string>();
  for (const chunk of chunked(seqs, D1_IDS_PER_STATEMENT)) {
    const rows = await db
      .select({ seq: auditEvents.seq, hash: auditEvents.hash })
      .from(auditEvents)
      .where(inArray(auditEvents.seq, chunk));
    for (const row of rows) hashes.set(row.seq, row.hash);
  }
  const result: CheckpointVerification = { ...UNANCHORED, anchored: true, checkpoints: stored.length };
  const problems: CheckpointProblem[] = [];
  for (const { key, checkpoint } of stored) {
    let problem: CheckpointProblem["problem"] | undefined;
    if (!checkpoint) {
      problem = "invalid_signature";
      result.forged = true;
    } else {
      if (!result.newestCheckpoint || checkpoint.seq > result.newestCheckpoint.seq)
        result.newestCheckpoint = checkpoint;
      const hash = hashes.get(checkpoint.seq);
      if (hash === undefined) {
        problem = "event_missing";
        result.truncated = true;
      } else if (hash !== checkpoint.hash) {
        problem = "hash_mismatch";
        result.rewritten = true;
      }
    }
    if (problem && problems.length < MAX_REPORTED_PROBLEMS)
      problems.push({ key, seq: checkpoint?.seq ?? null, problem });
  }
  return { ...result, checkpointProblems: problems };
}
