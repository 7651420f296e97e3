import { env } from "cloudflare:workers";
import { eq } from "drizzle-orm";
import type { BatchItem } from "drizzle-orm/batch";
import { createDatabase } from "../../worker/db/client";
import { applications, grants, licenseVersions, organizations } from "../../worker/db/schema";
import { publishRevision, type UploadedFile } from "../../worker/downloads/catalog";
import { sha256Hex } from "../../worker/platform/hash";
import { findFamily } from "../../worker/policy/families";
import { json, type testGateway } from "./gateway";
import { signedInMember } from "./members";

/** Deterministic pseudo-random bytes, so a test's files differ from each other but not between runs. */
export function bytes(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed * 2654435761;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** Puts files into R2 and publishes them as the model's `main` revision. */
export async function seedRevision(model: string, files: Record<string, Uint8Array | string>) {
  const uploaded: UploadedFile[] = [];
  for (const [path, content] of Object.entries(files)) {
    const data = typeof content === "string" ? new TextEncoder().encode(content) : content;
    const r2Key = `models/${model}/test/${path}`;
    const object = await env.WEIGHTS.put(r2Key, data);
    if (!object) throw new Error(`R2 refused ${r2Key}`);
    uploaded.push({
      path,
      size: data.byteLength,
      sha256: await sha256Hex(data),
      r2Key,
      etag: object.etag,
      contentType: path.endsWith(".json") ? "application/json" : "application/octet-stream",
    });
  }
  const db = createDatabase(env.DB);
  const published = await publishRevision(db, model, uploaded, new Date().toISOString(), "operator");
  await db.batch(published.statements as [BatchItem<"sqlite">, ...BatchItem<"sqlite">[]]);
  return { revision: published.id, files: uploaded };
}

/** What `approvedToken` seeds and mints. */
export interface ApprovedTokenOptions {
  scopes?: string[];
  /** The signed-in owner's address. */
  email?: string;
  organization?: string;
  /** The models the grant covers; default the whole family. */
  grantModels?: string[];
  /** The token's own models (`POST /v1/tokens` `models`); default all of the grant's. */
  models?: string[];
  limits?: { requestsPerMinute?: number; tokensPerMinute?: number; monthlyTokenBudget?: number };
}

/**
 * An organization with an approved llama-2 application and its active grant (written straight
 * into D1, so tests of weights, the Hub and inference do not depend on the application flow), a
 * signed-in owner, and a personal access token that owner minted through `POST /v1/tokens`.
 */
export async function approvedToken(
  gw: ReturnType<typeof testGateway>,
  licenseSha256: string,
  options: ApprovedTokenOptions = {},
) {
  const { db, ids, clock } = gw.services();
  const at = clock.now().toISOString();
  const [license] = await db.select().from(licenseVersions).where(eq(licenseVersions.licenseSha256, licenseSha256));
  if (!license) throw new Error("approvedToken: load the license first");
  const family = findFamily("llama-2");
  if (!family) throw new Error("llama-2 is not a known family");
  const name = options.organization ?? "Acme Robotics";
  const organizationId = ids.id("org");
  await db.insert(organizations).values({
    id: organizationId,
    name,
    normalizedName: name.toLowerCase().replace(/\s+/g, " ").trim(),
    website: null,
    country: "DE",
    createdAt: at,
  });
  const member = await signedInMember(gw, { organizationId, email: options.email ?? "ada@acme.example", name: "Ada" });
  const models = options.grantModels ?? family.models.map((m) => m.id);
  const applicationId = ids.id("app");
  await db.insert(applications).values({
    id: applicationId,
    family: family.id,
    organizationId,
    organizationName: name,
    website: null,
    country: "DE",
    contactName: "Ada",
    contactEmail: member.user.email,
    contactUserId: member.user.id,
    intendedUse: "Customer support assistant.",
    declaredMau: 5_000,
    models,
    status: "approved",
    policyReasons: [],
    requiredApprovals: 1,
    licenseVersionId: license.id,
    createdAt: at,
    updatedAt: at,
    decidedAt: at,
  });
  const grantId = ids.id("grt");
  await db.insert(grants).values({
    id: grantId,
    applicationId,
    organizationId,
    family: family.id,
    models,
    licenseVersionId: license.id,
    status: "active",
    createdAt: at,
    updatedAt: at,
  });
  const body: Record<string, unknown> = { name: "ci", scopes: options.scopes ?? ["download", "inference"] };
  if (options.models) body.models = options.models;
  if (options.limits) body.limits = options.limits;
  const minted = await gw.request("/v1/tokens", json(body, member.headers));
  if (minted.status !== 201) throw new Error(`token mint failed: ${minted.status} ${await minted.text()}`);
  const token = (await minted.json()) as { id: string; token: string };
  return { applicationId, grantId, member, tokenId: token.id, token: token.token };
}
