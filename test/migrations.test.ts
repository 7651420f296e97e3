/**
 * Migrations carry a deployment's data forward: the database is built as it stood before
 * organizations had members, filled as that version of the gateway filled it, then migrated.
 */
import { applyD1Migrations, reset } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { describe, expect, it } from "vitest";

/** The migrations up to (not including) the one whose tag starts with `prefix`, and the rest. */
function splitAt(prefix: string) {
  const at = env.TEST_MIGRATIONS.findIndex((m) => m.name.startsWith(prefix));
  if (at < 0) throw new Error(`no migration ${prefix}`);
  return [env.TEST_MIGRATIONS.slice(0, at), env.TEST_MIGRATIONS.slice(at)] as const;
}

async function rows<T>(sql: string): Promise<T[]> {
  return (await env.DB.prepare(sql).all<T>()).results;
}

describe("migration to organizations with members", () => {
  it("keeps each organization's grant, makes its first contact its owner, and keeps tokens and status links working", async () => {
    await reset();
    const [before, after] = splitAt("0011");
    await applyD1Migrations(env.DB, before);
    const at = "2026-11-01T10:00:00.000Z";
    await env.DB.batch([
      env.DB.prepare(
        "insert into documents (sha256, kind, media_type, body, source, created_at) values ('l', 'license', 'text/plain', 'L', 'placeholder', ?1), ('a', 'aup', 'text/plain', 'A', 'placeholder', ?1)",
      ).bind(at),
      env.DB.prepare(
        "insert into license_versions (id, family, version, license_sha256, aup_sha256, created_at) values ('lv1', 'llama-2', 1, 'l', 'a', ?1)",
      ).bind(at),
      env.DB.prepare(
        "insert into organizations (id, name, normalized_name, website, country, created_at) values ('org1', 'Acme', 'acme', null, 'DE', ?1)",
      ).bind(at),
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
