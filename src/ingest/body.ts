/**
 * Reading request bodies within limits: inflating gzip/deflate while counting, strict UTF-8, a
 * deadline for the whole body, and memory accounted as bytes arrive (not as they are promised).
 * Each way a body can fail is an {@link HttpError} carrying the status its sender is answered with.
 */
import { isUtf8 } from "node:buffer";
import { HttpError } from "./http-error.ts";

export class PayloadTooLargeError extends HttpError {
  readonly status = 413;
  readonly code = "BODY_TOO_LARGE";
  constructor(
    readonly limit: number,
    message = `request body exceeds ${limit} bytes`,
  ) {
    super(message);
    this.name = "PayloadTooLargeError";
  }
}

export class BadEncodingError extends HttpError {
  readonly status = 400;
  readonly code = "BAD_ENCODING";
  constructor(message: string) {
    super(message);
    this.name = "BadEncodingError";
  }
}

/** The whole body did not arrive in time (a stalled or trickling sender, "slow loris"): 503, so real senders retry (PRODUCT.md: never 408). */
export class BodyTimeoutError extends HttpError {
  readonly status = 503;
  readonly code = "BODY_TIMEOUT";
  constructor(
    readonly ms: number,
    /** When the sender should retry; the connection is closed either way, as the rest of the body may still be coming. */
    readonly retryAfterSeconds?: number,
  ) {
    super(`request body not received within ${ms / 1000} s`);
    this.name = "BodyTimeoutError";
  }
  override get headers(): Record<string, string> {
    return this.retryAfterSeconds === undefined
      ? { Connection: "close" }
      : { Connection: "close", "Retry-After": String(this.retryAfterSeconds) };
  }
}

/** The sender went away before its body ended: nobody is left to answer. */
export class BodyAbortedError extends HttpError {
  readonly status = 400;
  readonly code = "BODY_ABORTED";
  constructor(message: string) {
    super(message);
    this.name = "BodyAbortedError";
  }
  override get headers(): Record<string, string> {
    return { Connection: "close" };
  }
}

/** The node's in-flight budget refused the bytes that arrived: 429, nothing stored. */
export class BodyOverloadError extends HttpError {
  readonly status = 429;
  readonly code = "OVERLOADED";
  constructor() {
    super("node overloaded; retry later");
    this.name = "BodyOverloadError";
  }
  override get headers(): Record<string, string> {
    return { "Retry-After": "1" };
  }
}

/**
 * The body's first byte (after JSON whitespace) was refused by {@link BodyReadOptions.firstByte}:
 * nothing more is read or inflated. Only a JSON object is ever asked for this way.
 */
export class BodyRefusedError extends HttpError {
  readonly status = 400;
  readonly code = "BODY_REFUSED";
  constructor() {
    super("body must be a JSON object");
    this.name = "BodyRefusedError";
  }
}

export interface BodyReadOptions {
  /** Largest body, after decompression. */
  limit: number;
  /** The whole body must have arrived within this many milliseconds. */
  timeoutMs?: number;
  /** The Retry-After a {@link BodyTimeoutError} answers with. */
  retryAfterSeconds?: number;
  /**
   * Told the body's size so far (after decompression) each time more arrives; `false` refuses the
   * request as overload. Lets the caller account memory for bytes received, so a client that
   * declares a large `Content-Length` and then stalls holds nothing it has not sent.
   */
  grow?: (size: number) => boolean;
  /**
   * Told the first byte that is not JSON whitespace, as soon as it has arrived (inflated);
   * `false` stops reading at once with {@link BodyRefusedError}. Lets a request that cannot be
   * authenticated by its body (no key header, and not a JSON object) be refused before the rest
   * of a gzip bomb is inflated.
   */
  firstByte?: (byte: number) => boolean;
}

const isJsonSpace = (b: number | undefined) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

/** Index of the first byte of `bytes` from `from` that is not JSON whitespace, or -1. */
function firstNonSpace(bytes: Uint8Array, from = 0): number {
  for (let i = from; i < bytes.length; i++) if (!isJsonSpace(bytes[i])) return i;
  return -1;
}

/** Bodies declaring at most this many bytes are read natively in one piece. */
export const SMALL_BODY_BYTES = 64 * 1024;

// Validating first (simdutf) and then decoding without checks costs half of a fatal decoder's
// decode in Bun (0.1 against 0.22 µs for an event's ~700 bytes); the loose decoder drops a
// leading byte-order mark as the fatal one did.
const utf8 = new TextDecoder("utf-8");

/** Strict UTF-8: invalid bytes are an error rather than silently replaced by U+FFFD. */
export function decodeUtf8(bytes: Uint8Array): string {
  if (!isUtf8(bytes)) throw new BadEncodingError("body is not valid UTF-8");
  return utf8.decode(bytes);
}

const optionsOf = (o: BodyReadOptions | number): BodyReadOptions => (typeof o === "number" ? { limit: o } : o);
const encodingOf = (request: Request) => (request.headers.get("content-encoding") ?? "identity").trim().toLowerCase();

/** Rejects with {@link BodyTimeoutError} after `ms`; `clear()` stops the timer. */
function deadline(ms: number | undefined, retryAfterSeconds?: number): { promise: Promise<never>; clear(): void } {
  if (!ms || !Number.isFinite(ms)) return { promise: new Promise<never>(() => {}), clear() {} };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BodyTimeoutError(ms, retryAfterSeconds)), ms);
  });
  promise.catch(() => {});
  return { promise, clear: () => clearTimeout(timer) };
}

/** The body as text (strict UTF-8), within the limit and the deadline. */
export async function readBodyText(request: Request, options: BodyReadOptions | number): Promise<string> {
  const o = optionsOf(options);
  const encoding = encodingOf(request);
  const declared = request.headers.has("content-length") ? Number(request.headers.get("content-length")) : NaN;
  // Fast path: a small plain body with a declared length is read natively, in one piece.
  if ((encoding === "identity" || encoding === "") && declared <= SMALL_BODY_BYTES) {
    const d = deadline(o.timeoutMs, o.retryAfterSeconds);
    const body = request.arrayBuffer();
    body.catch(() => {});
    let bytes: ArrayBuffer;
    try {
      bytes = await Promise.race([body, d.promise]);
    } catch (e) {
      if (e instanceof BodyTimeoutError) throw e;
      throw new BodyAbortedError(`request body ended early: ${(e as Error)?.message ?? e}`);
    } finally {
      d.clear();
    }
    if (o.grow && !o.grow(bytes.byteLength)) throw new BodyOverloadError();
    const u8 = new Uint8Array(bytes);
    if (o.firstByte) {
      const i = firstNonSpace(u8);
      if (i >= 0 && !o.firstByte(u8[i]!)) throw new BodyRefusedError();
    }
    return decodeUtf8(u8);
  }
  return decodeUtf8(await readBody(request, o));
}

/**
 * Returns the body's bytes after decompression. The limit applies to the inflated size and is
 * enforced as the stream inflates, so a gzip bomb is stopped after `limit` bytes, not after it
 * has filled memory.
 */
export async function readBody(request: Request, options: BodyReadOptions | number): Promise<Uint8Array> {
  const o = optionsOf(options);
  const limit = o.limit;
  const declared = Number(request.headers.get("content-length") ?? NaN);
  const encoding = encodingOf(request);
  const plain = encoding === "identity" || encoding === "";
  if (plain) {
    if (declared > limit) throw new PayloadTooLargeError(limit);
  } else if (encoding !== "gzip" && encoding !== "deflate" && encoding !== "x-gzip") {
    throw new BadEncodingError(`unsupported Content-Encoding "${encoding}" (gzip and deflate are accepted)`);
  }
  if (!request.body) return new Uint8Array(0);
  let stream: ReadableStream<Uint8Array> = request.body;
  if (!plain) {
    const format = encoding === "deflate" ? "deflate" : "gzip";
    stream = stream.pipeThrough(new DecompressionStream(format) as unknown as TransformStream<Uint8Array, Uint8Array>);
  }
  // A body that arrives in one chunk is used as it is; otherwise the chunks are copied into one
  // buffer as they arrive, grown by doubling but never past the declared length or the limit, so
  // the memory held is at most about twice what arrived, and there is no final concatenation.
  let buffer: Uint8Array = new Uint8Array(0);
  let owned = false;
  let size = 0;
  const most = Math.min(plain && declared > 0 ? declared : Infinity, limit);
  const reader = stream.getReader();
  const d = deadline(o.timeoutMs, o.retryAfterSeconds);
  let seenFirst = !o.firstByte;
  try {
    for (;;) {
      const { done, value } = await Promise.race([reader.read(), d.promise]);
      if (done) break;
      if (!seenFirst) {
        const i = firstNonSpace(value);
        if (i >= 0) {
          seenFirst = true;
          if (!o.firstByte!(value[i]!)) throw new BodyRefusedError();
        }
      }
      const next = size + value.byteLength;
      if (next > limit) throw new PayloadTooLargeError(limit);
      if (o.grow && !o.grow(next)) throw new BodyOverloadError();
      if (size === 0) {
        buffer = value;
      } else {
        if (!owned || next > buffer.byteLength) {
          const grown = new Uint8Array(Math.max(next, Math.min(2 * buffer.byteLength, most)));
          grown.set(buffer.subarray(0, size));
          buffer = grown;
          owned = true;
        }
        buffer.set(value, size);
      }
      size = next;
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    // Ours (too large, late, over budget, refused) as they are; the stream's own failures are named here.
    if (e instanceof HttpError) throw e;
    if (plain) throw new BodyAbortedError(`request body ended early: ${(e as Error)?.message ?? e}`);
    throw new BadEncodingError(`cannot decode ${encoding} body: ${(e as Error)?.message ?? e}`);
  } finally {
    d.clear();
  }
  return size === buffer.byteLength ? buffer : buffer.subarray(0, size);
}
