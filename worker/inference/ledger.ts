import { type UsageRow, usageLedger } from "../db/schema";
import type { Services } from "../services";

/** A ledger row as the proxy fills it in. */
export type UsageRecord = Omit<UsageRow, "createdAt" | "billedAt">;

/** Appends one request's usage to the ledger. */
export async function recordUsage(services: Pick<Services, "db" | "clock">, record: UsageRecord): Promise<void> {
  await services.db
    .insert(usageLedger)
    .values({ ...record, createdAt: services.clock.now().toISOString(), billedAt: null });
}
