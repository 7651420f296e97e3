/**
 * Mail providers anyone can sign up with. Sharing one of these domains says nothing about who
 * someone works for, so it is no conflict of interest. Data, not logic: extend the list freely.
 * An entry ending in `.*` stands for the provider under any top-level domain (`gmx.de`,
 * `gmx.co.uk`).
 */
export const FREE_MAIL_DOMAINS: readonly string[] = [
  "163.com",
  "126.com",
  "aim.com",
  "aol.*",
  "fastmail.com",
  "fastmail.fm",
  "gmail.com",
  "gmx.*",
  "googlemail.com",
  "hey.com",
  "hotmail.*",
  "icloud.com",
  "inbox.lv",
  "laposte.net",
  "libero.it",
  "live.*",
  "mac.com",
  "mail.com",
  "mail.ru",
  "me.com",
  "msn.com",
  "naver.com",
  "orange.fr",
  "outlook.*",
  "pm.me",
  "proton.me",
  "protonmail.*",
  "qq.com",
  "rambler.ru",
  "rediffmail.com",
  "seznam.cz",
  "sina.com",
  "t-online.de",
  "tutanota.com",
  "tuta.io",
  "web.de",
  "yahoo.*",
  "yandex.*",
  "ya.ru",
  "ymail.com",
  "zoho.com",
  "zohomail.com",
];

const EXACT = new Set(FREE_MAIL_DOMAINS.filter((entry) => !entry.endsWith(".*")));
const ANY_TLD = new Set(FREE_MAIL_DOMAINS.filter((entry) => entry.endsWith(".*")).map((entry) => entry.slice(0, -2)));

/** A top-level domain, alone or under a country code: `de`, `co.uk`, `com.br`. */
function isTopLevel(labels: readonly string[]): boolean {
  const [first, second] = labels;
  if (labels.length === 1) return true;
  return labels.length === 2 && /^(co|com|net|org|ne|or)$/.test(first ?? "") && /^[a-z]{2}$/.test(second ?? "");
}

/**
 * Whether a (lower-case) domain belongs to a free mail provider: the domain itself or a domain it
 * is under is listed, or it is a provider listed for any top-level domain under one.
 */
export function isFreeMailDomain(domain: string): boolean {
  const labels = domain.split(".");
  for (let i = 0; i < labels.length - 1; i++) {
    if (EXACT.has(labels.slice(i).join("."))) return true;
    if (ANY_TLD.has(labels[i] ?? "") && isTopLevel(labels.slice(i + 1))) return true;
  }
  return false;
}
