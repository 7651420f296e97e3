/**
 * Used by gateway-cleanup.e2e.ts: starts a gateway, prints its state directory, waits until
 * `wrangler dev` runs in its own process group, then ends the way `process.argv[2]` says
 * (`throw`: an uncaught error; `sigterm`: killed by SIGTERM; `exit`: process.exit(1)) without
 * stopping the gateway. The exit hook of gateway-process.ts must take the tree down anyway.
 */

import { startGateway } from "../lib/gateway-process";
import { processesStartedFor, untilWranglerRuns } from "./gateway-tree";

const how = process.argv[2];
const gateway = await startGateway();
console.log(`dir ${gateway.dir}`);
await untilWranglerRuns(gateway, 90_000);
console.log(`running ${processesStartedFor(gateway.dir).length}`);
if (how === "throw") throw new Error("a test's setup failed");
if (how === "sigterm") process.kill(process.pid, "SIGTERM");
else process.exit(1);
// SIGTERM arrives asynchronously: stay alive until it does.
await new Promise((r) => setTimeout(r, 30_000));
