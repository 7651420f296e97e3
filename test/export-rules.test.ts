import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { auditEvents, organizationCountries } from "../worker/db/schema";
import { clearCallerCache } from "../worker/inference/access";
import { fixedClock } from "../worker/platform/clock";
import { clearNotedCountries, observedCountry } from "../worker/screening/use-country";
import { accessHeaders, adminToken } from "./helpers/access";
import { scopedBackend } from "./helpers/backends";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const MODEL = "llama-2-7b-chat";
const NOW = "2026-03-02T09:00:00.000Z";

let licenseSha256: string;
beforeEach(async () => {
  clearCallerCache();
  clearNotedCountries();
  licenseSha256 = (await seedLicense()).licenseSha256;
  await seedRevision(MODEL, { "consolidated.00.pth": bytes(4096, 5), "params.json": "{}" });
});

/** A gateway with one inference server for the model, and an organization (declared in DE) with a token. */
async function setup() {
  const clock = fixedClock(NOW);
  const gw = testGateway({
    clock,
    bindings: {
      INFERENCE_BACKENDS: JSON.stringify({ [MODEL]: [{ url: scopedBackend(0).url, timeoutMs: 10_000 }] }),
      INFERENCE_ALLOWED_HOSTS: "127.0.0.1",
    },
  });
  const unique = crypto.randomUUID();
  const access = await approvedToken(gw, licenseSha256, {
    organization: `Org ${unique}`,
    email: `${unique}@example.com`,
  });
  return { gw, clock, ...access };
}

/** Request options from `country` (Cloudflare's `request.cf.country`), or with no `cf` at all. */
function from(country: string | undefined, init: RequestInit = {}): RequestInit {
  return (country === undefined ? init : { ...init, cf: { country } }) as RequestInit;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function chat(token: string, country: string | undefined) {
  return from(country, {
    method: "POST",
    headers: { ...bearer(token), "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "hi" }], max_tokens: 3 }),
  });
}

describe("export rules at use time", () => {
  it("reads the observed country from cf, and none from a request without it or from an unknown origin", () => {
    expect(observedCountry(new Request("http://gw/", from("ir")))).toBe("IR");
    expect(observedCountry(new Request("http://gw/"))).toBeUndefined();
    expect(observedCountry(new Request("http://gw/", from("XX")))).toBeUndefined();
  });

  it("refuses the manifest and every signed link from an embargoed country, and serves the same token elsewhere", async () => {
    const { gw, token } = await setup();
    const refused = await gw.request(`/v1/models/${MODEL}/manifest`, from("IR", { headers: bearer(token) }));
    expect(refused.status).toBe(403);
    expect(refused.headers.get("content-type")).toContain("application/problem+json");
    expect(await refused.json()).toMatchObject({ code: "export_restricted", country: "IR" });
    const script = await gw.request(`/v1/models/${MODEL}/download.sh`, from("KP", { headers: bearer(token) }));
    expect(script.status).toBe(403);

    const allowed = await gw.request(`/v1/models/${MODEL}/manifest`, from("DE", { headers: bearer(token) }));
    expect(allowed.status).toBe(200);
    const manifest = (await allowed.json()) as { files: { path: string; url: string }[] };
    const file = manifest.files.find((f) => f.path === "params.json");
    const link = new URL(file?.url ?? "");
    const path = link.pathname + link.search;

    const blocked = await gw.request(path, from("CU"));
    expect(blocked.status).toBe(403);
    expect(await blocked.json()).toMatchObject({ code: "export_restricted", country: "CU" });
    const served = await gw.request(path, from("DE"));
    expect(served.status).toBe(200);
    expect(await served.text()).toBe("{}");
    // No observed country (a local run): allowed.
    expect((await gw.request(path)).status).toBe(200);
    expect((await gw.request(`/v1/models/${MODEL}/manifest`, { headers: bearer(token) })).status).toBe(200);
  });

  it("refuses the Hub API with the Hub's error headers and the same code", async () => {
    const { gw, token } = await setup();
    const headers = { authorization: `Bearer hf_${token}` };
    const resolve = await gw.request(
      "/meta-llama/Llama-2-7b-chat-hf/resolve/main/params.json",
      from("IR", { headers }),
    );
    expect(resolve.status).toBe(403);
    expect(resolve.headers.get("x-error-code")).toBe("GatedRepo");
    expect(await resolve.json()).toMatchObject({ code: "export_restricted", country: "IR" });
    const tree = await gw.request("/api/models/meta-llama/Llama-2-7b-chat-hf/tree/main", from("IR", { headers }));
    expect(tree.status).toBe(403);
    expect(
      (await gw.request("/api/models/meta-llama/Llama-2-7b-chat-hf/tree/main", from("DE", { headers }))).status,
    ).toBe(200);
  });

  it("refuses inference from an embargoed country in OpenAI's error shape, and serves it elsewhere", async () => {
    const { gw, token } = await setup();
    const refused = await gw.request("/v1/chat/completions", chat(token, "IR"));
    expect(refused.status).toBe(403);
    const body = (await refused.json()) as { error: { code: string; type: string; message: string } };
    expect(body.error).toMatchObject({ code: "export_restricted", type: "invalid_request_error" });
    expect(body.error.message).toContain("IR");
    expect((await gw.request("/v1/chat/completions", chat(token, "DE"))).status).toBe(200);
    expect((await gw.request("/v1/chat/completions", chat(token, undefined))).status).toBe(200);
  });

  it("notes each country once a day and flags one other than the declared country for reviewers", async () => {
    const { gw, clock, token } = await setup();
    for (const country of ["DE", "FR", "FR", "IR"]) {
      await gw.request(`/v1/models/${MODEL}/manifest`, from(country, { headers: bearer(token) }));
    }
    const sightings = await gw.db.select().from(organizationCountries);
    expect(sightings.map((s) => [s.country, s.refused]).sort()).toEqual([
      ["DE", false],
      ["FR", false],
      ["IR", true],
    ]);
    const organizationId = sightings[0]?.organizationId as string;
    const flags = () => gw.db.select().from(auditEvents).where(eq(auditEvents.action, "export.country_mismatch"));
    expect((await flags()).map((e) => [e.subjectId, e.data.observedCountry]).sort()).toEqual([
      [organizationId, "FR"],
      [organizationId, "IR"],
    ]);
    // The next day: FR is noted again, but flagged once only.
    clock.advance(86_400_000);
    clearNotedCountries();
    await gw.request(`/v1/models/${MODEL}/manifest`, from("FR", { headers: bearer(token) }));
    expect(await flags()).toHaveLength(2);

    const reviewer = await adminToken({ role: "reviewer", issuedAt: clock.now() });
    const res = await gw.request("/admin/api/flags/countries?days=7", { headers: accessHeaders(reviewer) });
    expect(res.status).toBe(200);
    const listed = (await res.json()) as {
      organizations: { organizationId: string; declaredCountry: string; mismatchDays: number; countries: unknown[] }[];
    };
    expect(listed.organizations).toEqual([
      expect.objectContaining({
        organizationId,
        declaredCountry: "DE",
        mismatchDays: 3,
        countries: expect.arrayContaining([
          expect.objectContaining({ country: "FR", days: 2, refused: false }),
          expect.objectContaining({ country: "IR", days: 1, refused: true }),
        ]),
      }),
    ]);
  });
});
