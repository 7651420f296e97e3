import { AppError } from "../errors";

/**
 * A request body as text, counted while it is read: the read stops, and the request is refused as
 * `payload_too_large`, as soon as more than `limit` bytes have arrived, whether or not the client
 * declared a `Content-Length` (a chunked body declares none). A declared length over the limit is
 * refused before anything is read.
 */
export async function readBodyText(request: Request, limit: number): Promise<string> {
  // A declared length within the limit is all the runtime reads off the connection (HTTP's own
  // framing): the runtime decodes it in one go, the common case and the cheaper one.
  if (request.body && request.headers.has("content-length") && declaredWithin(request, limit)) {
    const text = await request.text();
    // Belt and braces: more characters than the limit are more bytes than it too.
    if (text.length > limit) throw tooLarge(limit);
    return text;
  }
  return decoder.decode(await readBodyBytes(request, limit));
}

/** Decodes whole bodies only (never `stream: true`), so one serves every request. */
const decoder = new TextDecoder();

/** Whether the request declares a length within `limit`; one over it is refused as `payload_too_large`. */
function declaredWithin(request: Request, limit: number): boolean {
  const declared = Number(request.headers.get("content-length"));
  if (Number.isFinite(declared) && declared > limit) throw tooLarge(limit);
  return Number.isFinite(declared);
}

const tooLarge = (limit: number) =>
  new AppError("payload_too_large", `The request body is larger than ${limit} bytes.`);

/** `readBodyText`'s bytes, undecoded. */
export async function readBodyBytes(request: Request, limit: number): Promise<Uint8Array> {
  declaredWithin(request, limit);
  if (!request.body) return new Uint8Array();
  if (request.headers.has("content-length")) {
    // The runtime reads no more than a declared length off the connection: read it in one go (the
    // common case, and the cheaper one), and still refuse a body that came out longer.
    const bytes = new Uint8Array(await request.arrayBuffer());
    if (bytes.byteLength > limit) throw tooLarge(limit);
    return bytes;
  }
  const reader = request.body.getReader();
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
