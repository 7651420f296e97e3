import { ConsolePage } from "../layout";

/** The local sign-in page: paste a token from `npm run admin:token`. Exists only in dev mode. */
export function DevSignInPage(props: { error?: string }) {
  return (
    <ConsolePage title="Sign in (local)">
      <h1>Sign in to the review console (local development)</h1>
      <p>
        In production Cloudflare Access signs reviewers in. Here, mint a local Access token signed with the dev key this
        gateway trusts:
      </p>
      <pre class="panel">
        <code>npm run -s admin:token -- --email you@example.com --role approver</code>
      </pre>
      <p>Paste it below. It is kept in an HttpOnly cookie for this site only, until it expires or you sign out.</p>
      {props.error ? (
        <p class="panel bad" role="alert" id="sign-in-error">
          {props.error}
        </p>
      ) : null}
      <form method="post" action="/admin/dev-login">
        <div class="form-row">
          <label for="token">Access token (JWT)</label>
          <textarea
            id="token"
            name="token"
            required
            autocomplete="off"
            spellcheck={false}
            aria-describedby={props.error ? "sign-in-error" : undefined}
          />
        </div>
        <button type="submit">Sign in</button>
      </form>
    </ConsolePage>
  );
}

/** Shown instead of a console page to someone without a usable Access identity. */
export function NotSignedInPage(props: { status: 401 | 403; detail: string; devSignIn: boolean }) {
  return (
    <ConsolePage title={props.status === 401 ? "Sign in" : "Not allowed"}>
      <h1>{props.status === 401 ? "Sign in to the review console" : "You cannot use the review console"}</h1>
      <p role="alert">{props.detail}</p>
      {props.devSignIn ? (
        <p>
          <a class="button" href="/admin/dev-login">
            Sign in with a local token
          </a>
        </p>
      ) : (
        <p>The console is reached through Cloudflare Access; open it from your Access app launcher.</p>
      )}
    </ConsolePage>
  );
}
