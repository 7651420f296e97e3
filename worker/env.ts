import type { AdminIdentity } from "./auth/access";
import type { MemberPrincipal } from "./auth/members";
import type { Services } from "./services";
import type { TokenPrincipal } from "./tokens/service";

/** The one Hono environment type: bindings from `wrangler types`, and per-request variables. */
export interface HonoEnv {
  Bindings: Env;
  Variables: {
    services: Services;
    requestId: string;
    /** The verified reviewer, on admin routes once the Access token was checked. */
    admin?: AdminIdentity;
    /** The organization a personal access token acts for, on routes that require one. */
    principal?: TokenPrincipal;
    /** The signed-in member and the organization they act for, on organization routes. */
    member?: MemberPrincipal;
  };
}
