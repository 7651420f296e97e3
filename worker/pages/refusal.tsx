/**
 * How a page route refuses: a browser that posted a form gets a page saying why, with the
 * problem's status; any other client gets the problem document.
 */
import type { Context } from "hono";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { LinkRefusedPage } from "./sign-in";

/** A browser form post or page load that wants HTML back rather than JSON. */
export function wantsPage(c: Context<HonoEnv>): boolean {
  const type = c.req.header("content-type") ?? "";
  return !type.startsWith("application/json") && (c.req.header("accept") ?? "").includes("text/html");
}

/** Pages that carry a secret in their address or form: kept out of caches. */
export function noStore(c: Context<HonoEnv>): void {
  c.header("cache-control", "no-store");
}

/**
 * Runs a page route's work; an `AppError` becomes a page with its status for a browser, and is
 * rethrown (a problem document) for anyone else.
 */
export async function withRefusalPage(
  c: Context<HonoEnv>,
  title: string,
  work: () => Promise<Response>,
): Promise<Response> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof AppError && wantsPage(c)) {
      return c.html(<LinkRefusedPage title={title} message={error.message} />, error.status);
    }
    throw error;
  }
}
