/** Reading request bodies within limits, inflating gzip/deflate while counting. */

export class PayloadTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body exceeds ${limit} bytes`);
    this.name = "PayloadTooLargeError";
  }
}

export class BadEncodingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BadEncodingError";
  }
}

/** The body as text (UTF-8), within the limit. */
export async function readBodyText(request: Request, limit: number): Promise<string> {
  const encoding = (request.headers.get("content-encoding") ?? "identity").trim().toLowerCase();
  // Fast path: a plain body with a declared length is read natively by the server, in one piece.
  if ((encoding === "identity" || encoding === "") && request.headers.has("content-length")) {
    if (Number(request.headers.get("content-length")) > limit) throw new PayloadTooLargeError(limit);
    return request.text();
  }
  return new TextDecoder().decode(await readBody(request, limit));
}

/**
 * Returns the body's bytes after decompression. The limit applies to the inflated size and is
 * enforced as the stream inflates, so a gzip bomb is stopped after `limit` bytes, not after it
 * has filled memory.
 */
export async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = Number(request.headers.get("content-length") ?? NaN);
  const encoding = (request.headers.get("content-encoding") ?? "identity").trim().toLowerCase();
  if (encoding === "identity" || encoding === "") {
    if (declared > limit) throw new PayloadTooLargeError(limit);
  } else if (encoding !== "gzip" && encoding !== "deflate" && encoding !== "x-gzip") {
    throw new BadEncodingError(`unsupported Content-Encoding "${encoding}" (gzip and deflate are accepted)`);
  }
  if (!request.body) return new Uint8Array(0);
  let stream: ReadableStream<Uint8Array> = request.body;
  if (encoding !== "identity" && encoding !== "") {
    const format = encoding === "deflate" ? "deflate" : "gzip";
    stream = stream.pipeThrough(new DecompressionStream(format) as unknown as TransformStream<Uint8Array, Uint8Array>);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > limit) {
        await reader.cancel().catch(() => {});
        throw new PayloadTooLargeError(limit);
      }
      chunks.push(value);
    }
  } catch (e) {
    if (e instanceof PayloadTooLargeError) throw e;
    throw new BadEncodingError(`cannot decode ${encoding} body: ${(e as Error).message}`);
  }
  if (chunks.length === 1) return chunks[0]!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}
