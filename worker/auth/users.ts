/**
 * People, known by a proven e-mail address. A user row may exist before its address is proven
 * (an invited or migrated contact); `emailVerifiedAt` says when a mailed link proved it.
 */
import { eq } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type User, users } from "../db/schema";
import type { Services } from "../services";

/** An address as the gateway keys people: trimmed, lower-cased. */
export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

/** The part after the last `@`, lower-cased. */
export function emailDomain(email: string): string {
  const normalized = normalizeEmail(email);
  return normalized.slice(normalized.lastIndexOf("@") + 1);
}

/** The user with this address, if any. */
export async function userByEmail(services: Pick<Services, "db">, email: string): Promise<User | undefined> {
  const [user] = await services.db
    .select()
    .from(users)
    .where(eq(users.email, normalizeEmail(email)));
  return user;
}

/**
 * The user whose address a link just proved, as it will be once `statements` are written: an
 * existing user gains `emailVerifiedAt` (and a name when it had none), a new one is created.
 */
export async function provenUser(
  services: Pick<Services, "db" | "clock" | "ids">,
  email: string,
  name: string | null = null,
): Promise<{ user: User; statements: BatchItem<"sqlite">[] }> {
  const at = services.clock.now().toISOString();
  const existing = await userByEmail(services, email);
  if (existing) {
    const user = { ...existing, emailVerifiedAt: existing.emailVerifiedAt ?? at, name: existing.name ?? name };
    if (user.emailVerifiedAt === existing.emailVerifiedAt && user.name === existing.name) {
      return { user, statements: [] };
    }
    return {
      user,
      statements: [
        services.db
          .update(users)
          .set({ emailVerifiedAt: user.emailVerifiedAt, name: user.name })
          .where(eq(users.id, user.id)),
      ],
    };
  }
  const user: User = {
    id: services.ids.id("usr"),
    email: normalizeEmail(email),
    name,
    emailVerifiedAt: at,
    createdAt: at,
  };
  // On a concurrent first sign-in of the same address the unique index fails one batch whole.
  return { user, statements: [services.db.insert(users).values(user)] };
}
