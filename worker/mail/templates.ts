/**
 * The applicant notices. Anyone can type any address into the public form, so a notice may land
 * with a stranger: it must read as the gateway's own message and carry nothing an applicant could
 * use to speak through it. Subjects hold only the family and the case id; bodies hold the
 * gateway's words, links to the gateway alone (`GatewayLink`), and the applicant's names only
 * through `mailSafeName`. Free text the applicant wrote (intended use, answers) is never echoed.
 */
import { type GatewayLink, gatewayLink } from "./links";
import type { OutgoingMail } from "./mailer";

/** Who a notice goes to. */
export interface Recipient {
  address: string;
  /**
   * Whether the recipient proved they read mail at this address (a confirmed application's
   * contact); a verified recipient may be shown more of what they wrote.
   */
  verified: boolean;
}

/** What every applicant notice needs to say who it is for and where to look. */
export interface NoticeContext {
  to: Recipient;
  /** As the applicant typed it: untrusted. */
  contactName: string;
  /** As the applicant typed it: untrusted. */
  organizationName: string;
  familyName: string;
  applicationId: string;
  /** The status page; carries the capability only in the first notice, when the secret is known. */
  statusUrl: GatewayLink;
}

/** The longest applicant-written name a notice repeats, by whether the address is verified. */
export const MAIL_NAME_MAX = { unverified: 60, verified: 200 } as const;

/**
 * What a mail client would make a link of: a scheme, `www.`, an address, a host name or an IP
 * address. Dots include the ideographic full stop, which some clients also accept in host names.
 */
const LINKABLE: readonly RegExp[] = [
  /:\/\//,
  /www[.\u3002]/i,
  /@/,
  /[\p{L}\p{N}][\p{L}\p{N}_-]*[.\u3002][\p{L}\p{N}_-]*\p{L}/u,
  /\d+[.\u3002]\d+[.\u3002]\d+/u,
];

/**
 * An applicant-written name as a notice may repeat it: on one line, without invisible or control
 * characters, and short. A name that holds anything a mail client would turn into a link is not
 * repeated at all (`null`), so the gateway's sender never carries an attacker's link, however it
 * is spelt.
 */
export function mailSafeName(raw: string, recipient: Pick<Recipient, "verified">): string | null {
  const flat = raw
    .normalize("NFKC")
    // Zero-width and bidirectional controls are removed, not spaced: they could hide a link.
    .replace(/\p{Cf}/gu, "")
    // CR, LF and the other controls would start new lines: a name stays on one.
    .replace(/[\p{Cc}\p{Cs}\p{Co}\p{Zl}\p{Zp}]/gu, " ")
    .replace(/\s+/g, " ")
    .trim();
  if (flat === "" || LINKABLE.some((pattern) => pattern.test(flat))) return null;
  const max = recipient.verified ? MAIL_NAME_MAX.verified : MAIL_NAME_MAX.unverified;
  const chars = Array.from(flat);
  return chars.length <= max
    ? flat
    : `${chars
        .slice(0, max - 1)
        .join("")
        .trimEnd()}…`;
}

/** The greeting and the organization's name as this notice may show them. */
function names(ctx: NoticeContext): { greeting: string; organization: string } {
  const contact = mailSafeName(ctx.contactName, ctx.to);
  const organization = mailSafeName(ctx.organizationName, ctx.to);
  return {
    greeting: contact ? `Hello ${contact},` : "Hello,",
    organization: organization ? `“${organization}”` : "your organization",
  };
}

function sign(text: string): string {
  return `${text}\n\n— modelgate licensing\n`;
}

/** Sent on submission, with the status link that carries the capability secret. */
export function applicationReceivedMail(
  ctx: NoticeContext,
  status: "approved" | "pending_review" | "rejected",
): OutgoingMail {
  const { greeting, organization } = names(ctx);
  const next =
    status === "approved"
      ? "Your application was approved under the license policy. You can create access tokens on the status page."
      : status === "rejected"
        ? "Your application cannot be approved under the license policy. The status page says why."
        : "Your application needs a reviewer's decision. Most cases are decided within five working days; the status page shows where it stands.";
  return {
    to: ctx.to.address,
    subject: `${ctx.familyName} access application ${ctx.applicationId} received`,
    text: sign(
      `${greeting}\n\nwe received the application of ${organization} for ${ctx.familyName}.\n${next}\n\nStatus page (keep this link private; it is your key to the case):\n${ctx.statusUrl}\n\nIf you did not apply, ignore this message: nothing happens without the link above.`,
    ),
  };
}

/**
 * Sent when a reviewer decides or asks for information. `message` is the reviewer's own text,
 * shown when they chose to show it.
 */
export function decisionMail(
  ctx: NoticeContext,
  decision: "approved" | "rejected" | "info_requested",
  message: string | null,
): OutgoingMail {
  const { greeting } = names(ctx);
  const headline = {
    approved: "Your application was approved. You can now create access tokens on the status page.",
    rejected: "Your application was not approved.",
    info_requested: "A reviewer needs more information before deciding. Please answer on the status page.",
  }[decision];
  const reason = message ? `\n\nMessage from the reviewer:\n${message}` : "";
  return {
    to: ctx.to.address,
    subject: `${ctx.familyName} access application ${ctx.applicationId}: ${decision.replace("_", " ")}`,
    text: sign(
      `${greeting}\n\n${headline}${reason}\n\nOpen your status page with the link from your first e-mail (${ctx.statusUrl}).`,
    ),
  };
}

/** Sent when a grant is suspended, reinstated or revoked; `reason` is the reviewer's. */
export function grantMail(
  ctx: NoticeContext,
  status: "suspended" | "active" | "revoked",
  reason: string | null,
): OutgoingMail {
  const { greeting, organization } = names(ctx);
  const headline = {
    suspended: `Access of ${organization} to ${ctx.familyName} is suspended.`,
    active: `Access of ${organization} to ${ctx.familyName} is reinstated.`,
    revoked: `Access of ${organization} to ${ctx.familyName} is revoked. Under the license you must delete the materials.`,
  }[status];
  return {
    to: ctx.to.address,
    subject: `${ctx.familyName} access ${status === "active" ? "reinstated" : status}`,
    text: sign(`${greeting}\n\n${headline}${reason ? `\n\nReason: ${reason}` : ""}`),
  };
}

/**
 * The notice context of a case: its contact (verified once a mailed link proved the address, which
 * cases from before confirmation existed never had), its names, and its status page on the
 * gateway — without the capability unless `statusUrl` carries it.
 */
export function caseNotice(
  publicBaseUrl: string,
  application: {
    id: string;
    contactEmail: string;
    contactName: string;
    organizationName: string;
    contactUserId?: string | null;
  },
  familyName: string,
  statusUrl: GatewayLink = gatewayLink(publicBaseUrl, `/applications/${encodeURIComponent(application.id)}`),
): NoticeContext {
  return {
    to: { address: application.contactEmail, verified: Boolean(application.contactUserId) },
    contactName: application.contactName,
    organizationName: application.organizationName,
    familyName,
    applicationId: application.id,
    statusUrl,
  };
}

/**
 * Sent on submission to the contact address the form named, which nothing has proven yet: no
 * applicant-written text at all, only the family, the case id, the license version and its texts'
 * hashes, and the single-use link that proves the address and lets the policy decide. Confirming
 * is the contact's acceptance of that version, so the mail says so before the link is opened.
 */
export function confirmationMail(
  to: string,
  familyName: string,
  applicationId: string,
  license: { name: string; version: number; licenseSha256: string; aupSha256: string },
  confirmUrl: GatewayLink,
): OutgoingMail {
  return {
    to,
    subject: `Confirm your ${familyName} access application ${applicationId}`,
    text: sign(
      [
        "Hello,",
        "",
        `someone applied for access to ${familyName} with this address as the contact. The link below opens a page showing the organization the application names and the license; confirming there accepts, on the organization's behalf:`,
        `- version ${license.version} of the ${license.name} (sha256 ${license.licenseSha256})`,
        `- the Acceptable Use Policy of that version (sha256 ${license.aupSha256})`,
        "",
        "Open it within 24 hours; the application is decided only once you confirm:",
        confirmUrl,
        "",
        "If you did not apply, ignore this message: nothing happens without the link above.",
      ].join("\n"),
    ),
  };
}
