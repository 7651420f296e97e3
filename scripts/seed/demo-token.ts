/**
 * A personal access token for the approved demo application, minted through the public API as
 * its contact would mint one — signed in (the session from confirming the application) —
 * so a developer can download weights and call the model right after `npm start`. The secret is
 * shown once by the API, so it is kept in `.wrangler/demo.json` and shown again on later runs
 * instead of minting a new token each time.
 */
import type { DemoCase } from "./demo";

/** The demo token as recorded in `.wrangler/demo.json`. */
export interface DemoToken {
  applicationId: string;
  tokenId: string;
  token: string;
  scopes: string[];
}

/** The outcome: a token, or why there is none. */
export type DemoTokenResult = { ok: true; token: DemoToken; minted: boolean } | { ok: false; warning: string };

/**
 * Returns the earlier token when it belongs to the current approved demo case and the gateway
 * still lists it unrevoked; otherwise mints a new one (scopes `download` and `inference`).
 */
export async function ensureDemoToken(
  baseUrl: string,
  cases: DemoCase[],
  previous: DemoToken | undefined,
): Promise<DemoTokenResult> {
  const approved = cases.find((c) => c.status === "approved");
  if (!approved) return { ok: false, warning: "no approved demo application" };
  if (!approved.session) return { ok: false, warning: "confirming the approved demo application signed no one in" };
  const auth = { cookie: approved.session, accept: "application/json" };
  const tokensUrl = `${baseUrl}/v1/tokens`;

  if (previous?.applicationId === approved.id) {
    const listed = await fetch(tokensUrl, { headers: auth, signal: AbortSignal.timeout(10_000) });
    if (listed.ok) {
      const { tokens } = (await listed.json()) as { tokens: { id: string; revokedAt: string | null }[] };
      if (tokens.some((t) => t.id === previous.tokenId && !t.revokedAt))
        return { ok: true, token: previous, minted: false };
    }
  }

  const scopes = ["download", "inference"];
  const res = await fetch(tokensUrl, {
    method: "POST",
    headers: { ...auth, "content-type": "application/json" },
    body: JSON.stringify({ name: "npm start demo", scopes }),
    signal: AbortSignal.timeout(10_000),
  });
  if (res.status !== 201) return { ok: false, warning: `minting a token answered ${res.status}: ${await res.text()}` };
  const minted = (await res.json()) as { id: string; token: string };
  return {
    ok: true,
    minted: true,
    token: { applicationId: approved.id, tokenId: minted.id, token: minted.token, scopes },
  };
}
