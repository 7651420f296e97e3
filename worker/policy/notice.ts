import type { LicenseDuty } from "./types";

/**
 * The NOTICE text of a family: the notice its licence requires redistributions to carry, then
 * each duty with its section, so that whoever receives the weights reads what they must do.
 */
export function noticeWithDuties(notice: string, duties: readonly LicenseDuty[]): string {
  if (duties.length === 0) return notice;
  const lines = duties.map((d) => `- ${d.text} (section ${d.section})`);
  return `${notice}\n\nDuties under the license:\n${lines.join("\n")}`;
}
