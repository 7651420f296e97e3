import { and, asc, eq, inArray } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import type { AuditEntry } from "../audit/log";
import type { Database } from "../db/client";
import { type ModelFile, modelFiles, modelRefs, modelRevisions } from "../db/schema";
import { modelRevisionEvent } from "../events/record";
import { sha256Hex } from "../platform/hash";
import { IsolateMemory } from "../platform/isolate-memory";

/** The ref every model's newest revision is published under. */
export const MAIN_REF = "main";

/** A revision as the catalog knows it. */
export type Revision = typeof modelRevisions.$inferSelect;

/**
 * Finds a model's revision by ref (`main`) or by id. Revision ids are 40 hex characters, like the
 * commit ids Hub clients expect.
 */
export async function resolveRevision(db: Database, model: string, revision = MAIN_REF): Promise<Revision | undefined> {
  if (/^[0-9a-f]{40}$/.test(revision)) {
    const [row] = await db
      .select()
      .from(modelRevisions)
      .where(and(eq(modelRevisions.id, revision), eq(modelRevisions.model, model)));
    return row;
  }
  const [row] = await db
    .select({ revision: modelRevisions })
    .from(modelRefs)
    .innerJoin(modelRevisions, eq(modelRevisions.id, modelRefs.revisionId))
    .where(and(eq(modelRefs.model, model), eq(modelRefs.ref, revision)));
  return row?.revision;
}

/** A revision's files, by path. */
export function listRevisionFiles(db: Database, revisionId: string) {
  return db.select().from(modelFiles).where(eq(modelFiles.revisionId, revisionId)).orderBy(asc(modelFiles.path));
}

/**
 * Files of revisions this isolate has served, by database and `revision/path`. A file's row never
 * changes: the revision's id is the hash of its files' paths, sizes and sha256 (`revisionId`), and
 * publishing inserts a file once and never updates it. Knowing the file before the link's lookup
 * returns lets a download plan its range and read from R2 while D1 checks the link.
 */
const knownFiles = new IsolateMemory<ModelFile>(10_000);
const fileKey = (revision: string, path: string) => `${revision}/${path}`;

/** The row of `path` in `revision` if this isolate has read it before. */
export function knownFile(db: Database, revision: string, path: string): ModelFile | undefined {
  return knownFiles.get(db, fileKey(revision, path));
}

/** Keeps a file's row for `knownFile`; a row that differs from the one kept replaces it. */
export function rememberFile(db: Database, file: ModelFile): void {
  knownFiles.set(db, fileKey(file.revisionId, file.path), file);
}

/** Forgets a kept file row that no longer matches D1's (a database rebuilt under a running isolate). */
export function forgetFile(db: Database, file: ModelFile): void {
  knownFiles.delete(db, fileKey(file.revisionId, file.path));
}

/** The query that selects the id of a model's revision by ref (`main`) or by id: one row or none. */
export function revisionIdQuery(db: Database, model: string, revision = MAIN_REF) {
  return /^[0-9a-f]{40}$/.test(revision)
    ? db
        .select({ id: modelRevisions.id })
        .from(modelRevisions)
        .where(and(eq(modelRevisions.id, revision), eq(modelRevisions.model, model)))
    : db
        .select({ id: modelRefs.revisionId })
        .from(modelRefs)
        .where(and(eq(modelRefs.model, model), eq(modelRefs.ref, revision)));
}

/** A revision's id query, as `revisionIdQuery` makes it. */
export type RevisionIdQuery = ReturnType<typeof revisionIdQuery>;

/**
 * A revision (by ref or id, as `resolveRevision`) and its files, by path, in one round trip to
 * the database, together with a statement `alongside` that writes for that revision (whatever
 * it writes when there is none is nothing): the manifest reads and records its link at once.
 */
export async function resolveRevisionWithFiles(
  db: Database,
  model: string,
  revision: string | undefined,
  alongside: (revisionIds: RevisionIdQuery) => BatchItem<"sqlite">,
): Promise<{ revision: Revision; files: ModelFile[] } | undefined> {
  const revisionIds = revisionIdQuery(db, model, revision);
  const [revisions, files] = await db.batch([
    db.select().from(modelRevisions).where(inArray(modelRevisions.id, revisionIds)),
    db.select().from(modelFiles).where(inArray(modelFiles.revisionId, revisionIds)).orderBy(asc(modelFiles.path)),
    alongside(revisionIds),
  ]);
  const [found] = revisions;
  return found ? { revision: found, files } : undefined;
}

/** One file of a revision. */
export async function findRevisionFile(db: Database, revisionId: string, path: string) {
  const [row] = await db
    .select()
    .from(modelFiles)
    .where(and(eq(modelFiles.revisionId, revisionId), eq(modelFiles.path, path)));
  return row;
}

/** A file as uploaded: its hash was computed from the bytes that went into R2. */
export interface UploadedFile {
  path: string;
  size: number;
  sha256: string;
  r2Key: string;
  etag: string;
  contentType: string;
}

/** The content hash that names a revision: over every file's path, size and sha256. */
export async function revisionId(model: string, files: UploadedFile[]): Promise<string> {
  const lines = [...files]
    .sort((a, b) => (a.path < b.path ? -1 : 1))
    .map((f) => `${f.path}\u0000${f.size}\u0000${f.sha256}`);
  return (await sha256Hex(`${model}\n${lines.join("\n")}`)).slice(0, 40);
}

/**
 * The statements and audit event that publish a revision and point `main` at it. Publishing the
 * same files again is a no-op apart from moving `main`.
 */
export async function publishRevision(
  db: Database,
  model: string,
  files: UploadedFile[],
  at: string,
  actor: string,
): Promise<{ id: string; statements: BatchItem<"sqlite">[]; event: AuditEntry }> {
  const id = await revisionId(model, files);
  const statements: BatchItem<"sqlite">[] = [
    db
      .insert(modelRevisions)
      .values({ id, model, fileCount: files.length, totalBytes: files.reduce((n, f) => n + f.size, 0), createdAt: at })
      .onConflictDoNothing(),
    // One statement per file keeps each under D1's 100 bound parameters.
    ...files.map((f) =>
      db
        .insert(modelFiles)
        .values({ revisionId: id, ...f })
        .onConflictDoNothing(),
    ),
    db
      .insert(modelRefs)
      .values({ model, ref: MAIN_REF, revisionId: id, updatedAt: at })
      .onConflictDoUpdate({ target: [modelRefs.model, modelRefs.ref], set: { revisionId: id, updatedAt: at } }),
    modelRevisionEvent(db, model, id, files, at),
  ];
  return {
    id,
    statements,
    event: {
      actor,
      action: "model.revision_published",
      subjectType: "model",
      subjectId: model,
      data: { revision: id, files: files.length, bytes: files.reduce((n, f) => n + f.size, 0) },
    },
  };
}
