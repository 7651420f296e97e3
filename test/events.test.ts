/**
 * Events out: organizations' webhook endpoints receive signed events (checked here with the
 * Standard Webhooks verification written from the specification, not with the gateway's signer),
 * retried with backoff, dead-lettered and sent again; endpoint URLs are held to the inference
 * servers' address rules; organizations never reach each other's endpoints; and reviewers are
 * told of new and ageing cases once each.
 */
import { createExecutionContext, createMessageBatch, getQueueResult, waitOnExecutionContext } from "cloudflare:test";
import { env } from "cloudflare:workers";
import { and, eq } from "drizzle-orm";
import type Stripe from "stripe";
import { beforeEach, describe, expect, it, vi } from "vitest";
import { verifyAuditChain } from "../worker/audit/log";
import { handleBillingEvent } from "../worker/billing/webhooks";
import {
  auditEvents,
  billingAccounts,
  grants,
  mailOutbox,
  reviewerNotices,
  webhookDeliveries,
  webhookEndpoints,
  webhookEvents,
} from "../worker/db/schema";
import { publishRevision, type UploadedFile } from "../worker/downloads/catalog";
import { tendEvents } from "../worker/events/cron";
import { deliveryRetrySeconds, dispatchEvents, MAX_DELIVERY_ATTEMPTS } from "../worker/events/deliveries";
import { consumeEventBatch } from "../worker/events/queue";
import { organizationEvent } from "../worker/events/record";
import { tellReviewers } from "../worker/events/reviewers";
import { eventSettings } from "../worker/events/settings";
import type { EventMessage } from "../worker/events/types";
import worker from "../worker/index";
import type { LicenseVersion } from "../worker/licenses/store";
import { accessHeaders, adminToken } from "./helpers/access";
import { type Backend, scopedBackend } from "./helpers/backends";
import { heldWrites } from "./helpers/bindings";
import { seedApplication, seedGrant, seedLicense, testGateway } from "./helpers/fixtures";
import { json } from "./helpers/gateway";
import { joinByInvitation, type SignedInMember, signedInMember } from "./helpers/members";

// ---------------------------------------------------------------------------------------------
// Standard Webhooks verification, as the specification describes it (standard-webhooks.md,
// "Verifying webhooks"): the key is the base64 after `whsec_`; the signed content is
// `${id}.${timestamp}.${body}`; HMAC-SHA256, base64; any of the space-separated `v1,` signatures
// may match, compared in constant time; the timestamp within a tolerance of now.
// ---------------------------------------------------------------------------------------------

const TOLERANCE_SECONDS = 5 * 60;

function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  if (x.length !== y.length) return false;
  let difference = 0;
  for (let i = 0; i < x.length; i++) difference |= (x[i] as number) ^ (y[i] as number);
  return difference === 0;
}

async function verifyStandardWebhook(
  secret: string,
  headers: Record<string, string>,
  body: string,
  nowSeconds: number,
): Promise<boolean> {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (!id || !timestamp || !signatures) return false;
  if (!/^\d+$/.test(timestamp) || Math.abs(nowSeconds - Number(timestamp)) > TOLERANCE_SECONDS) return false;
  if (!secret.startsWith("whsec_")) return false;
  const keyBytes = Uint8Array.from(atob(secret.slice("whsec_".length)), (c) => c.charCodeAt(0));
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const mac = await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(`${id}.${timestamp}.${body}`));
  const expected = btoa(String.fromCharCode(...new Uint8Array(mac)));
  return signatures.split(" ").some((entry) => {
    const comma = entry.indexOf(",");
    return comma > 0 && entry.slice(0, comma) === "v1" && constantTimeEqual(entry.slice(comma + 1), expected);
  });
}

// ---------------------------------------------------------------------------------------------

/** A queue that keeps what is sent to it, so a test hands each message to the consumer itself. */
function recordingQueue() {
  const sent: EventMessage[] = [];
  const queue = {
    async send(body: EventMessage) {
      sent.push(body);
    },
    async sendBatch(messages: Iterable<{ body: EventMessage }>) {
      for (const m of messages) sent.push(m.body);
    },
  };
  return { sent, queue: queue as unknown as Queue };
}

const LOCAL = { WEBHOOK_ALLOWED_HOSTS: "127.0.0.1" };

function gatewayWith(bindings: Partial<Env> & Record<string, unknown> = {}) {
  const recorder = recordingQueue();
  const gw = testGateway(undefined, { ...LOCAL, EVENTS_QUEUE: recorder.queue, ...bindings } as Partial<Env>);
  return { ...gw, queued: recorder.sent, queue: recorder.queue };
}

type Harness = ReturnType<typeof gatewayWith>;

/**
 * Runs messages through the events consumer on the gateway's clock; answers what it acked and
 * retried, with the delay each retry asked for (the test batch itself does not keep delays).
 */
async function consume(h: Harness, bodies: EventMessage[], queueName = "modelgate-events") {
  const batch = createMessageBatch<EventMessage>(
    queueName,
    bodies.map((body, i) => ({ id: `m${i}`, timestamp: h.clock.now(), attempts: 1, body })),
  );
  const retries = batch.messages.map((message) => ({ id: message.id, spy: vi.spyOn(message, "retry") }));
  const ctx = createExecutionContext();
  await consumeEventBatch(batch, h.env, h.services);
  const result = await getQueueResult(batch, ctx);
  await waitOnExecutionContext(ctx);
  const retryMessages = retries.flatMap(({ id, spy }) =>
    spy.mock.calls.map(([options]) => ({ msgId: id, delaySeconds: options?.delaySeconds })),
  );
  expect(retryMessages.map((m) => m.msgId)).toEqual(result.retryMessages.map((m) => m.msgId));
  return { explicitAcks: result.explicitAcks, retryMessages };
}

/** Dispatches recorded events and hands every queued delivery to the consumer once. */
async function dispatchAndConsume(h: Harness) {
  const before = h.queued.length;
  await dispatchEvents(h.services, h.queue);
  const fresh = h.queued.slice(before);
  return { deliveries: fresh.flatMap((m) => ("delivery" in m ? [m.delivery] : [])), result: await consume(h, fresh) };
}

interface CreatedEndpoint {
  endpoint: { id: string; url: string; events: string[]; secrets: { id: string }[] };
  secret: { id: string; secret: string };
}

async function addEndpoint(h: Harness, member: SignedInMember, body: Record<string, unknown>) {
  return h.request("/v1/organization/webhooks", json(body, member.headers));
}

async function createdEndpoint(h: Harness, member: SignedInMember, url: string, events: string[]) {
  const res = await addEndpoint(h, member, { url, events });
  expect(res.status, await res.clone().text()).toBe(201);
  return (await res.json()) as CreatedEndpoint;
}

async function deliveries(h: Harness, member: SignedInMember, endpointId: string, query = "") {
  const res = await h.request(`/v1/organization/webhooks/${endpointId}/deliveries${query}`, {
    headers: member.headers,
  });
  expect(res.status).toBe(200);
  return ((await res.json()) as { items: Record<string, unknown>[] }).items;
}

/** A webhook as the simulator's receiver recorded it: the exact body text, headers lower-cased, the mode it answered in. */
interface ReceivedHook {
  path: string;
  body: string;
  headers: Record<string, string>;
  mode: string;
}

async function hooksReceived(backend: Backend): Promise<ReceivedHook[]> {
  const res = await fetch(`${backend.url}/_sim/requests`);
  return (await res.json()) as ReceivedHook[];
}

const nowSeconds = (h: Harness) => Math.floor(h.clock.now().getTime() / 1000);

describe("dispatching events", () => {
  it("makes every delivery of a burst of events in one cron run, not fifty a minute", async () => {
    const h = gatewayWith();
    const owner = await signedInMember(h, { role: "owner" });
    const backend = scopedBackend(0);
    await createdEndpoint(h, owner, `${backend.url}/hooks/burst`, ["billing.payment_failed"]);
    const burst = Array.from({ length: 130 }, (_, i) =>
      organizationEvent(h.services, owner.organizationId, "billing.payment_failed", {
        invoiceId: `in_${i}`,
        billingStatus: "past_due",
        suspendsAt: null,
      }),
    );
    await h.services.db.batch(burst as unknown as [(typeof burst)[number], ...(typeof burst)[number][]]);
    const report = await tendEvents(h.services, h.env);
    expect(report).toMatchObject({ events: 130, deliveries: 130 });
    const ids = h.queued.flatMap((m) => ("delivery" in m ? [m.delivery] : []));
    expect(new Set(ids).size).toBe(130);
    // Nothing is left for the next minute, and nothing is made twice.
    expect(await tendEvents(h.services, h.env)).toMatchObject({ events: 0, deliveries: 0 });
  });
});

/** A revocation of grant `grt_{suffix}` recorded as an event of the organization, as the grant routes record one. */
function grantRevoked(h: Harness, organizationId: string, suffix: string) {
  return organizationEvent(h.services, organizationId, "grant.revoked", {
    grantId: `grt_${suffix}`,
    applicationId: `app_${suffix}`,
    family: "llama-2",
    from: "active",
    to: "revoked",
    reason: "Terminated.",
  });
}

describe("webhook endpoints receive signed events", () => {
  let h: Harness;
  let license: LicenseVersion;
  let owner: SignedInMember;
  let backend: Backend;

  beforeEach(async () => {
    h = gatewayWith();
    license = await seedLicense(h.services);
    owner = await signedInMember(h, { role: "owner" });
    backend = scopedBackend(0);
  });

  it("delivers a grant suspension once, verifiable with the Standard Webhooks algorithm, and shows the delivery", async () => {
    const { grant } = await seedGrant(h.services, license, { organizationId: owner.organizationId });
    const { endpoint, secret } = await createdEndpoint(h, owner, `${backend.url}/hooks/a`, ["grant.suspended"]);
    expect(secret.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(endpoint.secrets.map((s) => s.id)).toEqual([secret.id]);

    const approver = await adminToken({ email: "approver@example.com", role: "approver" });
    const suspended = await h.request(`/admin/api/grants/${grant.id}/suspend`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ reason: "Abuse report #41." }),
    });
    expect(suspended.status).toBe(200);

    const { deliveries: ids, result } = await dispatchAndConsume(h);
    expect(ids).toHaveLength(1);
    expect(result.explicitAcks).toEqual(["m0"]);
    expect(result.retryMessages).toEqual([]);
    const received = await hooksReceived(backend);
    expect(received).toHaveLength(1);
    const [request] = received;
    const body = request?.body ?? "";
    const headers = request?.headers ?? {};
    expect(request?.path).toBe("/hooks/a");
    expect(headers["content-type"]).toBe("application/json");
    expect(await verifyStandardWebhook(secret.secret, headers, body, nowSeconds(h))).toBe(true);
    // The same check refuses a changed body, another secret and a stale timestamp.
    expect(await verifyStandardWebhook(secret.secret, headers, body.replace("Abuse", "abuse"), nowSeconds(h))).toBe(
      false,
    );
    expect(
      await verifyStandardWebhook(`whsec_${btoa("another secret of 24 bytes")}`, headers, body, nowSeconds(h)),
    ).toBe(false);
    expect(await verifyStandardWebhook(secret.secret, headers, body, nowSeconds(h) + 3600)).toBe(false);
    expect(JSON.parse(body)).toEqual({
      type: "grant.suspended",
      timestamp: h.clock.now().toISOString(),
      data: {
        grantId: grant.id,
        applicationId: grant.applicationId,
        family: "llama-2",
        from: "active",
        to: "suspended",
        reason: "Abuse report #41.",
      },
    });
    const [event] = await h.services.db.select().from(webhookEvents);
    expect(headers["webhook-id"]).toBe(event?.id);

    expect(await deliveries(h, owner, endpoint.id)).toEqual([
      expect.objectContaining({
        id: ids[0],
        eventId: event?.id,
        eventType: "grant.suspended",
        status: "delivered",
        attempts: 1,
        lastStatusCode: 204,
        lastError: null,
        lastAttemptAt: h.clock.now().toISOString(),
        deliveredAt: h.clock.now().toISOString(),
        nextAttemptAt: null,
      }),
    ]);

    // Dispatching again, or a second message for the same delivery, sends nothing more.
    expect((await dispatchAndConsume(h)).deliveries).toEqual([]);
    await consume(h, [{ delivery: ids[0] as string }]);
    expect(await hooksReceived(backend)).toHaveLength(1);
  });

  it("sends only the event types an endpoint subscribed to, and nothing to a disabled endpoint", async () => {
    const wanted = await createdEndpoint(h, owner, `${backend.url}/hooks/wanted`, ["billing.payment_failed"]);
    const other = await createdEndpoint(h, owner, `${backend.url}/hooks/other`, ["grant.revoked"]);
    const disabled = await createdEndpoint(h, owner, `${backend.url}/hooks/off`, ["billing.payment_failed"]);
    const off = await h.request(`/v1/organization/webhooks/${disabled.endpoint.id}`, {
      ...json({ enabled: false }, owner.headers),
      method: "PATCH",
    });
    expect(off.status).toBe(200);
    expect(await off.json()).toMatchObject({ enabled: false });
    await organizationEvent(h.services, owner.organizationId, "billing.payment_failed", {
      invoiceId: "in_1",
      billingStatus: "past_due",
      suspendsAt: null,
    });
    await dispatchAndConsume(h);
    expect((await hooksReceived(backend)).map((r) => r.path)).toEqual(["/hooks/wanted"]);
    expect(await deliveries(h, owner, wanted.endpoint.id)).toHaveLength(1);
    expect(await deliveries(h, owner, other.endpoint.id)).toHaveLength(0);
    expect(await deliveries(h, owner, disabled.endpoint.id)).toHaveLength(0);
  });

  it("cancels what waits for an endpoint when it is disabled, so that enabling it again (at another URL) sends none of it", async () => {
    const { endpoint } = await createdEndpoint(h, owner, `${backend.url}/hooks/old`, ["billing.payment_failed"]);
    await organizationEvent(h.services, owner.organizationId, "billing.payment_failed", {
      invoiceId: "in_off",
      billingStatus: "past_due",
      suspendsAt: null,
    });
    const before = h.queued.length;
    await dispatchEvents(h.services, h.queue);
    const waiting = h.queued.slice(before);
    const patch = (body: Record<string, unknown>) =>
      h.request(`/v1/organization/webhooks/${endpoint.id}`, { ...json(body, owner.headers), method: "PATCH" });
    expect((await patch({ enabled: false })).status).toBe(200);
    expect(await deliveries(h, owner, endpoint.id)).toEqual([
      expect.objectContaining({ status: "canceled", lastError: "the endpoint was disabled" }),
    ]);
    expect((await patch({ enabled: true, url: `${backend.url}/hooks/new` })).status).toBe(200);
    // The message queued before the endpoint was disabled comes only now.
    await consume(h, waiting);
    expect(await hooksReceived(backend)).toEqual([]);
    expect(await deliveries(h, owner, endpoint.id)).toEqual([expect.objectContaining({ status: "canceled" })]);
  });

  it("retries a failing endpoint with growing delays, ignores a message that comes early, then delivers", async () => {
    const { endpoint, secret } = await createdEndpoint(h, owner, `${backend.url}/hooks/flaky`, [
      "billing.payment_failed",
    ]);
    await backend.mode("500", { count: 2 });
    await organizationEvent(h.services, owner.organizationId, "billing.payment_failed", {
      invoiceId: "in_2",
      billingStatus: "past_due",
      suspendsAt: null,
    });
    const first = await dispatchAndConsume(h);
    const id = first.deliveries[0] as string;
    expect(first.result.retryMessages).toEqual([{ msgId: "m0", delaySeconds: 30 }]);
    expect(await deliveries(h, owner, endpoint.id)).toEqual([
      expect.objectContaining({
        status: "pending",
        attempts: 1,
        lastStatusCode: 500,
        lastError: "answered 500",
        nextAttemptAt: new Date(h.clock.now().getTime() + 30_000).toISOString(),
      }),
    ]);

    // A message before the delivery is due (a duplicate, a clock ahead) attempts nothing.
    const early = await consume(h, [{ delivery: id }]);
    expect(early.explicitAcks).toEqual(["m0"]);
    expect(await hooksReceived(backend)).toHaveLength(1);

    h.clock.advance(30_000);
    expect((await consume(h, [{ delivery: id }])).retryMessages).toEqual([
      { msgId: "m0", delaySeconds: deliveryRetrySeconds(2) },
    ]);
    expect(deliveryRetrySeconds(2)).toBe(120);
    h.clock.advance(120_000);
    expect((await consume(h, [{ delivery: id }])).explicitAcks).toEqual(["m0"]);

    const received = await hooksReceived(backend);
    expect(received.map((r) => r.mode)).toEqual(["500", "500", "ok"]);
    // Every attempt is the same message (one webhook-id), signed afresh for its own time.
    expect(new Set(received.map((r) => r.headers["webhook-id"])).size).toBe(1);
    const last = received[2];
    expect(await verifyStandardWebhook(secret.secret, last?.headers ?? {}, last?.body ?? "", nowSeconds(h))).toBe(true);
    expect(await deliveries(h, owner, endpoint.id)).toEqual([
      expect.objectContaining({ status: "delivered", attempts: 3, lastStatusCode: 204 }),
    ]);
  });

  it("gives up after the last attempt, lists the dead letter for the organization and operators, and sends it again", async () => {
    const { endpoint, secret } = await createdEndpoint(h, owner, `${backend.url}/hooks/down`, ["grant.revoked"]);
    await backend.mode("500");
    await grantRevoked(h, owner.organizationId, "x");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    for (let attempt = 2; attempt <= MAX_DELIVERY_ATTEMPTS; attempt++) {
      h.clock.advance(deliveryRetrySeconds(attempt - 1) * 1000);
      const result = await consume(h, [{ delivery: id }]);
      if (attempt < MAX_DELIVERY_ATTEMPTS) expect(result.retryMessages).toHaveLength(1);
      else expect(result.explicitAcks).toEqual(["m0"]);
    }
    expect(await hooksReceived(backend)).toHaveLength(MAX_DELIVERY_ATTEMPTS);
    const dead = expect.objectContaining({
      id,
      status: "dead",
      attempts: MAX_DELIVERY_ATTEMPTS,
      lastStatusCode: 500,
      nextAttemptAt: null,
    });
    expect(await deliveries(h, owner, endpoint.id, "?status=dead")).toEqual([dead]);
    expect(await deliveries(h, owner, endpoint.id, "?status=delivered")).toEqual([]);
    // No further message revives it.
    h.clock.advance(86_400_000);
    await consume(h, [{ delivery: id }]);
    expect(await hooksReceived(backend)).toHaveLength(MAX_DELIVERY_ATTEMPTS);

    const reviewer = await adminToken({ email: "reviewer@example.com", role: "reviewer", issuedAt: h.clock.now() });
    const listed = await h.request("/admin/api/webhooks/deliveries", { headers: accessHeaders(reviewer) });
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as { items: unknown[] }).items).toEqual([
      expect.objectContaining({ id, organizationId: owner.organizationId, status: "dead" }),
    ]);

    await backend.mode("ok");
    const resend = await h.request(`/v1/organization/webhooks/${endpoint.id}/deliveries/${id}/resend`, {
      method: "POST",
      headers: owner.headers,
    });
    expect(resend.status).toBe(202);
    expect(await resend.json()).toMatchObject({ id, status: "pending", attempts: 0 });
    expect(h.queued.at(-1)).toEqual({ delivery: id });
    // Sending a pending delivery again is refused: it is on its way.
    const twice = await h.request(`/v1/organization/webhooks/${endpoint.id}/deliveries/${id}/resend`, {
      method: "POST",
      headers: owner.headers,
    });
    expect(twice.status).toBe(409);
    await consume(h, [{ delivery: id }]);
    const received = await hooksReceived(backend);
    expect(received).toHaveLength(MAX_DELIVERY_ATTEMPTS + 1);
    const last = received.at(-1);
    expect(await verifyStandardWebhook(secret.secret, last?.headers ?? {}, last?.body ?? "", nowSeconds(h))).toBe(true);
    expect(await deliveries(h, owner, endpoint.id)).toEqual([
      expect.objectContaining({ id, status: "delivered", attempts: 1 }),
    ]);
  });

  it("audits an admin's resend of a delivery with the admin's name, the delivery, its endpoint and organization", async () => {
    const { endpoint } = await createdEndpoint(h, owner, `${backend.url}/hooks/resent`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "x");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    const [event] = await h.services.db.select().from(webhookEvents);
    const resendAs = async (role: "reviewer" | "admin") =>
      h.request(`/admin/api/webhooks/deliveries/${id}/resend`, {
        method: "POST",
        headers: accessHeaders(await adminToken({ email: `${role}@example.com`, role, issuedAt: h.clock.now() })),
      });
    expect((await resendAs("reviewer")).status).toBe(403);

    const resend = await resendAs("admin");
    expect(resend.status).toBe(202);
    expect(await resend.json()).toMatchObject({ id, status: "pending", attempts: 0, deliveredAt: null });
    expect(h.queued.at(-1)).toEqual({ delivery: id });
    const audited = await h.services.db
      .select()
      .from(auditEvents)
      .where(eq(auditEvents.action, "webhook.delivery_resent"));
    expect(audited.map((e) => [e.actor, e.subjectType, e.subjectId, e.data])).toEqual([
      [
        "reviewer:admin@example.com",
        "webhook_delivery",
        id,
        {
          deliveryId: id,
          endpointId: endpoint.id,
          organizationId: owner.organizationId,
          eventId: event?.id,
          eventType: "grant.revoked",
          previousStatus: "delivered",
        },
      ],
    ]);
    expect(await verifyAuditChain(h.services.db)).toMatchObject({ ok: true });

    // Refused while it is on its way: nothing more is recorded.
    expect((await resendAs("admin")).status).toBe(409);
    expect(
      await h.services.db.select().from(auditEvents).where(eq(auditEvents.action, "webhook.delivery_resent")),
    ).toHaveLength(1);
    await consume(h, [{ delivery: id }]);
    expect(await hooksReceived(backend)).toHaveLength(2);
  });

  it("audits a member's resend of a delivery in the member's name, as an operator's is", async () => {
    const admin = await signedInMember(h, {
      organizationId: owner.organizationId,
      role: "admin",
      email: "webhooks@acme.example",
    });
    const developer = await signedInMember(h, { organizationId: owner.organizationId, role: "developer" });
    const { endpoint } = await createdEndpoint(h, owner, `${backend.url}/hooks/member`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "m");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    const [event] = await h.services.db.select().from(webhookEvents);
    const path = `/v1/organization/webhooks/${endpoint.id}/deliveries/${id}/resend`;
    const resent = () =>
      h.services.db.select().from(auditEvents).where(eq(auditEvents.action, "webhook.delivery_resent"));

    // A developer may not, and leaves no trace.
    expect((await h.request(path, { method: "POST", headers: developer.headers })).status).toBe(403);
    expect(await resent()).toEqual([]);

    const resend = await h.request(path, { method: "POST", headers: admin.headers });
    expect(resend.status).toBe(202);
    expect(await resend.json()).toMatchObject({ id, status: "pending", attempts: 0, deliveredAt: null });
    expect(h.queued.at(-1)).toEqual({ delivery: id });
    expect((await resent()).map((e) => [e.actor, e.subjectType, e.subjectId, e.data])).toEqual([
      [
        "user:webhooks@acme.example",
        "webhook_delivery",
        id,
        {
          deliveryId: id,
          endpointId: endpoint.id,
          organizationId: owner.organizationId,
          eventId: event?.id,
          eventType: "grant.revoked",
          previousStatus: "delivered",
        },
      ],
    ]);
    expect(await verifyAuditChain(h.services.db)).toMatchObject({ ok: true });
    // Refused while it is on its way: nothing more is recorded.
    expect((await h.request(path, { method: "POST", headers: admin.headers })).status).toBe(409);
    expect(await resent()).toHaveLength(1);
  });

  it("refuses a member's resend that lands after the member was lowered below admin", async () => {
    const admin = await signedInMember(h, { organizationId: owner.organizationId, role: "admin" });
    const { endpoint } = await createdEndpoint(h, owner, `${backend.url}/hooks/held`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "h");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    const queued = h.queued.length;
    const held = heldWrites(1);
    const acting = gatewayWith({ DB: held.db, EVENTS_QUEUE: h.queue });
    const resending = acting.request(`/v1/organization/webhooks/${endpoint.id}/deliveries/${id}/resend`, {
      method: "POST",
      headers: admin.headers,
    });
    // The resend has passed the door and planned its write on the admin role...
    await Promise.race([held.poised, resending]);
    // ...when the owner makes the admin a developer.
    const demoted = await h.request(`/v1/organization/members/${admin.membership.id}`, {
      ...json({ role: "developer" }, owner.headers),
      method: "PATCH",
    });
    expect(demoted.status).toBe(200);
    held.release();
    const res = await resending;
    expect(res.status).toBe(403);
    expect(((await res.json()) as { code: string }).code).toBe("forbidden");
    const [delivery] = await h.services.db.select().from(webhookDeliveries).where(eq(webhookDeliveries.id, id));
    expect(delivery).toMatchObject({ status: "delivered", attempts: 1 });
    expect(h.queued).toHaveLength(queued);
    expect(
      await h.services.db.select().from(auditEvents).where(eq(auditEvents.action, "webhook.delivery_resent")),
    ).toEqual([]);
  });

  it("marks a delivery the events queue dead-lettered as dead, through the worker's queue handler", async () => {
    const { endpoint } = await createdEndpoint(h, owner, `${backend.url}/hooks/dlq`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "y");
    await dispatchEvents(h.services, h.queue);
    const id = (h.queued[0] as { delivery: string }).delivery;
    const batch = createMessageBatch<EventMessage>("modelgate-events-dlq", [
      { id: "d1", timestamp: new Date(), attempts: 1, body: { delivery: id } },
    ]);
    const ctx = createExecutionContext();
    await worker.queue(batch as unknown as MessageBatch<never>, h.env, ctx);
    await waitOnExecutionContext(ctx);
    expect((await getQueueResult(batch, ctx)).explicitAcks).toEqual(["d1"]);
    expect(await deliveries(h, owner, endpoint.id, "?status=dead")).toEqual([
      expect.objectContaining({ id, lastError: "the events queue gave up on it" }),
    ]);
    expect(await hooksReceived(backend)).toHaveLength(0);
  });

  it("signs with every secret while a new one is rolled in, and with the new one alone once the old is removed", async () => {
    const { endpoint, secret: old } = await createdEndpoint(h, owner, `${backend.url}/hooks/rotate`, [
      "billing.payment_failed",
    ]);
    const rotated = await h.request(`/v1/organization/webhooks/${endpoint.id}/secrets`, {
      method: "POST",
      headers: owner.headers,
    });
    expect(rotated.status).toBe(201);
    const fresh = (await rotated.json()) as { id: string; secret: string };
    expect(fresh.secret).not.toBe(old.secret);
    const record = () =>
      organizationEvent(h.services, owner.organizationId, "billing.payment_failed", {
        invoiceId: null,
        billingStatus: "past_due",
        suspendsAt: null,
      });

    await record();
    await dispatchAndConsume(h);
    const during = (await hooksReceived(backend))[0];
    const duringHeaders = during?.headers ?? {};
    expect(duringHeaders["webhook-signature"]?.split(" ")).toHaveLength(2);
    for (const s of [old.secret, fresh.secret]) {
      expect(await verifyStandardWebhook(s, duringHeaders, during?.body ?? "", nowSeconds(h))).toBe(true);
    }

    const removed = await h.request(`/v1/organization/webhooks/${endpoint.id}/secrets/${old.id}`, {
      method: "DELETE",
      headers: owner.headers,
    });
    expect(removed.status).toBe(200);
    expect(((await removed.json()) as { secrets: { id: string }[] }).secrets.map((s) => s.id)).toEqual([fresh.id]);
    await record();
    await dispatchAndConsume(h);
    const after = (await hooksReceived(backend))[1];
    const afterHeaders = after?.headers ?? {};
    expect(afterHeaders["webhook-signature"]?.split(" ")).toHaveLength(1);
    expect(await verifyStandardWebhook(fresh.secret, afterHeaders, after?.body ?? "", nowSeconds(h))).toBe(true);
    expect(await verifyStandardWebhook(old.secret, afterHeaders, after?.body ?? "", nowSeconds(h))).toBe(false);

    const last = await h.request(`/v1/organization/webhooks/${endpoint.id}/secrets/${fresh.id}`, {
      method: "DELETE",
      headers: owner.headers,
    });
    expect(last.status).toBe(409);
    expect(((await last.json()) as { code: string }).code).toBe("invalid_state");
  });
});

describe("webhook endpoint URLs are held to the inference servers' address rules", () => {
  const refused: [string, string][] = [
    ["http://hooks.example.com/in", "scheme"],
    ["ftp://hooks.example.com/in", "scheme"],
    ["https://user:secret@hooks.example.com/in", "credentials"],
    ["https://127.0.0.1/in", "private_address"],
    ["https://127.1/in", "private_address"],
    ["https://2130706433/in", "private_address"],
    ["https://0x7f000001/in", "private_address"],
    ["https://10.1.2.3/in", "private_address"],
    ["https://192.168.0.10/in", "private_address"],
    ["https://100.64.0.1/in", "private_address"],
    ["https://169.254.169.254/latest/meta-data", "private_address"],
    ["https://localhost/in", "private_address"],
    ["https://hooks.localhost/in", "private_address"],
    ["https://metadata.google.internal/in", "private_address"],
    ["https://[::1]/in", "private_address"],
    ["https://[::]/in", "private_address"],
    ["https://[::ffff:127.0.0.1]/in", "private_address"],
    ["https://[::ffff:a00:1]/in", "private_address"],
    ["https://[::127.0.0.1]/in", "private_address"],
    ["https://[fd00::1]/in", "private_address"],
    ["https://[fe80::1]/in", "private_address"],
    ["https://[64:ff9b::a00:1]/in", "private_address"],
    ["https://[2002:7f00:1::]/in", "private_address"],
    ["not a url", "not_a_url"],
  ];

  it("refuses private, loopback, link-local and metadata hosts in every spelling, and anything but https", async () => {
    const strict = gatewayWith({ WEBHOOK_ALLOWED_HOSTS: "" });
    const owner = await signedInMember(strict, { role: "owner" });
    for (const [url, problem] of refused) {
      const res = await addEndpoint(strict, owner, { url, events: ["grant.revoked"] });
      expect(res.status, url).toBe(400);
      expect(res.headers.get("content-type"), url).toContain("application/problem+json");
      const body = (await res.json()) as { code: string; urlProblem: string; errors: { field: string }[] };
      expect(body, url).toMatchObject({ code: "validation_failed", urlProblem: problem });
      expect(body.errors[0]?.field, url).toBe("url");
    }
    expect(await strict.services.db.select().from(webhookEndpoints)).toEqual([]);
    // The allowance for a local receiver is a host, not a scheme or an address range.
    const h = gatewayWith();
    expect((await addEndpoint(h, owner, { url: "http://127.0.0.1:9/in", events: ["grant.revoked"] })).status).toBe(201);
    expect((await addEndpoint(h, owner, { url: "http://127.0.0.2:9/in", events: ["grant.revoked"] })).status).toBe(400);
    expect(
      (await addEndpoint(h, owner, { url: "https://hooks.example.com/in", events: ["grant.revoked"] })).status,
    ).toBe(201);
    const list = await h.request("/v1/organization/webhooks", { headers: owner.headers });
    expect(((await list.json()) as { endpoints: { url: string }[] }).endpoints.map((e) => e.url).sort()).toEqual([
      "http://127.0.0.1:9/in",
      "https://hooks.example.com/in",
    ]);
  });

  it("refuses a private URL on change too, and never sends to a stored URL the rules now refuse", async () => {
    const backend = scopedBackend(1);
    const allowing = gatewayWith();
    const owner = await signedInMember(allowing, { role: "owner" });
    const { endpoint } = await createdEndpoint(allowing, owner, `${backend.url}/hooks/r`, ["grant.revoked"]);
    const changed = await allowing.request(`/v1/organization/webhooks/${endpoint.id}`, {
      ...json({ url: "https://[fc00::5]/in" }, owner.headers),
      method: "PATCH",
    });
    expect(changed.status).toBe(400);

    // The operator withdraws the allowance: the stored URL is checked again before the attempt.
    const strict = gatewayWith({ WEBHOOK_ALLOWED_HOSTS: "" });
    strict.clock.set(allowing.clock.now());
    await grantRevoked(strict, owner.organizationId, "z");
    const { result } = await dispatchAndConsume(strict);
    expect(result.explicitAcks).toEqual(["m0"]);
    expect(await hooksReceived(backend)).toHaveLength(0);
    expect(await deliveries(strict, owner, endpoint.id)).toEqual([
      expect.objectContaining({
        status: "dead",
        attempts: 1,
        lastStatusCode: null,
        lastError: expect.stringMatching(/^not sent/),
      }),
    ]);
  });
});

describe("who manages an organization's endpoints", () => {
  it("admits its admins and owners, refuses developers, and answers 404 to another organization for every route", async () => {
    const h = gatewayWith();
    const ownerA = await signedInMember(h, { role: "owner" });
    const adminA = await signedInMember(h, { organizationId: ownerA.organizationId, role: "admin" });
    const developerA = await signedInMember(h, { organizationId: ownerA.organizationId, role: "developer" });
    const adminB = await signedInMember(h, { role: "admin" });
    const backend = scopedBackend(2);

    const { endpoint, secret } = await createdEndpoint(h, adminA, `${backend.url}/hooks/a`, ["billing.payment_failed"]);
    await organizationEvent(h.services, ownerA.organizationId, "billing.payment_failed", {
      invoiceId: null,
      billingStatus: "past_due",
      suspendsAt: null,
    });
    const { deliveries: ids } = await dispatchAndConsume(h);
    const deliveryId = ids[0] as string;

    const list = await h.request("/v1/organization/webhooks", { headers: developerA.headers });
    expect(list.status).toBe(403);
    expect(
      (await addEndpoint(h, developerA, { url: "https://hooks.example.com/d", events: ["grant.revoked"] })).status,
    ).toBe(403);

    const base = `/v1/organization/webhooks/${endpoint.id}`;
    const attempts: [string, RequestInit][] = [
      [base, {}],
      [base, { ...json({ enabled: false }), method: "PATCH" }],
      [base, { method: "DELETE" }],
      [`${base}/secrets`, { method: "POST" }],
      [`${base}/secrets/${secret.id}`, { method: "DELETE" }],
      [`${base}/deliveries`, {}],
      [`${base}/deliveries/${deliveryId}/resend`, { method: "POST" }],
    ];
    for (const [path, init] of attempts) {
      const res = await h.request(path, { ...init, headers: { ...(init.headers as object), ...adminB.headers } });
      expect(res.status, `${init.method ?? "GET"} ${path}`).toBe(404);
      expect(((await res.json()) as { code: string }).code).toBe("not_found");
    }
    // Naming the other organization does not help: B's admin is no member of it.
    const named = await h.request(`${base}?organization=${ownerA.organizationId}`, {
      headers: { cookie: adminB.cookie },
    });
    expect(named.status).toBe(403);
    // A's delivery cannot be sent again through an endpoint of B's either.
    const own = await createdEndpoint(h, adminB, "https://hooks.example.org/b", ["billing.payment_failed"]);
    const crossed = await h.request(`/v1/organization/webhooks/${own.endpoint.id}/deliveries/${deliveryId}/resend`, {
      method: "POST",
      headers: adminB.headers,
    });
    expect(crossed.status).toBe(404);
    const listB = await h.request("/v1/organization/webhooks", { headers: adminB.headers });
    expect(((await listB.json()) as { endpoints: { id: string }[] }).endpoints.map((e) => e.id)).toEqual([
      own.endpoint.id,
    ]);

    // Nothing changed for A, and B's events never reach A's endpoint.
    const stillThere = await h.request(base, { headers: ownerA.headers });
    expect(await stillThere.json()).toMatchObject({ id: endpoint.id, enabled: true, secrets: [{ id: secret.id }] });
    await organizationEvent(h.services, adminB.organizationId, "billing.payment_failed", {
      invoiceId: null,
      billingStatus: "past_due",
      suspendsAt: null,
    });
    await dispatchEvents(h.services, h.queue);
    const toA = await h.services.db
      .select()
      .from(webhookDeliveries)
      .where(eq(webhookDeliveries.endpointId, endpoint.id));
    expect(toA.map((d) => d.id)).toEqual([deliveryId]);
  });

  it("refuses a cross-site write from a signed-in admin's browser", async () => {
    const h = gatewayWith();
    const owner = await signedInMember(h, { role: "owner" });
    const res = await h.request(
      "/v1/organization/webhooks",
      json(
        { url: "https://hooks.example.com/x", events: ["grant.revoked"] },
        { ...owner.headers, "sec-fetch-site": "cross-site" },
      ),
    );
    expect(res.status).toBe(403);
    expect(((await res.json()) as { code: string }).code).toBe("cross_site_request");
  });
});

describe("events recorded where things happen", () => {
  it("records a request for information with the reviewer's visible question, and both events of the status change", async () => {
    const h = gatewayWith();
    const license = await seedLicense(h.services);
    const application = await seedApplication(h.services, license);
    const approver = await adminToken({ email: "approver@example.com", role: "approver" });
    const res = await h.request(`/admin/api/applications/${application.id}/decision`, {
      method: "POST",
      headers: accessHeaders(approver),
      body: JSON.stringify({ decision: "request_info", reason: "Which products use it?", visibleToApplicant: true }),
    });
    expect(res.status, await res.clone().text()).toBe(200);
    const events = await h.services.db.select().from(webhookEvents);
    expect(events.map((e) => [e.organizationId, e.type, e.data]).sort()).toEqual([
      [
        application.organizationId,
        "application.info_requested",
        { applicationId: application.id, family: "llama-2", message: "Which products use it?" },
      ],
      [
        application.organizationId,
        "application.status_changed",
        { applicationId: application.id, family: "llama-2", from: "pending_review", to: "info_requested" },
      ],
    ]);
  });

  it("records a failed payment with the end of the grace period", async () => {
    const h = gatewayWith();
    const owner = await signedInMember(h, { role: "owner" });
    const at = h.clock.now().toISOString();
    await h.services.db.insert(billingAccounts).values({
      organizationId: owner.organizationId,
      stripeCustomerId: "cus_events",
      plan: "standard",
      status: "active",
      createdAt: at,
      updatedAt: at,
    });
    const created = Math.floor(h.clock.now().getTime() / 1000);
    const event = {
      id: "evt_payment_failed",
      type: "invoice.payment_failed",
      created,
      data: { object: { id: "in_events", customer: "cus_events" } },
    } as unknown as Stripe.Event;
    expect(await handleBillingEvent(h.services, event)).toBe("applied");
    expect(await handleBillingEvent(h.services, event)).toBe("duplicate");
    const events = await h.services.db.select().from(webhookEvents);
    expect(events.map((e) => [e.organizationId, e.type, e.data])).toEqual([
      [
        owner.organizationId,
        "billing.payment_failed",
        {
          invoiceId: "in_events",
          billingStatus: "past_due",
          suspendsAt: new Date((created + 7 * 86_400) * 1000).toISOString(),
        },
      ],
    ]);
  });

  it("tells an organization once a month when its usage reaches 80 % and 100 % of the monthly budget", async () => {
    const organizationId = `org_quota_${crypto.randomUUID()}`;
    const stub = env.QUOTA.get(env.QUOTA.idFromName(organizationId));
    const limits = { requestsPerMinute: 1_000, tokensPerMinute: 1_000_000, monthlyTokenBudget: 1_000 };
    const now = Date.parse("2026-06-15T12:00:00Z");
    let n = 0;
    const use = (tokens: number) =>
      stub.commit({ settlements: [{ id: `s${n++}`, lease: "gone", reserved: 0, actual: tokens }] }, limits, now);
    const recorded = async () =>
      (await env.DB.prepare("select id, data from webhook_events order by id").all<{ id: string; data: string }>())
        .results;

    await use(799);
    expect(await recorded()).toEqual([]);
    await use(1);
    await vi.waitFor(async () => expect(await recorded()).toHaveLength(1));
    await use(100);
    await use(99);
    await use(1);
    await vi.waitFor(async () => expect(await recorded()).toHaveLength(2));
    await use(500);
    const rows = await recorded();
    expect(rows.map((r) => [r.id, JSON.parse(r.data)])).toEqual([
      [`msg_quota_${organizationId}_2026-06_100`, { month: "2026-06", budget: 1_000, used: 1_000, threshold: 100 }],
      [`msg_quota_${organizationId}_2026-06_80`, { month: "2026-06", budget: 1_000, used: 800, threshold: 80 }],
    ]);
  });

  it("records a new model revision once, for the organizations whose active grant covers the model", async () => {
    const h = gatewayWith();
    const license = await seedLicense(h.services);
    const covered = await signedInMember(h, { role: "owner" });
    const uncovered = await signedInMember(h, { role: "owner" });
    for (const [member, models] of [
      [covered, ["llama-2-7b", "llama-2-7b-chat"]],
      [uncovered, ["llama-2-13b"]],
    ] as const) {
      const { grant } = await seedGrant(h.services, license, { organizationId: member.organizationId });
      await h.services.db
        .update(grants)
        .set({ models: [...models] })
        .where(eq(grants.id, grant.id));
      await createdEndpoint(h, member, "https://hooks.example.com/models", ["model.revision_published"]);
    }
    const files: UploadedFile[] = [
      {
        path: "config.json",
        size: 10,
        sha256: "a".repeat(64),
        r2Key: "k1",
        etag: "e1",
        contentType: "application/json",
      },
      {
        path: "model.safetensors",
        size: 90,
        sha256: "b".repeat(64),
        r2Key: "k2",
        etag: "e2",
        contentType: "application/octet-stream",
      },
    ];
    const publish = async () => {
      const published = await publishRevision(
        h.services.db,
        "llama-2-7b",
        files,
        h.clock.now().toISOString(),
        "operator",
      );
      const [first, ...rest] = published.statements;
      if (first) await h.services.db.batch([first, ...rest]);
      return published.id;
    };
    const revision = await publish();
    await publish();
    const events = await h.services.db.select().from(webhookEvents);
    expect(events.map((e) => [e.id, e.organizationId, e.data])).toEqual([
      [`msg_rev_${revision}`, null, { model: "llama-2-7b", revision, files: 2, bytes: 100 }],
    ]);
    await dispatchEvents(h.services, h.queue);
    const made = await h.services.db.select().from(webhookDeliveries);
    expect(made.map((d) => d.organizationId)).toEqual([covered.organizationId]);
  });
});

describe("reviewers are told of new and ageing cases", () => {
  const ADMIN_ROLES = JSON.stringify({
    reviewer: ["group:modelgate-reviewers", "lead@reviews.example", "*@reviews.example"],
    approver: ["group:modelgate-approvers", "approver@reviews.example", "LEAD@reviews.example"],
    admin: ["group:modelgate-admins", "ops@reviews.example"],
  });

  it("mails the reviewers named by address and posts to the chat once for a new case, and once more past each ageing threshold", async () => {
    const backend = scopedBackend(0);
    const h = gatewayWith({
      ADMIN_ROLES,
      REVIEW_AGEING_HOURS: "48,120",
      REVIEWER_WEBHOOK_URL: `${backend.url}/hooks/chat`,
    });
    const settings = eventSettings(h.env);
    const license = await seedLicense(h.services);
    const application = await seedApplication(h.services, license, {
      organizationName: "Initech see http://evil.example",
      requiredApprovals: 2,
    });
    const mailsTo = async () =>
      (
        await h.services.db
          .select({ to: mailOutbox.to, subject: mailOutbox.subject, text: mailOutbox.text })
          .from(mailOutbox)
          .orderBy(mailOutbox.createdAt, mailOutbox.to)
      ).filter((m) => m.subject.includes(application.id));

    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 1 });
    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 0 });
    const mails = await mailsTo();
    expect(mails.map((m) => [m.to, m.subject])).toEqual([
      ["approver@reviews.example", `New Llama 2 case to review: ${application.id}`],
      ["lead@reviews.example", `New Llama 2 case to review: ${application.id}`],
    ]);
    const text = mails[0]?.text ?? "";
    expect(text).toContain(`http://127.0.0.1:8787/admin/applications/${application.id}`);
    expect(text).toContain("It needs 2 approvers.");
    // The organization's name held a link: it is not repeated.
    expect(text).not.toContain("evil");

    expect(h.queued).toEqual([{ reviewerNotice: { applicationId: application.id, kind: "new" } }]);
    await consume(h, h.queued.splice(0));
    await consume(h, [{ reviewerNotice: { applicationId: application.id, kind: "new" } }]);
    const posted = await hooksReceived(backend);
    expect(posted).toHaveLength(1);
    const chat = JSON.parse(posted[0]?.body ?? "") as { text: string };
    expect(chat).toEqual({
      text: `New Llama 2 case to review: <http://127.0.0.1:8787/admin/applications/${application.id}|${application.id}>`,
    });
    const [notice] = await h.services.db
      .select()
      .from(reviewerNotices)
      .where(and(eq(reviewerNotices.applicationId, application.id), eq(reviewerNotices.kind, "new")));
    expect(notice).toMatchObject({ chatState: "sent", chatAttempts: 1 });

    h.clock.advance(47 * 3_600_000);
    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 0 });
    h.clock.advance(3_600_000);
    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 1 });
    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 0 });
    expect((await mailsTo()).map((m) => m.subject)).toEqual([
      `New Llama 2 case to review: ${application.id}`,
      `New Llama 2 case to review: ${application.id}`,
      `Llama 2 case ${application.id} waiting 48 hours`,
      `Llama 2 case ${application.id} waiting 48 hours`,
    ]);
    expect(h.queued).toEqual([{ reviewerNotice: { applicationId: application.id, kind: "ageing:48" } }]);
    await consume(h, h.queued.splice(0));
    expect(JSON.parse((await hooksReceived(backend))[1]?.body ?? "")).toEqual({
      text: `Llama 2 case has waited 48 hours for review: <http://127.0.0.1:8787/admin/applications/${application.id}|${application.id}>`,
    });
    h.clock.advance(72 * 3_600_000);
    expect(await tellReviewers(h.services, settings, h.queue)).toEqual({ told: 1 });
    expect((await mailsTo()).filter((m) => m.subject.endsWith("waiting 120 hours"))).toHaveLength(2);
    expect(h.queued).toEqual([{ reviewerNotice: { applicationId: application.id, kind: "ageing:120" } }]);
  });

  it("tells nobody of a case decided before the cron came, nor of cases older than a day as new", async () => {
    const h = gatewayWith({ ADMIN_ROLES, REVIEW_AGEING_HOURS: "" });
    const license = await seedLicense(h.services);
    await seedApplication(h.services, license, { status: "approved" });
    await seedApplication(h.services, license, {
      createdAt: new Date(h.clock.now().getTime() - 25 * 3_600_000).toISOString(),
    });
    expect(await tellReviewers(h.services, eventSettings(h.env), h.queue)).toEqual({ told: 0 });
    expect(h.queued).toEqual([]);
  });

  it("is run by the every-minute cron with the events' dispatch", async () => {
    const h = gatewayWith({ ADMIN_ROLES });
    const license = await seedLicense(h.services);
    const application = await seedApplication(h.services, license);
    const report = await tendEvents(h.services, h.env);
    expect(report).toMatchObject({ reviewersTold: 1, events: 0 });
    const notices = await h.services.db.select().from(reviewerNotices);
    expect(notices.map((n) => [n.applicationId, n.kind, n.chatState])).toEqual([[application.id, "new", "none"]]);
  });
});

describe("security: an operator party to an organization cannot resend its deliveries", () => {
  it("refuses, audited, an admin who is a member; an admin who is a member elsewhere resends", async () => {
    const h = gatewayWith();
    const owner = await signedInMember(h, { role: "owner" });
    const backend = scopedBackend(0);
    await signedInMember(h, { organizationId: owner.organizationId, email: "insider@ops.example", role: "viewer" });
    await signedInMember(h, { email: "elsewhere@ops.example", role: "owner" });
    await createdEndpoint(h, owner, `${backend.url}/hooks/party`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "p");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    const resendAs = async (email: string) =>
      h.request(`/admin/api/webhooks/deliveries/${id}/resend`, {
        method: "POST",
        headers: accessHeaders(await adminToken({ email, role: "admin", issuedAt: h.clock.now() })),
      });
    const refused = await resendAs("insider@ops.example");
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
    const audited = await h.services.db.select().from(auditEvents).orderBy(auditEvents.seq);
    expect(audited.filter((e) => e.subjectId === id).map((e) => [e.action, e.actor, e.data.conflict])).toEqual([
      ["webhook.delivery_resend_refused", "reviewer:insider@ops.example", "organization_member"],
    ]);
    const resent = await resendAs("elsewhere@ops.example");
    expect(resent.status).toBe(202);
    expect(await resent.json()).toMatchObject({ id, status: "pending" });
  });

  it("refuses an operator who joins the organization while their resend is on its way", async () => {
    const h = gatewayWith();
    const owner = await signedInMember(h, { role: "owner" });
    const backend = scopedBackend(0);
    await createdEndpoint(h, owner, `${backend.url}/hooks/joiner`, ["grant.revoked"]);
    await grantRevoked(h, owner.organizationId, "j");
    const { deliveries: ids } = await dispatchAndConsume(h);
    const id = ids[0] as string;
    const [before] = await h.services.db.select().from(webhookDeliveries).where(eq(webhookDeliveries.id, id));
    // The resend has passed the door and planned while its operator was no party to the organization...
    const held = heldWrites(1);
    const acting = gatewayWith({ DB: held.db });
    const resend = acting.request(`/admin/api/webhooks/deliveries/${id}/resend`, {
      method: "POST",
      headers: accessHeaders(await adminToken({ email: "joiner@ops.example", role: "admin", issuedAt: h.clock.now() })),
    });
    await held.poised;
    // ...when the organization's owner has them join it.
    await joinByInvitation(h, owner, "joiner@ops.example");
    held.release();
    const refused = await resend;
    expect(refused.status).toBe(403);
    expect(await refused.json()).toMatchObject({ code: "conflict_of_interest", conflict: "organization_member" });
    const [after] = await h.services.db.select().from(webhookDeliveries).where(eq(webhookDeliveries.id, id));
    expect(after?.status).toBe(before?.status);
    expect(acting.queued).toEqual([]);
  });
});
