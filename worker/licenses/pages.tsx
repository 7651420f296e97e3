/** What changed between license versions, and the form owners and admins accept a new one with. */
import type { DiffLine } from "./diff";
import type { LicenseChangeView } from "./routes";

const MARK: Record<DiffLine["kind"], string> = { same: "  ", removed: "- ", added: "+ " };

/** A line diff, one line per row: removed lines marked `-`, added ones `+`. */
export function LineDiff(props: { lines: DiffLine[]; label: string }) {
  const changed = props.lines.filter((l) => l.kind !== "same").length;
  return (
    <details open={changed > 0}>
      <summary>
        {props.label}: {changed === 0 ? "unchanged" : `${changed} lines changed`}
      </summary>
      <pre class="diff">
        {props.lines.map((line) => (
          <span class={`diff-${line.kind}`}>
            {line.kind === "removed" ? <del>{MARK[line.kind] + line.text}</del> : null}
            {line.kind === "added" ? <ins>{MARK[line.kind] + line.text}</ins> : null}
            {line.kind === "same" ? MARK[line.kind] + line.text : null}
            {"\n"}
          </span>
        ))}
      </pre>
    </details>
  );
}

/**
 * One pending license change: its deadline, the diffs, and for owners and admins (`canAccept`)
 * the form that accepts it; `action` is where the form posts.
 */
export function LicenseChange(props: { change: LicenseChangeView; canAccept: boolean; action?: string | undefined }) {
  const { change } = props;
  return (
    <section class="license-change" id={`change-${change.id}`}>
      <h3>
        {change.family}: version {change.current.version} replaces version {change.accepted.version}
      </h3>
      <p>
        {change.overdue
          ? `Downloads and inference stopped at ${change.acceptBy}: they resume once an owner or admin accepts version ${change.current.version}.`
          : `Accept version ${change.current.version} by ${change.acceptBy}, or downloads and inference stop then.`}
      </p>
      <LineDiff label="License" lines={change.diff.license} />
      <LineDiff label="Acceptable Use Policy" lines={change.diff.aup} />
      {props.canAccept && props.action ? (
        <form method="post" action={props.action}>
          <input type="hidden" name="id" value={change.id} />
          <input type="hidden" name="licenseSha256" value={change.current.licenseSha256} />
          <input type="hidden" name="aupSha256" value={change.current.aupSha256} />
          <label>
            <input type="checkbox" name="agree" value="yes" required /> I accept version {change.current.version} of the
            license and the Acceptable Use Policy for my organization.
          </label>
          <button type="submit">Accept version {change.current.version}</button>
        </form>
      ) : (
        <p>An owner or admin of the organization accepts it, signed in at /account/license.</p>
      )}
    </section>
  );
}
