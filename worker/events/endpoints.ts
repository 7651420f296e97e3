/**
 * An organization's webhook endpoints: added, changed and removed by its admins and owners, each
 * change audited. Every query names the organization of the member asking, so another
 * organization's endpoint is not found (404), never refused in a way that says it exists.
 */
import { and, asc, count, desc, eq, inArray, isNull } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { type AuditEntry, writeAudited } from "../audit/log";
import { type MemberPrincipal, memberNow } from "../auth/members";
import { userActor } from "../auth/sign-in";
import {
  type WebhookEndpoint,
  type WebhookEventType,
  webhookDeliveries,
  webhookEndpoints,
  webhookSecrets,
} from "../db/schema";
import { AppError } from "../errors";
import type { Services } from "../services";
import { checkEndpointUrl, ENDPOINT_URL_PROBLEMS } from "./endpoint-url";
import { newSigningSecret } from "./signing";

type Deps = Pick<Services, "db" | "clock" | "ids" | "auditAnchor">;

/** Endpoints one organization may have; enough for every system it runs, few enough to fan out to. */
export const MAX_ENDPOINTS_PER_ORGANIZATION = 20;

/** An endpoint as its organization sees it; secrets only by id and age. */
export interface EndpointView {
  id: string;
  url: string;
  description: string | null;
  events: WebhookEventType[];
  enabled: boolean;
  secrets: { id: string; createdAt: string }[];
  createdAt: string;
  updatedAt: string;
}

/** What an endpoint is made with. */
export interface EndpointInput {
  url: string;
  events: WebhookEventType[];
  description?: string | null;
  enabled?: boolean;
}

/** A secret as answered once, when it is made. */
export interface NewSecret {
  id: string;
  secret: string;
  createdAt: string;
}

/** The URL as stored, or a 400 naming the field and why. */
function acceptedUrl(raw: string, allowedHosts: readonly string[]): string {
  const problem = checkEndpointUrl(raw, allowedHosts);
  if (problem) {
    throw new AppError("validation_failed", `The URL ${ENDPOINT_URL_PROBLEMS[problem]}.`, {
      errors: [{ field: "url", message: ENDPOINT_URL_PROBLEMS[problem] }],
      extensions: { urlProblem: problem },
    });
  }
  return raw.trim();
}

async function secretsOf(deps: Pick<Deps, "db">, endpointIds: readonly string[]) {
  if (endpointIds.length === 0) return new Map<string, { id: string; createdAt: string }[]>();
  const rows = await deps.db
    .select({ id: webhookSecrets.id, endpointId: webhookSecrets.endpointId, createdAt: webhookSecrets.createdAt })
    .from(webhookSecrets)
    .where(inArray(webhookSecrets.endpointId, [...endpointIds]))
    .orderBy(desc(webhookSecrets.createdAt), desc(webhookSecrets.id));
  const out = new Map<string, { id: string; createdAt: string }[]>();
  for (const row of rows) {
    const list = out.get(row.endpointId) ?? [];
    list.push({ id: row.id, createdAt: row.createdAt });
    out.set(row.endpointId, list);
  }
  return out;
}

function viewOf(endpoint: WebhookEndpoint, secrets: { id: string; createdAt: string }[]): EndpointView {
  return {
    id: endpoint.id,
    url: endpoint.url,
    description: endpoint.description,
    events: endpoint.eventTypes,
    enabled: endpoint.enabled,
    secrets,
    createdAt: endpoint.createdAt,
    updatedAt: endpoint.updatedAt,
  };
}

/** The organization's live endpoint `id`; 404 for any other, another organization's included. */
export async function liveEndpoint(
  deps: Pick<Deps, "db">,
  organizationId: string,
  id: string,
): Promise<WebhookEndpoint> {
  const [endpoint] = await deps.db
    .select()
    .from(webhookEndpoints)
    .where(
      and(
        eq(webhookEndpoints.id, id),
        eq(webhookEndpoints.organizationId, organizationId),
        isNull(webhookEndpoints.deletedAt),
      ),
    );
  if (!endpoint) throw new AppError("not_found", `No webhook endpoint ${id}.`);
  return endpoint;
}

/** The organization's live endpoints, oldest first. */
export async function listEndpoints(deps: Pick<Deps, "db">, organizationId: string): Promise<EndpointView[]> {
  const endpoints = await deps.db
    .select()
    .from(webhookEndpoints)
    .where(and(eq(webhookEndpoints.organizationId, organizationId), isNull(webhookEndpoints.deletedAt)))
    .orderBy(asc(webhookEndpoints.createdAt), asc(webhookEndpoints.id));
  const secrets = await secretsOf(
    deps,
    endpoints.map((e) => e.id),
  );
  return endpoints.map((e) => viewOf(e, secrets.get(e.id) ?? []));
}

/** One of the organization's endpoints. */
export async function readEndpoint(deps: Pick<Deps, "db">, organizationId: string, id: string) {
  const endpoint = await liveEndpoint(deps, organizationId, id);
  return viewOf(endpoint, (await secretsOf(deps, [id])).get(id) ?? []);
}

function audited(member: MemberPrincipal, action: string, endpointId: string, data: Record<string, unknown>) {
  return {
    actor: userActor(member.user),
    action,
    subjectType: "organization",
    subjectId: member.organizationId,
    data: { endpointId, ...data },
  } satisfies AuditEntry;
}

/**
 * Adds an endpoint with its first signing secret, answered once here. At most
 * `MAX_ENDPOINTS_PER_ORGANIZATION` live ones (409 `conflict` past that).
 */
export async function createEndpoint(
  deps: Deps,
  member: MemberPrincipal,
  input: EndpointInput,
  allowedHosts: readonly string[],
): Promise<{ endpoint: EndpointView; secret: NewSecret }> {
  const url = acceptedUrl(input.url, allowedHosts);
  return writeAudited(deps, async () => {
    await memberNow(deps, member, "admin");
    const [live] = await deps.db
      .select({ n: count() })
      .from(webhookEndpoints)
      .where(and(eq(webhookEndpoints.organizationId, member.organizationId), isNull(webhookEndpoints.deletedAt)));
    if ((live?.n ?? 0) >= MAX_ENDPOINTS_PER_ORGANIZATION) {
      throw new AppError(
        "conflict",
        `An organization has at most ${MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints.`,
      );
    }
    const at = deps.clock.now().toISOString();
    const endpoint: WebhookEndpoint = {
      id: deps.ids.id("whe"),
      organizationId: member.organizationId,
      url,
      description: input.description ?? null,
      eventTypes: [...new Set(input.events)],
      enabled: input.enabled ?? true,
      createdBy: member.user.id,
      createdAt: at,
      updatedAt: at,
      deletedAt: null,
    };
    const secret: NewSecret = { id: deps.ids.id("whs"), secret: newSigningSecret(), createdAt: at };
    return {
      statements: [
        deps.db.insert(webhookEndpoints).values(endpoint),
        deps.db.insert(webhookSecrets).values({ ...secret, endpointId: endpoint.id }),
      ],
      events: [audited(member, "webhook.endpoint_added", endpoint.id, { url, events: endpoint.eventTypes })],
      result: { endpoint: viewOf(endpoint, [{ id: secret.id, createdAt: at }]), secret },
    };
  });
}

/** Changes an endpoint's URL, events, description or whether it is enabled. */
export async function updateEndpoint(
  deps: Deps,
  member: MemberPrincipal,
  id: string,
  patch: Partial<EndpointInput>,
  allowedHosts: readonly string[],
): Promise<EndpointView> {
  const url = patch.url === undefined ? undefined : acceptedUrl(patch.url, allowedHosts);
  return writeAudited(deps, async () => {
    await memberNow(deps, member, "admin");
    const current = await liveEndpoint(deps, member.organizationId, id);
    const next: WebhookEndpoint = {
      ...current,
      url: url ?? current.url,
      eventTypes: patch.events ? [...new Set(patch.events)] : current.eventTypes,
      description: patch.description === undefined ? current.description : patch.description,
      enabled: patch.enabled ?? current.enabled,
      updatedAt: deps.clock.now().toISOString(),
    };
    const changes: Record<string, { from: unknown; to: unknown }> = {};
    if (next.url !== current.url) changes.url = { from: current.url, to: next.url };
    if (next.eventTypes.join() !== current.eventTypes.join())
      changes.events = { from: current.eventTypes, to: next.eventTypes };
    if (next.enabled !== current.enabled) changes.enabled = { from: current.enabled, to: next.enabled };
    if (next.description !== current.description)
      changes.description = { from: current.description, to: next.description };
    const secrets = (await secretsOf(deps, [id])).get(id) ?? [];
    if (Object.keys(changes).length === 0) return { statements: [], events: [], result: viewOf(current, secrets) };
    const statements: BatchItem<"sqlite">[] = [
      deps.db
        .update(webhookEndpoints)
        .set(next)
        .where(and(eq(webhookEndpoints.id, id), isNull(webhookEndpoints.deletedAt))),
    ];
    // A disabled endpoint receives nothing: what waits for it is canceled in the same write, not
    // sent should it be enabled again (perhaps at another URL) before the queue got to it.
    if (current.enabled && !next.enabled) {
      statements.push(
        deps.db
          .update(webhookDeliveries)
          .set({ status: "canceled", lastError: "the endpoint was disabled" })
          .where(and(eq(webhookDeliveries.endpointId, id), eq(webhookDeliveries.status, "pending"))),
      );
    }
    return {
      statements,
      events: [audited(member, "webhook.endpoint_changed", id, { changes })],
      result: viewOf(next, secrets),
    };
  });
}

/**
 * Removes an endpoint: it receives nothing more, and deliveries still waiting for it are canceled
 * in the same write. Its past deliveries stay, for the record.
 */
export async function removeEndpoint(deps: Deps, member: MemberPrincipal, id: string): Promise<EndpointView> {
  return writeAudited(deps, async () => {
    await memberNow(deps, member, "admin");
    const current = await liveEndpoint(deps, member.organizationId, id);
    const at = deps.clock.now().toISOString();
    const statements: BatchItem<"sqlite">[] = [
      deps.db
        .update(webhookEndpoints)
        .set({ deletedAt: at, enabled: false, updatedAt: at })
        .where(eq(webhookEndpoints.id, id)),
      deps.db
        .update(webhookDeliveries)
        .set({ status: "canceled", lastError: "the endpoint was removed" })
        .where(and(eq(webhookDeliveries.endpointId, id), eq(webhookDeliveries.status, "pending"))),
    ];
    return {
      statements,
      events: [audited(member, "webhook.endpoint_removed", id, { url: current.url })],
      result: viewOf({ ...current, enabled: false, updatedAt: at }, []),
    };
  });
}

/**
 * Adds a signing secret to an endpoint, answered once here. The older ones keep signing every
 * delivery beside it until they are removed, so the receiver can switch when it is ready.
 */
export async function addSecret(deps: Deps, member: MemberPrincipal, endpointId: string): Promise<NewSecret> {
  return writeAudited(deps, async () => {
    await memberNow(deps, member, "admin");
    await liveEndpoint(deps, member.organizationId, endpointId);
    const secret: NewSecret = {
      id: deps.ids.id("whs"),
      secret: newSigningSecret(),
      createdAt: deps.clock.now().toISOString(),
    };
    return {
      statements: [deps.db.insert(webhookSecrets).values({ ...secret, endpointId })],
      events: [audited(member, "webhook.secret_added", endpointId, { secretId: secret.id })],
      result: secret,
    };
  });
}

/** Removes one of an endpoint's secrets; its last one stays (409 `invalid_state`). */
export async function removeSecret(
  deps: Deps,
  member: MemberPrincipal,
  endpointId: string,
  secretId: string,
): Promise<EndpointView> {
  return writeAudited(deps, async () => {
    await memberNow(deps, member, "admin");
    const endpoint = await liveEndpoint(deps, member.organizationId, endpointId);
    const secrets = (await secretsOf(deps, [endpointId])).get(endpointId) ?? [];
    if (!secrets.some((s) => s.id === secretId))
      throw new AppError("not_found", `No secret ${secretId} on this endpoint.`);
    if (secrets.length === 1) {
      throw new AppError("invalid_state", "This is the endpoint's only secret: add a new one before removing it.");
    }
    return {
      statements: [
        deps.db
          .delete(webhookSecrets)
          .where(and(eq(webhookSecrets.id, secretId), eq(webhookSecrets.endpointId, endpointId))),
      ],
      events: [audited(member, "webhook.secret_removed", endpointId, { secretId })],
      result: viewOf(
        endpoint,
        secrets.filter((s) => s.id !== secretId),
      ),
    };
  });
}
