import { env, exports } from "cloudflare:workers";
import { beforeEach, describe, expect, it } from "vitest";
import { loadLicenseVersion } from "../worker/licenses/store";
import { sha256Hex } from "../worker/platform/hash";
import { createServices } from "../worker/services";

describe("GET /v1/licenses/{family}", () => {
  beforeEach(async () => {
    await loadLicenseVersion(createServices(env), {
      family: "llama-2",
      license: "LICENSE v1",
      aup: "AUP v1",
      source: "placeholder",
    });
  });

  it("returns the current version with the documents' hashes", async () => {
    const res = await exports.default.fetch("http://gw/v1/licenses/llama-2");
    expect(res.status).toBe(200);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      family: "llama-2",
      version: 1,
      releaseDate: "2023-07-18",
      mauThreshold: 700_000_000,
      mauMeasuredMonth: "2023-06",
      licenseSha256: await sha256Hex("LICENSE v1"),
      aupSha256: await sha256Hex("AUP v1"),
      placeholderText: true,
    });
  });

  it("serves the texts whose hashes it publishes", async () => {
    const text = await exports.default.fetch("http://gw/v1/licenses/llama-2/text");
    expect(await text.text()).toBe("LICENSE v1");
    const aup = await exports.default.fetch("http://gw/v1/licenses/llama-2/aup");
    expect(await aup.text()).toBe("AUP v1");
  });

  it("loads a new version only when the text changed", async () => {
    const services = createServices(env);
    const again = await loadLicenseVersion(services, {
      family: "llama-2",
      license: "LICENSE v1",
      aup: "AUP v1",
      source: "placeholder",
    });
    expect(again.created).toBe(false);
    const next = await loadLicenseVersion(services, {
      family: "llama-2",
      license: "LICENSE v2",
      aup: "AUP v1",
      source: "official",
    });
    expect(next).toMatchObject({ created: true, version: { version: 2 } });
    const body = (await (await exports.default.fetch("http://gw/v1/licenses/llama-2")).json()) as Record<
      string,
      unknown
    >;
    expect(body).toMatchObject({ version: 2, placeholderText: false, licenseSha256: await sha256Hex("LICENSE v2") });
  });

  it("answers an unknown family with a problem document", async () => {
    const res = await exports.default.fetch("http://gw/v1/licenses/nope");
    expect(res.status).toBe(404);
    expect(res.headers.get("content-type")).toContain("application/problem+json");
    expect(await res.json()).toMatchObject({ code: "not_found", status: 404 });
  });
});
