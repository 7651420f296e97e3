/** The reviewers' view of the guard: what the flags API and the console page both show. */
import { addDays } from "../platform/clock";
import type { Services } from "../services";
import { type GuardFlagRow, type GuardFlagSummary, guardFlagSummaries, organizationGuardFlags } from "./flags";
import { type GuardPolicy, readGuardPolicy, requireOrganization } from "./policy";
import { guardSettings } from "./settings";

export interface GuardQueue {
  since: string;
  threshold: number;
  /** Whether this deployment has a guard model. */
  configured: boolean;
  organizations: GuardFlagSummary[];
  /** With an organization: its policy and latest flags. */
  selected: { organizationId: string; policy: GuardPolicy; flags: GuardFlagRow[] } | undefined;
}

/** Flagged organizations over the last `days`, and, with `organizationId`, that organization alone with its flags. */
export async function guardQueue(
  services: Services,
  env: Env,
  options: { days: number; organizationId?: string | undefined; withPolicy?: boolean },
): Promise<GuardQueue> {
  const settings = guardSettings(env, services.config.inference.allowedHosts);
  const since = addDays(services.clock.now(), -options.days).toISOString();
  const { organizationId } = options;
  const organizations = await guardFlagSummaries(services, {
    since,
    threshold: settings.suspendThreshold,
    ...(organizationId ? { organizationId } : {}),
  });
  let selected: GuardQueue["selected"];
  if (organizationId) {
    if (options.withPolicy) await requireOrganization(services, organizationId);
    const [policy, flags] = await Promise.all([
      readGuardPolicy(services, organizationId, settings.defaultMode),
      organizationGuardFlags(services, organizationId, since),
    ]);
    selected = { organizationId, policy, flags };
  }
  return {
    since,
    threshold: settings.suspendThreshold,
    configured: settings.backend !== undefined,
    organizations,
    selected,
  };
}
