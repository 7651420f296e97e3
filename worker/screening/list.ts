/**
 * The denied-party list in D1: loading one (replacing the list in force, audited) and screening
 * names against it. Every name and alias is stored under its `screeningKey`, so screening an
 * application is one indexed lookup however long the list is.
 */
import { inArray, sql } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditedWrite, writeAudited } from "../audit/log";
import { screeningEntries, screeningNames } from "../db/schema";
import { AppError } from "../errors";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";
import type { ListedParty } from "./csv";
import { screeningKey, screeningLookupKeys } from "./names";

/** D1 binds at most 100 parameters a statement: rows per insert for each table. */
const ENTRY_ROWS_PER_INSERT = 14;
const NAME_ROWS_PER_INSERT = 50;

/** A listed party a screened name matched, as reviewers see it. */
export interface ScreeningMatch {
  /** The applicant's name that matched: the organization's or the contact's. */
  screened: string;
  entryId: string;
  name: string;
  /** The listed name or alias it matched. */
  matchedName: string;
  source: string;
  country: string | null;
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

/** What a load reports. */
export interface ScreeningListReport {
  entries: number;
  names: number;
  sources: string[];
  sha256: string;
  loadedAt: string;
}

/**
 * Replaces the list in force with `parties`, in one batch with its audit event
 * (`screening.list_loaded`, with the list's sha256): screening never sees half a list.
 */
export async function loadScreeningList(
  services: Pick<Services, "db" | "clock" | "ids" | "auditAnchor">,
  parties: readonly ListedParty[],
  listText: string,
  actor: string,
): Promise<ScreeningListReport> {
  if (parties.length === 0) throw new AppError("validation_failed", "The list names no parties.");
  const { db } = services;
  const loadedAt = services.clock.now().toISOString();
  const entries = parties.map((p) => ({ id: services.ids.id("scr"), loadedAt, ...p }));
  const names = new Map<string, { nameKey: string; entryId: string }>();
  for (const entry of entries) {
    for (const listed of [entry.name, ...entry.altNames]) {
      const nameKey = screeningKey(listed);
      if (nameKey !== "") names.set(`${nameKey}\u0000${entry.id}`, { nameKey, entryId: entry.id });
    }
  }
  const report: ScreeningListReport = {
    entries: entries.length,
    names: names.size,
    sources: [...new Set(entries.map((e) => e.source))].sort(),
    sha256: await sha256Hex(listText),
    loadedAt,
  };
  return writeAudited(services, async (): Promise<AuditedWrite<ScreeningListReport>> => {
    const statements: BatchItem<"sqlite">[] = [db.delete(screeningNames), db.delete(screeningEntries)];
    for (const rows of chunks(entries, ENTRY_ROWS_PER_INSERT))
      statements.push(db.insert(screeningEntries).values(rows));
    for (const rows of chunks([...names.values()], NAME_ROWS_PER_INSERT)) {
      statements.push(db.insert(screeningNames).values(rows));
    }
    return {
      statements,
      events: [
        {
          actor,
          action: "screening.list_loaded",
          subjectType: "screening_list",
          subjectId: report.sha256,
          data: { entries: report.entries, names: report.names, sources: report.sources },
        },
      ],
      result: report,
    };
  });
}

/** The list in force: how many parties, from which sources, loaded when. */
export async function screeningListStanding(services: Pick<Services, "db">) {
  const rows = await services.db
    .select({
      source: screeningEntries.source,
      entries: sql<number>`count(*)`,
      loadedAt: sql<string>`max(${screeningEntries.loadedAt})`,
    })
    .from(screeningEntries)
    .groupBy(screeningEntries.source);
  return {
    entries: rows.reduce((sum, r) => sum + r.entries, 0),
    loadedAt: rows.reduce<string | null>((max, r) => (max === null || r.loadedAt > max ? r.loadedAt : max), null),
    sources: rows.map((r) => ({ source: r.source, entries: r.entries })),
  };
}

/**
 * The listed parties any of `names` matches (under its `screeningLookupKeys`), each party once per
 * screened name. Names without letters or digits match nothing.
 */
export async function screenNames(services: Pick<Services, "db">, names: readonly string[]): Promise<ScreeningMatch[]> {
  const byKey = new Map<string, string>();
  for (const name of names) {
    for (const key of screeningLookupKeys(name)) if (!byKey.has(key)) byKey.set(key, name);
  }
  if (byKey.size === 0) return [];
  const rows = await services.db
    .select({ nameKey: screeningNames.nameKey, entry: screeningEntries })
    .from(screeningNames)
    .innerJoin(screeningEntries, sql`${screeningEntries.id} = ${screeningNames.entryId}`)
    .where(inArray(screeningNames.nameKey, [...byKey.keys()]));
  // In a list loaded before look-alike letters were folded, a name's two keys can meet two names
  // of one party: the party is reported once.
  const once = new Map<string, ScreeningMatch>();
  for (const { nameKey, entry } of rows) {
    const screened = byKey.get(nameKey) ?? nameKey;
    const key = `${screened}\u0000${entry.id}`;
    if (once.has(key)) continue;
    once.set(key, {
      screened,
      entryId: entry.id,
      name: entry.name,
      matchedName: [entry.name, ...entry.altNames].find((n) => screeningLookupKeys(n).includes(nameKey)) ?? entry.name,
      source: entry.source,
      country: entry.country,
    });
  }
  return [...once.values()];
}
