/**
 * The page an invitation link opens: joining takes a press of the button, so a mail scanner
 * fetching the link does not use it up.
 */
import type { MemberRole } from "../db/schema";
import { Page } from "./layout";

/** An invitation waiting to be accepted. `organizationName` is applicant-written (escaped here). */
export function InvitationPage(props: { token: string; organizationName: string; role: MemberRole; email: string }) {
  return (
    <Page title="Join an organization">
      <h1>Join {props.organizationName}</h1>
      <p>
        You are invited to join <strong>{props.organizationName}</strong> on modelgate as <strong>{props.role}</strong>,
        with the address <code>{props.email}</code>. Accepting signs you in.
      </p>
      <form method="post" action="/invitations/accept">
        <input type="hidden" name="token" value={props.token} />
        <button type="submit">Accept</button>
      </form>
    </Page>
  );
}
