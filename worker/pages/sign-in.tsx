/**
 * The sign-in pages. A mailed link opens a page with a button rather than signing in on GET:
 * mail scanners fetch links to look at them, and a single-use link must survive that. Every form
 * posts to this origin.
 */
import { Page } from "./layout";

/** Asks for the address to mail a sign-in link to. */
export function SignInRequestPage() {
  return (
    <Page title="Sign in">
      <h1>Sign in</h1>
      <p>We will e-mail you a link that signs you in. It works once, for 15 minutes.</p>
      <form method="post" action="/v1/auth/email-link">
        <label for="f-email">E-mail address</label>
        <input id="f-email" name="email" type="email" autocomplete="email" required />
        <button type="submit">E-mail me a sign-in link</button>
      </form>
    </Page>
  );
}

/** The same answer for every address: whether it is known is not said. */
export function SignInLinkSentPage() {
  return (
    <Page title="Check your mail">
      <h1>Check your mail</h1>
      <p role="status">
        If this address belongs to a member of an organization, a sign-in link is on its way. It works once, for 15
        minutes.
      </p>
    </Page>
  );
}

/** The page a mailed sign-in link opens: signing in takes a press of the button. */
export function SignInConfirmPage(props: { token: string }) {
  return (
    <Page title="Sign in">
      <h1>Sign in to modelgate</h1>
      <form method="post" action="/auth/sign-in">
        <input type="hidden" name="token" value={props.token} />
        <button type="submit">Sign in</button>
      </form>
    </Page>
  );
}

/** A link or invitation that cannot be used, or a request that was refused. */
export function LinkRefusedPage(props: { title: string; message: string }) {
  return (
    <Page title={props.title}>
      <h1>{props.title}</h1>
      <p role="alert">{props.message}</p>
      <p>
        <a href="/auth/sign-in">Ask for a new sign-in link</a>
      </p>
    </Page>
  );
}
