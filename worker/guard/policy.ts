/** Each organization's guard policy: its mode, whether flags keep samples, whether answers are screened. */
import { eq } from "drizzle-orm";
import { reviewerActor, writeOrganizationChange } from "../admin/conflict";
import type { AdminIdentity } from "../auth/access";
import { organizationGuard, organizations } from "../db/schema";
import { AppError } from "../errors";
import type { Services } from "../services";
import type { GuardMode } from "./settings";

export interface GuardPolicy {
  mode: GuardMode;
  storeSamples: boolean;
  screenResponses: boolean;
  /** Whether an admin set it (false: the deployment's default). */
  custom: boolean;
}

/** How long an isolate serves an organization's policy before reading it again (as tokens are cached). */
const POLICY_CACHE_MS = 5_000;
const cached = new Map<string, { policy: GuardPolicy; at: number }>();

/** The deployment's default for an organization no admin set. */
export function defaultPolicy(mode: GuardMode): GuardPolicy {
  return { mode, storeSamples: false, screenResponses: false, custom: false };
}

/** An organization's policy as stored, or the default. */
export async function readGuardPolicy(
  services: Pick<Services, "db">,
  organizationId: string,
  defaultMode: GuardMode,
): Promise<GuardPolicy> {
  const [row] = await services.db
    .select()
    .from(organizationGuard)
    .where(eq(organizationGuard.organizationId, organizationId));
  if (!row) return defaultPolicy(defaultMode);
  return { mode: row.mode, storeSamples: row.storeSamples, screenResponses: row.screenResponses, custom: true };
}

/** The policy on the request path: read at most every few seconds per isolate. */
export async function cachedGuardPolicy(
  services: Pick<Services, "db" | "clock">,
  organizationId: string,
  defaultMode: GuardMode,
): Promise<GuardPolicy> {
  const now = services.clock.now().getTime();
  const hit = cached.get(organizationId);
  if (hit && now - hit.at < POLICY_CACHE_MS && hit.at <= now) return hit.policy;
  const policy = await readGuardPolicy(services, organizationId, defaultMode);
  if (cached.size > 10_000) cached.clear();
  cached.set(organizationId, { policy, at: now });
  return policy;
}

/** Throws `not_found` unless the organization exists. */
export async function requireOrganization(services: Pick<Services, "db">, organizationId: string): Promise<void> {
  const [org] = await services.db
    .select({ id: organizations.id })
    .from(organizations)
    .where(eq(organizations.id, organizationId));
  if (!org) throw new AppError("not_found", "No such organization.");
}

/**
 * Sets an organization's policy, audited as `organization.guard_set`; in force in this isolate at
 * once, elsewhere within 5 s. An admin party to the organization (a member, its contact, at its
 * domain: `conflict.ts`) is refused with `conflict_of_interest`: switching off one's own
 * organization's screening is exactly what the guard is there to prevent.
 */
export async function setGuardPolicy(
  services: Services,
  organizationId: string,
  input: Omit<GuardPolicy, "custom">,
  admin: Pick<AdminIdentity, "email">,
): Promise<GuardPolicy> {
  const actor = reviewerActor(admin);
  await writeOrganizationChange(services, admin, organizationId, "organization.guard_set", async () => {
    await requireOrganization(services, organizationId);
    const row = { ...input, updatedAt: services.clock.now().toISOString(), updatedBy: actor };
    return {
      statements: [
        services.db
          .insert(organizationGuard)
          .values({ organizationId, ...row })
          .onConflictDoUpdate({ target: organizationGuard.organizationId, set: row }),
      ],
      events: [
        {
          actor,
          action: "organization.guard_set",
          subjectType: "organization",
          subjectId: organizationId,
          data: { ...input },
        },
      ],
      result: undefined,
    };
  });
  cached.delete(organizationId);
  return { ...input, custom: true };
}
