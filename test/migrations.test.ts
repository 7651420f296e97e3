/**
 * Migrations carry a deployment's data forward: the database is built as it stood before
 * organizations had members, filled as that version of the gateway filled it, then migrated.
 */
import { applyD1Migrations, reset } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";
import { carryLedgerRows } from "../worker/usage/carry";

/** The migrations up to (not including) the one whose tag starts with `prefix`, and the rest. */
function splitAt(prefix: string) {
  const at = env.TEST_MIGRATIONS.findIndex((m) => m.name.startsWith(prefix));
  if (at < 0) throw new Error(`no migration ${prefix}`);
  return [env.TEST_MIGRATIONS.slice(0, at), env.TEST_MIGRATIONS.slice(at)] as const;
}

async function rows<T>(sql: string): Promise<T[]> {
  return (await env.DB.prepare(sql).all<T>()).results;
}

/** Acme's license texts and version and its organization (`lv1`, `org1`), created at `at`. */
function acmeRows(at: string): D1PreparedStatement[] {
  return [
    env.DB.prepare(
      "insert into documents (sha256, kind, media_type, body, source, created_at) values ('l', 'license', 'text/plain', 'L', 'placeholder', ?1), ('a', 'aup', 'text/plain', 'A', 'placeholder', ?1)",
    ).bind(at),
    env.DB.prepare(
      "insert into license_versions (id, family, version, license_sha256, aup_sha256, created_at) values ('lv1', 'llama-2', 1, 'l', 'a', ?1)",
    ).bind(at),
    env.DB.prepare(
      "insert into organizations (id, name, normalized_name, website, country, created_at) values ('org1', 'Acme', 'acme', null, 'DE', ?1)",
    ).bind(at),
  ];
}

/**
 * An approved Acme case, created at `at`, in the columns every migration tested here keeps: its license
 * texts and version, its organization and its application (`app1`, `org1`, `lv1`).
 */
function approvedCaseRows(at: string): D1PreparedStatement[] {
  return [
    ...acmeRows(at),
    env.DB.prepare(
      `insert into applications (id, family, organization_id, organization_name, country, contact_name, contact_email, intended_use, declared_mau, models, status, policy_reasons, required_approvals, license_version_id, created_at, updated_at)
       values ('app1', 'llama-2', 'org1', 'Acme', 'DE', 'Ada', 'ada@acme.example', 'x', 10, '["llama-2-7b"]', 'approved', '[]', 1, 'lv1', ?1, ?1)`,
    ).bind(at),
  ];
}

describe("migration to organizations with members", () => {
  it("keeps each organization's grant, makes its first contact its owner, and keeps tokens and status links working", async () => {
    await reset();
    const [before, after] = splitAt("0011");
    await applyD1Migrations(env.DB, before);
    const at = "2026-11-01T10:00:00.000Z";
    await env.DB.batch([
      ...acmeRows(at),
      // Acme's first case, then a second contact that the old name matching put into Acme.
      env.DB.prepare(
        `insert into applications (id, family, organization_id, organization_name, country, contact_name, contact_email, intended_use, declared_mau, models, status, policy_reasons, required_approvals, license_version_id, created_at, updated_at)
         values ('app1', 'llama-2', 'org1', 'Acme', 'DE', 'Ada', 'Ada@Acme.example', 'x', 10, '["llama-2-7b"]', 'approved', '[]', 1, 'lv1', ?1, ?1),
                ('app2', 'llama-2', 'org1', 'ACME', 'DE', 'Eve', 'eve@evil.example', 'x', 10, '["llama-2-70b"]', 'rejected', '[]', 1, 'lv1', ?2, ?2)`,
      ).bind(at, "2026-11-02T10:00:00.000Z"),
      env.DB.prepare(
        "insert into grants (id, application_id, organization_id, family, license_version_id, status, created_at, updated_at) values ('grt1', 'app1', 'org1', 'llama-2', 'lv1', 'active', ?1, ?1)",
      ).bind(at),
      env.DB.prepare(
        "insert into access_tokens (id, grant_id, name, secret_hash, display_prefix, scopes, created_at) values ('tok1', 'grt1', 'ci', 'hash', 'mg_abc', '[\"download\"]', ?1)",
      ).bind(at),
      env.DB.prepare(
        "insert into status_links (secret_hash, application_id, created_at) values ('s1', 'app1', ?1)",
      ).bind(at),
    ]);

    await applyD1Migrations(env.DB, after);

    expect(await rows("select id, models from grants")).toEqual([{ id: "grt1", models: '["llama-2-7b"]' }]);
    const people = await rows<{ email: string; email_verified_at: string | null; id: string }>(
      "select id, email, email_verified_at from users order by email",
    );
    expect(people.map((p) => [p.email, p.email_verified_at])).toEqual([
      ["ada@acme.example", null],
      ["eve@evil.example", null],
    ]);
    const ada = people[0]?.id;
    // The first contact owns Acme; the contact matched by name alone is no member.
    expect(await rows("select organization_id, user_id, role from memberships")).toEqual([
      { organization_id: "org1", user_id: ada, role: "owner" },
    ]);
    expect(await rows("select id, contact_user_id from applications order by id")).toEqual([
      { id: "app1", contact_user_id: ada },
      { id: "app2", contact_user_id: people[1]?.id },
    ]);
    expect(await rows("select expires_at, revoked_at from status_links")).toEqual([
      { expires_at: "2026-12-01T10:00:00.000Z", revoked_at: null },
    ]);
    expect(await rows("select id, user_id, models, limits, revoked_at from access_tokens")).toEqual([
      { id: "tok1", user_id: null, models: null, limits: null, revoked_at: null },
    ]);
  });
});

describe("migration to hourly usage (0014)", () => {
  interface LedgerSeed {
    id: string;
    org: string;
    grant: string;
    token: string;
    model: string;
    prompt: number;
    completion: number;
    status: number;
    partial: boolean;
    latency: number;
    at: string;
  }

  function insertLedgerRow(r: LedgerSeed, aggregatedAt: string | null = null) {
    return env.DB.prepare(
      `insert into usage_ledger (id, organization_id, grant_id, token_id, model, backend, endpoint, stream, prompt_tokens,
         completion_tokens, total_tokens, usage_reported, outcome, partial, status, latency_ms, started_at, created_at,
         aggregated_at)
       values (?1, ?2, ?3, ?4, ?5, 'https://gpu.example', 'chat.completions', 0, ?6, ?7, ?8, 1, ?9, ?10, ?11, ?12, ?13, ?13, ?14)`,
    ).bind(
      r.id,
      r.org,
      r.grant,
      r.token,
      r.model,
      r.prompt,
      r.completion,
      r.prompt + r.completion,
      r.status >= 400 ? "backend_error" : r.partial ? "partial" : "ok",
      r.partial ? 1 : 0,
      r.status,
      r.latency,
      r.at,
      aggregatedAt,
    );
  }

  /** What `usage_hours` should hold for rows: their sums per organization, hour, model, grant and token. */
  function expectedHours(rows: readonly LedgerSeed[]) {
    const sums = new Map<string, Record<string, number | string>>();
    for (const r of rows) {
      const hour = r.at.slice(0, 13);
      const key = JSON.stringify([r.org, hour, r.model, r.grant, r.token]);
      const s = sums.get(key) ?? {
        organization_id: r.org,
        hour,
        model: r.model,
        grant_id: r.grant,
        token_id: r.token,
        part: "ledger",
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        error_requests: 0,
        partial_requests: 0,
        latency_ms_sum: 0,
        last_at: r.at,
      };
      s.requests = Number(s.requests) + 1;
      s.prompt_tokens = Number(s.prompt_tokens) + r.prompt;
      s.completion_tokens = Number(s.completion_tokens) + r.completion;
      s.total_tokens = Number(s.total_tokens) + r.prompt + r.completion;
      s.error_requests = Number(s.error_requests) + (r.status >= 400 ? 1 : 0);
      s.partial_requests = Number(s.partial_requests) + (r.partial ? 1 : 0);
      s.latency_ms_sum = Number(s.latency_ms_sum) + r.latency;
      if (r.at > String(s.last_at)) s.last_at = r.at;
      sums.set(key, s);
    }
    return [...sums.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, s]) => s);
  }

  const HOURS = `select organization_id, hour, model, grant_id, token_id, part, requests, prompt_tokens, completion_tokens,
      total_tokens, error_requests, partial_requests, latency_ms_sum, last_at
    from usage_hours order by organization_id, hour, model, grant_id, token_id`;

  it("carries ledger rows and download events into their hours' part `ledger` once; the cron then carries only rows written later", async () => {
    await reset();
    const [before, after] = splitAt("0014");
    await applyD1Migrations(env.DB, before);
    const at = "2026-11-01T10:00:00.000Z";
    await env.DB.batch([
      ...approvedCaseRows(at),
      env.DB.prepare(
        "insert into grants (id, application_id, organization_id, family, license_version_id, status, created_at, updated_at) values ('grt1', 'app1', 'org1', 'llama-2', 'lv1', 'active', ?1, ?1)",
      ).bind(at),
    ]);
    // What gateways from before the hourly aggregates wrote: one row per request.
    const ledger: LedgerSeed[] = Array.from({ length: 30 }, (_, i) => ({
      id: `use_${String(i).padStart(3, "0")}`,
      org: i % 4 === 0 ? "org2" : "org1",
      grant: i % 4 === 0 ? "grt2" : "grt1",
      token: i % 3 === 0 ? "tok_a" : "tok_b",
      model: i % 2 ? "llama-2-7b-chat" : "llama-2-13b-chat",
      prompt: 5 + i,
      completion: i % 5 === 0 ? 0 : 2 * i,
      status: i % 7 === 0 ? 502 : 200,
      partial: i % 6 === 1,
      latency: 100 + i,
      at: `2026-11-0${1 + (i % 2)}T${String(9 + (i % 3)).padStart(2, "0")}:${String(i).padStart(2, "0")}:00.000Z`,
    }));
    await env.DB.batch(ledger.map((r) => insertLedgerRow(r)));
    // A row some run of the cron already carried is not carried again.
    await insertLedgerRow({ ...(ledger[0] as LedgerSeed), id: "use_carried", prompt: 1_000 }, at).run();
    await env.DB.batch(
      [0, 1, 2].map((i) =>
        env.DB.prepare(
          `insert into download_events (id, jti, grant_id, token_id, model, revision_id, path, status, range_start, range_end, bytes_served, complete, at)
           values (?1, 'jti', 'grt1', 'tok_a', 'llama-2-7b', 'rev1', 'model.safetensors', ?2, null, null, ?3, ?4, ?5)`,
        ).bind(`dl_${i}`, i === 2 ? 404 : 200, 1000 * (i + 1), i === 1 ? 0 : 1, `2026-11-01T10:0${i}:00.000Z`),
      ),
    );

    await applyD1Migrations(env.DB, after.slice(0, 1));

    const carried = await rows<Record<string, unknown>>(HOURS);
    expect(carried).toEqual(expectedHours(ledger));
    expect(await rows("select count(*) n from usage_ledger where aggregated_at is null")).toEqual([{ n: 0 }]);
    expect(
      await rows(
        "select organization_id, hour, grant_id, token_id, model, part, requests, complete_requests, error_requests, bytes_served from download_hours",
      ),
    ).toEqual([
      {
        organization_id: "org1",
        hour: "2026-11-01T10",
        grant_id: "grt1",
        token_id: "tok_a",
        model: "llama-2-7b",
        part: "ledger",
        requests: 3,
        complete_requests: 2,
        error_requests: 1,
        bytes_served: 6_000,
      },
    ]);

    // The cron finds nothing left to carry: the migration marked every row it added.
    expect(await carryLedgerRows(env.DB, new Date("2026-12-01T00:00:00Z"))).toEqual({ usage: 0, downloads: 0 });
    expect(await rows<Record<string, unknown>>(HOURS)).toEqual(carried);

    // Rows written later (a quota object could not take them) are carried by the cron, each once,
    // however the runs split them.
    const later: LedgerSeed[] = Array.from({ length: 5 }, (_, i) => ({
      ...(ledger[i + 1] as LedgerSeed),
      id: `use_later_${i}`,
      at: `2026-11-01T10:5${i}:00.000Z`,
    }));
    await env.DB.batch(later.map((r) => insertLedgerRow(r)));
    const runs: number[] = [];
    for (let run = 0; run < 4; run++) runs.push((await carryLedgerRows(env.DB, new Date(), 2)).usage);
    expect(runs).toEqual([2, 2, 1, 0]);
    expect(await rows<Record<string, unknown>>(HOURS)).toEqual(expectedHours([...ledger, ...later]));
  });
});

describe("migration to confirmations as acceptances (0023)", () => {
  it("keeps an acceptance recorded at submission as it was, with no confirmation", async () => {
    await reset();
    const [before, after] = splitAt("0023");
    await applyD1Migrations(env.DB, before);
    const at = "2026-11-01T10:00:00.000Z";
    await env.DB.batch([
      ...approvedCaseRows(at),
      env.DB.prepare(
        "insert into acceptances (id, application_id, license_version_id, license_sha256, aup_sha256, accepted_at, ip, country, user_agent) values ('acc1', 'app1', 'lv1', 'l', 'a', ?1, '203.0.113.66', 'NL', 'third-party')",
      ).bind(at),
    ]);

    await applyD1Migrations(env.DB, after);

    // Who confirmed such an acceptance was never recorded: it stays unknown, never guessed.
    expect(
      await rows(
        "select accepted_at, ip, country, user_agent, confirmed_at, confirmed_by_user_id, confirmed_ip, confirmed_country, confirmed_user_agent from acceptances",
      ),
    ).toEqual([
      {
        accepted_at: at,
        ip: "203.0.113.66",
        country: "NL",
        user_agent: "third-party",
        confirmed_at: null,
        confirmed_by_user_id: null,
        confirmed_ip: null,
        confirmed_country: null,
        confirmed_user_agent: null,
      },
    ]);
  });
});
