import { env } from "cloudflare:workers";
import type { BatchItem } from "drizzle-orm/batch";
import { createDatabase } from "../../worker/db/client";
import { publishRevision, type UploadedFile } from "../../worker/downloads/catalog";
import { sha256Hex } from "../../worker/platform/hash";
import { json, type testGateway } from "./gateway";

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

/** An approved application for llama-2 and a personal access token minted through the API. */
export async function approvedToken(
  gw: ReturnType<typeof testGateway>,
  licenseSha256: string,
  options: { scopes?: string[]; email?: string; organization?: string } = {},
) {
  const submitted = await gw.request(
    "/v1/applications",
    json({
      family: "llama-2",
      organization: { name: options.organization ?? "Acme Robotics", country: "DE" },
      contact: { name: "Ada", email: options.email ?? "ada@acme.example" },
      intendedUse: "Customer support assistant.",
      declaredMau: 5_000,
      licenseSha256,
      acceptLicense: true,
      acceptAup: true,
    }),
  );
  const app = (await submitted.json()) as { id: string; status: string; statusUrl: string };
  if (app.status !== "approved") throw new Error(`expected an approved application, got ${app.status}`);
  const capability = new URL(app.statusUrl).searchParams.get("token") as string;
  const minted = await gw.request(
    `/v1/applications/${app.id}/tokens`,
    json(
      { name: "ci", scopes: options.scopes ?? ["download", "inference"] },
      { authorization: `Bearer ${capability}` },
    ),
  );
  if (minted.status !== 201) throw new Error(`token mint failed: ${minted.status} ${await minted.text()}`);
  const token = (await minted.json()) as { id: string; token: string };
  return { applicationId: app.id, capability, tokenId: token.id, token: token.token };
}
