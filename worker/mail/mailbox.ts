/** What an e-mail address's spelling says about the mailbox it reaches. */

/** Providers that deliver `a.b@` to `ab@`; `googlemail.com` is `gmail.com`. */
const DOTS_IGNORED = new Set(["gmail.com", "googlemail.com"]);

/**
 * The mailbox an address reaches, as far as its spelling shows: lower-cased, without a `+tag` (which
 * most providers deliver to the address without it), and for Gmail without dots. Two spellings of
 * one person's address are one reviewer, and one applicant.
 */
export function canonicalEmail(email: string): string {
  const address = email.trim().toLowerCase();
  const at = address.lastIndexOf("@");
  if (at <= 0) return address;
  let local = address.slice(0, at);
  let domain = address.slice(at + 1).replace(/\.$/, "");
  const plus = local.indexOf("+");
  if (plus > 0) local = local.slice(0, plus);
  if (DOTS_IGNORED.has(domain)) {
    local = local.replaceAll(".", "");
    domain = "gmail.com";
  }
  return `${local}@${domain}`;
}
