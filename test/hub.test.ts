import { downloadFile, fileExists, listFiles, modelInfo, whoAmI } from "@huggingface/hub";
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { grants } from "../worker/db/schema";
import { sha256Hex } from "../worker/platform/hash";
import { acmeApplication, applyAndConfirm } from "./helpers/apply";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const REPO = "meta-llama/Llama-2-7b-hf";
const SAFETENSORS = bytes(200_000, 11);
let licenseSha256: string;
let revision: string;

beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
  revision = (
    await seedRevision("llama-2-7b", {
      "config.json": '{"architectures":["LlamaForCausalLM"]}',
      "model-00001-of-00002.safetensors": SAFETENSORS,
      "model-00002-of-00002.safetensors": bytes(1234, 12),
      "tokenizer/tokenizer.model": bytes(500, 13),
    })
  ).revision;
});

/**
 * The Hub client's `fetch`, wired to the gateway in this isolate. It follows redirects the way
 * the platform's fetch would, keeping the method and headers (the redirect stays on this origin).
 */
function hubFetch(gw: ReturnType<typeof testGateway>): typeof fetch {
  return async (input, init) => {
    let url = new URL(input instanceof Request ? input.url : String(input));
    for (let hop = 0; hop < 5; hop++) {
      const res = await gw.request(url.pathname + url.search, init);
      const location = res.headers.get("location");
      if (res.status < 300 || res.status >= 400 || !location) return res;
      url = new URL(location, url);
    }
    throw new Error("too many redirects");
  };
}

describe("the real @huggingface/hub client", () => {
  it("lists, inspects and downloads a gated model with an hf_-prefixed modelgate token", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const options = { hubUrl: "http://gw", accessToken: `hf_${token}`, fetch: hubFetch(gw) };

    const info = await modelInfo({ name: REPO, ...options, additionalFields: ["sha"] });
    expect(info).toMatchObject({ name: REPO, gated: "manual", sha: revision });

    const files = [];
    for await (const entry of listFiles({ repo: REPO, recursive: true, ...options })) files.push(entry);
    expect(files.filter((f) => f.type === "file").map((f) => f.path)).toEqual([
      "config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "tokenizer/tokenizer.model",
    ]);
    expect(files.find((f) => f.path === "model-00001-of-00002.safetensors")?.lfs?.oid).toBe(
      await sha256Hex(SAFETENSORS),
    );

    expect(await fileExists({ repo: REPO, path: "config.json", ...options })).toBe(true);
    expect(await fileExists({ repo: REPO, path: "missing.bin", ...options })).toBe(false);

    const blob = await downloadFile({ repo: REPO, path: "model-00001-of-00002.safetensors", ...options });
    expect(blob).not.toBeNull();
    const data = new Uint8Array(await (blob as Blob).arrayBuffer());
    expect(data.byteLength).toBe(SAFETENSORS.byteLength);
    expect(await sha256Hex(data)).toBe(await sha256Hex(SAFETENSORS));
    const slice = new Uint8Array(await (blob as Blob).slice(1000, 1010).arrayBuffer());
    expect(slice).toEqual(SAFETENSORS.slice(1000, 1010));
  });

  it("whoAmI names the token's member, organization and token", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { organization: "Acme Robotics" });
    const options = { hubUrl: "http://gw", accessToken: `hf_${token}`, fetch: hubFetch(gw) };
    const me = await whoAmI(options);
    expect(me).toMatchObject({ type: "user", name: "ada", orgs: [{ name: "Acme Robotics" }] });
    expect(me.auth).toMatchObject({ type: "access_token", accessToken: { displayName: "ci", role: "read" } });
    expect(me.auth.accessToken?.createdAt).toBeInstanceOf(Date);
    // The client reads an error's body only when it is `application/json`; a problem document
    // is not, so it sees the status.
    await expect(whoAmI({ ...options, accessToken: "hf_mg_forged" })).rejects.toMatchObject({ statusCode: 401 });
  });

  it("is told 401 without a token and 403 GatedRepo once the grant is suspended", async () => {
    const gw = testGateway();
    const { token, applicationId } = await approvedToken(gw, licenseSha256);
    const anonymous = await gw.request(`/api/models/${REPO}`);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers.get("x-error-code")).toBe("GatedRepo");

    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, applicationId));
    const res = await gw.request(`/${REPO}/resolve/main/config.json`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(res.status).toBe(403);
    expect(res.headers.get("x-error-code")).toBe("GatedRepo");
    await expect(
      modelInfo({ name: REPO, hubUrl: "http://gw", accessToken: `hf_${token}`, fetch: hubFetch(gw) }),
    ).rejects.toThrow();
  });
});

describe("Hub-compatible resolve", () => {
  it("redirects to a signed link with the headers huggingface_hub reads", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const auth = { authorization: `Bearer ${token}` };
    const head = await gw.request(`/${REPO}/resolve/main/model-00001-of-00002.safetensors`, {
      method: "HEAD",
      headers: auth,
    });
    expect(head.status).toBe(302);
    expect(head.headers.get("x-repo-commit")).toBe(revision);
    expect(head.headers.get("x-linked-size")).toBe(String(SAFETENSORS.byteLength));
    expect(head.headers.get("x-linked-etag")).toBe(`"${await sha256Hex(SAFETENSORS)}"`);
    expect(new URL(head.headers.get("location") as string).pathname).toBe(
      `/v1/download/llama-2-7b/${revision}/model-00001-of-00002.safetensors`,
    );
  });

  it("names missing repos, revisions and files with the Hub's error codes", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const auth = { headers: { authorization: `Bearer ${token}` } };
    const cases: [string, string][] = [
      ["/meta-llama/Nope-7b-hf/resolve/main/config.json", "RepoNotFound"],
      [`/${REPO}/resolve/${"f".repeat(40)}/config.json`, "RevisionNotFound"],
      [`/${REPO}/resolve/main/nope.json`, "EntryNotFound"],
    ];
    for (const [path, code] of cases) {
      const res = await gw.request(path, auth);
      expect(res.status, path).toBe(404);
      expect(res.headers.get("x-error-code"), path).toBe(code);
    }
  });

  it("lists one directory level without recursion", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const res = await gw.request(`/api/models/${REPO}/tree/main?recursive=false`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const entries = (await res.json()) as { type: string; path: string }[];
    expect(entries.map((e) => `${e.type}:${e.path}`)).toEqual([
      "directory:tokenizer",
      "file:config.json",
      "file:model-00001-of-00002.safetensors",
      "file:model-00002-of-00002.safetensors",
    ]);
    const sub = await gw.request(`/api/models/${REPO}/tree/main/tokenizer`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(((await sub.json()) as { path: string }[]).map((e) => e.path)).toEqual(["tokenizer/tokenizer.model"]);
  });
});

describe("security: hostile repo ids, revisions and paths on the Hub routes", () => {
  const CONTROL = ["%0D%0A", "%0A", "%00", "%7F"];

  /** Every Hub route, with one part replaced by `bad`. */
  function routes(part: "repo" | "revision" | "path", bad: string): [string, string][] {
    const repo = part === "repo" ? bad : REPO;
    const rev = part === "revision" ? bad : "main";
    const path = part === "path" ? bad : "config.json";
    return [
      ...(part === "path" ? [] : ([["GET", `/api/models/${repo}/revision/${rev}`]] as [string, string][])),
      ...(part === "repo" ? ([["GET", `/api/models/${repo}`]] as [string, string][]) : []),
      ["GET", `/api/models/${repo}/tree/${rev}/${path}`],
      ["GET", `/${repo}/resolve/${rev}/${path}`],
      ["HEAD", `/${repo}/resolve/${rev}/${path}`],
      ["GET", `/${repo}/raw/${rev}/${path}`],
      ["HEAD", `/${repo}/raw/${rev}/${path}`],
    ];
  }

  const hostile: ["repo" | "revision" | "path", string][] = [
    ...CONTROL.map((c) => ["repo", `meta-llama/Llama-2-7b-hf${c}`] as ["repo", string]),
    ...CONTROL.map((c) => ["repo", `meta${c}llama/Llama-2-7b-hf`] as ["repo", string]),
    ["repo", "meta-llama/Llama-2-7b-h%C3%A9"],
    ["repo", "meta-llama/%E6%A8%A1%E5%9E%8B"],
    ["repo", "meta-llama/Llama..2"],
    ["repo", "meta-llama/Llama--2"],
    ["repo", `meta-llama/${"L".repeat(100)}`],
    ...CONTROL.map((c) => ["revision", `main${c}`] as ["revision", string]),
    ["revision", "%E6%A8%A1%E5%9E%8B"],
    ["revision", "..%2F..%2Fmain"],
    ["revision", "%2Fmain"],
    ["revision", "m".repeat(300)],
    ...CONTROL.map((c) => ["path", `config.json${c}X-Injected: 1`] as ["path", string]),
    ["path", "%E6%A8%A1%E5%9E%8B%0D%0A.json"],
    ["path", "tokenizer%2F..%2F..%2Fconfig.json"],
    ["path", "%2Fconfig.json"],
    ["path", `${"p".repeat(2000)}.json`],
  ];

  const cases = hostile.map(([part, bad]) => [
    part,
    bad.length > 40 ? `${bad.slice(0, 12)}… (${bad.length} chars)` : bad,
    bad,
  ]);
  it.each(cases)(
    "answers a hostile %s (%s) with a 4xx problem and a Hub error code, never a 5xx",
    async (part, _, bad) => {
      const gw = testGateway();
      const { token } = await approvedToken(gw, licenseSha256);
      for (const headers of [{ authorization: `Bearer ${token}` }, {} as Record<string, string>]) {
        for (const [method, url] of routes(part as "repo" | "revision" | "path", bad)) {
          const res = await gw.request(url, { method, headers });
          const label = `${method} ${url}`;
          expect(res.status, label).toBeGreaterThanOrEqual(400);
          expect(res.status, label).toBeLessThan(500);
          expect(res.headers.get("content-type"), label).toMatch(/^application\/problem\+json/);
          expect(res.headers.get("x-injected"), label).toBeNull();
          if (res.status === 404) {
            expect(["RepoNotFound", "RevisionNotFound", "EntryNotFound"], label).toContain(
              res.headers.get("x-error-code"),
            );
          }
          if (method === "GET")
            expect(await res.json(), label).toMatchObject({ status: res.status, code: expect.any(String) });
        }
      }
    },
  );

  it("names a malformed id the way the Hub does, before asking for a token", async () => {
    const gw = testGateway();
    const cases: [string, string][] = [
      ["/meta-llama/Llama%0D%0A2/resolve/main/config.json", "RepoNotFound"],
      [`/${REPO}/resolve/main%00/config.json`, "RevisionNotFound"],
    ];
    for (const [path, code] of cases) {
      const res = await gw.request(path);
      expect(res.status, path).toBe(404);
      expect(res.headers.get("x-error-code"), path).toBe(code);
      expect(await res.json(), path).toMatchObject({ code: "not_found" });
    }
    const { token } = await approvedToken(gw, licenseSha256);
    const entry = await gw.request(`/${REPO}/resolve/main/a%2F..%2Fconfig.json`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(entry.status).toBe(404);
    expect(entry.headers.get("x-error-code")).toBe("EntryNotFound");
  });

  it("resolves and serves a file whose name is not ASCII, with headers that stay ASCII", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const name = 'tokenizer/模型 "ä".json';
    const { revision: rev } = await seedRevision("llama-2-7b", { "config.json": "{}", [name]: '{"a":1}' });
    const auth = { authorization: `Bearer ${token}` };
    const missing = await gw.request(`/${REPO}/resolve/main/${encodeURIComponent("模型-missing.json")}`, {
      headers: auth,
    });
    expect(missing.status).toBe(404);
    expect(missing.headers.get("x-error-code")).toBe("EntryNotFound");
    const resolved = await gw.request(`/${REPO}/resolve/main/${name.split("/").map(encodeURIComponent).join("/")}`, {
      headers: auth,
    });
    expect(resolved.status).toBe(302);
    expect(resolved.headers.get("x-repo-commit")).toBe(rev);
    const location = new URL(resolved.headers.get("location") as string);
    const file = await gw.request(location.pathname + location.search);
    expect(file.status).toBe(200);
    expect(await file.text()).toBe('{"a":1}');
    const disposition = file.headers.get("content-disposition") as string;
    expect(disposition).toMatch(/^[\x20-\x7e]+$/);
    expect(disposition).toContain(`filename*=UTF-8''${encodeURIComponent('模型 "ä".json')}`);
  });
});

describe("the status page's Hub instructions", () => {
  it("shows hf download with HF_ENDPOINT and HF_TOKEN, which work on huggingface_hub 0.x and 1.x", async () => {
    const gw = testGateway();
    const confirmed = await applyAndConfirm(gw, acmeApplication(licenseSha256));
    expect(confirmed.status).toBe("approved");
    const status = new URL(confirmed.statusUrl);
    const page = await gw.request(status.pathname + status.search, { headers: { accept: "text/html" } });
    expect(page.status).toBe(200);
    const html = await page.text();
    const base = gw.services().config.publicBaseUrl;
    expect(html).toContain(`HF_ENDPOINT=${base} HF_TOKEN=hf_mg_YOUR_TOKEN`);
    expect(html).toContain(`hf download ${REPO} --local-dir ./Llama-2-7b-hf`);
    // 1.x removed `huggingface-cli`: it is named only as 0.x's alternative, never as the command.
    expect(html).not.toContain(`huggingface-cli download ${REPO}`);
  });
});
