/**
 * Demo applications, submitted through the public API exactly as an applicant would. Re-running
 * is harmless: the API answers a repeat submission with the case that is already open.
 */

/** A demo case as recorded in `.wrangler/demo.json`. */
export interface DemoCase {
  label: string;
  id: string;
  status: string;
  statusUrl: string;
  reasons: unknown;
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
    models: ["llama-2-7b-chat"],
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

/**
 * Submits the demo applications to a running gateway at `baseUrl`. A repeat submission answers
 * with the open case but not its status link (the gateway mails a fresh one instead), so links
 * from an earlier run, in `previous`, are kept for the same case ids.
 */
export async function seedDemoApplications(baseUrl: string, previous: DemoCase[] = []): Promise<DemoSeedResult> {
  const licenseRes = await fetch(`${baseUrl}/v1/licenses/llama-2`);
  if (!licenseRes.ok) throw new Error(`GET /v1/licenses/llama-2 answered ${licenseRes.status}`);
  const { licenseSha256 } = (await licenseRes.json()) as { licenseSha256: string };

  const cases: DemoCase[] = [];
  for (const { label, ...applicant } of DEMO_APPLICANTS) {
    const res = await fetch(`${baseUrl}/v1/applications`, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify({ family: "llama-2", ...applicant, licenseSha256, acceptLicense: true, acceptAup: true }),
    });
    if (res.status === 404 || res.status === 405) {
      return { ok: false, warning: `POST /v1/applications answered ${res.status}: this build has no application API.` };
    }
    const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    if (res.status !== 200 && res.status !== 201) {
      throw new Error(`POST /v1/applications (${label}) answered ${res.status}: ${JSON.stringify(body)}`);
    }
    const id = String(body.id);
    const earlier = rebase(previous.find((c) => c.id === id)?.statusUrl, baseUrl);
    const statusUrl =
      typeof body.statusUrl === "string" ? body.statusUrl : (earlier ?? "(link sent by e-mail; see the wrangler log)");
    cases.push({ label, id, status: String(body.status), statusUrl, reasons: body.reasons });
  }
  return { ok: true, cases };
}

/** The same path and query on another origin (the port may differ from the earlier run). */
function rebase(url: string | undefined, baseUrl: string): string | undefined {
  if (!url?.startsWith("http")) return undefined;
  const { pathname, search } = new URL(url);
  return `${baseUrl}${pathname}${search}`;
}
