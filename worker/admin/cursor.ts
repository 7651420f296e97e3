import { z } from "@hono/zod-openapi";
import { AppError } from "../errors";

/** Where a listing sorted by `(createdAt, id)` left off. */
export interface PositionCursor {
  createdAt: string;
  id: string;
}

const positionShape = z.tuple([z.string(), z.string()]);

/**
 * Encodes a listing position as an opaque token. Clients pass it back unchanged; its shape is ours
 * to change, which is why it is base64url rather than readable query parameters.
 */
export function encodeCursor(position: PositionCursor): string {
  const json = JSON.stringify([position.createdAt, position.id]);
  return btoa(json).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

/** Decodes a cursor made by `encodeCursor`; anything else is `validation_failed`. */
export function decodeCursor(cursor: string): PositionCursor {
  try {
    const padded = cursor.replaceAll("-", "+").replaceAll("_", "/");
    const [createdAt, id] = positionShape.parse(JSON.parse(atob(padded)));
    return { createdAt, id };
  } catch {
    throw new AppError("validation_failed", "The cursor is not one this API handed out.", {
      errors: [{ field: "cursor", message: "Unknown cursor" }],
    });
  }
}

/** Encodes a position in a listing ordered by an integer sequence (the audit log). */
export function encodeSeqCursor(seq: number): string {
  return encodeCursor({ createdAt: "", id: String(seq) });
}

/** Decodes a sequence cursor made by `encodeSeqCursor`. */
export function decodeSeqCursor(cursor: string): number {
  const seq = Number(decodeCursor(cursor).id);
  if (!Number.isSafeInteger(seq) || seq < 1) {
    throw new AppError("validation_failed", "The cursor is not one this API handed out.", {
      errors: [{ field: "cursor", message: "Unknown cursor" }],
    });
  }
  return seq;
}

/** The shared query fields of a paginated listing. */
export const PageQuery = {
  cursor: z.string().max(500).optional().openapi({ description: "Opaque cursor from `nextCursor`." }),
  // At most 50: a page's ids are bound as parameters in follow-up queries, and D1 allows 100.
  limit: z.coerce.number().int().min(1).max(50).default(25),
};
