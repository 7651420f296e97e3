/**
 * Applying as an applicant does: submit the form's JSON, read the confirmation link out of the
 * mail the gateway sent to the contact, and use it. Tests of what the policy decides go through
 * here, so every decided case in them had its contact address proven first.
 */
import { expect } from "vitest";
import { json } from "./gateway";

interface Gateway {
  request(path: string, init?: RequestInit): Promise<Response>;
  mailer: { sent: { to: string; subject: string; text: string }[] };
}

/** The token of the newest confirmation link mailed to `email`. */
export function confirmationToken(gateway: Gateway, email: string): string {
  const wanted = email.toLowerCase();
  for (const mail of [...gateway.mailer.sent].reverse()) {
    if (mail.to.toLowerCase() !== wanted) continue;
    const match = /\/applications\/confirm\?token=([A-Za-z0-9_%.-]+)/.exec(mail.text);
    if (match?.[1]) return decodeURIComponent(match[1]);
  }
  throw new Error(`no confirmation link was mailed to ${email}`);
}

/** The decided case, as `POST /v1/applications/confirm` answers it. */
export interface Confirmed {
  applicationId: string;
  status: "approved" | "pending_review" | "info_requested" | "rejected";
  statusUrl: string;
  duplicate: boolean;
  /** The status capability (`mgs_…`) from `statusUrl`. */
  capability: string;
  /** The contact's session cookie, as a `cookie` header value. */
  cookie: string;
}

/** Confirms with a token; the raw response, for tests of refusals. */
export function confirmRequest(gateway: Gateway, token: string, headers: Record<string, string> = {}) {
  return gateway.request("/v1/applications/confirm", json({ token }, headers));
}

/** Submits `body`, expects 201 `awaiting_verification`, and confirms it through the mailed link. */
export async function applyAndConfirm(
  gateway: Gateway,
  body: { contact: { email: string } } & Record<string, unknown>,
  headers: Record<string, string> = {},
): Promise<Confirmed> {
  const submitted = await gateway.request("/v1/applications", json(body, headers));
  expect(submitted.status, await submitted.clone().text()).toBe(201);
  expect(((await submitted.json()) as { status: string }).status).toBe("awaiting_verification");
  const res = await confirmRequest(gateway, confirmationToken(gateway, body.contact.email), headers);
  expect(res.status, await res.clone().text()).toBe(200);
  const result = (await res.json()) as Omit<Confirmed, "capability" | "cookie">;
  const cookie = (res.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
  const capability = new URL(result.statusUrl).searchParams.get("token") ?? "";
  return { ...result, capability, cookie };
}

/**
 * Acme Robotics' application for Llama 2 7B under the license of `licenseSha256`, from `contact`,
 * declared under the threshold: approved at once by the policy.
 */
export function acmeApplication(
  licenseSha256: string,
  contact: { name: string; email: string } = { name: "Ada Lovelace", email: "ada@acme.example" },
) {
  return {
    family: "llama-2",
    organization: { name: "Acme Robotics GmbH", website: "https://acme.example", country: "DE" },
    contact,
    intendedUse: "Customer support assistant for our robot vacuum owners.",
    declaredMau: 120_000,
    models: ["llama-2-7b"],
    licenseSha256,
    acceptLicense: true,
    acceptAup: true,
  };
}
