/**
 * Splitting a raw webhook body into the rows it stores (PRODUCT.md §2). A request is stored
 * whole or not at all, so any bad document fails the whole request with the parser's message.
 */
export type RawBodyFormat = "json" | "json-array" | "text";

export class RawBodyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RawBodyError";
  }
}

export interface RawDocuments {
  /** Each row's body: json and text rows as received, json-array elements re-serialised compactly. */
  rows: string[];
  /** The parsed documents (json, json-array), for dedup and `events:` expressions. */
  parsed: unknown[];
}

const fatal = new TextDecoder("utf-8", { fatal: true });

export function splitRawBody(bytes: Uint8Array, format: RawBodyFormat): RawDocuments {
  let text: string;
  try {
    text = fatal.decode(bytes);
  } catch {
    throw new RawBodyError("body is not valid UTF-8");
  }
  if (format === "text") return { rows: [text], parsed: [] };
  if (!text.trim()) throw new RawBodyError("empty body: expected JSON");
  if (format === "json-array") {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      throw new RawBodyError(`invalid JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(v))
      throw new RawBodyError(`expected a JSON array (body: json-array), got ${v === null ? "null" : typeof v}`);
    return { rows: v.map((x) => JSON.stringify(x)), parsed: v };
  }
  // json: one document, or newline-separated documents (NDJSON), one row each.
  try {
    return { rows: [text], parsed: [JSON.parse(text)] };
  } catch (whole) {
    const lines = text.split("\n");
    const rows: string[] = [];
    const parsed: unknown[] = [];
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim();
      if (!line) continue;
      try {
        parsed.push(JSON.parse(line));
      } catch (e) {
        throw new RawBodyError(
          lines.filter((l) => l.trim()).length > 1
            ? `invalid JSON on line ${i + 1}: ${(e as Error).message}`
            : `invalid JSON: ${(whole as Error).message}`,
        );
      }
      rows.push(line);
    }
    return { rows, parsed };
  }
}

/**
 * The headers a connection stores: a list, or `all` minus credentials. `secretHeader` (the header
 * of a `{header, equals}` check, which carries the shared secret itself) is never stored, listed
 * or not: stored headers reach the stream, the debugger and the warehouse.
 */
export function storedHeaders(
  headers: Headers,
  which: "all" | string[] | undefined,
  secretHeader?: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  if (!which) return out;
  const secret = secretHeader?.toLowerCase();
  if (which === "all") {
    headers.forEach((v, k) => {
      if (k !== "authorization" && k !== "cookie" && k !== "proxy-authorization" && k !== secret) out[k] = v;
    });
  } else {
    for (const name of which) {
      const v = headers.get(name);
      if (v !== null && name.toLowerCase() !== secret) out[name.toLowerCase()] = v;
    }
  }
  return out;
}
