/**
 * Single-use links mailed to an address, the only proof of an e-mail address the gateway takes:
 * confirming an application's contact and signing in. The secret is in the link alone; D1 keeps
 * its sha256. A link is used by a conditional update in the same batch as the write it proves,
 * so a write refused on the way (a cool-down, a member who may not apply) leaves it usable, and a
 * replay, a second tab or a racing request finds it used.
 */
import { and, eq, gt, isNull } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type EmailLinkPurpose, emailLinks } from "../db/schema";
import { AppError } from "../errors";
import { sha256Hex } from "../platform/hash";
import type { Services } from "../services";

/** How long each kind of link lives. */
export const EMAIL_LINK_TTL_MS: Record<EmailLinkPurpose, number> = {
  verify_application: 24 * 60 * 60_000,
  sign_in: 15 * 60_000,
};

/** Prefix of e-mail link secrets, so they are recognisable in logs and leak scans. */
const SECRET_PREFIX = "mge_";

/** A new link for `email`: the secret to mail and the insert that records it (for a batch). */
export async function issueEmailLink(
  services: Pick<Services, "db" | "clock" | "ids">,
  link: { purpose: EmailLinkPurpose; email: string; applicationId?: string },
) {
  const secret = `${SECRET_PREFIX}${services.ids.secret(32)}`;
  const now = services.clock.now();
  const statement = services.db.insert(emailLinks).values({
    secretHash: await sha256Hex(secret),
    purpose: link.purpose,
    email: link.email.toLowerCase(),
    applicationId: link.applicationId ?? null,
    createdAt: now.toISOString(),
    expiresAt: new Date(now.getTime() + EMAIL_LINK_TTL_MS[link.purpose]).toISOString(),
  });
  return { secret, statement };
}

/** A link that may be used: the address it proves, what it was for, and the statement using it. */
export interface UsableEmailLink {
  email: string;
  applicationId: string | null;
  /** Marks the link used, if it still is not; goes in the batch of the write the link proves. */
  use: BatchItem<"sqlite">;
}

/**
 * A link that may still be used, read but not used: its `use` goes in the batch of the audited
 * write it proves, so the link is used when that write lands and not before. Every write a link
 * proves is audited: two at once meet on the audit chain, and the later, planned again, finds the
 * link used. Unknown, used, expired and other-purpose links are all the same 401, so the answer
 * says nothing about which it was.
 */
export async function emailLinkToUse(
  services: Pick<Services, "db" | "clock">,
  secret: string,
  purpose: EmailLinkPurpose,
): Promise<UsableEmailLink> {
  const refused = new AppError("unauthorized", "This link is not valid any more. Ask for a new one.");
  if (!secret.startsWith(SECRET_PREFIX) || secret.length > 100) throw refused;
  const now = services.clock.now().toISOString();
  const usable = and(
    eq(emailLinks.secretHash, await sha256Hex(secret)),
    eq(emailLinks.purpose, purpose),
    isNull(emailLinks.usedAt),
    gt(emailLinks.expiresAt, now),
  );
  const [row] = await services.db
    .select({ email: emailLinks.email, applicationId: emailLinks.applicationId })
    .from(emailLinks)
    .where(usable);
  if (!row) throw refused;
  return { ...row, use: services.db.update(emailLinks).set({ usedAt: now }).where(usable) };
}
