/**
 * Test data written straight into D1 with drizzle, so admin tests do not depend on the public
 * application flow, and a gateway harness with a fixed clock and a recording mailer.
 */
import {
  type Application,
  applications,
  type Grant,
  grants,
  organizations,
  type PolicyReasonRow,
} from "../../worker/db/schema";
import type { LicenseVersion } from "../../worker/licenses/store";
import { fixedClock } from "../../worker/platform/clock";
import type { Services } from "../../worker/services";
import { TOKEN_NOW } from "./access";
import { testGateway as baseGateway, insertLicenseVersion } from "./gateway";

/**
 * The test gateway (`./gateway`) on a clock that only moves when the test moves it, with its
 * services at hand. `bindings` are merged over the test environment (a Stripe key, say) for this
 * gateway only.
 */
export function testGateway(start: Date | string = TOKEN_NOW, bindings: Partial<Env> = {}) {
  const clock = fixedClock(start);
  const gateway = baseGateway({ clock, bindings, origin: "http://gw.test" });
  return { ...gateway, clock, services: gateway.services() };
}

/** Loads a Llama 2 license version, as an operator would before applications open. */
export async function seedLicense(services: Pick<Services, "db" | "clock" | "ids">): Promise<LicenseVersion> {
  return insertLicenseVersion(services, {
    family: "llama-2",
    license: "LLAMA 2 COMMUNITY LICENSE AGREEMENT (test text)",
    aup: "Llama 2 Acceptable Use Policy (test text)",
    source: "placeholder",
  });
}

const OVER_THRESHOLD: PolicyReasonRow[] = [
  {
    code: "mau_over_threshold",
    outcome: "review",
    detail: "More than 700,000,000 monthly active users in 2023-06: the licensor decides.",
  },
];

const EXPORT_REVIEW: PolicyReasonRow[] = [
  { code: "export_review", outcome: "review", detail: "The country needs an export-control review." },
];

/** What a seeded case may differ in. */
export interface ApplicationSeed extends Partial<Application> {
  /** Defaults to a fresh organization named after `organizationName`. */
  organizationId?: string;
}

/**
 * Inserts an organization (unless `organizationId` names one) and an application pending review.
 * `requiredApprovals: 2` gives an over-threshold case with its policy reason.
 */
export async function seedApplication(
  services: Pick<Services, "db" | "clock" | "ids">,
  license: LicenseVersion,
  seed: ApplicationSeed = {},
): Promise<Application> {
  const { db, clock, ids } = services;
  const at = seed.createdAt ?? clock.now().toISOString();
  const organizationName = seed.organizationName ?? `Acme ${ids.id("n")}`;
  let organizationId = seed.organizationId;
  if (!organizationId) {
    organizationId = ids.id("org");
    await db.insert(organizations).values({
      id: organizationId,
      name: organizationName,
      normalizedName: organizationName.toLowerCase().replace(/\s+/g, " "),
      website: "https://acme.example",
      country: seed.country ?? "DE",
      createdAt: at,
    });
  }
  const requiredApprovals = seed.requiredApprovals ?? 1;
  const row: typeof applications.$inferInsert = {
    id: ids.id("app"),
    family: "llama-2",
    organizationName,
    website: "https://acme.example",
    country: "DE",
    contactName: "Ada Lovelace",
    contactEmail: "ada@acme.example",
    intendedUse: "Summarising support tickets for our own agents.",
    declaredMau: requiredApprovals > 1 ? 900_000_000 : 50_000,
    models: ["llama-2-7b-chat"],
    status: "pending_review",
    policyReasons: requiredApprovals > 1 ? OVER_THRESHOLD : EXPORT_REVIEW,
    reviewRound: 1,
    licenseVersionId: license.id,
    updatedAt: at,
    ...seed,
    organizationId,
    requiredApprovals,
    createdAt: at,
  };
  const [stored] = await db.insert(applications).values(row).returning();
  if (!stored) throw new Error("seeded application vanished");
  return stored;
}

/** Inserts an approved case and its grant directly, for tests about grants rather than review. */
export async function seedGrant(
  services: Pick<Services, "db" | "clock" | "ids">,
  license: LicenseVersion,
  seed: ApplicationSeed & { grantStatus?: Grant["status"] } = {},
): Promise<{ application: Application; grant: Grant }> {
  const { grantStatus = "active", ...applicationSeed } = seed;
  const at = services.clock.now().toISOString();
  const application = await seedApplication(services, license, {
    status: "approved",
    decidedAt: at,
    ...applicationSeed,
  });
  const [grant] = await services.db
    .insert(grants)
    .values({
      id: services.ids.id("grt"),
      applicationId: application.id,
      organizationId: application.organizationId,
      family: application.family,
      licenseVersionId: application.licenseVersionId,
      status: grantStatus,
      createdAt: at,
      updatedAt: at,
    })
    .returning();
  if (!grant) throw new Error("seeded grant vanished");
  return { application, grant };
}
