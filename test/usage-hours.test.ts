/**
 * An organization's quota object keeps its usage in hourly parts: rows committed with settlements
 * are folded into their hour, written to D1 as absolute totals (at most every
 * `USAGE_SYNC_SECONDS` while the hour is open, at once with `syncUsage`), closed into one billing
 * interval per part, archived to R2 once and pruned from the object after the retention. Driven
 * through the real object, D1 and R2.
 */
import { runDurableObjectAlarm } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import type { LedgerRow } from "../worker/inference/ledger";
import { quotaStub } from "../worker/quota/org-quota";
import type { LiveParts } from "../worker/quota/usage-book";
import { CLOSE_GRACE_MS, type DownloadRow, hourStart } from "../worker/usage/hours";
import { adminToken } from "./helpers/access";
import { testGateway } from "./helpers/fixtures";
import {
  archiveObjects,
  bindBook,
  byId,
  commitRows,
  everyRow,
  hourSums,
  intervals,
  into,
  moveClock,
  newOrganization,
  refusing,
  row,
  runAlarm,
  sumsOf,
  usageHourRows,
} from "./helpers/usage-parts";

const HOUR_MS = 3_600_000;
/** An hour long over by the real clock: it closes at the first sync after its rows come. */
const PAST = "2026-06-15T12";
/** An hour ahead of the real clock: it stays open until a caller moves the object's clock past it. */
const FUTURE = "2031-03-10T08";
/** The deployment's defaults (wrangler.toml), which the quota objects run with in tests. */
const SYNC_MS = 300_000;
const RETENTION_MS = 168 * HOUR_MS;

describe("usage hours: totals in D1", () => {
  it("folds rows into their hour, and usage_hours holds the raw rows' sums per hour, model, grant and token", async () => {
    const org = newOrganization();
    const next = "2026-06-15T13";
    const rows: LedgerRow[] = [];
    for (let i = 0; i < 24; i++) {
      rows.push(
        row(org, into(i % 3 === 2 ? next : PAST, 1 + i), 3 + i, i % 4 === 0 ? 0 : 5 * i, {
          model: i % 2 ? "llama-2-7b-chat" : "llama-2-70b-chat",
          grantId: i % 5 < 2 ? "grt_a" : "grt_b",
          tokenId: i % 3 ? "tok_a" : "tok_b",
          status: i % 7 === 3 ? 502 : 200,
          outcome: i % 7 === 3 ? "backend_error" : i % 6 === 1 ? "partial" : "ok",
          partial: i % 6 === 1,
          latencyMs: 10 + i,
        }),
      );
    }
    // Three commits; the last holds rows of both hours.
    await commitRows(org, rows.slice(0, 8));
    await commitRows(org, rows.slice(8, 16));
    await commitRows(org, rows.slice(16));
    await runAlarm(org);
    expect(await quotaStub(env, org).syncUsage()).toBe(true);

    expect(await hourSums(org)).toEqual(sumsOf(rows));
    const parts = new Set((await usageHourRows(org)).map((r) => `${r.hour}:${r.part}`));
    expect([...parts].map((p) => p.slice(0, 13)).sort()).toEqual([PAST, next]);
    expect(byId(await everyRow(org))).toEqual(byId(rows));
  });

  it("changes nothing on repeated syncUsage and alarms: the same rows with the same values, written once", async () => {
    const org = newOrganization();
    const rows = Array.from({ length: 6 }, (_, i) => row(org, into(PAST, 5 + i), 4, i));
    await commitRows(org, rows);
    await runAlarm(org);
    await quotaStub(env, org).syncUsage();
    const snapshot = async () => ({
      hours: await usageHourRows(org),
      intervals: await intervals(org),
      archive: await archiveObjects(org),
    });
    const first = await snapshot();
    expect(first.hours.length).toBeGreaterThan(0);
    expect(first.intervals).toHaveLength(1);
    expect(first.archive).toHaveLength(1);
    for (let i = 0; i < 3; i++) {
      expect(await quotaStub(env, org).syncUsage()).toBe(true);
      await runAlarm(org);
    }
    // `updated_at` and the archive object's upload time included: nothing was written again.
    expect(await snapshot()).toEqual(first);
  });

  it("opens a second part for rows of an hour whose part closed, and the hour's figure is the sum of its parts", async () => {
    const org = newOrganization();
    const first = Array.from({ length: 3 }, (_, i) => row(org, into(PAST, 10 + i), 5, 7));
    const late = Array.from({ length: 2 }, (_, i) => row(org, into(PAST, 58 + i), 11, 13));
    await commitRows(org, first);
    await quotaStub(env, org).syncUsage();
    await commitRows(org, late);
    await quotaStub(env, org).syncUsage();

    const hours = await usageHourRows(org);
    const parts = [...new Set(hours.map((h) => h.part))];
    expect(parts).toHaveLength(2);
    for (const p of parts) expect(p).toMatch(/^[0-9a-z]{9}$/);
    expect(await hourSums(org)).toEqual(sumsOf([...first, ...late]));
    // Each part is its own rows: the late rows did not reopen the closed part.
    const [early, later] = parts.sort();
    const partTokens = (p: string | undefined) =>
      hours.filter((h) => h.part === p).reduce((n, h) => n + h.prompt_tokens + h.completion_tokens, 0);
    expect(partTokens(early)).toBe(3 * 12);
    expect(partTokens(later)).toBe(2 * 24);
    expect((await intervals(org)).map((i) => i.id)).toEqual([`${org}:${PAST}:${early}`, `${org}:${PAST}:${later}`]);
    const objects = await archiveObjects(org);
    expect(objects.map((o) => o.key)).toEqual([
      `usage/v1/${org}/2026/06/15/12/inference-${early}.ndjson.gz`,
      `usage/v1/${org}/2026/06/15/12/inference-${later}.ndjson.gz`,
    ]);
    expect(objects.map((o) => o.lines.length)).toEqual([3, 2]);
  });

  it("closes each part into one billing interval equal to its usage_hours sums; a part without tokens bills nothing", async () => {
    const org = newOrganization();
    const billed = [row(org, into(PAST, 1), 9, 30), row(org, into(PAST, 2), 4, 0, { tokenId: "tok_b" })];
    await commitRows(org, billed);
    await quotaStub(env, org).syncUsage();
    // A later part of the same hour holding only a request that failed before any token.
    const failed = row(org, into(PAST, 40), 0, 0, { status: 502, outcome: "backend_error" });
    await commitRows(org, [failed]);
    await quotaStub(env, org).syncUsage();

    const hours = await usageHourRows(org);
    const [interval, ...more] = await intervals(org);
    expect(more).toEqual([]);
    const part = interval?.id.split(":").at(-1);
    const ofPart = hours.filter((h) => h.part === part);
    expect(interval).toMatchObject({
      hour: PAST,
      state: "pending",
      requests: ofPart.reduce((n, h) => n + h.requests, 0),
      prompt_tokens: ofPart.reduce((n, h) => n + h.prompt_tokens, 0),
      completion_tokens: ofPart.reduce((n, h) => n + h.completion_tokens, 0),
    });
    expect(interval).toMatchObject({ requests: 2, prompt_tokens: 13, completion_tokens: 30 });
    // The token-less part is in the totals, with its error, but has no interval.
    const other = hours.filter((h) => h.part !== part);
    expect(other).toEqual([expect.objectContaining({ requests: 1, error_requests: 1, total_tokens: 0 })]);
  });
});

describe("usage hours: the archive", () => {
  it("archives each closed part once as gzip NDJSON under usage/v1/<org>/YYYY/MM/DD/HH/<kind>-<part>.ndjson.gz, with matching totals", async () => {
    const org = newOrganization();
    const rows = Array.from({ length: 7 }, (_, i) => row(org, into(PAST, 3 + i), 10 + i, 2 * i));
    await commitRows(org, rows);
    const downloads: DownloadRow[] = Array.from({ length: 3 }, (_, i) => ({
      id: `dl_${crypto.randomUUID()}`,
      organizationId: org,
      jti: `jti_${i}`,
      grantId: "grt_q",
      tokenId: "tok_q",
      model: "llama-2-7b",
      revisionId: "rev_1",
      path: `model-0000${i}.safetensors`,
      status: i === 2 ? 206 : 200,
      rangeStart: i === 2 ? 0 : null,
      rangeEnd: i === 2 ? 99 : null,
      bytesServed: 1_000 * (i + 1),
      complete: i !== 2,
      at: into(PAST, 20 + i),
    }));
    await quotaStub(env, org).recordDownloads(downloads);
    await quotaStub(env, org).syncUsage();
    await runAlarm(org);

    const objects = await archiveObjects(org);
    const part = (await usageHourRows(org))[0]?.part;
    expect(objects.map((o) => o.key)).toEqual([
      `usage/v1/${org}/2026/06/15/12/downloads-${part}.ndjson.gz`,
      `usage/v1/${org}/2026/06/15/12/inference-${part}.ndjson.gz`,
    ]);
    const [dl, inference] = objects;
    expect(inference?.httpMetadata).toMatchObject({ contentType: "application/x-ndjson", contentEncoding: "gzip" });
    expect(byId((inference?.lines ?? []).map((l) => JSON.parse(l) as LedgerRow))).toEqual(byId(rows));
    expect(inference?.customMetadata).toEqual({
      rows: "7",
      promptTokens: String(rows.reduce((n, r) => n + r.promptTokens, 0)),
      completionTokens: String(rows.reduce((n, r) => n + r.completionTokens, 0)),
    });
    expect(byId((dl?.lines ?? []).map((l) => JSON.parse(l) as DownloadRow))).toEqual(byId(downloads));
    expect(dl?.customMetadata).toEqual({ rows: "3", bytesServed: "6000" });
    const { results } = await env.DB.prepare(
      "select requests, complete_requests, bytes_served from download_hours where organization_id = ?",
    )
      .bind(org)
      .all();
    expect(results).toEqual([{ requests: 3, complete_requests: 2, bytes_served: 6_000 }]);
    // The hour is long past its retention: once archived, the object holds none of it.
    expect(await quotaStub(env, org).rawUsage(PAST)).toEqual([]);
    expect(await quotaStub(env, org).rawUsage(PAST, "downloads")).toEqual([]);
  });

  it("keeps raw rows for the retention after archiving them, then prunes them", async () => {
    const org = newOrganization();
    const rows = Array.from({ length: 3 }, (_, i) => row(org, into(FUTURE, 10 + i), 6, 6));
    await commitRows(org, rows);
    const closed = hourStart(FUTURE) + HOUR_MS + CLOSE_GRACE_MS;
    expect(await quotaStub(env, org).syncUsage(closed)).toBe(true);
    expect((await archiveObjects(org)).map((o) => o.lines.length)).toEqual([3]);
    const held = async () => (await quotaStub(env, org).rawUsage(FUTURE)).length;
    expect(await held()).toBe(3);

    const due = hourStart(FUTURE) + HOUR_MS + RETENTION_MS;
    await moveClock(org, due - 1_000);
    await runAlarm(org);
    expect(await held()).toBe(3);
    await moveClock(org, due);
    await runAlarm(org);
    expect(await held()).toBe(0);
    expect(byId(await everyRow(org))).toEqual(byId(rows));
  });
});

describe("usage hours: an open hour", () => {
  it("is written to D1 at most every USAGE_SYNC_SECONDS, and at once with syncUsage; liveUsage has what D1 lacks", async () => {
    const org = newOrganization();
    const t0 = hourStart(FUTURE) + 10 * 60_000;
    const at = (ms: number) => new Date(t0 + ms).toISOString();
    const written = async () =>
      (await usageHourRows(org)).map((h) => ({ requests: h.requests, updatedAt: h.updated_at }));
    const live = async () => {
      // Through RPC the `[key, counts]` pairs arrive typed as plain arrays.
      const { parts } = (await quotaStub(env, org).liveUsage()) as unknown as LiveParts;
      return parts.flatMap((p) => p.inference.map(([, c]) => c.requests));
    };

    await commitRows(org, [row(org, at(0), 1, 1)], t0);
    await runAlarm(org);
    expect(await written()).toEqual([]);
    expect(await live()).toEqual([1]);

    await commitRows(org, [row(org, at(SYNC_MS - 1_000), 1, 1)], t0 + SYNC_MS - 1_000);
    await runAlarm(org);
    expect(await written()).toEqual([]);
    expect(await live()).toEqual([2]);

    await commitRows(org, [row(org, at(SYNC_MS), 1, 1)], t0 + SYNC_MS);
    await runAlarm(org);
    expect(await written()).toEqual([{ requests: 3, updatedAt: at(SYNC_MS) }]);
    expect(await live()).toEqual([]);

    // Nothing new: no write, however often the alarm runs.
    await moveClock(org, t0 + SYNC_MS + 200_000);
    await runAlarm(org);
    expect(await written()).toEqual([{ requests: 3, updatedAt: at(SYNC_MS) }]);

    // New rows within USAGE_SYNC_SECONDS of the last write wait for the next one.
    await commitRows(org, [row(org, at(SYNC_MS + 201_000), 1, 1)], t0 + SYNC_MS + 201_000);
    await runAlarm(org);
    await commitRows(org, [row(org, at(SYNC_MS + 202_000), 1, 1)], t0 + SYNC_MS + 202_000);
    await runAlarm(org);
    expect(await written()).toEqual([{ requests: 3, updatedAt: at(SYNC_MS) }]);
    expect(await live()).toEqual([5]);
    expect(await quotaStub(env, org).syncUsage()).toBe(true);
    expect(await written()).toEqual([{ requests: 5, updatedAt: at(SYNC_MS + 202_000) }]);
    expect(await live()).toEqual([]);
    // A row after a long quiet spell is written by the next alarm.
    await commitRows(org, [row(org, at(3 * SYNC_MS), 1, 1)], t0 + 3 * SYNC_MS);
    await runAlarm(org);
    expect(await written()).toEqual([{ requests: 6, updatedAt: at(3 * SYNC_MS) }]);
    expect(await intervals(org)).toEqual([]);

    // The hour ends: its part closes with its interval at the first wake after the grace.
    const closes = hourStart(FUTURE) + HOUR_MS + CLOSE_GRACE_MS;
    await moveClock(org, closes - 1);
    await runAlarm(org);
    expect(await intervals(org)).toEqual([]);
    await moveClock(org, closes);
    await runAlarm(org);
    expect(await intervals(org)).toEqual([expect.objectContaining({ requests: 6, prompt_tokens: 6 })]);
    expect((await archiveObjects(org)).map((o) => o.lines.length)).toEqual([6]);
  });
});

describe("usage hours: D1 or R2 unavailable", () => {
  it("keeps a closed part while R2 refuses it, holds its rows past the retention, and archives it on a later alarm", async () => {
    const org = newOrganization();
    const rows = Array.from({ length: 4 }, (_, i) => row(org, into(PAST, 30 + i), 8, 3));
    const logged = await bindBook(org, { USAGE_ARCHIVE: refusing(env.USAGE_ARCHIVE, "put") });
    await commitRows(org, rows);
    await runAlarm(org);
    expect(await quotaStub(env, org).syncUsage()).toBe(false);
    // D1 took the totals and the interval; R2 has nothing; the object still holds every row.
    expect(await hourSums(org)).toEqual(sumsOf(rows));
    expect(await intervals(org)).toHaveLength(1);
    expect(await archiveObjects(org)).toEqual([]);
    expect(await quotaStub(env, org).rawUsage(PAST)).toHaveLength(4);
    // The alarm is set to try again; each try fails and keeps it all.
    expect(await runDurableObjectAlarm(quotaStub(env, org))).toBe(true);
    expect(await quotaStub(env, org).rawUsage(PAST)).toHaveLength(4);
    expect(logged).toContain("usage part not archived; kept and retried");

    await bindBook(org, {});
    expect(await runDurableObjectAlarm(quotaStub(env, org))).toBe(true);
    const objects = await archiveObjects(org);
    expect(objects).toHaveLength(1);
    expect(byId((objects[0]?.lines ?? []).map((l) => JSON.parse(l) as LedgerRow))).toEqual(byId(rows));
    // Archived, and long past the retention: pruned now.
    expect(await quotaStub(env, org).rawUsage(PAST)).toEqual([]);
    expect(await hourSums(org)).toEqual(sumsOf(rows));
    expect(await intervals(org)).toHaveLength(1);
  });

  it("keeps everything while D1 refuses, and writes it all on a later alarm", async () => {
    const org = newOrganization();
    const rows = Array.from({ length: 5 }, (_, i) => row(org, into(PAST, 40 + i), 2, 9));
    const logged = await bindBook(org, { DB: refusing(env.DB, "batch") });
    await commitRows(org, rows);
    await runAlarm(org);
    expect(await quotaStub(env, org).syncUsage()).toBe(false);
    expect(await usageHourRows(org)).toEqual([]);
    expect(await intervals(org)).toEqual([]);
    // Not archived either: a part is archived only once D1 has its final totals.
    expect(await archiveObjects(org)).toEqual([]);
    expect(await runDurableObjectAlarm(quotaStub(env, org))).toBe(true);
    expect(await usageHourRows(org)).toEqual([]);
    expect(await quotaStub(env, org).rawUsage(PAST)).toHaveLength(5);
    expect(logged).toContain("usage totals not written to D1; kept and retried");

    await bindBook(org, {});
    expect(await runDurableObjectAlarm(quotaStub(env, org))).toBe(true);
    expect(await hourSums(org)).toEqual(sumsOf(rows));
    expect(await intervals(org)).toEqual([
      expect.objectContaining({ requests: 5, prompt_tokens: 10, completion_tokens: 45 }),
    ]);
    expect(byId(await everyRow(org))).toEqual(byId(rows));
  });
});

describe("usage hours: the admin export of an organization's hour", () => {
  const admin = () => adminToken({ email: "root@example.com", role: "admin" });

  async function seedOrganization(org: string) {
    await env.DB.prepare(
      "insert into organizations (id, name, normalized_name, website, country, created_at) values (?1, ?1, ?1, null, 'DE', ?2)",
    )
      .bind(org, new Date().toISOString())
      .run();
  }

  async function exportHour(query: string, token?: string) {
    const gateway = testGateway();
    return gateway.request(`/admin/api/usage/archive?${query}`, {
      headers: { "cf-access-jwt-assertion": token ?? (await admin()) },
    });
  }

  async function expectProblem(res: Response, status: number, code: string, what: string) {
    expect(res.status, what).toBe(status);
    expect(res.headers.get("content-type"), what).toContain("application/problem+json");
    expect(((await res.json()) as { code: string }).code, what).toBe(code);
  }

  it("answers every row of the hour once as NDJSON: archived parts and rows the object still holds", async () => {
    const org = newOrganization();
    await seedOrganization(org);
    const next = "2031-03-10T09";
    const archived = Array.from({ length: 4 }, (_, i) => row(org, into(FUTURE, 5 + i), 3, i));
    await commitRows(org, archived);
    const closes = hourStart(FUTURE) + HOUR_MS + CLOSE_GRACE_MS;
    expect(await quotaStub(env, org).syncUsage(closes)).toBe(true);
    // The next hour is open: its rows are held and not archived.
    const open = Array.from({ length: 3 }, (_, i) => row(org, into(next, 1 + i / 10), 5, 5));
    await commitRows(org, open, closes);
    await runAlarm(org);
    // Archived and, within the retention, still held: in the answer once.
    expect((await archiveObjects(org)).flatMap((o) => o.lines)).toHaveLength(4);
    expect(await quotaStub(env, org).rawUsage(FUTURE)).toHaveLength(4);
    expect(await quotaStub(env, org).rawUsage(next)).toHaveLength(3);
    const stranger = newOrganization();
    await seedOrganization(stranger);
    await commitRows(stranger, [row(stranger, into(FUTURE, 7), 1, 1)], closes);

    const rowsOf = async (hour: string) => {
      const res = await exportHour(`organization=${org}&hour=${hour}&kind=inference`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/x-ndjson");
      const text = await res.text();
      expect(text.endsWith("\n")).toBe(true);
      const rows = text
        .split("\n")
        .filter(Boolean)
        .map((line) => JSON.parse(line) as LedgerRow);
      expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length);
      return byId(rows);
    };
    expect(await rowsOf(FUTURE)).toEqual(byId(archived));
    expect(await rowsOf(next)).toEqual(byId(open));
  });

  it("answers the hour's downloads with kind=downloads, and nothing for an hour without rows", async () => {
    const org = newOrganization();
    await seedOrganization(org);
    const downloads: DownloadRow[] = [0, 1].map((i) => ({
      id: `dl_${crypto.randomUUID()}`,
      organizationId: org,
      jti: `jti_${i}`,
      grantId: "grt_q",
      tokenId: "tok_q",
      model: "llama-2-7b",
      revisionId: "rev_1",
      path: "model.safetensors",
      status: 200,
      rangeStart: null,
      rangeEnd: null,
      bytesServed: 10 + i,
      complete: true,
      at: into(PAST, 10 + i),
    }));
    await quotaStub(env, org).recordDownloads(downloads);
    await commitRows(org, [row(org, into(PAST, 12), 1, 1)]);
    await quotaStub(env, org).syncUsage();

    const res = await exportHour(`organization=${org}&hour=${PAST}&kind=downloads`);
    expect(res.status).toBe(200);
    const lines = (await res.text()).split("\n").filter(Boolean);
    expect(byId(lines.map((line) => JSON.parse(line) as DownloadRow))).toEqual(byId(downloads));
    const empty = await exportHour(`organization=${org}&hour=2026-06-15T11&kind=inference`);
    expect(empty.status).toBe(200);
    expect(await empty.text()).toBe("");
  });

  it("refuses a malformed hour, kind or organization as validation_failed, and an unknown organization as not_found", async () => {
    const org = newOrganization();
    await seedOrganization(org);
    for (const query of [
      `organization=${org}&hour=2026-06-15&kind=inference`,
      `organization=${org}&hour=2026-06-15T24&kind=inference`,
      `organization=${org}&hour=2026-02-30T10&kind=inference`,
      `organization=${org}&hour=2026-06-15T1&kind=inference`,
      `organization=${org}&hour=2026-06-15T12&kind=all`,
      `organization=${org}&hour=2026-06-15T12`,
      `organization=..%2Fother&hour=2026-06-15T12&kind=inference`,
      `organization=${"o".repeat(65)}&hour=2026-06-15T12&kind=inference`,
      "hour=2026-06-15T12&kind=inference",
    ]) {
      await expectProblem(await exportHour(query), 400, "validation_failed", query);
    }
    await expectProblem(
      await exportHour("organization=org_nobody&hour=2026-06-15T12&kind=inference"),
      404,
      "not_found",
      "unknown organization",
    );
  });

  it("is for admins only", async () => {
    const org = newOrganization();
    await seedOrganization(org);
    const query = `organization=${org}&hour=${PAST}&kind=inference`;
    for (const role of ["reviewer", "approver"] as const) {
      await expectProblem(await exportHour(query, await adminToken({ role })), 403, "forbidden", role);
    }
  });
});
