/**
 * `npm run deploy:check [-- --strict] [--env production]`: builds each deployed environment the way
 * `wrangler deploy` would (`--dry-run`, offline), prints its bundle size gzip-compressed against the
 * platform's limits, and fails when an environment carries a development value (a loopback URL,
 * DEV_LOGIN, an inline ACCESS_JWKS, a secret set as a var) or lacks a binding or a required var
 * (`REQUIRED_VARS` of worker/config.ts: the Access issuer and audience among them). `--strict` also
 * fails on the placeholders `wrangler.toml` ships with: run it before a real deploy.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { gzipSync } from "node:zlib";
import { checkEnvironment, type Finding, readEnvironment, secretNames } from "./lib/deploy-config";
import { ROOT, wranglerEnv } from "./lib/local-state";

/**
 * Worker size limits, compressed, as Cloudflare's limits page stated them (Workers Free 3 MB, Paid
 * 10 MB). Later pages state one 64 MiB uncompressed limit on every plan; the bundle is held to the
 * stricter reading, so a pass here passes on either.
 */
const LIMITS = { freeGzip: 3 * 1000 * 1000, paidGzip: 10 * 1000 * 1000, uncompressed: 64 * 1024 * 1024 };
const ENVIRONMENTS = ["staging", "production"];

const { values } = parseArgs({
  options: { strict: { type: "boolean", default: false }, env: { type: "string", multiple: true } },
});
const environments = values.env?.length ? values.env : ENVIRONMENTS;

/** Prints an environment's findings; whether none of them is fatal. */
function report(findings: Finding[]): boolean {
  let ok = true;
  for (const f of findings) {
    const fatal = f.kind !== "placeholder" || values.strict;
    if (fatal) ok = false;
    const note = fatal ? "" : " (fails with --strict)";
    console.log(`${fatal ? "✗" : "·"} ${f.env}: ${f.message}${note}`);
  }
  return ok;
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
const development = readEnvironment(ROOT, undefined);
const secrets = secretNames(ROOT);
let failed = false;

for (const env of environments) {
  const findings = checkEnvironment(env, readEnvironment(ROOT, env), development, secrets);
  if (!report(findings)) failed = true;
  const outdir = mkdtempSync(join(tmpdir(), `modelgate-deploy-${env}-`));
  try {
    const build = spawnSync("npx", ["wrangler", "deploy", "--dry-run", "--outdir", outdir, "--env", env], {
      cwd: ROOT,
      env: wranglerEnv({ WRANGLER_LOG: "warn" }),
      encoding: "utf8",
    });
    if (build.status !== 0) {
      console.error(`✗ ${env}: wrangler deploy --dry-run failed\n${build.stdout}${build.stderr}`);
      failed = true;
      continue;
    }
    // What is uploaded and counted: the modules, not their source maps.
    const modules = readdirSync(outdir).filter((f) => /\.(m?js|wasm|bin|txt|html|sql)$/.test(f));
    const bytes = modules.map((f) => readFileSync(join(outdir, f)));
    const raw = bytes.reduce((sum, b) => sum + b.length, 0);
    const gzip = bytes.reduce((sum, b) => sum + gzipSync(b, { level: 9 }).length, 0);
    const share = ((gzip / LIMITS.freeGzip) * 100).toFixed(0);
    const tooBig = gzip > LIMITS.freeGzip || raw > LIMITS.uncompressed;
    console.log(
      `${tooBig ? "✗" : "✓"} ${env}: bundle ${kib(raw)}, gzip ${kib(gzip)} — ${share}% of the 3 MB compressed limit ` +
        `(Workers Free; Paid 10 MB; 64 MiB uncompressed)`,
    );
    if (tooBig) failed = true;
  } finally {
    rmSync(outdir, { recursive: true, force: true });
  }
}

if (failed) {
  console.error("deploy:check failed: fix wrangler.toml's deployed environments (see docs/deploy.md).");
  process.exit(1);
}
