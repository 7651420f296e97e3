/**
 * A license load as one SQL file for `wrangler d1 execute DB --remote --file`: the production
 * database cannot be reached through `getPlatformProxy()` without changing wrangler.toml, but it
 * can always be reached by wrangler's own D1 commands. The file does what `loadLicenseVersion()`
 * does, and is just as idempotent: the version row is only inserted when the family's newest
 * version does not already have exactly these two texts.
 */
import { createHash } from "node:crypto";

/** A SQL string literal. */
function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** Lower-case hex SHA-256 of UTF-8 text, the same digest the gateway publishes. */
export function sha256OfText(text: string): string {
  return createHash("sha256").update(text, "utf8").digest("hex");
}

/** The statements that load a license version; `id` is the new version's id if one is made. */
export function licenseLoadSql(input: {
  id: string;
  family: string;
  license: string;
  aup: string;
  source: "placeholder" | "official";
  now: string;
}): string {
  const licenseSha = sha256OfText(input.license);
  const aupSha = sha256OfText(input.aup);
  const family = literal(input.family);
  const document = (sha: string, kind: string, mediaType: string, body: string) =>
    `INSERT INTO documents (sha256, kind, media_type, body, source, created_at) VALUES (${[
      sha,
      kind,
      mediaType,
      body,
      input.source,
      input.now,
    ]
      .map(literal)
      .join(", ")}) ON CONFLICT (sha256) DO NOTHING;`;
  return [
    document(licenseSha, "license", "text/plain", input.license),
    document(aupSha, "aup", "text/markdown", input.aup),
    `INSERT INTO license_versions (id, family, version, license_sha256, aup_sha256, created_at)
SELECT ${literal(input.id)}, ${family}, next.version, ${literal(licenseSha)}, ${literal(aupSha)}, ${literal(input.now)}
FROM (SELECT COALESCE(MAX(version), 0) + 1 AS version FROM license_versions WHERE family = ${family}) AS next
WHERE NOT EXISTS (
  SELECT 1 FROM license_versions AS cur
  WHERE cur.family = ${family}
    AND cur.version = next.version - 1
    AND cur.license_sha256 = ${literal(licenseSha)}
    AND cur.aup_sha256 = ${literal(aupSha)}
);`,
    "",
  ].join("\n");
}

/** The query that reads back the family's newest version after the load. */
export function currentVersionSql(family: string): string {
  return `SELECT id, version, license_sha256, aup_sha256 FROM license_versions WHERE family = ${literal(family)} ORDER BY version DESC LIMIT 1`;
}
