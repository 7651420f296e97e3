/**
 * `npm run seed [-- --demo http://127.0.0.1:8787]`
 *
 * Applies the D1 migrations to the local database and loads every family's placeholder license
 * and AUP into it (what `npm start` does before it starts the server). With `--demo URL`, also
 * submits and confirms the demo applications at a gateway already running at URL (reading the
 * confirmation links from its outbox with a dev admin token). Safe to repeat.
 */
import { parseArgs } from "node:util";
import { mintDevAccessToken } from "./lib/dev-access-token";
import { applyLocalMigrations, ROOT, withLocalBindings } from "./lib/local-state";
import { seedDemoApplications } from "./seed/demo";
import { describeLoad, seedPlaceholderLicense } from "./seed/license";

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { demo: { type: "string" } }, strict: true });
  await applyLocalMigrations();
  console.log(describeLoad(await withLocalBindings((env) => seedPlaceholderLicense(env.DB))));
  if (values.demo) {
    const { token: adminToken } = await mintDevAccessToken(ROOT, {
      email: "seed@modelgate.local",
      role: "admin",
      ttlSeconds: 600,
    });
    const demo = await seedDemoApplications(values.demo.replace(/\/+$/, ""), { adminToken });
    if (!demo.ok) throw new Error(demo.warning);
    for (const c of demo.cases) console.log(`${c.status.padEnd(15)} ${c.label}: ${c.statusUrl}`);
  }
}

main().catch((error: unknown) => {
  console.error(`seed failed: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
