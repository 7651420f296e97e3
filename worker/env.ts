import type { Services } from "./services";

/** The one Hono environment type: bindings from `wrangler types`, and per-request variables. */
export interface HonoEnv {
  Bindings: Env;
  Variables: {
    services: Services;
    requestId: string;
  };
}
