const LF = 10;
const CR = 13;
const COLON = 58;
const SPACE = 32;
const LOWER_D = 100;

/**
 * What to forward in place of an event, given its `data` (its `data:` lines joined with `\n`):
 * `undefined` forwards the event as the server wrote it, a string replaces it (`""` drops it).
 */
export type EventRewrite = (data: string) => string | undefined;

/**
 * Splits a server-sent event stream into events by the WHATWG event-stream rules
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
 * lines end in CR, LF or CRLF (a CR ending one chunk and an LF starting the next are one line
 * end), `data` fields join with `\n`, one space after the colon is dropped, `data` without a
 * colon is an empty value, comments and other fields carry no data. The caller decodes UTF-8,
 * which drops a leading BOM.
 *
 * It is on every streamed token's path, so it reads each character once and keeps only the
 * event that is not yet complete: a chunk of whole events that all pass unchanged comes back as
 * the very string it was given, and the caller can forward the server's own bytes.
 */
export class EventStreamFramer {
  /** The raw text of the event not yet complete, from its first line. */
  private pending = "";
  /** Where in `pending` the line not yet ended starts. */
  private scanned = 0;
  /** The event's `data` so far; undefined while it has no `data` field. */
  private data: string | undefined;
  /** The last chunk ended in CR: an LF that starts the next one belongs to that line end. */
  private crAtEnd = false;
  /** The last event was replaced, so the LF that completes its CR goes with it. */
  private lastReplaced = false;

  constructor(private readonly rewrite: EventRewrite) {}

  /** Reads the next decoded chunk; returns the text to forward for the events it completed. */
  push(text: string): string {
    if (text === "") return "";
    let from = this.scanned;
    if (this.crAtEnd) {
      this.crAtEnd = false;
      if (text.charCodeAt(0) === LF) {
        if (this.pending === "" && this.lastReplaced) {
          // The LF ends an event that was replaced: it goes too.
          text = text.slice(1);
          if (text === "") return "";
        } else from++;
      }
    }
    // A chunk without any line end only lengthens the current line: no scan, no copy.
    if (text.indexOf("\n") === -1 && text.indexOf("\r") === -1) {
      this.pending += text;
      return "";
    }
    const buffer = this.pending === "" ? text : this.pending + text;
    const unchangedStart = this.pending === "";
    const length = buffer.length;
    let pos = from;
    let eventStart = 0;
    let out: string | undefined;
    let copied = 0;
    let cr = buffer.indexOf("\r", pos);
    while (pos < length) {
      const lf = buffer.indexOf("\n", pos);
      if (cr !== -1 && cr < pos) cr = buffer.indexOf("\r", pos);
      let lineEnd: number;
      let next: number;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        lineEnd = cr;
        if (cr + 1 === length) {
          next = length;
          this.crAtEnd = true;
        } else next = buffer.charCodeAt(cr + 1) === LF ? cr + 2 : cr + 1;
      } else if (lf !== -1) {
        lineEnd = lf;
        next = lf + 1;
      } else break;
      if (lineEnd === pos) {
        const replacement = this.dispatch();
        this.lastReplaced = replacement !== undefined;
        if (replacement !== undefined) {
          out = (out ?? "") + buffer.slice(copied, eventStart) + replacement;
          copied = next;
        }
        eventStart = next;
      } else this.readLine(buffer, pos, lineEnd);
      pos = next;
    }
    this.pending = eventStart === 0 ? buffer : buffer.slice(eventStart);
    this.scanned = pos - eventStart;
    if (out === undefined) {
      if (unchangedStart && eventStart === length) return buffer;
      return buffer.slice(0, eventStart);
    }
    return out + buffer.slice(copied, eventStart);
  }

  /** Whether it holds nothing of an event: the last text it was given ended with a whole event. */
  idle(): boolean {
    return this.pending === "" && this.data === undefined && !this.crAtEnd;
  }

  /**
   * The end of the stream. The rules discard an event that was not ended by a blank line; a
   * server that forgot the last one still meant it, so it is read as ended, and forwarded ended
   * the same way, so the client and the meter see the same events.
   */
  end(): string {
    const rest = this.pending;
    this.pending = "";
    if (this.scanned < rest.length) this.readLine(rest, this.scanned, rest.length);
    this.scanned = 0;
    if (this.data === undefined) return rest;
    const replacement = this.dispatch();
    if (replacement !== undefined) return replacement;
    const last = rest.charCodeAt(rest.length - 1);
    return last === LF || last === CR ? `${rest}\n` : `${rest}\n\n`;
  }

  private dispatch(): string | undefined {
    const data = this.data;
    if (data === undefined) return undefined;
    this.data = undefined;
    return this.rewrite(data);
  }

  /** Reads one line's field; only `data` matters to the meter (`event`, `id`, `retry` and comments do not). */
  private readLine(buffer: string, start: number, end: number): void {
    if (buffer.charCodeAt(start) !== LOWER_D || !buffer.startsWith("data", start)) return;
    const after = start + 4;
    let value: string;
    if (after === end) value = "";
    else if (buffer.charCodeAt(after) === COLON)
      value = buffer.slice(after + 1 < end && buffer.charCodeAt(after + 1) === SPACE ? after + 2 : after + 1, end);
    else return; // another field whose name starts with "data"
    this.data = this.data === undefined ? value : `${this.data}\n${value}`;
  }
}
