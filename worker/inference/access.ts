import { eq } from "drizzle-orm";
import { accessTokenSecret } from "../auth/bearer";
import { suspendedSince } from "../billing/accounts";
import { billingEnabled } from "../config";
import { billingAccounts, type TokenLimits } from "../db/schema";
import { AppError } from "../errors";
import { reacceptanceOverdue, reacceptanceProblem } from "../licenses/reacceptance";
import { type Renewable, renewIfDue } from "../platform/renew-ahead";
import { effectiveLimits } from "../quota/limits";
import type { QuotaLimits, TokenQuota } from "../quota/org-quota";
import type { Services } from "../services";
import { tokenProblem } from "../tokens/middleware";
import { checkAccessToken, type TokenPrincipal } from "../tokens/service";

/** How long this isolate trusts a token check: a revocation takes effect within this window. */
export const TOKEN_CACHE_MS = 5_000;
/** A check this old is renewed after the answer of the next request that uses it (`renewIfDue`). */
export const TOKEN_REFRESH_MS = 4_000;

/** An inference caller: the token's principal, the organization's limits and billing standing. */
export interface InferenceCaller {
  principal: TokenPrincipal;
  limits: QuotaLimits;
  /** The token's own limits, held inside the organization's; absent when it has none. */
  tokenQuota: TokenQuota | undefined;
  /** When the limits were read: limits an admin set after this outrank them in the quota object. */
  limitsAt: number;
  /** When inference stops for lack of payment (grace period included), if it does. */
  suspendedFrom: number | undefined;
}

interface CachedCaller extends InferenceCaller, Renewable {
  expiresAt: number;
}

const cache = new Map<string, CachedCaller>();
const MAX_CACHED = 10_000;

/** Forgets every cached token check (tests). */
export function clearCallerCache(): void {
  cache.clear();
}

/**
 * Authenticates an inference call: the token must be live with the `inference` scope and its
 * grant active. The answer, with the organization's limits, is cached in the isolate for
 * `TOKEN_CACHE_MS`, which keeps the database off the hot path while a revoked token or grant, or a
 * changed limit, still takes effect within seconds. Given `waitUntil`, a request that finds the check
 * `TOKEN_REFRESH_MS` old renews it after its answer (a refused renewal drops it: the next request is
 * refused at once).
 */
export async function authenticateInference(
  services: Services,
  bearer: string | undefined,
  waitUntil?: (work: Promise<unknown>) => void,
): Promise<InferenceCaller> {
  if (!bearer) throw tokenProblem("missing", "inference");
  // Keyed by the token itself, which this isolate holds for the request anyway: hashing it on
  // every call would cost more than the rest of a cached check.
  const key = accessTokenSecret(bearer);
  const now = services.clock.now().getTime();
  const hit = cache.get(key);
  const base = services.config.publicBaseUrl;
  if (hit && hit.expiresAt > now) {
    if (waitUntil)
      renewIfDue(
        hit,
        now,
        waitUntil,
        () => checkCaller(services, bearer, key, now),
        // A refusal has dropped the check already: the next request is refused.
        (error) => {
          if (!(error instanceof AppError)) services.log.warn("token check not renewed", { error: String(error) });
        },
      );
    return admitPaid(hit, now, base);
  }
  return admitPaid(await checkCaller(services, bearer, key, now), now, base);
}

/** Checks the token in the database and caches the answer; a refused token is forgotten and refused. */
async function checkCaller(services: Services, bearer: string, key: string, now: number): Promise<CachedCaller> {
  const check = await checkAccessToken(services, bearer, "inference");
  if (!check.ok) {
    cache.delete(key);
    throw tokenProblem(check.refusal, "inference", services.config.publicBaseUrl);
  }
  const { requestsPerMinute, tokensPerMinute, monthlyTokenBudget } = await effectiveLimits(
    services,
    check.principal.organizationId,
  );
  const limits: QuotaLimits = { requestsPerMinute, tokensPerMinute, monthlyTokenBudget };
  let suspendedFrom: number | undefined;
  if (billingEnabled(services.config)) {
    const [account] = await services.db
      .select()
      .from(billingAccounts)
      .where(eq(billingAccounts.organizationId, check.principal.organizationId));
    suspendedFrom = account ? suspendedSince(account, services.config.billing.graceDays)?.getTime() : undefined;
  }
  if (cache.size >= MAX_CACHED) cache.clear();
  const caller = {
    principal: check.principal,
    limits,
    tokenQuota: tokenQuotaOf(check.principal),
    limitsAt: now,
    suspendedFrom,
    expiresAt: now + TOKEN_CACHE_MS,
    refreshAt: now + TOKEN_REFRESH_MS,
    refreshing: false,
  };
  cache.set(key, caller);
  return caller;
}

/**
 * Refuses an organization whose payment failed longer ago than the grace period, or whose
 * re-acceptance deadline passed while the check was cached.
 */
function admitPaid(caller: CachedCaller, now: number, baseUrl: string): InferenceCaller {
  if (reacceptanceOverdue(caller.principal.reacceptBy, now)) throw reacceptanceProblem(baseUrl);
  if (caller.suspendedFrom !== undefined && caller.suspendedFrom <= now) {
    throw new AppError(
      "payment_required",
      "Inference is suspended because your organization's payment failed. It resumes as soon as the invoice is paid.",
    );
  }
  return caller;
}

/** A token's own limits as the quota counts them, when it has any. */
function tokenQuotaOf(principal: TokenPrincipal): TokenQuota | undefined {
  const limits = principal.limits;
  if (!limits) return undefined;
  const own: TokenLimits = {};
  if (limits.requestsPerMinute !== undefined) own.requestsPerMinute = limits.requestsPerMinute;
  if (limits.tokensPerMinute !== undefined) own.tokensPerMinute = limits.tokensPerMinute;
  if (limits.monthlyTokenBudget !== undefined) own.monthlyTokenBudget = limits.monthlyTokenBudget;
  return Object.keys(own).length > 0 ? { id: principal.tokenId, limits: own } : undefined;
}
