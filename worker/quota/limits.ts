import { eq } from "drizzle-orm";
import { organizationLimits } from "../db/schema";
import type { Services } from "../services";
import type { QuotaLimits } from "./org-quota";

/** The limits an organization's inference runs under, and where they come from. */
export interface EffectiveLimits extends QuotaLimits {
  organizationId: string;
  /** Whether the organization has limits of its own (a plan or an admin's setting). */
  custom: boolean;
  plan: string;
}

/** An organization's own limits row, or the deployment's defaults when it has none. */
export async function effectiveLimits(
  services: Pick<Services, "db" | "config">,
  organizationId: string,
): Promise<EffectiveLimits> {
  const [own] = await services.db
    .select()
    .from(organizationLimits)
    .where(eq(organizationLimits.organizationId, organizationId));
  const limits = own ?? { plan: "default", ...services.config.inference.defaultLimits };
  return {
    organizationId,
    custom: own !== undefined,
    plan: limits.plan,
    requestsPerMinute: limits.requestsPerMinute,
    tokensPerMinute: limits.tokensPerMinute,
    monthlyTokenBudget: limits.monthlyTokenBudget,
  };
}
