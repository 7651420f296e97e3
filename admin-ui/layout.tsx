import type { Child } from "hono/jsx";
import type { AdminIdentity } from "../worker/auth/access";

/** The console's sections, in navigation order. */
export const SECTIONS = [
  { id: "queue", href: "/admin", label: "Queue" },
  { id: "grants", href: "/admin/grants", label: "Grants" },
  { id: "usage", href: "/admin/usage", label: "Usage" },
  { id: "billing", href: "/admin/billing", label: "Billing" },
  { id: "servers", href: "/admin/inference-servers", label: "Servers" },
  { id: "guard", href: "/admin/guard", label: "Flags" },
  { id: "audit", href: "/admin/audit", label: "Audit" },
] as const;

export type SectionId = (typeof SECTIONS)[number]["id"];

/** How the signed-in reviewer leaves: the dev cookie is ours to clear; Access has its own logout. */
export type SignOut = { kind: "dev" } | { kind: "access" };

/** The console's page shell: skip link, header with navigation and the signed-in reviewer. */
export function ConsolePage(props: {
  title: string;
  section?: SectionId;
  admin?: AdminIdentity;
  signOut?: SignOut;
  children: Child;
}) {
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="same-origin" />
        <title>{props.title} · modelgate review</title>
        <link rel="stylesheet" href="/admin/assets/console.css" />
        <script src="/admin/assets/console.js" defer />
      </head>
      <body>
        <a class="skip" href="#main">
          Skip to content
        </a>
        <header class="console">
          <a class="brand" href="/admin">
            modelgate review
          </a>
          {props.admin ? (
            <nav aria-label="Console">
              <ul>
                {SECTIONS.map((s) => (
                  <li>
                    <a href={s.href} aria-current={s.id === props.section ? "page" : undefined}>
                      {s.label}
                    </a>
                  </li>
                ))}
              </ul>
            </nav>
          ) : null}
          {props.admin ? (
            <div class="who">
              <span>
                {props.admin.email} <span class="muted-on-dark">({props.admin.roles.at(-1)})</span>
              </span>
              {props.signOut?.kind === "dev" ? (
                <form method="post" action="/admin/sign-out">
                  <button type="submit">Sign out</button>
                </form>
              ) : (
                <a href="/cdn-cgi/access/logout" style="color:#fff">
                  Sign out
                </a>
              )}
            </div>
          ) : null}
        </header>
        <main id="main" tabindex={-1}>
          {props.children}
        </main>
      </body>
    </html>
  );
}
