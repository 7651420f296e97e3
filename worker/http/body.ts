import { AppError } from "../errors";

/**
 * A request body as text, counted while it is read: the read stops, and the request is refused as
 * `payload_too_large`, as soon as more than `limit` bytes have arrived, whether or not the client
 * declared a `Content-Length` (a chunked body declares none). A declared length over the limit is
 * refused before anything is read.
 */
export async function readBodyText(request: Request, limit: number): Promise<string> {
  const declared = refuseDeclaredOverLimit(request, limit);
  if (!request.body) return "";
  if (Number.isFinite(declared)) {
    // A declared length within the limit is all the runtime reads off the connection (HTTP's own
    // framing): the runtime decodes it in one go, the common case and the cheaper one.
    const text = await request.text();
    // Belt and braces: more characters than the limit are more bytes than it too.
    if (text.length > limit) throw tooLarge(limit);
    return text;
  }
  return decoder.decode(await readCounted(request.body, limit));
}

/**
 * Refuses a request whose declared `Content-Length` is over `limit` as `payload_too_large`, before
 * anything is read: for a route that checks other headers before it reads, so that a body too
 * large is refused as such whatever else is wrong. Returns the declared length (NaN: none).
 */
export function refuseDeclaredOverLimit(request: Request, limit: number): number {
  const declared = Number(request.headers.get("content-length") ?? Number.NaN);
  if (declared > limit) throw tooLarge(limit);
  return declared;
}

/** Decodes whole bodies only (never `stream: true`), so one serves every request. */
const decoder = new TextDecoder();

const tooLarge = (limit: number) =>
  new AppError("payload_too_large", `The request body is larger than ${limit} bytes.`);

/** A body without a declared length, read chunk by chunk and refused once past `limit`. */
async function readCounted(body: ReadableStream<Uint8Array>, limit: number): Promise<Uint8Array> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel();
      throw tooLarge(limit);
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array;
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}
