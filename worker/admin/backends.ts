/**
 * Inference servers as admins steer them: the pools of every model (those of `INFERENCE_BACKENDS`,
 * read-only here, and those added in the console), and adding, changing, probing and removing the
 * latter. Every change is audited; API keys are sealed at rest and never shown again.
 */
import { z } from "@hono/zod-openapi";
import { asc, eq } from "drizzle-orm";
import { isUniqueViolation, writeAudited } from "../audit/log";
import { type AdminIdentity, currentAdmin } from "../auth/access";
import { adminRoute } from "../auth/admin-door";
import { inferenceBackends } from "../db/schema";
import { AppError } from "../errors";
import { newRouter, problemResponses, readBody } from "../http/router";
import {
  dropHealthOfUnusedUrl,
  forgetStoredBackends,
  sealApiKey,
  sharedHealth,
  shareHealthReports,
  storedBackend,
} from "../inference/backend-store";
import {
  BACKEND_URL_PROBLEMS,
  BackendHealth,
  backendBaseUrl,
  checkBackendUrl,
  healthReport,
} from "../inference/backends";
import { findModel } from "../policy/families";
import type { Services } from "../services";
import { documentedJsonBody, registerBodySchema } from "./body";
import { reviewerActor } from "./conflict";

/** Form fields left empty arrive as "" (text) or null (numbers): both mean "not given". */
const unset = (value: unknown) => (value === "" || value === null ? undefined : value);

const Weight = z.number().positive().max(1000);
const TimeoutMs = z.number().int().min(100).max(600_000);

export const BackendCreateSchema = z
  .strictObject({
    model: z.string().trim().min(1).max(128),
    url: z.string().trim().min(1).max(2048),
    servedModel: z.preprocess(unset, z.string().trim().min(1).max(128).optional()),
    weight: z.preprocess(unset, Weight.default(1)),
    timeoutMs: z.preprocess(unset, TimeoutMs.default(120_000)),
    apiKey: z.preprocess(unset, z.string().min(1).max(4096).optional()),
    enabled: z.boolean().default(true),
  })
  .openapi("InferenceBackendCreate", {
    description:
      "A server for one model. `servedModel`: the name the server serves it under (default: the model id). The API key is sealed at rest and never shown again.",
  });

export const BackendChangeSchema = z
  .strictObject({
    url: z.preprocess(unset, z.string().trim().min(1).max(2048).optional()),
    /** "" or null: the model's own id. */
    servedModel: z.union([z.string().trim().max(128), z.null()]).optional(),
    weight: z.preprocess(unset, Weight.optional()),
    timeoutMs: z.preprocess(unset, TimeoutMs.optional()),
    /** A new key; empty or absent keeps the current one. */
    apiKey: z.preprocess(unset, z.string().min(1).max(4096).optional()),
    clearApiKey: z.boolean().optional(),
    enabled: z.boolean().optional(),
  })
  .openapi("InferenceBackendChange", {
    description:
      "Fields to change; absent ones keep their value. An empty `apiKey` keeps the key; `clearApiKey` removes it.",
  });

const BackendSchema = z
  .object({
    /** Null for servers of `INFERENCE_BACKENDS`, which only a deployment changes. */
    id: z.string().nullable(),
    source: z.enum(["configuration", "console"]),
    model: z.string(),
    url: z.string(),
    servedModel: z.string(),
    weight: z.number(),
    timeoutMs: z.number(),
    hasApiKey: z.boolean(),
    /** False when a stored key does not open with the current `INFERENCE_KEYS_SECRET`: the server is skipped. */
    apiKeyReadable: z.boolean(),
    enabled: z.boolean(),
    createdAt: z.string().nullable(),
    updatedAt: z.string().nullable(),
    /**
     * The last health change the gateway saw (a failed request, a probe, an admin's check),
     * shared by all isolates; null when none was seen.
     */
    health: z
      .object({
        state: z.enum(["up", "down"]),
        /** Why it went down: "connect", "timeout", "status 503", "probe". */
        reason: z.string().nullable(),
        /** When it entered this state. */
        since: z.string(),
        /** When this was last seen. */
        seenAt: z.string(),
      })
      .nullable(),
  })
  .openapi("InferenceBackend");

const BackendListSchema = z
  .object({
    items: z.array(BackendSchema),
    /** Servers of `INFERENCE_BACKENDS` the gateway refuses, and why. */
    refused: z.array(z.object({ model: z.string(), url: z.string(), problem: z.string() })),
    /** Whether console servers can be given API keys (`INFERENCE_KEYS_SECRET` is set). */
    keysSealable: z.boolean(),
  })
  .openapi("InferenceBackendList");

export type BackendView = z.infer<typeof BackendSchema>;
export type BackendList = z.infer<typeof BackendListSchema>;
type StoredRow = typeof inferenceBackends.$inferSelect;
type Deps = Pick<Services, "db" | "clock" | "ids" | "config">;

type Health = Awaited<ReturnType<typeof sharedHealth>>;

function healthView(health: Health, url: string): BackendView["health"] {
  const row = health.get(url);
  return row
    ? { state: row.state, reason: row.reason, since: row.since, seenAt: new Date(row.seenAt).toISOString() }
    : null;
}

async function viewOf(config: Services["config"], row: StoredRow, health: Health): Promise<BackendView> {
  const stored = await storedBackend(config, row);
  const readable = stored.ok || stored.problem !== "key_unreadable";
  return {
    id: row.id,
    source: "console",
    model: row.model,
    url: row.url,
    servedModel: row.servedModel ?? row.model,
    weight: row.weight,
    timeoutMs: row.timeoutMs,
    hasApiKey: row.apiKeySealed !== null,
    apiKeyReadable: readable,
    enabled: row.enabled,
    createdAt: row.createdAt,
    updatedAt: row.updatedAt,
    health: healthView(health, row.url),
  };
}

/** Every model's servers, those of the configuration first, then those added here, by model. */
export async function listInferenceBackends(services: Pick<Services, "db" | "config">): Promise<BackendList> {
  const { config } = services;
  const health = await sharedHealth(services);
  const configured: BackendView[] = [...config.inference.backends.pools].flatMap(([model, pool]) =>
    pool.map((b) => ({
      id: null,
      source: "configuration" as const,
      model,
      url: b.url,
      servedModel: b.servedModel,
      weight: b.weight,
      timeoutMs: b.timeoutMs,
      hasApiKey: b.apiKey !== undefined,
      apiKeyReadable: true,
      enabled: true,
      createdAt: null,
      updatedAt: null,
      health: healthView(health, b.url),
    })),
  );
  const rows = await services.db
    .select()
    .from(inferenceBackends)
    .orderBy(asc(inferenceBackends.model), asc(inferenceBackends.createdAt));
  const stored = await Promise.all(rows.map((row) => viewOf(config, row, health)));
  return {
    items: [...configured, ...stored].sort((a, b) => a.model.localeCompare(b.model)),
    refused: config.inference.backends.refused,
    keysSealable: config.inference.keysSecret !== undefined,
  };
}

/** A URL the gateway may send to, as it will be stored; a 400 naming the field otherwise. */
function acceptedUrl(services: Deps, raw: string): string {
  const problem = checkBackendUrl(raw, services.config.inference.allowedHosts);
  if (problem) {
    throw new AppError("validation_failed", `The URL ${BACKEND_URL_PROBLEMS[problem]}.`, {
      errors: [{ field: "url", message: BACKEND_URL_PROBLEMS[problem] }],
      extensions: { urlProblem: problem },
    });
  }
  return backendBaseUrl(raw);
}

function sealingSecret(services: Deps): string {
  const secret = services.config.inference.keysSecret;
  if (!secret) {
    throw new AppError(
      "invalid_state",
      "This gateway cannot store API keys: set the INFERENCE_KEYS_SECRET secret first, or add the server without a key.",
    );
  }
  return secret;
}

/** Refuses a URL the model's pool already has, from the configuration or the console. */
async function refuseDuplicate(services: Deps, model: string, url: string, except?: string): Promise<void> {
  if (services.config.inference.backends.pools.get(model)?.some((b) => b.url === url)) {
    throw new AppError("conflict", `${url} already serves ${model} through INFERENCE_BACKENDS.`);
  }
  const rows = await services.db
    .select({ id: inferenceBackends.id, url: inferenceBackends.url })
    .from(inferenceBackends)
    .where(eq(inferenceBackends.model, model));
  if (rows.some((r) => r.url === url && r.id !== except)) {
    throw new AppError("conflict", `${url} already serves ${model}.`);
  }
}

/** Adds a server to a model's pool; in force within `BACKENDS_CACHE_MS` in every isolate. */
export async function addInferenceBackend(
  services: Deps,
  admin: Pick<AdminIdentity, "email">,
  input: z.infer<typeof BackendCreateSchema>,
): Promise<BackendView> {
  if (!findModel(input.model)) {
    throw new AppError("validation_failed", `No model ${input.model}.`, {
      errors: [{ field: "model", message: "Unknown model id" }],
    });
  }
  const url = acceptedUrl(services, input.url);
  const id = services.ids.id("bkd");
  const apiKeySealed = input.apiKey ? await sealApiKey(sealingSecret(services), id, input.apiKey) : null;
  const at = services.clock.now().toISOString();
  const row: StoredRow = {
    id,
    model: input.model,
    url,
    servedModel: input.servedModel ?? null,
    weight: input.weight,
    timeoutMs: input.timeoutMs,
    apiKeySealed,
    enabled: input.enabled,
    createdAt: at,
    updatedAt: at,
  };
  try {
    await writeAudited(services, async () => {
      await refuseDuplicate(services, input.model, url);
      return {
        statements: [services.db.insert(inferenceBackends).values(row)],
        events: [
          {
            actor: reviewerActor(admin),
            action: "inference_backend.added",
            subjectType: "inference_backend",
            subjectId: id,
            data: { ...settingsOf(row), apiKey: apiKeySealed ? "set" : "none" },
          },
        ],
        result: undefined,
      };
    });
  } catch (error) {
    if (isUniqueViolation(error, "inference_backends"))
      throw new AppError("conflict", `${url} already serves ${input.model}.`);
    throw error;
  }
  forgetStoredBackends(services.config);
  return viewOf(services.config, row, await sharedHealth(services));
}

/** The settings of a stored server the audit log records (never its key). */
function settingsOf(row: StoredRow) {
  return {
    model: row.model,
    url: row.url,
    servedModel: row.servedModel,
    weight: row.weight,
    timeoutMs: row.timeoutMs,
    enabled: row.enabled,
  };
}

async function storedRow(services: Pick<Services, "db">, id: string): Promise<StoredRow> {
  const [row] = await services.db.select().from(inferenceBackends).where(eq(inferenceBackends.id, id));
  if (!row) throw new AppError("not_found", `No inference server ${id} (servers of INFERENCE_BACKENDS have no id).`);
  return row;
}

/** Changes a stored server; the audit event records each changed setting's old and new value. */
export async function changeInferenceBackend(
  services: Deps,
  admin: Pick<AdminIdentity, "email">,
  id: string,
  change: z.infer<typeof BackendChangeSchema>,
): Promise<BackendView> {
  if (change.apiKey !== undefined && change.clearApiKey) {
    throw new AppError("validation_failed", "Give a new API key or clear it, not both.", {
      errors: [{ field: "apiKey", message: "Not together with clearApiKey" }],
    });
  }
  const url = change.url === undefined ? undefined : acceptedUrl(services, change.url);
  const sealed = change.apiKey === undefined ? undefined : await sealApiKey(sealingSecret(services), id, change.apiKey);
  let updated: StoredRow | undefined;
  try {
    await writeAudited(services, async () => {
      const row = await storedRow(services, id);
      const next: StoredRow = {
        ...row,
        url: url ?? row.url,
        servedModel: change.servedModel === undefined ? row.servedModel : change.servedModel || null,
        weight: change.weight ?? row.weight,
        timeoutMs: change.timeoutMs ?? row.timeoutMs,
        enabled: change.enabled ?? row.enabled,
        apiKeySealed: change.clearApiKey ? null : (sealed ?? row.apiKeySealed),
        updatedAt: services.clock.now().toISOString(),
      };
      if (next.url !== row.url) await refuseDuplicate(services, row.model, next.url, id);
      const before = settingsOf(row);
      const after = settingsOf(next);
      const changes: Record<string, { from: unknown; to: unknown }> = {};
      for (const key of Object.keys(after) as (keyof typeof after)[]) {
        if (before[key] !== after[key]) changes[key] = { from: before[key], to: after[key] };
      }
      if (sealed !== undefined) changes.apiKey = { from: row.apiKeySealed ? "set" : "none", to: "replaced" };
      else if (change.clearApiKey && row.apiKeySealed) changes.apiKey = { from: "set", to: "none" };
      if (Object.keys(changes).length === 0) {
        updated = row;
        return { statements: [], events: [], result: undefined };
      }
      updated = next;
      return {
        statements: [
          services.db.update(inferenceBackends).set(next).where(eq(inferenceBackends.id, id)),
          ...(next.url !== row.url ? dropHealthOfUnusedUrl(services, row.url, id) : []),
        ],
        events: [
          {
            actor: reviewerActor(admin),
            action: "inference_backend.changed",
            subjectType: "inference_backend",
            subjectId: id,
            data: { model: row.model, url: row.url, changes },
          },
        ],
        result: undefined,
      };
    });
  } catch (error) {
    if (isUniqueViolation(error, "inference_backends"))
      throw new AppError("conflict", `${url} already serves this model.`);
    throw error;
  }
  forgetStoredBackends(services.config);
  return viewOf(services.config, updated as StoredRow, await sharedHealth(services));
}

/** Removes a stored server from its pool. */
export async function removeInferenceBackend(
  services: Deps,
  admin: Pick<AdminIdentity, "email">,
  id: string,
): Promise<void> {
  await writeAudited(services, async () => {
    const row = await storedRow(services, id);
    return {
      statements: [
        services.db.delete(inferenceBackends).where(eq(inferenceBackends.id, id)),
        ...dropHealthOfUnusedUrl(services, row.url, id),
      ],
      events: [
        {
          actor: reviewerActor(admin),
          action: "inference_backend.removed",
          subjectType: "inference_backend",
          subjectId: id,
          data: { ...settingsOf(row), apiKey: row.apiKeySealed ? "set" : "none" },
        },
      ],
      result: undefined,
    };
  });
  forgetStoredBackends(services.config);
}

/**
 * Asks a stored server whether it is up, as the gateway's own health checks do (`/health`, then
 * `/v1/models`, with its key), whether or not it is enabled: the way to check a server before
 * turning it on. The answer is shared as the gateway's own probes are: a server found up takes
 * traffic again in every isolate within seconds, one found down is left alone. Since it steers
 * routing, the probe and its outcome are audited (`inference_backend.probed`) before the answer
 * is shared, so no admin's probe changes routing unrecorded.
 */
export async function probeInferenceBackend(
  services: Pick<Services, "db" | "config" | "clock" | "ids" | "auditAnchor">,
  admin: Pick<AdminIdentity, "email">,
  id: string,
): Promise<{ id: string; healthy: boolean; latencyMs: number; detail: string }> {
  const row = await storedRow(services, id);
  const stored = await storedBackend(services.config, row);
  if (!stored.ok) {
    throw new AppError(
      "invalid_state",
      stored.problem === "key_unreadable"
        ? "The server's API key does not open with INFERENCE_KEYS_SECRET; enter the key again before probing."
        : "The server's URL is no longer allowed; change it before probing.",
    );
  }
  const started = Date.now();
  const healthy = await new BackendHealth().probe(stored.backend);
  const latencyMs = Date.now() - started;
  await writeAudited(services, async () => ({
    statements: [],
    events: [
      {
        actor: reviewerActor(admin),
        action: "inference_backend.probed",
        subjectType: "inference_backend",
        subjectId: id,
        data: { model: row.model, url: row.url, enabled: row.enabled, healthy, latencyMs },
      },
    ],
    result: undefined,
  }));
  await shareHealthReports(services, [
    healthReport(stored.backend.url, services.clock.now().getTime(), healthy ? null : "probe"),
  ]);
  return {
    id,
    healthy,
    latencyMs,
    detail: healthy
      ? `Up: answered its health check in ${latencyMs} ms.`
      : "Down: no healthy answer from /health or /v1/models.",
  };
}

const Params = z.object({ id: z.string().min(1).max(100) });

const listRoute = adminRoute("reviewer", {
  method: "get",
  path: "/admin/api/inference-backends",
  summary: "Every model's inference servers",
  responses: {
    200: { description: "The servers", content: { "application/json": { schema: BackendListSchema } } },
    ...problemResponses(401, 403),
  },
});

const addRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/inference-backends",
  summary: "Add an inference server to a model's pool; in force within seconds",
  description:
    "Needs the admin role. The URL must be http(s) and not a private, loopback, link-local or metadata address unless its host is in INFERENCE_ALLOWED_HOSTS.",
  request: { body: documentedJsonBody(BackendCreateSchema, "InferenceBackendCreate") },
  responses: {
    201: { description: "The server", content: { "application/json": { schema: BackendSchema } } },
    ...problemResponses(400, 401, 403, 409, 415),
  },
});

const changeRoute = adminRoute("admin", {
  method: "patch",
  path: "/admin/api/inference-backends/{id}",
  summary: "Change an inference server added in the console; in force within seconds",
  request: { params: Params, body: documentedJsonBody(BackendChangeSchema, "InferenceBackendChange") },
  responses: {
    200: { description: "The server", content: { "application/json": { schema: BackendSchema } } },
    ...problemResponses(400, 401, 403, 404, 409, 415),
  },
});

const removeRoute = adminRoute("admin", {
  method: "delete",
  path: "/admin/api/inference-backends/{id}",
  summary: "Remove an inference server added in the console",
  request: { params: Params },
  responses: {
    200: {
      description: "Removed",
      content: { "application/json": { schema: z.object({ id: z.string(), removed: z.literal(true) }) } },
    },
    ...problemResponses(401, 403, 404),
  },
});

const probeRoute = adminRoute("admin", {
  method: "post",
  path: "/admin/api/inference-backends/{id}/probe",
  summary: "Check whether an inference server added in the console is up",
  description:
    "Needs the admin role. The outcome is shared with every isolate's routing (a server found up takes traffic " +
    "again within seconds), so the probe is audited as `inference_backend.probed`, with its outcome.",
  request: { params: Params },
  responses: {
    200: {
      description: "The health check's outcome",
      content: {
        "application/json": {
          schema: z.object({ id: z.string(), healthy: z.boolean(), latencyMs: z.number(), detail: z.string() }),
        },
      },
    },
    ...problemResponses(401, 403, 404, 409),
  },
});

/** The inference-server routes. */
export const inferenceBackendRoutes = registerBodySchema(
  registerBodySchema(newRouter(), "InferenceBackendCreate", BackendCreateSchema),
  "InferenceBackendChange",
  BackendChangeSchema,
)
  .openapi(listRoute, async (c) => c.json(await listInferenceBackends(c.get("services")), 200))
  .openapi(addRoute, async (c) => {
    const input = await readBody(c, BackendCreateSchema);
    return c.json(await addInferenceBackend(c.get("services"), currentAdmin(c), input), 201);
  })
  .openapi(changeRoute, async (c) => {
    const change = await readBody(c, BackendChangeSchema);
    return c.json(
      await changeInferenceBackend(c.get("services"), currentAdmin(c), c.req.valid("param").id, change),
      200,
    );
  })
  .openapi(removeRoute, async (c) => {
    const { id } = c.req.valid("param");
    await removeInferenceBackend(c.get("services"), currentAdmin(c), id);
    return c.json({ id, removed: true as const }, 200);
  })
  .openapi(probeRoute, async (c) =>
    c.json(await probeInferenceBackend(c.get("services"), currentAdmin(c), c.req.valid("param").id), 200),
  );
