import type { OutgoingMail } from "./mailer";

/** What every applicant notice needs to say who it is for and where to look. */
export interface NoticeContext {
  to: string;
  contactName: string;
  organizationName: string;
  familyName: string;
  applicationId: string;
  /** The status page; carries the capability only in the first notice, when the secret is known. */
  statusUrl: string;
}

function sign(text: string): string {
  return `${text}\n\n— modelgate licensing\n`;
}

/** Sent on submission, with the status link that carries the capability secret. */
export function applicationReceivedMail(
  ctx: NoticeContext,
  status: "approved" | "pending_review" | "rejected",
): OutgoingMail {
  const next =
    status === "approved"
      ? "Your application was approved under the license policy. You can create access tokens on the status page."
      : status === "rejected"
        ? "Your application cannot be approved under the license policy. The status page says why."
        : "Your application needs a reviewer's decision. Most cases are decided within five working days; the status page shows where it stands.";
  return {
    to: ctx.to,
    subject: `${ctx.familyName} access application ${ctx.applicationId} received`,
    text: sign(
      `Hello ${ctx.contactName},\n\nwe received the application of ${ctx.organizationName} for ${ctx.familyName}.\n${next}\n\nStatus page (keep this link private; it is your key to the case):\n${ctx.statusUrl}`,
    ),
  };
}

/** Sent when a reviewer decides or asks for information. */
export function decisionMail(
  ctx: NoticeContext,
  decision: "approved" | "rejected" | "info_requested",
  message: string | null,
): OutgoingMail {
  const headline = {
    approved: "Your application was approved. You can now create access tokens on the status page.",
    rejected: "Your application was not approved.",
    info_requested: "A reviewer needs more information before deciding. Please answer on the status page.",
  }[decision];
  const reason = message ? `\n\nMessage from the reviewer:\n${message}` : "";
  return {
    to: ctx.to,
    subject: `${ctx.familyName} access application ${ctx.applicationId}: ${decision.replace("_", " ")}`,
    text: sign(
      `Hello ${ctx.contactName},\n\n${headline}${reason}\n\nOpen your status page with the link from your first e-mail (${ctx.statusUrl}).`,
    ),
  };
}

/** Sent when a grant is suspended, reinstated or revoked. */
export function grantMail(
  ctx: NoticeContext,
  status: "suspended" | "active" | "revoked",
  reason: string | null,
): OutgoingMail {
  const headline = {
    suspended: `Access of ${ctx.organizationName} to ${ctx.familyName} is suspended.`,
    active: `Access of ${ctx.organizationName} to ${ctx.familyName} is reinstated.`,
    revoked: `Access of ${ctx.organizationName} to ${ctx.familyName} is revoked. Under the license you must delete the materials.`,
  }[status];
  return {
    to: ctx.to,
    subject: `${ctx.familyName} access ${status === "active" ? "reinstated" : status}`,
    text: sign(`Hello ${ctx.contactName},\n\n${headline}${reason ? `\n\nReason: ${reason}` : ""}`),
  };
}
