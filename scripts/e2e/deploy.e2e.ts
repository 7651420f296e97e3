/**
 * `npm run deploy:check`'s rules on `wrangler.toml`: the shipped deployed environments carry no
 * development value (only placeholders, which `--strict` refuses), and an environment that does
 * carry one — the loopback URL a plain deploy used to put in applicants' mail, the dev sign-in
 * page, an inline Access JWKS, a secret set as a var, a binding left out — is refused.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
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
          'AUDIT_CHECKPOINT_EVERY = "100"\n\n[[env.production.d1_databases]]',
          'AUDIT_CHECKPOINT_EVERY = "100"\nDEV_LOGIN = "1"\nACCESS_JWKS = \'{"keys":[]}\'\n' +
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
