/**
 * Signing in with a mailed link, and sessions: the happy path from asking for a link to landing on
 * /account, and the attacker's side — unknown addresses answered alike, per-address and
 * per-network limits, used, expired and foreign links, mail scanners that load links, and
 * cross-site writes with a victim's cookie.
 */
import { and, eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import {
  auditEvents,
  emailLinks,
  memberships,
  organizationDomains,
  organizations,
  sessions,
  users,
} from "../worker/db/schema";
import { testGateway } from "./helpers/fixtures";
import { signedInMember } from "./helpers/members";

type Gateway = ReturnType<typeof testGateway>;

let lastIp = 0;
/** A fresh client address per call, so the per-network brake of one test does not reach another. */
function freshIp(): string {
  lastIp += 1;
  return `10.${Math.floor(lastIp / 250)}.${lastIp % 250}.7`;
}

function askForLink(gw: Gateway, email: unknown, headers: Record<string, string> = {}) {
  return gw.request("/v1/auth/email-link", {
    method: "POST",
    headers: { "content-type": "application/json", "cf-connecting-ip": freshIp(), ...headers },
    body: JSON.stringify({ email }),
  });
}

/** The token of the newest mailed link to `to` under `path`. */
function mailedToken(gw: Gateway, to: string, path = "/auth/sign-in"): string {
  const mail = gw.mailer.sent.filter((m) => m.to === to).at(-1);
  const match = mail?.text.match(new RegExp(`${path.replace(/\//g, "\\/")}\\?token=([A-Za-z0-9_-]+)`));
  if (!match?.[1]) throw new Error(`no ${path} link mailed to ${to}`);
  return match[1];
}

function signIn(gw: Gateway, token: string, headers: Record<string, string> = {}) {
  return gw.request("/auth/sign-in", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", "cf-connecting-ip": freshIp(), ...headers },
    body: new URLSearchParams({ token }),
  });
}

function sessionCookie(res: Response): string {
  const match = res.headers.get("set-cookie")?.match(/__Host-mg_session=([^;]+)/);
  if (!match?.[1]) throw new Error("no session cookie set");
  return `__Host-mg_session=${match[1]}`;
}

async function expectProblem(res: Response, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/problem+json");
  expect(((await res.json()) as { code: string }).code).toBe(code);
}

describe("sign-in with a mailed link", () => {
  it("mails a member a link whose page signs them in on a button press and lands on /account", async () => {
    const gw = testGateway();
    const { user } = await signedInMember(gw, { email: "ada@acme.example", role: "developer" });
    const asked = await askForLink(gw, "  Ada@Acme.Example ");
    expect(asked.status).toBe(202);
    const mail = gw.mailer.sent.find((m) => m.to === "ada@acme.example");
    expect(mail?.subject).toBe("Your modelgate sign-in link");
    const base = gw.services.config.publicBaseUrl;
    // The only link in the mail is the gateway's own.
    expect(mail?.text.match(/https?:\/\/\S+/g)).toEqual([
      expect.stringMatching(new RegExp(`^${base}/auth/sign-in\\?token=mge_`)),
    ]);
    const token = mailedToken(gw, "ada@acme.example");

    const page = await gw.request(`/auth/sign-in?token=${token}`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toContain('<form method="post" action="/auth/sign-in">');
    expect(html).toContain(`value="${token}"`);
    expect(page.headers.get("cache-control")).toBe("no-store");
    expect(page.headers.get("referrer-policy")).toBe("no-referrer");

    const signedIn = await signIn(gw, token, { origin: "http://gw.test" });
    expect(signedIn.status).toBe(303);
    expect(signedIn.headers.get("location")).toBe("/account");
    const setCookie = signedIn.headers.get("set-cookie") ?? "";
    expect(setCookie).toMatch(/^__Host-mg_session=mgsess_/);
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/Secure/);
    expect(setCookie).toMatch(/SameSite=Lax/);
    expect(setCookie).toMatch(/Path=\//);

    const listed = await gw.request("/v1/auth/sessions", { headers: { cookie: sessionCookie(signedIn) } });
    expect(listed.status).toBe(200);
    const body = (await listed.json()) as { sessions: { id: string; current: boolean }[] };
    expect(body.sessions).toHaveLength(2);
    expect(body.sessions.filter((s) => s.current)).toHaveLength(1);
    const events = await gw.db.select().from(auditEvents).where(eq(auditEvents.action, "user.signed_in"));
    expect(events).toMatchObject([{ subjectId: user.id, actor: "user:ada@acme.example" }]);
  });

  it("answers an unknown address, a user without a membership and a member alike, and mails only the member", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "member@acme.example" });
    const removed = await signedInMember(gw, { email: "gone@acme.example" });
    await gw.db
      .update(memberships)
      .set({ removedAt: "2026-01-01T00:00:00.000Z" })
      .where(eq(memberships.id, removed.membership.id));
    const answers = [];
    for (const email of ["member@acme.example", "nobody@acme.example", "gone@acme.example"]) {
      const res = await askForLink(gw, email);
      answers.push({ status: res.status, type: res.headers.get("content-type"), body: await res.text() });
    }
    expect(answers[1]).toEqual(answers[0]);
    expect(answers[2]).toEqual(answers[0]);
    expect(gw.mailer.sent.map((m) => m.to)).toEqual(["member@acme.example"]);
    // Nothing is recorded about an address that is nobody's.
    expect(await gw.db.select().from(users).where(eq(users.email, "nobody@acme.example"))).toEqual([]);
    expect((await gw.db.select().from(emailLinks)).map((l) => l.email)).toEqual(["member@acme.example"]);
  });

  it("mails one address at most 5 links an hour, answering 202 all the same", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "ada@acme.example" });
    for (let i = 0; i < 7; i++) expect((await askForLink(gw, "ada@acme.example")).status).toBe(202);
    expect(gw.mailer.sent.filter((m) => m.to === "ada@acme.example")).toHaveLength(5);
    gw.clock.advance(61 * 60_000);
    expect((await askForLink(gw, "ada@acme.example")).status).toBe(202);
    expect(gw.mailer.sent.filter((m) => m.to === "ada@acme.example")).toHaveLength(6);
  });

  it("slows one network down (429) without affecting another", async () => {
    const gw = testGateway();
    const statuses: number[] = [];
    for (let i = 0; i < 40; i++) {
      statuses.push((await askForLink(gw, `x${i}@acme.example`, { "cf-connecting-ip": "198.51.100.77" })).status);
    }
    expect(statuses).toContain(429);
    await expectProblem(
      await askForLink(gw, "y@acme.example", { "cf-connecting-ip": "198.51.100.77" }),
      429,
      "rate_limited",
    );
    expect((await askForLink(gw, "y@acme.example", { "cf-connecting-ip": "198.51.100.78" })).status).toBe(202);
  });

  it("never uses a link on GET: a mail scanner's fetches leave it working", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "ada@acme.example" });
    await askForLink(gw, "ada@acme.example");
    const token = mailedToken(gw, "ada@acme.example");
    for (let i = 0; i < 3; i++) expect((await gw.request(`/auth/sign-in?token=${token}`)).status).toBe(200);
    expect((await signIn(gw, token)).status).toBe(303);
  });

  it("refuses a used link, an expired link, a forged link and another purpose's link with one 401", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "ada@acme.example" });
    await askForLink(gw, "ada@acme.example");
    const token = mailedToken(gw, "ada@acme.example");
    expect((await signIn(gw, token)).status).toBe(303);
    await expectProblem(await signIn(gw, token), 401, "unauthorized");

    await askForLink(gw, "ada@acme.example");
    const late = mailedToken(gw, "ada@acme.example");
    gw.clock.advance(15 * 60_000 + 1);
    await expectProblem(await signIn(gw, late), 401, "unauthorized");

    await expectProblem(await signIn(gw, "mge_forged-forged-forged"), 401, "unauthorized");
    await expectProblem(await signIn(gw, "x".repeat(150)), 401, "unauthorized");
    const { issueEmailLink } = await import("../worker/auth/email-links");
    const verify = await issueEmailLink(gw.services, { purpose: "verify_application", email: "ada@acme.example" });
    await verify.statement;
    await expectProblem(await signIn(gw, verify.secret), 401, "unauthorized");
  });

  it("shows a browser a 401 page for a link that cannot be used", async () => {
    const gw = testGateway();
    const res = await signIn(gw, "mge_nope", { accept: "text/html" });
    expect(res.status).toBe(401);
    expect(res.headers.get("content-type")).toContain("text/html");
    expect(await res.text()).toContain("This sign-in link cannot be used");
  });

  it("refuses a cross-site post of a link (a login-CSRF) without using it", async () => {
    const gw = testGateway();
    await signedInMember(gw, { email: "ada@acme.example" });
    await askForLink(gw, "ada@acme.example");
    const token = mailedToken(gw, "ada@acme.example");
    await expectProblem(await signIn(gw, token, { origin: "https://evil.example" }), 403, "cross_site_request");
    await expectProblem(await signIn(gw, token, { "sec-fetch-site": "cross-site" }), 403, "cross_site_request");
    expect((await signIn(gw, token, { "sec-fetch-site": "same-origin" })).status).toBe(303);
  });

  it("verifies a carried-over contact's domain for their organization on their first sign-in, not a free-mail one", async () => {
    const gw = testGateway();
    const at = gw.clock.now().toISOString();
    for (const [org, email] of [
      ["org_old", "contact@oldco.example"],
      ["org_free", "someone@gmail.com"],
    ] as const) {
      await gw.db
        .insert(organizations)
        .values({ id: org, name: org, normalizedName: org, country: "DE", createdAt: at });
      const userId = `usr_${org}`;
      await gw.db.insert(users).values({ id: userId, email, emailVerifiedAt: null, createdAt: at });
      await gw.db
        .insert(memberships)
        .values({ id: `mem_${org}`, organizationId: org, userId, role: "owner", createdAt: at });
      await askForLink(gw, email);
      expect((await signIn(gw, mailedToken(gw, email))).status).toBe(303);
      const [user] = await gw.db.select().from(users).where(eq(users.id, userId));
      expect(user?.emailVerifiedAt).toBe(at);
    }
    expect(await gw.db.select().from(organizationDomains)).toEqual([
      { domain: "oldco.example", organizationId: "org_old", verifiedByUserId: "usr_org_old", verifiedAt: at },
    ]);
  });

  it("does not hand a domain another organization holds to a second one", async () => {
    const gw = testGateway();
    const at = gw.clock.now().toISOString();
    const holder = await signedInMember(gw, { email: "first@shared.example" });
    await gw.db.insert(organizationDomains).values({
      domain: "shared.example",
      organizationId: holder.organizationId,
      verifiedByUserId: holder.user.id,
      verifiedAt: at,
    });
    await gw.db
      .insert(organizations)
      .values({ id: "org_2", name: "Two", normalizedName: "two", country: "DE", createdAt: at });
    await gw.db.insert(users).values({ id: "usr_2", email: "second@shared.example", createdAt: at });
    await gw.db
      .insert(memberships)
      .values({ id: "mem_2", organizationId: "org_2", userId: "usr_2", role: "owner", createdAt: at });
    await askForLink(gw, "second@shared.example");
    expect((await signIn(gw, mailedToken(gw, "second@shared.example"))).status).toBe(303);
    expect((await gw.db.select().from(organizationDomains)).map((d) => d.organizationId)).toEqual([
      holder.organizationId,
    ]);
  });

  it("refuses bad input with a 4xx problem", async () => {
    const gw = testGateway();
    await expectProblem(await askForLink(gw, "not-an-address"), 400, "validation_failed");
    await expectProblem(await askForLink(gw, 42), 400, "validation_failed");
    await expectProblem(await askForLink(gw, `${"a".repeat(300)}@acme.example`), 400, "validation_failed");
    const extra = await gw.request("/v1/auth/email-link", {
      method: "POST",
      headers: { "content-type": "application/json", "cf-connecting-ip": freshIp() },
      body: '{"email":"a@b.example","__proto__":{"x":1}}',
    });
    await expectProblem(extra, 400, "malformed_body");
    const text = await gw.request("/v1/auth/email-link", {
      method: "POST",
      headers: { "content-type": "text/plain", "cf-connecting-ip": freshIp() },
      body: "a@b.example",
    });
    await expectProblem(text, 415, "unsupported_media_type");
    const noToken = await gw.request("/auth/sign-in", {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded", "cf-connecting-ip": freshIp() },
      body: "",
    });
    await expectProblem(noToken, 400, "validation_failed");
    await expectProblem(await gw.request(`/auth/sign-in?token=${"x".repeat(300)}`), 400, "validation_failed");
  });

  it("answers a browser's form post with a 'check your mail' page", async () => {
    const gw = testGateway();
    const res = await gw.request("/v1/auth/email-link", {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        accept: "text/html",
        "cf-connecting-ip": freshIp(),
      },
      body: new URLSearchParams({ email: "who@acme.example" }),
    });
    expect(res.status).toBe(202);
    expect(await res.text()).toContain("Check your mail");
    const form = await gw.request("/auth/sign-in");
    expect(await form.text()).toContain('action="/v1/auth/email-link"');
  });
});

describe("sessions", () => {
  it("lists a person's live sessions and ends one, which stops working at once", async () => {
    const gw = testGateway();
    const a = await signedInMember(gw, { email: "ada@acme.example" });
    const b = await signedInMember(gw, { email: "ada@acme.example" });
    const listed = (await (await gw.request("/v1/auth/sessions", { headers: { cookie: a.cookie } })).json()) as {
      sessions: { id: string; current: boolean }[];
    };
    expect(listed.sessions.map((s) => s.id).sort()).toEqual([a.sessionId, b.sessionId].sort());
    expect(listed.sessions.find((s) => s.current)?.id).toBe(a.sessionId);
    expect(JSON.stringify(listed)).not.toContain("secret");

    const ended = await gw.request(`/v1/auth/sessions/${b.sessionId}`, {
      method: "DELETE",
      headers: { cookie: a.cookie },
    });
    expect(ended.status).toBe(200);
    expect(await ended.json()).toEqual({ revoked: 1 });
    await expectProblem(await gw.request("/v1/auth/sessions", { headers: { cookie: b.cookie } }), 401, "unauthorized");
    await expectProblem(
      await gw.request(`/v1/auth/sessions/${b.sessionId}`, { method: "DELETE", headers: { cookie: a.cookie } }),
      404,
      "not_found",
    );
  });

  it("cannot end another person's session", async () => {
    const gw = testGateway();
    const mine = await signedInMember(gw, { email: "ada@acme.example" });
    const theirs = await signedInMember(gw, { email: "eve@other.example" });
    await expectProblem(
      await gw.request(`/v1/auth/sessions/${theirs.sessionId}`, { method: "DELETE", headers: { cookie: mine.cookie } }),
      404,
      "not_found",
    );
    expect((await gw.request("/v1/auth/sessions", { headers: { cookie: theirs.cookie } })).status).toBe(200);
  });

  it("signs out this session, clearing the cookie, and signs out everywhere", async () => {
    const gw = testGateway();
    const a = await signedInMember(gw, { email: "ada@acme.example" });
    const b = await signedInMember(gw, { email: "ada@acme.example" });
    const c = await signedInMember(gw, { email: "ada@acme.example" });
    const out = await gw.request("/v1/auth/sign-out", { method: "POST", headers: { cookie: a.cookie } });
    expect(out.status).toBe(200);
    expect(await out.json()).toEqual({ revoked: 1 });
    expect(out.headers.get("set-cookie")).toMatch(/__Host-mg_session=;.*Max-Age=0/);
    expect((await gw.request("/v1/auth/sessions", { headers: { cookie: a.cookie } })).status).toBe(401);
    expect((await gw.request("/v1/auth/sessions", { headers: { cookie: b.cookie } })).status).toBe(200);

    const everywhere = await gw.request("/v1/auth/sign-out-everywhere", {
      method: "POST",
      headers: { cookie: b.cookie },
    });
    expect(await everywhere.json()).toEqual({ revoked: 2 });
    for (const s of [b, c])
      expect((await gw.request("/v1/auth/sessions", { headers: { cookie: s.cookie } })).status).toBe(401);
    const live = await gw.db
      .select()
      .from(sessions)
      .where(and(eq(sessions.userId, a.user.id)));
    expect(live.every((s) => s.revokedAt !== null)).toBe(true);
  });

  it("refuses cross-site session writes with the victim's cookie", async () => {
    const gw = testGateway();
    const a = await signedInMember(gw, { email: "ada@acme.example" });
    const b = await signedInMember(gw, { email: "ada@acme.example" });
    const hostiles: Record<string, string>[] = [
      { origin: "https://evil.example" },
      { "sec-fetch-site": "cross-site" },
      { "sec-fetch-site": "same-site" },
    ];
    for (const hostile of hostiles) {
      const headers = { cookie: a.cookie, ...hostile };
      await expectProblem(
        await gw.request("/v1/auth/sign-out", { method: "POST", headers }),
        403,
        "cross_site_request",
      );
      await expectProblem(
        await gw.request("/v1/auth/sign-out-everywhere", { method: "POST", headers }),
        403,
        "cross_site_request",
      );
      await expectProblem(
        await gw.request(`/v1/auth/sessions/${b.sessionId}`, { method: "DELETE", headers }),
        403,
        "cross_site_request",
      );
    }
    expect((await gw.request("/v1/auth/sessions", { headers: { cookie: b.cookie } })).status).toBe(200);
  });

  it("needs a live session: none, a forged one and an expired one are 401", async () => {
    const gw = testGateway();
    const a = await signedInMember(gw, { email: "ada@acme.example" });
    await expectProblem(await gw.request("/v1/auth/sessions"), 401, "unauthorized");
    await expectProblem(
      await gw.request("/v1/auth/sessions", { headers: { cookie: "__Host-mg_session=mgsess_forged" } }),
      401,
      "unauthorized",
    );
    await expectProblem(await gw.request("/v1/auth/sign-out-everywhere", { method: "POST" }), 401, "unauthorized");
    gw.clock.advance(31 * 86_400_000);
    await expectProblem(await gw.request("/v1/auth/sessions", { headers: { cookie: a.cookie } }), 401, "unauthorized");
  });
});
