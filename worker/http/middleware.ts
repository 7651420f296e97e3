import type { Context, MiddlewareHandler } from "hono";
import { secureHeaders } from "hono/secure-headers";
import type { HonoEnv } from "../env";
import { AppError } from "../errors";
import { clientNetwork } from "../platform/addresses";
import { newId } from "../platform/ids";
import { createServices, type ServiceOptions } from "../services";

/** Options of the request middleware. */
export interface RequestContextOptions extends ServiceOptions {
  /** Makes a fresh id when the edge gave none. */
  requestIdGenerator?: () => string;
}

/** A request id when the edge gave none (Cloudflare's edge always sends `cf-ray`). */
const newRequestId = () => newId("req", Date.now());

/** The request's id: Cloudflare's ray id when the edge gave one, else a fresh one. */
export function requestIdFor(cfRay: string | null | undefined, options: RequestContextOptions = {}): string {
  return cfRay ?? (options.requestIdGenerator ?? newRequestId)();
}

/**
 * Tags each request with an id (Cloudflare's ray id when present), builds its services once and
 * echoes the id back on the response.
 */
export function requestContext(options: RequestContextOptions = {}): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    const id = requestIdFor(c.req.header("cf-ray"), options);
    c.set("requestId", id);
    c.set("services", createServices(c.env, options, { requestId: id }));
    await next();
    c.res.headers.set("x-request-id", id);
  };
}

/** The client's address as the edge saw it. */
export function clientIp(headers: { header(name: string): string | undefined }): string | null {
  return headers.header("cf-connecting-ip") ?? headers.header("x-real-ip") ?? null;
}

/**
 * Abuse brake for public endpoints: the Workers rate-limit binding, keyed by the client's network
 * (`clientNetwork`: an IPv4 address, an IPv6 /64). It is approximate by design (per location,
 * 60 s window), which is what a brake needs.
 */
export function abuseBrake(): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    const key = `${c.req.method}:${clientNetwork(clientIp(c.req))}`;
    const { success } = await c.env.PUBLIC_LIMITER.limit({ key });
    if (!success) {
      throw new AppError("rate_limited", "Too many requests from this address; try again in a minute.", {
        headers: { "retry-after": "60" },
      });
    }
    await next();
  };
}

/**
 * Refuses state-changing requests that a browser made from another site. Browsers send
 * `Sec-Fetch-Site` on every request and `Origin` on every non-GET one, so a cross-site form post or
 * fetch is recognised even when it carries the victim's cookies. Non-browser clients send neither
 * and are judged by their credentials alone.
 */
export function refuseCrossSite(): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    assertSameSite(c);
    await next();
  };
}

/** `refuseCrossSite` as a check: throws `cross_site_request` for a state-changing cross-site request. */
export function assertSameSite(c: Context<HonoEnv>): void {
  if (c.req.method === "GET" || c.req.method === "HEAD" || c.req.method === "OPTIONS") return;
  const site = c.req.header("sec-fetch-site");
  if (site && site !== "same-origin" && site !== "none") {
    throw new AppError("cross_site_request", "State-changing requests must come from this site.");
  }
  // A browser that says where a request comes from is believed: a same-origin form post from a
  // page with `Referrer-Policy: no-referrer` (every applicant page) carries `Origin: null`.
  if (site) return;
  const origin = c.req.header("origin");
  if (origin && origin !== new URL(c.req.url).origin) {
    throw new AppError("cross_site_request", "State-changing requests must come from this site.");
  }
}

/**
 * What the applicant pages may load: our own scripts and styles (the layout's `<style>` is
 * inline), nothing from elsewhere, no plugins, no framing, forms posted only here.
 */
const PAGE_CSP = {
  defaultSrc: ["'self'"],
  scriptSrc: ["'self'"],
  styleSrc: ["'self'", "'unsafe-inline'"],
  imgSrc: ["'self'", "data:"],
  connectSrc: ["'self'"],
  objectSrc: ["'none'"],
  formAction: ["'self'"],
  frameAncestors: ["'none'"],
  baseUri: ["'none'"],
};

const pageHeaders = secureHeaders({
  contentSecurityPolicy: PAGE_CSP,
  // Status and invitation addresses carry a secret: no page sends its address anywhere.
  referrerPolicy: "no-referrer",
  xFrameOptions: "DENY",
  xContentTypeOptions: "nosniff",
  // Keep a page's own, stricter policy (the console's, the API reference's) where it set one.
  overwrite: false,
});

/**
 * Security headers on every HTML page, whichever route rendered it: a CSP, no framing
 * (`frame-ancestors 'none'`, `X-Frame-Options`), `Referrer-Policy: no-referrer`, `nosniff`, HSTS.
 * API answers are left as they are (they are not rendered by browsers).
 */
export function pageSecurityHeaders(): MiddlewareHandler<HonoEnv> {
  return async (c, next) => {
    await next();
    if (c.res.headers.get("content-type")?.startsWith("text/html")) await pageHeaders(c, async () => {});
  };
}
