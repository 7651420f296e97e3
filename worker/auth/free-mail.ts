/**
 * Mail providers anyone can sign up with, and relay services that hand out addresses at their own
 * domains. Sharing one of these domains says nothing about who someone works for: it is no
 * conflict of interest, and no organization's verified domain. Data, not logic: extend freely.
 * An entry ending in `.*` stands for the provider under any top-level domain (`gmx.de`,
 * `gmx.co.uk`).
 */
export const FREE_MAIL_DOMAINS: readonly string[] = [
  "10minutemail.com",
  "126.com",
  "163.com",
  "addy.io",
  "aim.com",
  "aleeas.com",
  "anonaddy.com",
  "anonaddy.me",
  "aol.*",
  "bk.ru",
  "cock.li",
  "daum.net",
  "duck.com",
  "fastmail.com",
  "fastmail.fm",
  "foxmail.com",
  "gmail.com",
  "gmx.*",
  "googlemail.com",
  "guerrillamail.com",
  "hanmail.net",
  "hey.com",
  "hotmail.*",
  "icloud.com",
  "inbox.lv",
  "inbox.ru",
  "interia.pl",
  "internet.ru",
  "laposte.net",
  "libero.it",
  "list.ru",
  "live.*",
  "mac.com",
  "mail.com",
  "mail.ee",
  "mail.ru",
  "mailinator.com",
  "me.com",
  "mozmail.com",
  "msn.com",
  "naver.com",
  "o2.pl",
  "onet.pl",
  "orange.fr",
  "outlook.*",
  "passinbox.com",
  "passmail.com",
  "passmail.net",
  "pm.me",
  "privaterelay.appleid.com",
  "proton.me",
  "protonmail.*",
  "qq.com",
  "rambler.ru",
  "rediffmail.com",
  "seznam.cz",
  "sharklasers.com",
  "simplelogin.com",
  "simplelogin.fr",
  "sina.cn",
  "sina.com",
  "slmail.me",
  "t-online.de",
  "temp-mail.org",
  "tempmail.com",
  "tuta.io",
  "tutanota.com",
  "web.de",
  "wp.pl",
  "ya.ru",
  "yahoo.*",
  "yandex.*",
  "yeah.net",
  "ymail.com",
  "yopmail.com",
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
