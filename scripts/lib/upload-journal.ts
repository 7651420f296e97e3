/**
 * What an upload of weights has stored so far, kept in a small JSON file so that a run that was
 * interrupted (a network that stayed down, Ctrl-C, a closed laptop) resumes where it stopped
 * instead of sending 100 GB again: whole files stored, and for each file sent in parts its
 * multipart upload id and the parts R2 acknowledged. The journal belongs to one revision — the
 * hash of the folder's files — so a folder that changed starts afresh. It is written after every
 * acknowledged part (a write of a few kilobytes, renamed into place so a crash never leaves half
 * of it) and deleted once the revision is published.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

/** A file of the upload as far as it got. */
export interface JournalFile {
  path: string;
  /** Stored whole (or its multipart upload completed). */
  stored?: { sha256: string; etag: string };
  /** Being sent in parts. */
  multipart?: { uploadId: string; partSize: number; parts: { partNumber: number; etag: string }[] };
}

interface JournalData {
  version: 1;
  model: string;
  revision: string;
  /** The R2 key prefix of this upload (`models/{model}/uploads/{uploadKey}/…`). */
  uploadKey: string;
  files: JournalFile[];
}

/** The journal of one upload; without a file it lives in memory only (seeding, benchmarks). */
export class UploadJournal {
  private constructor(
    private readonly file: string | undefined,
    private readonly data: JournalData,
    /** Whether an earlier run's journal was found. */
    readonly resumed: boolean,
  ) {}

  /**
   * The journal at `file` when it is for this model and revision, else a fresh one whose R2 keys
   * go under `freshUploadKey`.
   */
  static open(file: string | undefined, model: string, revision: string, freshUploadKey: string): UploadJournal {
    if (file) {
      try {
        const data = JSON.parse(readFileSync(file, "utf8")) as Partial<JournalData>;
        if (
          data.version === 1 &&
          data.model === model &&
          data.revision === revision &&
          typeof data.uploadKey === "string" &&
          Array.isArray(data.files)
        ) {
          return new UploadJournal(file, data as JournalData, true);
        }
      } catch {
        // No journal, or one that cannot be read: start afresh.
      }
    }
    return new UploadJournal(file, { version: 1, model, revision, uploadKey: freshUploadKey, files: [] }, false);
  }

  get uploadKey(): string {
    return this.data.uploadKey;
  }

  /** Whether the journal is kept on disk, so that stored bytes outlive a failed run. */
  get persistent(): boolean {
    return this.file !== undefined;
  }

  /** What the journal knows of `path`. */
  entry(path: string): JournalFile | undefined {
    return this.data.files.find((f) => f.path === path);
  }

  private upsert(path: string): JournalFile {
    let entry = this.entry(path);
    if (!entry) {
      entry = { path };
      this.data.files.push(entry);
    }
    return entry;
  }

  /** `path` is stored whole. */
  stored(path: string, stored: { sha256: string; etag: string }): void {
    const entry = this.upsert(path);
    entry.stored = stored;
    delete entry.multipart;
    this.save();
  }

  /** A multipart upload of `path` began (or began again). */
  multipartStarted(path: string, uploadId: string, partSize: number): void {
    this.upsert(path).multipart = { uploadId, partSize, parts: [] };
    this.save();
  }

  /** R2 acknowledged a part of `path`. */
  partStored(path: string, part: { partNumber: number; etag: string }): void {
    const multipart = this.entry(path)?.multipart;
    if (!multipart) return;
    multipart.parts = [...multipart.parts.filter((p) => p.partNumber !== part.partNumber), part];
    this.save();
  }

  /** The upload was published: nothing left to resume. */
  remove(): void {
    if (this.file) rmSync(this.file, { force: true });
  }

  private save(): void {
    if (!this.file) return;
    mkdirSync(dirname(this.file), { recursive: true });
    const next = `${this.file}.next`;
    writeFileSync(next, JSON.stringify(this.data));
    renameSync(next, this.file);
  }
}
