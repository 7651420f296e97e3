/**
 * Deliveries: each recorded event becomes one delivery per endpoint subscribed to it, which the
 * events queue attempts, signed, until the endpoint answers 2xx or `MAX_DELIVERY_ATTEMPTS` have
 * failed (then it is `dead`: kept, shown, and sent again on request). Every state a delivery
 * passes through is in D1, so the queue only says when to look again: a message that comes early,
 * twice or never is harmless, because an attempt is claimed in D1 first and a delivery nobody
 * looked at for `STUCK_AFTER_MS` is queued again by the cron.
 */
import { and, asc, desc, eq, inArray, isNull, lt, lte, or, type SQL, sql } from "drizzle-orm";
import { refusalIfParty, reviewerActor, writeAuditedUnlessParty } from "../admin/conflict";
import { decodeCursor, encodeCursor } from "../admin/cursor";
import { type AuditedWrite, writeAudited } from "../audit/log";
import type { AdminIdentity } from "../auth/access";
import { type MemberPrincipal, memberNow } from "../auth/members";
import { userActor } from "../auth/sign-in";
import { chunked } from "../db/limits";
import {
  type WebhookDelivery,
  type WebhookDeliveryStatus,
  type WebhookEvent,
  webhookDeliveries,
  webhookEndpoints,
  webhookEvents,
  webhookSecrets,
} from "../db/schema";
import { AppError } from "../errors";
import type { Services } from "../services";
import { checkEndpointUrl, ENDPOINT_URL_PROBLEMS } from "./endpoint-url";
import { liveEndpoint } from "./endpoints";
import { signedHeaders } from "./signing";
import type { EventMessage, EventPayload } from "./types";

/** Attempts before a delivery is given up (`dead`). */
export const MAX_DELIVERY_ATTEMPTS = 8;

/** How long an endpoint has to answer. */
export const DELIVERY_TIMEOUT_MS = 10_000;

/** A pending delivery not attempted this long after it was due is queued again. */
export const STUCK_AFTER_MS = 10 * 60_000;

/** While an attempt runs, the delivery is not due: no other message starts one beside it. */
const ATTEMPT_LEASE_MS = 2 * 60_000;

/** A message may arrive this much before its delivery's time (clocks of different machines). */
const EARLY_MS = 5_000;

/** Events dispatched in one run. */
export const EVENTS_PER_RUN = 50;

/** Delivery rows in one insert: 13 columns each, under D1's 100 bound parameters. */
const DELIVERIES_PER_INSERT = 7;

/** Messages in one `sendBatch`, the Queues limit. */
const MESSAGES_PER_SEND = 100;

export const USER_AGENT = "modelgate-webhooks/1";

/** Seconds before attempt `attempts + 1`: 30 s, 2 min, 8 min, 32 min … at most 12 h (the Queues limit). */
export function deliveryRetrySeconds(attempts: number): number {
  return Math.min(43_200, 30 * 4 ** Math.max(0, attempts - 1));
}

/** What the queue does with a message after an attempt. */
export type AttemptOutcome = { retryInSeconds?: undefined } | { retryInSeconds: number };

/** How deliveries reach endpoints; the defaults are production's. */
export interface DeliveryOptions {
  fetch?: typeof fetch;
  timeoutMs?: number;
}

type Deps = Pick<Services, "db" | "clock" | "ids" | "log">;

/** Puts deliveries on the events queue; a send that fails is logged, and the cron queues them later. */
export async function queueDeliveries(
  deps: Pick<Services, "log">,
  queue: Queue,
  ids: readonly string[],
): Promise<void> {
  for (const chunk of chunked(ids, MESSAGES_PER_SEND)) {
    try {
      await queue.sendBatch(chunk.map((delivery) => ({ body: { delivery } satisfies EventMessage })));
    } catch (error) {
      deps.log.warn("queueing webhook deliveries failed; the cron queues them again", {
        deliveries: chunk.length,
        error: String(error),
      });
    }
  }
}

/** The live, enabled endpoints subscribed to `event`: its organization's, or for a model, every covered organization's. */
async function subscribedEndpoints(deps: Pick<Deps, "db">, event: WebhookEvent) {
  const live = and(
    eq(webhookEndpoints.enabled, true),
    isNull(webhookEndpoints.deletedAt),
    sql`exists (select 1 from json_each(${webhookEndpoints.eventTypes}) where value = ${event.type})`,
  );
  let whose: SQL;
  if (event.organizationId !== null) {
    whose = eq(webhookEndpoints.organizationId, event.organizationId);
  } else {
    const model = typeof event.data.model === "string" ? event.data.model : "";
    whose = sql`exists (select 1 from grants, json_each(grants.models) as covered
      where grants.organization_id = ${webhookEndpoints.organizationId}
        and grants.status = 'active' and covered.value = ${model})`;
  }
  return deps.db
    .select({ id: webhookEndpoints.id, organizationId: webhookEndpoints.organizationId })
    .from(webhookEndpoints)
    .where(and(live, whose));
}

/**
 * Makes the deliveries of events not yet dispatched (all of them, or those of `only`), marks the
 * events dispatched in the same batch, and queues the deliveries. Two runs at once make each
 * delivery once (one per event and endpoint, by a unique key).
 */
export async function dispatchEvents(
  deps: Deps,
  queue: Queue,
  only?: readonly string[],
): Promise<{ events: number; deliveries: number }> {
  const { db, clock, ids } = deps;
  const undispatched = isNull(webhookEvents.dispatchedAt);
  const events = await db
    .select()
    .from(webhookEvents)
    .where(only ? and(undispatched, inArray(webhookEvents.id, [...only])) : undispatched)
    .orderBy(asc(webhookEvents.occurredAt), asc(webhookEvents.id))
    .limit(EVENTS_PER_RUN);
  let deliveries = 0;
  for (const event of events) {
    const endpoints = await subscribedEndpoints(deps, event);
    const at = clock.now().toISOString();
    const rows = endpoints.map((endpoint) => ({
      id: ids.id("dlv"),
      eventId: event.id,
      endpointId: endpoint.id,
      organizationId: endpoint.organizationId,
      eventType: event.type,
      status: "pending" as const,
      attempts: 0,
      nextAttemptAt: at,
      createdAt: at,
    }));
    const inserts = chunked(rows, DELIVERIES_PER_INSERT).map((chunk) =>
      db.insert(webhookDeliveries).values(chunk).onConflictDoNothing().returning({ id: webhookDeliveries.id }),
    );
    const mark = db
      .update(webhookEvents)
      .set({ dispatchedAt: at })
      .where(and(eq(webhookEvents.id, event.id), undispatched));
    const [, ...made] = await db.batch([mark, ...inserts]);
    const madeIds = (made as { id: string }[][]).flat().map((row) => row.id);
    await queueDeliveries(deps, queue, madeIds);
    deliveries += madeIds.length;
  }
  return { events: events.length, deliveries };
}

/** Queues again the pending deliveries that were due `STUCK_AFTER_MS` ago and never attempted. */
export async function requeueStuckDeliveries(deps: Deps, queue: Queue, limit = 100): Promise<number> {
  const now = deps.clock.now();
  const stuck = await deps.db
    .select({ id: webhookDeliveries.id, nextAttemptAt: webhookDeliveries.nextAttemptAt })
    .from(webhookDeliveries)
    .where(
      and(
        eq(webhookDeliveries.status, "pending"),
        lte(webhookDeliveries.nextAttemptAt, new Date(now.getTime() - STUCK_AFTER_MS).toISOString()),
      ),
    )
    .orderBy(asc(webhookDeliveries.nextAttemptAt))
    .limit(limit);
  if (stuck.length === 0) return 0;
  const ids = stuck.map((row) => row.id);
  // Due now, so the message finds it due, and not stuck again before STUCK_AFTER_MS has passed.
  for (const chunk of chunked(ids, 90)) {
    await deps.db
      .update(webhookDeliveries)
      .set({ nextAttemptAt: now.toISOString() })
      .where(and(inArray(webhookDeliveries.id, chunk), eq(webhookDeliveries.status, "pending")));
  }
  await queueDeliveries(deps, queue, ids);
  return ids.length;
}

/** The body an event is delivered with. */
export function eventBody(event: Pick<WebhookEvent, "type" | "occurredAt" | "data">): string {
  const payload = { type: event.type, timestamp: event.occurredAt, data: event.data } as EventPayload;
  return JSON.stringify(payload);
}

/** One POST of a delivery; what came back, or why nothing did. */
async function post(
  url: string,
  headers: Record<string, string>,
  body: string,
  options: DeliveryOptions,
): Promise<{ ok: boolean; statusCode: number | null; error: string | null }> {
  const timeoutMs = options.timeoutMs ?? DELIVERY_TIMEOUT_MS;
  try {
    const response = await (options.fetch ?? fetch)(url, {
      method: "POST",
      headers: { ...headers, "content-type": "application/json", "user-agent": USER_AGENT },
      body,
      // A redirect could lead anywhere, a private address included: it counts as a failure.
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
    });
    await response.body?.cancel();
    const ok = response.status >= 200 && response.status < 300;
    return { ok, statusCode: response.status, error: ok ? null : `answered ${response.status}` };
  } catch (error) {
    const name = (error as { name?: unknown } | null)?.name;
    const timedOut = name === "TimeoutError" || name === "AbortError";
    return {
      ok: false,
      statusCode: null,
      error: timedOut ? `no answer within ${timeoutMs / 1000} s` : `could not connect: ${String(error).slice(0, 200)}`,
    };
  }
}

/**
 * Attempts one delivery, if it is pending and due: claims the attempt in D1 (so a second message
 * for it does nothing), signs the event with every secret of the endpoint, posts it, and records
 * the answer. A delivery whose endpoint was disabled or removed is canceled; one whose URL the
 * rules now refuse is dead at once. Answers when to try again, if at all.
 */
export async function attemptDelivery(
  deps: Deps,
  allowedHosts: readonly string[],
  deliveryId: string,
  options: DeliveryOptions = {},
): Promise<AttemptOutcome> {
  const { db, clock } = deps;
  const [row] = await db
    .select({ delivery: webhookDeliveries, endpoint: webhookEndpoints, event: webhookEvents })
    .from(webhookDeliveries)
    .innerJoin(webhookEndpoints, eq(webhookEndpoints.id, webhookDeliveries.endpointId))
    .innerJoin(webhookEvents, eq(webhookEvents.id, webhookDeliveries.eventId))
    .where(eq(webhookDeliveries.id, deliveryId));
  if (row?.delivery.status !== "pending") return {};
  const { delivery, endpoint, event } = row;
  const now = clock.now();
  if (Date.parse(delivery.nextAttemptAt) > now.getTime() + EARLY_MS) return {};
  const unchanged = and(
    eq(webhookDeliveries.id, deliveryId),
    eq(webhookDeliveries.status, "pending"),
    eq(webhookDeliveries.attempts, delivery.attempts),
  );
  if (!endpoint.enabled || endpoint.deletedAt !== null) {
    const why = endpoint.deletedAt ? "the endpoint was removed" : "the endpoint is disabled";
    await db.update(webhookDeliveries).set({ status: "canceled", lastError: why }).where(unchanged);
    return {};
  }
  const attempts = delivery.attempts + 1;
  const claimed = await db
    .update(webhookDeliveries)
    .set({
      attempts,
      lastAttemptAt: now.toISOString(),
      nextAttemptAt: new Date(now.getTime() + ATTEMPT_LEASE_MS).toISOString(),
    })
    .where(unchanged)
    .returning({ id: webhookDeliveries.id });
  if (claimed.length === 0) return {};

  const refused = checkEndpointUrl(endpoint.url, allowedHosts);
  let result: { ok: boolean; statusCode: number | null; error: string | null };
  if (refused) {
    result = { ok: false, statusCode: null, error: `not sent: the URL ${ENDPOINT_URL_PROBLEMS[refused]}` };
  } else {
    const secrets = await db
      .select({ secret: webhookSecrets.secret })
      .from(webhookSecrets)
      .where(eq(webhookSecrets.endpointId, endpoint.id))
      .orderBy(desc(webhookSecrets.createdAt), desc(webhookSecrets.id));
    const body = eventBody(event);
    const headers = await signedHeaders(
      event.id,
      Math.floor(now.getTime() / 1000),
      body,
      secrets.map((s) => s.secret),
    );
    result = await post(endpoint.url, headers, body, options);
  }

  const after = clock.now();
  const mine = and(
    eq(webhookDeliveries.id, deliveryId),
    eq(webhookDeliveries.status, "pending"),
    eq(webhookDeliveries.attempts, attempts),
  );
  const answer = { lastStatusCode: result.statusCode, lastError: result.error };
  if (result.ok) {
    await db
      .update(webhookDeliveries)
      .set({ ...answer, status: "delivered", deliveredAt: after.toISOString() })
      .where(mine);
    return {};
  }
  if (refused || attempts >= MAX_DELIVERY_ATTEMPTS) {
    await db
      .update(webhookDeliveries)
      .set({ ...answer, status: "dead" })
      .where(mine);
    deps.log.warn("webhook delivery given up", { deliveryId, endpointId: endpoint.id, attempts, error: result.error });
    return {};
  }
  const retryInSeconds = deliveryRetrySeconds(attempts);
  await db
    .update(webhookDeliveries)
    .set({ ...answer, nextAttemptAt: new Date(after.getTime() + retryInSeconds * 1000).toISOString() })
    .where(mine);
  return { retryInSeconds };
}

/** Marks deliveries the queue gave up on as dead: their consumer failed on every try. */
export async function buryDeliveries(deps: Pick<Deps, "db">, ids: readonly string[]): Promise<void> {
  for (const chunk of chunked(ids, 90)) {
    await deps.db
      .update(webhookDeliveries)
      .set({ status: "dead", lastError: "the events queue gave up on it" })
      .where(and(inArray(webhookDeliveries.id, chunk), eq(webhookDeliveries.status, "pending")));
  }
}

/** A delivery as its organization sees it. */
export interface DeliveryView {
  id: string;
  organizationId: string;
  endpointId: string;
  eventId: string;
  eventType: WebhookDelivery["eventType"];
  status: WebhookDeliveryStatus;
  attempts: number;
  lastStatusCode: number | null;
  lastError: string | null;
  lastAttemptAt: string | null;
  /** When the next attempt is due; null unless pending. */
  nextAttemptAt: string | null;
  deliveredAt: string | null;
  createdAt: string;
}

export function deliveryView(d: WebhookDelivery): DeliveryView {
  return {
    id: d.id,
    organizationId: d.organizationId,
    endpointId: d.endpointId,
    eventId: d.eventId,
    eventType: d.eventType,
    status: d.status,
    attempts: d.attempts,
    lastStatusCode: d.lastStatusCode,
    lastError: d.lastError,
    lastAttemptAt: d.lastAttemptAt,
    nextAttemptAt: d.status === "pending" ? d.nextAttemptAt : null,
    deliveredAt: d.deliveredAt,
    createdAt: d.createdAt,
  };
}

/** Which deliveries a listing shows: one organization's (and one endpoint's), a status, a page. */
export interface DeliveryQuery {
  organizationId?: string;
  endpointId?: string;
  status?: WebhookDeliveryStatus;
  cursor?: string;
  limit: number;
}

/** A page of deliveries, newest first. */
export async function listDeliveries(
  deps: Pick<Deps, "db">,
  query: DeliveryQuery,
): Promise<{ items: DeliveryView[]; nextCursor: string | null }> {
  const conditions: SQL[] = [];
  if (query.organizationId) conditions.push(eq(webhookDeliveries.organizationId, query.organizationId));
  if (query.endpointId) conditions.push(eq(webhookDeliveries.endpointId, query.endpointId));
  if (query.status) conditions.push(eq(webhookDeliveries.status, query.status));
  if (query.cursor) {
    const before = decodeCursor(query.cursor);
    conditions.push(
      or(
        lt(webhookDeliveries.createdAt, before.createdAt),
        and(eq(webhookDeliveries.createdAt, before.createdAt), lt(webhookDeliveries.id, before.id)),
      ) as SQL,
    );
  }
  const rows = await deps.db
    .select()
    .from(webhookDeliveries)
    .where(and(...conditions))
    .orderBy(desc(webhookDeliveries.createdAt), desc(webhookDeliveries.id))
    .limit(query.limit + 1);
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    items: page.map(deliveryView),
    nextCursor: rows.length > query.limit && last ? encodeCursor({ createdAt: last.createdAt, id: last.id }) : null,
  };
}

/**
 * The delivery to send again, checked: it exists (and is the organization's and endpoint's, when
 * given: 404 otherwise), its endpoint is live and enabled, and it is not pending.
 */
async function deliveryToResend(
  deps: Pick<Deps, "db">,
  target: { organizationId?: string; endpointId?: string; deliveryId: string },
): Promise<WebhookDelivery> {
  const conditions: SQL[] = [eq(webhookDeliveries.id, target.deliveryId)];
  if (target.organizationId) conditions.push(eq(webhookDeliveries.organizationId, target.organizationId));
  if (target.endpointId) conditions.push(eq(webhookDeliveries.endpointId, target.endpointId));
  const [delivery] = await deps.db
    .select()
    .from(webhookDeliveries)
    .where(and(...conditions));
  if (!delivery) throw new AppError("not_found", `No delivery ${target.deliveryId}.`);
  const endpoint = await liveEndpoint(deps, delivery.organizationId, delivery.endpointId);
  if (!endpoint.enabled) throw new AppError("invalid_state", "The endpoint is disabled: enable it first.");
  if (delivery.status === "pending") throw new AppError("invalid_state", "This delivery is still being attempted.");
  return delivery;
}

/** The update that makes a delivery pending from its first attempt, unless its status moved since it was read. */
function resendUpdate(deps: Pick<Deps, "db">, delivery: WebhookDelivery, at: string) {
  return deps.db
    .update(webhookDeliveries)
    .set({ status: "pending", attempts: 0, nextAttemptAt: at, deliveredAt: null })
    .where(and(eq(webhookDeliveries.id, delivery.id), eq(webhookDeliveries.status, delivery.status)));
}

/**
 * The audited write of a "send again": the delivery made pending from its first attempt, and the
 * event `webhook.delivery_resent` naming `actor`, the delivery, its endpoint and organization.
 */
async function resendPlan(
  deps: Deps,
  target: { organizationId?: string; endpointId?: string; deliveryId: string },
  actor: string,
): Promise<AuditedWrite<WebhookDelivery>> {
  const delivery = await deliveryToResend(deps, target);
  const at = deps.clock.now().toISOString();
  const next: WebhookDelivery = { ...delivery, status: "pending", attempts: 0, nextAttemptAt: at, deliveredAt: null };
  return {
    statements: [resendUpdate(deps, delivery, at)],
    events: [
      {
        actor,
        action: "webhook.delivery_resent",
        subjectType: "webhook_delivery",
        subjectId: delivery.id,
        data: {
          deliveryId: delivery.id,
          endpointId: delivery.endpointId,
          organizationId: delivery.organizationId,
          eventId: delivery.eventId,
          eventType: delivery.eventType,
          previousStatus: delivery.status,
        },
      },
    ],
    result: next,
  };
}

/**
 * A member's "send again" of one of their organization's deliveries, through one of its endpoints
 * (404 for another organization's): a dead, canceled or delivered one, to its endpoint, which
 * must be live and enabled. The receiver gets the same `webhook-id`, as the same event. Audited as
 * an operator's is, in the member's name; their membership is read inside the write
 * (`memberNow`), so a resend landing after they were removed or lowered below admin is refused.
 */
export async function resendDelivery(
  deps: Deps & Pick<Services, "auditAnchor">,
  queue: Queue,
  member: MemberPrincipal,
  target: { endpointId: string; deliveryId: string },
): Promise<DeliveryView> {
  const resent = await writeAudited(deps, async () => {
    const me = await memberNow(deps, member, "admin");
    return resendPlan(deps, { ...target, organizationId: me.organizationId }, userActor(me.user));
  });
  await queueDeliveries(deps, queue, [resent.id]);
  return deliveryView(resent);
}

/**
 * An operator's "send again" of any organization's delivery, as `resendDelivery` does it, with the
 * audit event `webhook.delivery_resent` naming the operator in the same write. An operator party
 * to the delivery's organization (`admin/conflict.ts`) is refused, the attempt audited as
 * `webhook.delivery_resend_refused`: the resend acts for the organization, whose own members
 * resend through their own API. The check is inside the write's plan, so an operator who joins the
 * organization while the resend is under way is refused too.
 */
export async function resendDeliveryForOperator(
  deps: Deps & Pick<Services, "auditAnchor">,
  queue: Queue,
  deliveryId: string,
  operator: Pick<AdminIdentity, "email">,
): Promise<DeliveryView> {
  const resent = await writeAuditedUnlessParty<WebhookDelivery>(deps, async () => {
    const plan = await resendPlan(deps, { deliveryId }, reviewerActor(operator));
    const { organizationId } = plan.result;
    const refused = await refusalIfParty(
      deps.db,
      operator,
      { organizationId },
      {
        action: "webhook.delivery_resend_refused",
        subjectType: "webhook_delivery",
        subjectId: deliveryId,
        data: { deliveryId, organizationId },
        remedy: "another admin must send it again",
      },
    );
    return refused ?? plan;
  });
  await queueDeliveries(deps, queue, [resent.id]);
  return deliveryView(resent);
}
