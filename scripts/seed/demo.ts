/**
 * Demo applications, submitted and confirmed through the public API exactly as an applicant
 * would. Re-running is harmless: a confirmed repeat shows the organization's standing case.
 */

/** A demo case as recorded in `.wrangler/demo.json`. */
export interface DemoCase {
  label: string;
  id: string;
  status: string;
  statusUrl: string;
  contactEmail: string;
  /** The contact's session cookie (`name=value`), from confirming. */
  session: string;
}

interface DemoApplicant {
  label: string;
  organization: { name: string; website: string; country: string };
  contact: { name: string; email: string };
  intendedUse: string;
  declaredMau: number;
  models: string[];
}

/** One small company (approved at once), one over the 700M MAU threshold, one from CN. */
export const DEMO_APPLICANTS: DemoApplicant[] = [
  {
    label: "small company, approved at once",
    organization: { name: "Acme Robotics", website: "https://acme.example", country: "DE" },
    contact: { name: "Ada", email: "ada@acme.example" },
    intendedUse: "Customer support assistant",
    declaredMau: 120_000,
    // Every model: the demo token then pulls any seeded weights and calls any model the simulator serves.
    models: ["llama-2-7b", "llama-2-7b-chat", "llama-2-13b", "llama-2-13b-chat", "llama-2-70b", "llama-2-70b-chat"],
  },
  {
    label: "over 700M MAU, pending review by two approvers",
    organization: { name: "Hyperscale Social", website: "https://hyperscale.example", country: "US" },
    contact: { name: "Grace", email: "grace@hyperscale.example" },
    intendedUse: "Feed ranking explanations for a social network",
    declaredMau: 1_200_000_000,
    models: ["llama-2-70b-chat"],
  },
  {
    label: "applicant in CN, pending review",
    organization: { name: "Lotus Analytics", website: "https://lotus.example", country: "CN" },
    contact: { name: "Lin", email: "lin@lotus.example" },
    intendedUse: "Summarising internal engineering documents",
    declaredMau: 5_000,
    models: ["llama-2-13b-chat"],
  },
];

/** The outcome of seeding: the cases, or why there are none yet. */
export type DemoSeedResult = { ok: true; cases: DemoCase[] } | { ok: false; warning: string };

/** How the seeding reads the mail the gateway sent: an admin's Access token for `/admin/api/mail`. */
export interface MailReader {
  adminToken: string;
}

/**
 * Submits the demo applications to a running gateway at `baseUrl` and confirms each as its
 * contact would, accepting the license applied under: the confirmation link is read from the
 * gateway's own outbox (`GET /admin/api/mail`) and used. A repeat run confirms again and gets the organization's
 * standing case with a fresh status link (the old one ends), and the contact's session cookie.
 */
export async function seedDemoApplications(baseUrl: string, mail: MailReader): Promise<DemoSeedResult> {
  const licenseRes = await fetch(`${baseUrl}/v1/licenses/llama-2`);
  if (!licenseRes.ok) throw new Error(`GET /v1/licenses/llama-2 answered ${licenseRes.status}`);
  const { licenseSha256, aupSha256 } = (await licenseRes.json()) as { licenseSha256: string; aupSha256: string };

  const cases: DemoCase[] = [];
  for (const { label, ...applicant } of DEMO_APPLICANTS) {
    const res = await fetch(`${baseUrl}/v1/applications`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({
        family: "llama-2",
        ...applicant,
        licenseSha256,
        aupSha256,
        acceptLicense: true,
        acceptAup: true,
      }),
    });
    if (res.status === 404 || res.status === 405) {
      return { ok: false, warning: `POST /v1/applications answered ${res.status}: this build has no application API.` };
    }
    const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    if (res.status !== 201) {
      throw new Error(`POST /v1/applications (${label}) answered ${res.status}: ${JSON.stringify(body)}`);
    }
    const token = await confirmationToken(baseUrl, mail, applicant.contact.email);
    const confirmed = await fetch(`${baseUrl}/v1/applications/confirm`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      // Confirming is the contact's acceptance: of the texts applied under, which are these.
      body: JSON.stringify({ token, licenseSha256, aupSha256 }),
    });
    const result = (await confirmed.json().catch(() => ({}))) as Record<string, unknown>;
    if (confirmed.status !== 200) {
      throw new Error(`confirming ${label} answered ${confirmed.status}: ${JSON.stringify(result)}`);
    }
    cases.push({
      label,
      id: String(result.applicationId),
      status: String(result.status),
      statusUrl: String(result.statusUrl),
      contactEmail: applicant.contact.email,
      session: (confirmed.headers.get("set-cookie") ?? "").split(";")[0] ?? "",
    });
  }
  return { ok: true, cases };
}

/** The token of the newest confirmation link in the gateway's outbox for `to`. */
async function confirmationToken(baseUrl: string, mail: MailReader, to: string): Promise<string> {
  // Mail is queued with the write and delivered after the answer: give the outbox a moment.
  for (let attempt = 0; attempt < 20; attempt++) {
    const res = await fetch(`${baseUrl}/admin/api/mail?to=${encodeURIComponent(to)}`, {
      headers: { "cf-access-jwt-assertion": mail.adminToken, accept: "application/json" },
    });
    if (!res.ok) throw new Error(`GET /admin/api/mail answered ${res.status}: ${await res.text()}`);
    const { messages } = (await res.json()) as { messages: { text: string }[] };
    for (const message of messages) {
      const match = /\/applications\/confirm\?token=([^\s]+)/.exec(message.text);
      if (match?.[1]) return decodeURIComponent(match[1]);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`no confirmation link was mailed to ${to}`);
}
