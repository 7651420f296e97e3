/**
 * `npm run deploy:check`'s rules on `wrangler.toml`: the shipped deployed environments carry no
 * development value (only placeholders, which `--strict` refuses), and an environment that does
 * carry one — the loopback URL a plain deploy used to put in applicants' mail, the dev sign-in
 * page, an inline Access JWKS, a secret set as a var, a binding left out — is refused.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CompactSign, compactVerify, importJWK, type JWK } from "jose";
import { afterAll, describe, expect, it } from "vitest";
import { REQUIRED_VARS } from "../../worker/config";
import { checkEnvironment, readEnvironment, secretNames } from "../lib/deploy-config";
import { ROOT } from "../lib/local-state";

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A project root whose wrangler.toml is the real one with `edit` applied. */
function projectWith(edit: (toml: string) => string): string {
  const dir = mkdtempSync(join(tmpdir(), "modelgate-deploy-config-"));
  dirs.push(dir);
  writeFileSync(join(dir, "wrangler.toml"), edit(readFileSync(join(ROOT, "wrangler.toml"), "utf8")));
  copyFileSync(join(ROOT, ".dev.vars.example"), join(dir, ".dev.vars.example"));
  return dir;
}

function findings(root: string, env: string) {
  return checkEnvironment(env, readEnvironment(root, env), readEnvironment(root, undefined), secretNames(root));
}

describe("deploy: wrangler.toml's deployed environments", () => {
  it.each(["staging", "production"])("%s has no development value, only placeholders to replace", (env) => {
    const found = findings(ROOT, env);
    expect(found.filter((f) => f.kind !== "placeholder")).toEqual([]);
    expect(found.map((f) => f.message).join("\n")).toMatch(/PUBLIC_BASE_URL is still the placeholder/);
  });

  it("the top level's development values are refused in an environment", () => {
    const root = projectWith((toml) =>
      toml
        .replace('PUBLIC_BASE_URL = "https://modelgate.example.com"', 'PUBLIC_BASE_URL = "http://127.0.0.1:8787"')
        .replace('MAIL_FROM = "licensing@modelgate.example.com"', 'MAIL_FROM = "licensing@modelgate.local"')
        .replace(
          "\n\n[[env.production.d1_databases]]",
          '\nDEV_LOGIN = "1"\nACCESS_JWKS = \'{"keys":[]}\'\n' +
            'INFERENCE_BACKENDS_X = \'{"m":[{"url":"http://localhost:8000"}]}\'\n\n[[env.production.d1_databases]]',
        ),
    );
    const messages = findings(root, "production")
      .filter((f) => f.kind === "development")
      .map((f) => f.message);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^PUBLIC_BASE_URL is a development value: http:\/\/127\.0\.0\.1:8787/),
        expect.stringMatching(/^PUBLIC_BASE_URL must be an https origin/),
        expect.stringMatching(/^DEV_LOGIN is a var; it is a secret/),
        expect.stringMatching(/^ACCESS_JWKS is a var; it is a secret/),
        expect.stringMatching(/^INFERENCE_BACKENDS_X is a development value/),
        expect.stringMatching(/^MAIL_FROM is a development value: licensing@modelgate\.local/),
        expect.stringMatching(/^the EMAIL binding may not send as MAIL_FROM/),
      ]),
    );
  });

  it.each(REQUIRED_VARS)(
    "an environment without %s, or with it blank, is refused (environments inherit no vars)",
    (name) => {
      /** `[env.production.vars]` with the line setting `name` dropped, or its value blanked. */
      const withVar = (value: string | undefined) =>
        projectWith((toml) => {
          const lines = toml.split("\n");
          const section = lines.indexOf("[env.production.vars]");
          const at = lines.findIndex((line, i) => i > section && line.startsWith(`${name} = `));
          expect(at, name).toBeGreaterThan(section);
          lines.splice(at, 1, ...(value === undefined ? [] : [`${name} = ${JSON.stringify(value)}`]));
          return lines.join("\n");
        });
      for (const root of [withVar(undefined), withVar("  ")]) {
        const missing = findings(root, "production").filter((f) => f.kind === "missing");
        expect(missing).toEqual([
          {
            env: "production",
            kind: "missing",
            message: `${name} is missing (environments inherit no vars; the Worker needs it)`,
          },
        ]);
        expect(findings(root, "staging").filter((f) => f.kind === "missing")).toEqual([]);
      }
    },
  );

  it("the top level, which `npm start` runs on, sets every var the Worker needs", () => {
    const findingsThere = checkEnvironment(
      "development",
      readEnvironment(ROOT, undefined),
      readEnvironment(ROOT, undefined),
      [],
    );
    expect(findingsThere.filter((f) => f.kind === "missing")).toEqual([]);
  });

  it("an API key in a deployed INFERENCE_BACKENDS and a binding left out are refused", () => {
    const root = projectWith((toml) =>
      toml
        .replace(
          /(\[env\.production\.vars\][\s\S]*?)INFERENCE_BACKENDS = "\{\}"/,
          '$1INFERENCE_BACKENDS = \'{"m":[{"url":"https://gpu.example.net","apiKey":"sk-1"}]}\'',
        )
        .replace(
          '[[env.production.ratelimits]]\nname = "PUBLIC_LIMITER"',
          '[[env.production.ratelimits]]\nname = "OTHER"',
        ),
    );
    const found = findings(root, "production");
    expect(found).toContainEqual(
      expect.objectContaining({ kind: "development", message: expect.stringMatching(/apiKey/) }),
    );
    expect(found).toContainEqual({
      env: "production",
      kind: "missing",
      message: "binding PUBLIC_LIMITER is missing (environments inherit none)",
    });
  });
});

describe("deploy: npm run keys:generate", () => {
  it("prints fresh Ed25519 signing keys with kids, their secret put commands, and the Access settings", async () => {
    const run = spawnSync(
      process.execPath,
      ["--import", "tsx", join("scripts", "keys-generate.ts"), "--env", "staging"],
      {
        cwd: ROOT,
        encoding: "utf8",
      },
    );
    expect(run.status, run.stderr).toBe(0);
    const lines = run.stdout.split("\n");
    const valueAfter = (name: string) => {
      const at = lines.indexOf(`npx wrangler secret put ${name} --env staging`);
      expect(at, name).toBeGreaterThanOrEqual(0);
      return lines[at + 1] ?? "";
    };
    for (const [name, purpose] of [
      ["DOWNLOAD_SIGNING_KEYS", "dl"],
      ["AUDIT_SIGNING_KEYS", "audit"],
    ] as const) {
      const { keys } = JSON.parse(valueAfter(name)) as { keys: JWK[] };
      expect(keys).toHaveLength(1);
      const [key] = keys as [JWK];
      expect(key).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA" });
      expect(key.kid).toMatch(new RegExp(`^modelgate-${purpose}-\\d{8}-[0-9a-f]{6}$`));
      // The private key signs what its public half verifies.
      const jws = await new CompactSign(new TextEncoder().encode("x"))
        .setProtectedHeader({ alg: "EdDSA", kid: key.kid })
        .sign(await importJWK(key, "EdDSA"));
      const { d: _private, ...publicJwk } = key;
      await expect(compactVerify(jws, await importJWK(publicJwk, "EdDSA"))).resolves.toBeTruthy();
    }
    expect(valueAfter("INFERENCE_KEYS_SECRET")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(run.stdout).toContain("Application domain:  staging.modelgate.example.com/admin");
    expect(run.stdout).toContain("ACCESS_AUD");
    expect(run.stdout).toContain("npm run deploy:check -- --strict --env staging");
    // Two runs never print the same key.
    const again = spawnSync(process.execPath, ["--import", "tsx", join("scripts", "keys-generate.ts")], {
      cwd: ROOT,
      encoding: "utf8",
    });
    expect(again.stdout).toContain("--env production");
    expect(again.stdout).not.toContain(valueAfter("DOWNLOAD_SIGNING_KEYS"));
  });
});
