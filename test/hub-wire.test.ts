/**
 * The Hub API as both generations of the Python client, `huggingface_hub` 0.36 (requests) and
 * 1.x (httpx), drive it: each request is replayed as the client writes it (method, path, query
 * string, headers) and each answer is read the way the client reads it (`file_download.py`'s
 * `get_hf_file_metadata`, `http_get`, `hf_api.py`'s `list_repo_tree`, `repo_info`, `whoami`,
 * `utils/_http.py`'s `hf_raise_for_status`).
 */
import { eq } from "drizzle-orm";
import { beforeEach, describe, expect, it } from "vitest";
import { accessTokens, grants } from "../worker/db/schema";
import { sha256Hex } from "../worker/platform/hash";
import { seedLicense, testGateway } from "./helpers/gateway";
import { approvedToken, bytes, seedRevision } from "./helpers/weights";

const REPO = "meta-llama/Llama-2-7b-hf";
const ENDPOINT = "http://gw";
const SAFETENSORS = bytes(300_000, 21);
const FILES = {
  "config.json": '{"architectures":["LlamaForCausalLM"]}',
  "model-00001-of-00002.safetensors": SAFETENSORS,
  "model-00002-of-00002.safetensors": bytes(4321, 22),
  "tokenizer/tokenizer.model": bytes(700, 23),
  "tokenizer/extra/special_tokens_map.json": "{}",
};
let licenseSha256: string;
let revision: string;

beforeEach(async () => {
  licenseSha256 = (await seedLicense()).licenseSha256;
  revision = (await seedRevision("llama-2-7b", FILES)).revision;
});

/** What differs between the two generations on the wire. */
interface Generation {
  version: string;
  /** How the HTTP library writes a Python bool into a query string: `str(True)` or httpx's `true`. */
  bool(value: boolean): string;
  /** Headers the HTTP library adds by itself. */
  libraryHeaders(): Record<string, string>;
  /** Where `snapshot_download` takes its file list from. */
  snapshotFiles: "siblings" | "tree";
  /** The exception `X-Error-Code: EntryNotFound` becomes. */
  entryNotFound: string;
}

const GENERATIONS: Generation[] = [
  {
    version: "0.36.2",
    bool: (value) => (value ? "True" : "False"),
    libraryHeaders: () => ({ "accept-encoding": "gzip, deflate", accept: "*/*", connection: "keep-alive" }),
    snapshotFiles: "siblings",
    entryNotFound: "EntryNotFoundError",
  },
  {
    version: "1.28.0",
    bool: (value) => (value ? "true" : "false"),
    libraryHeaders: () => ({
      accept: "*/*",
      "accept-encoding": "gzip, deflate",
      connection: "keep-alive",
      "x-amzn-trace-id": crypto.randomUUID(),
    }),
    snapshotFiles: "tree",
    entryNotFound: "RemoteEntryNotFoundError",
  },
];

/** Python's `urllib.parse.quote`: everything but ASCII letters, digits, `_.-~` and `safe` is escaped. */
function pyQuote(text: string, safe = "/"): string {
  let out = "";
  for (const byte of new TextEncoder().encode(text)) {
    const char = String.fromCharCode(byte);
    out +=
      /[A-Za-z0-9_.~-]/.test(char) || safe.includes(char)
        ? char
        : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/** A client error, named as `hf_raise_for_status` would raise it. */
class HubClientError extends Error {
  constructor(
    readonly kind: string,
    readonly response: Response,
    readonly serverMessage: string,
  ) {
    super(`${kind} (${response.status}): ${serverMessage}`);
  }
}

interface Sent {
  method: string;
  url: string;
  headers: Record<string, string>;
}

/** The Python client of one generation, reduced to what it sends and how it reads the answers. */
function pythonClient(gw: ReturnType<typeof testGateway>, generation: Generation, token?: string) {
  const sent: Sent[] = [];

  function hfHeaders(): Record<string, string> {
    return {
      ...generation.libraryHeaders(),
      "user-agent": `huggingface_hub/${generation.version}; python/3.12.3`,
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    };
  }

  async function send(method: string, url: string, headers: Record<string, string>): Promise<Response> {
    sent.push({ method, url, headers });
    const target = new URL(url);
    return gw.request(target.pathname + target.search, { method, headers, redirect: "manual" });
  }

  /** `hf_raise_for_status`: 3xx passes, errors become exceptions by `X-Error-Code`. */
  async function raiseForStatus(res: Response): Promise<Response> {
    if (res.status < 400) return res;
    const code = res.headers.get("x-error-code");
    const message = res.headers.get("x-error-message") ?? "";
    const kind =
      code === "RevisionNotFound"
        ? "RevisionNotFoundError"
        : code === "EntryNotFound"
          ? generation.entryNotFound
          : code === "GatedRepo"
            ? "GatedRepoError"
            : code === "RepoNotFound" ||
                (res.status === 401 && message !== "Invalid credentials in Authorization header")
              ? "RepositoryNotFoundError"
              : "HfHubHTTPError";
    // A HEAD's answer has no body: the header is all the client has to show.
    const text = await res.text();
    const body = text ? (JSON.parse(text) as { error?: string }) : {};
    throw new HubClientError(kind, res, body.error ?? decodeURIComponent(message));
  }

  /** `get_hf_file_metadata`: HEAD with `Accept-Encoding: identity`, following only relative redirects. */
  async function fileMetadata(repo: string, rev: string, path: string) {
    let url = `${ENDPOINT}/${repo}/resolve/${pyQuote(rev, "")}/${pyQuote(path)}`;
    const headers = { ...hfHeaders(), "accept-encoding": "identity" };
    for (;;) {
      const res = await raiseForStatus(await send("HEAD", url, headers));
      const location = res.headers.get("location");
      if (res.status >= 300 && res.status < 400 && location && !/^[a-z]+:\/\//i.test(location)) {
        const next = new URL(url);
        next.pathname = new URL(location, url).pathname;
        next.search = "";
        url = next.toString();
        continue;
      }
      const etag = res.headers.get("x-linked-etag") ?? res.headers.get("etag");
      const isRedirect = res.status >= 300 && res.status < 400;
      const size = res.headers.get("x-linked-size") ?? (isRedirect ? null : res.headers.get("content-length"));
      return {
        status: res.status,
        commitHash: res.headers.get("x-repo-commit"),
        etag: etag?.replace(/^W\//, "").replace(/"/g, "") ?? null,
        location: location ?? url,
        size: size === null ? null : Number(size),
        url,
      };
    }
  }

  /** `hf_hub_download`: metadata, then GET the location; `Authorization` only on the same host. */
  async function download(repo: string, path: string, options: { revision?: string; resumeFrom?: number } = {}) {
    const metadata = await fileMetadata(repo, options.revision ?? "main", path);
    if (!metadata.commitHash) throw new Error("FileMetadataError: no X-Repo-Commit");
    if (!metadata.etag) throw new Error("FileMetadataError: no ETag");
    if (metadata.size === null) throw new Error("FileMetadataError: no Content-Length");
    const headers = hfHeaders();
    if (new URL(metadata.location).host !== new URL(metadata.url).host) delete headers.authorization;
    const resume = options.resumeFrom ?? 0;
    if (resume > 0) headers.range = `bytes=${resume}-`;
    const res = await raiseForStatus(await send("GET", metadata.location, headers));
    const data = new Uint8Array(await res.arrayBuffer());
    if (resume + data.byteLength !== metadata.size) {
      throw new Error(`Consistency check failed: ${metadata.size} expected, ${resume + data.byteLength} received`);
    }
    return { metadata, response: res, data };
  }

  async function getJson(path: string, query = "") {
    const res = await raiseForStatus(await send("GET", `${ENDPOINT}${path}${query}`, hfHeaders()));
    return res.json();
  }

  /** `list_repo_tree`: the path and revision quoted with no safe characters, both booleans sent. */
  async function listRepoTree(repo: string, options: { path?: string; revision?: string; recursive?: boolean } = {}) {
    const path = options.path ? `/${pyQuote(options.path, "")}` : "";
    const query = `?recursive=${generation.bool(options.recursive ?? false)}&expand=${generation.bool(false)}`;
    return (await getJson(`/api/models/${repo}/tree/${pyQuote(options.revision ?? "main", "")}${path}`, query)) as {
      type: string;
      path: string;
      size: number;
      oid: string;
      lfs?: { oid: string; size: number };
    }[];
  }

  /** `list_repo_files`: the recursive tree's files. */
  async function listRepoFiles(repo: string) {
    return (await listRepoTree(repo, { recursive: true })).filter((e) => e.type === "file").map((e) => e.path);
  }

  async function repoInfo(repo: string, rev = "main") {
    return (await getJson(`/api/models/${repo}/revision/${pyQuote(rev, "")}`)) as {
      sha: string;
      siblings: { rfilename: string }[];
    };
  }

  /** `snapshot_download`: the commit from `repo_info`, the files from its siblings (0.x) or the tree at the commit (1.x). */
  async function snapshotDownload(repo: string) {
    const info = await repoInfo(repo);
    const files =
      generation.snapshotFiles === "siblings"
        ? info.siblings.map((s) => s.rfilename)
        : (await listRepoTree(repo, { revision: info.sha, recursive: true }))
            .filter((e) => e.type === "file")
            .map((e) => e.path);
    const out: Record<string, Uint8Array> = {};
    for (const file of files) out[file] = (await download(repo, file, { revision: info.sha })).data;
    return { commit: info.sha, files: out };
  }

  async function whoami() {
    return getJson("/api/whoami-v2") as Promise<Record<string, unknown>>;
  }

  return { sent, fileMetadata, download, listRepoTree, listRepoFiles, repoInfo, snapshotDownload, whoami };
}

/** The exception a call raised, or a failure when it did not raise. */
async function raised(call: Promise<unknown>): Promise<HubClientError> {
  try {
    await call;
  } catch (error) {
    if (error instanceof HubClientError) return error;
    throw error;
  }
  throw new Error("expected the client to raise");
}

describe.each(GENERATIONS)("huggingface_hub $version on the wire", (generation) => {
  it("lists every file of the repo, subfolders included, with the query string the client sends", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const client = pythonClient(gw, generation, `hf_${token}`);

    expect(await client.listRepoFiles(REPO)).toEqual([
      "config.json",
      "model-00001-of-00002.safetensors",
      "model-00002-of-00002.safetensors",
      "tokenizer/extra/special_tokens_map.json",
      "tokenizer/tokenizer.model",
    ]);
    const b = generation.bool;
    expect(client.sent.map((r) => `${r.method} ${r.url}`)).toEqual([
      `GET ${ENDPOINT}/api/models/${REPO}/tree/main?recursive=${b(true)}&expand=${b(false)}`,
    ]);

    const level = await client.listRepoTree(REPO, { path: "tokenizer" });
    expect(level.map((e) => `${e.type}:${e.path}`)).toEqual([
      "directory:tokenizer/extra",
      "file:tokenizer/tokenizer.model",
    ]);
    expect(client.sent.at(-1)?.url).toBe(
      `${ENDPOINT}/api/models/${REPO}/tree/main/tokenizer?recursive=${b(false)}&expand=${b(false)}`,
    );
    const nested = await client.listRepoTree(REPO, { path: "tokenizer/extra", recursive: true });
    expect(nested.map((e) => e.path)).toEqual(["tokenizer/extra/special_tokens_map.json"]);
    expect(client.sent.at(-1)?.url).toContain("/tree/main/tokenizer%2Fextra?");
  });

  it("reads a file's metadata from the 302 of a HEAD with Accept-Encoding: identity, then downloads it", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const client = pythonClient(gw, generation, `hf_${token}`);
    const sha = await sha256Hex(SAFETENSORS);

    const { metadata, response, data } = await client.download(REPO, "model-00001-of-00002.safetensors");
    const [head, get] = client.sent;
    expect(head?.method).toBe("HEAD");
    expect(head?.url).toBe(`${ENDPOINT}/${REPO}/resolve/main/model-00001-of-00002.safetensors`);
    expect(head?.headers["accept-encoding"]).toBe("identity");
    // The 302 points at another host's signed link, so the client stops there and reads the
    // commit, the etag and the size off the redirect itself.
    expect(metadata).toMatchObject({ status: 302, commitHash: revision, etag: sha, size: SAFETENSORS.byteLength });
    expect(new URL(metadata.location).pathname).toBe(
      `/v1/download/llama-2-7b/${revision}/model-00001-of-00002.safetensors`,
    );
    // The signed link needs no token, and the client sends none to another host.
    expect(get?.method).toBe("GET");
    expect(get?.url).toBe(metadata.location);
    expect(get?.headers.authorization).toBeUndefined();
    expect(response.status).toBe(200);
    expect(response.headers.get("content-encoding")).toBeNull();
    expect(response.headers.get("content-length")).toBe(String(SAFETENSORS.byteLength));
    expect(await sha256Hex(data)).toBe(sha);
  });

  it("carries ETag, X-Linked-Etag, X-Linked-Size and X-Repo-Commit on the 302 for GET as well as HEAD", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const sha = await sha256Hex(SAFETENSORS);
    for (const method of ["HEAD", "GET"]) {
      const res = await gw.request(`/${REPO}/resolve/main/model-00001-of-00002.safetensors`, {
        method,
        headers: { authorization: `Bearer hf_${token}`, "accept-encoding": "identity" },
      });
      expect(res.status, method).toBe(302);
      expect(res.headers.get("etag"), method).toBe(`"${sha}"`);
      expect(res.headers.get("x-linked-etag"), method).toBe(`"${sha}"`);
      expect(res.headers.get("x-linked-size"), method).toBe(String(SAFETENSORS.byteLength));
      expect(res.headers.get("x-repo-commit"), method).toBe(revision);
      // Absolute: a relative Location would be followed by the client's own HEAD, to an answer
      // without these headers.
      expect(res.headers.get("location"), method).toMatch(/^https?:\/\//);
    }
  });

  it("resumes a partial file with Range: bytes=N- and gets exactly the rest", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const client = pythonClient(gw, generation, `hf_${token}`);
    const partial = 123_457;

    const { response, data } = await client.download(REPO, "model-00001-of-00002.safetensors", { resumeFrom: partial });
    expect(client.sent.at(-1)?.headers.range).toBe(`bytes=${partial}-`);
    expect(response.status).toBe(206);
    expect(response.headers.get("content-range")).toBe(
      `bytes ${partial}-${SAFETENSORS.byteLength - 1}/${SAFETENSORS.byteLength}`,
    );
    expect(data).toEqual(SAFETENSORS.slice(partial));
  });

  it("downloads a whole snapshot at the commit repo_info names", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const client = pythonClient(gw, generation, `hf_${token}`);

    const snapshot = await client.snapshotDownload(REPO);
    expect(snapshot.commit).toBe(revision);
    expect(Object.keys(snapshot.files).sort()).toEqual(Object.keys(FILES).sort());
    expect(await sha256Hex(snapshot.files["model-00001-of-00002.safetensors"] as Uint8Array)).toBe(
      await sha256Hex(SAFETENSORS),
    );
    expect(new TextDecoder().decode(snapshot.files["config.json"])).toBe(FILES["config.json"]);
    // Every file is resolved at the commit, not at the branch, so the snapshot is one revision.
    const heads = client.sent.filter((r) => r.method === "HEAD");
    expect(heads).toHaveLength(Object.keys(FILES).length);
    for (const head of heads) expect(head.url).toContain(`/resolve/${revision}/`);
    if (generation.snapshotFiles === "tree") {
      expect(client.sent[1]?.url).toBe(
        `${ENDPOINT}/api/models/${REPO}/tree/${revision}?recursive=${generation.bool(true)}&expand=${generation.bool(false)}`,
      );
    }
  });

  it("whoami-v2 names the token's member, organization and token as login and whoami read them", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, {
      organization: "Acme Robotics",
      email: "ada@acme.example",
    });
    const client = pythonClient(gw, generation, `hf_${token}`);

    const info = await client.whoami();
    expect(client.sent[0]?.url).toBe(`${ENDPOINT}/api/whoami-v2`);
    // `_login` (0.x): info["auth"]["accessToken"]["role"] and ["displayName"]; `hf auth whoami`:
    // info["name"] and org["name"] for org in info["orgs"].
    expect(info).toMatchObject({
      type: "user",
      name: "ada",
      email: "ada@acme.example",
      orgs: [{ type: "org", name: "Acme Robotics" }],
      auth: {
        type: "access_token",
        accessToken: { displayName: "ci", role: "read", createdAt: expect.any(String) },
      },
    });
    const fineGrained = (info.auth as { accessToken: { fineGrained: Record<string, unknown> } }).accessToken
      .fineGrained;
    expect(fineGrained.canReadGatedRepos).toBe(true);
    expect(fineGrained.scoped).toContainEqual({
      entity: { type: "model", name: REPO },
      permissions: ["repo.content.read", "inference.serverless.write"],
    });
  });

  it("is told the Hub's way: 401 without a token, 403 GatedRepo refused, and which name is unknown", async () => {
    const gw = testGateway();
    const { token, applicationId } = await approvedToken(gw, licenseSha256);
    const anonymous = pythonClient(gw, generation);
    const client = pythonClient(gw, generation, `hf_${token}`);

    const noToken = await raised(anonymous.fileMetadata(REPO, "main", "config.json"));
    expect([noToken.kind, noToken.response.status]).toEqual(["GatedRepoError", 401]);
    const noTokenList = await raised(anonymous.listRepoFiles(REPO));
    expect([noTokenList.kind, noTokenList.response.status]).toEqual(["GatedRepoError", 401]);

    const repo = await raised(client.fileMetadata("meta-llama/Nope-7b-hf", "main", "config.json"));
    expect([repo.kind, repo.response.status]).toEqual(["RepositoryNotFoundError", 404]);
    const rev = await raised(client.fileMetadata(REPO, "f".repeat(40), "config.json"));
    expect([rev.kind, rev.response.status]).toEqual(["RevisionNotFoundError", 404]);
    const revInfo = await raised(client.repoInfo(REPO, "no-such-branch"));
    expect(revInfo.kind).toBe("RevisionNotFoundError");
    const entry = await raised(client.fileMetadata(REPO, "main", "nope.json"));
    expect([entry.kind, entry.response.status]).toEqual([generation.entryNotFound, 404]);

    await gw.db.update(grants).set({ status: "suspended" }).where(eq(grants.applicationId, applicationId));
    const refused = await raised(client.fileMetadata(REPO, "main", "config.json"));
    expect([refused.kind, refused.response.status]).toEqual(["GatedRepoError", 403]);
    expect(refused.serverMessage).toMatch(/suspended or revoked/);
  });
});

describe("security: Hub refusals say why", () => {
  it("a token without the download scope is told it lacks that scope, not that it has no grant", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { scopes: ["inference"] });
    const client = pythonClient(gw, GENERATIONS[0] as Generation, `hf_${token}`);
    const refused = await raised(client.fileMetadata(REPO, "main", "config.json"));
    expect([refused.kind, refused.response.status]).toEqual(["GatedRepoError", 403]);
    expect(refused.serverMessage).toMatch(/lacks the download scope/);
    const res = await gw.request(`/api/models/${REPO}`, { headers: { authorization: `Bearer hf_${token}` } });
    expect(await res.json()).toMatchObject({ code: "forbidden", requiredScope: "download" });
    expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
  });

  it("a grant or token that does not cover the model says so, on every Hub route", async () => {
    const gw = testGateway();
    const narrowGrant = await approvedToken(gw, licenseSha256, { grantModels: ["llama-2-7b"] });
    const narrowToken = await approvedToken(gw, licenseSha256, {
      email: "bo@other.example",
      organization: "Other Labs",
      models: ["llama-2-7b"],
    });
    const other = "meta-llama/Llama-2-13b-hf";
    for (const [token, wording] of [
      [narrowGrant.token, /grant does not cover llama-2-13b/],
      [narrowToken.token, /token does not cover llama-2-13b/],
    ] as const) {
      for (const [method, path] of [
        ["GET", `/api/models/${other}`],
        ["GET", `/api/models/${other}/tree/main?recursive=True`],
        ["HEAD", `/${other}/resolve/main/config.json`],
        ["GET", `/${other}/resolve/main/config.json`],
      ]) {
        const res = await gw.request(path as string, { method, headers: { authorization: `Bearer hf_${token}` } });
        expect(res.status, path).toBe(403);
        expect(res.headers.get("x-error-code"), path).toBe("GatedRepo");
        expect(decodeURIComponent(res.headers.get("x-error-message") ?? ""), path).toMatch(wording);
      }
    }
  });

  it("whoami-v2 answers 401 in the Hub's words without a token, with a forged, revoked or expired one", async () => {
    const gw = testGateway();
    const { token, tokenId, member } = await approvedToken(gw, licenseSha256);
    const revoked = await gw.request(`/v1/tokens/${tokenId}`, { method: "DELETE", headers: member.headers });
    expect(revoked.status).toBe(200);
    const expired = await approvedToken(gw, licenseSha256, { email: "bo@other.example", organization: "Other Labs" });
    await gw.db
      .update(accessTokens)
      .set({ expiresAt: "2000-01-01T00:00:00.000Z" })
      .where(eq(accessTokens.id, expired.tokenId));
    const cases: [string, Record<string, string>][] = [
      ["none", {}],
      ["not a bearer", { authorization: `Basic ${btoa("a:b")}` }],
      ["forged", { authorization: `Bearer hf_mg_${"x".repeat(43)}` }],
      ["another scheme's token", { authorization: "Bearer hf_AbCdEfGhIjKlMnOpQrStUvWxYz" }],
      ["revoked", { authorization: `Bearer hf_${token}` }],
      ["expired", { authorization: `Bearer hf_${expired.token}` }],
    ];
    for (const [label, headers] of cases) {
      const res = await gw.request("/api/whoami-v2", { headers });
      expect(res.status, label).toBe(401);
      expect(res.headers.get("x-error-message"), label).toBe("Invalid credentials in Authorization header");
      expect(res.headers.get("x-error-code"), label).toBeNull();
      expect(res.headers.get("content-type"), label).toMatch(/^application\/problem\+json/);
      expect(await res.json(), label).toMatchObject({
        error: "Invalid credentials in Authorization header",
        code: "unauthorized",
      });
    }
  });

  it("whoami-v2 answers a token of either scope, and says an inference-only one reads no gated repo", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256, { scopes: ["inference"], grantModels: ["llama-2-7b"] });
    const info = await pythonClient(gw, GENERATIONS[1] as Generation, `hf_${token}`).whoami();
    expect(info.auth).toMatchObject({
      accessToken: {
        fineGrained: {
          canReadGatedRepos: false,
          scoped: [{ entity: { type: "model", name: REPO }, permissions: ["inference.serverless.write"] }],
        },
      },
    });
  });

  it("reads booleans as the Hub does: true in any case or 1, anything else false", async () => {
    const gw = testGateway();
    const { token } = await approvedToken(gw, licenseSha256);
    const headers = { authorization: `Bearer hf_${token}` };
    const paths = async (query: string) => {
      const res = await gw.request(`/api/models/${REPO}/tree/main${query}`, { headers });
      expect(res.status, query).toBe(200);
      return ((await res.json()) as { path: string }[]).map((e) => e.path);
    };
    for (const yes of ["?recursive=True", "?recursive=true", "?recursive=TRUE", "?recursive=1"]) {
      expect(await paths(yes), yes).toContain("tokenizer/tokenizer.model");
    }
    for (const no of ["", "?recursive=False", "?recursive=false", "?recursive=0", "?recursive=yes", "?recursive="]) {
      expect(await paths(no), no).not.toContain("tokenizer/tokenizer.model");
    }
  });
});
