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

/** The hashes of the texts a confirmation accepts. */
export interface AcceptedTexts {
  licenseSha256: string;
  aupSha256: string;
}

/**
 * What the mail carrying `token` says confirming accepts: the application's license and AUP
 * hashes, as a contact reading the mail (or the link's page) learns them. Undefined when no mail
 * carries the token.
 */
export function mailedTexts(gateway: Gateway, token: string): AcceptedTexts | undefined {
  const mail = gateway.mailer.sent.find((m) => m.text.includes(`token=${encodeURIComponent(token)}`));
  if (!mail) return undefined;
  const licenseSha256 = /^- version \d+ of the .*\(sha256 ([0-9a-f]{64})\)$/m.exec(mail.text)?.[1];
  const aupSha256 = /^- the Acceptable Use Policy .*\(sha256 ([0-9a-f]{64})\)$/m.exec(mail.text)?.[1];
  if (!licenseSha256 || !aupSha256) throw new Error("the confirmation mail names no texts to accept");
  return { licenseSha256, aupSha256 };
}

/** Hashes of no text: what a confirmation of a link no mail carries states. */
const NO_TEXTS: AcceptedTexts = { licenseSha256: "0".repeat(64), aupSha256: "0".repeat(64) };

/**
 * Confirms with a token, accepting the texts its mail names (or `accepted`: `{}` states none);
 * the raw response, for tests of refusals.
 */
export function confirmRequest(
  gateway: Gateway,
  token: string,
  headers: Record<string, string> = {},
  accepted: Partial<AcceptedTexts> = mailedTexts(gateway, token) ?? NO_TEXTS,
) {
  return gateway.request("/v1/applications/confirm", json({ token, ...accepted }, headers));
}

/** The fields the confirmation link's page posts (its hidden inputs), as a browser would post them. */
export async function confirmPageForm(gateway: Gateway, token: string): Promise<URLSearchParams> {
  const page = await gateway.request(`/applications/confirm?token=${encodeURIComponent(token)}`);
  expect(page.status).toBe(200);
  const html = await page.text();
  const form = new URLSearchParams();
  for (const input of html.matchAll(/<input type="hidden" name="(\w+)" value="([^"]*)"\/?>/g)) {
    form.append(input[1] as string, input[2] as string);
  }
  return form;
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
