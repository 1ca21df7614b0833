import { ClickHouseError } from "@clickhouse/client";

/**
 * ClickHouse error codes, typed in one place. A code comes from, in order:
 * - {@link ClickHouseServerError}, which Tributary's own HTTP calls (http-insert.ts) raise with the
 *   `X-ClickHouse-Exception-Code` header the server sends, or the code its answer starts with;
 * - @clickhouse/client's `ClickHouseError` (a numeric string), or an error shaped like it;
 * - the text of an error the client could not parse: 18.16 words errors "Code: 159,
 *   e.displayText() = DB::Exception: ...", without the `(TYPE)` suffix the client's parser needs,
 *   and the client throws that text as a plain Error. {@link codeOfErrorText} reads it.
 */

/** An error the ClickHouse server answered with; `code` is its numeric error code. */
export class ClickHouseServerError extends Error {
  override name = "ClickHouseServerError";
  constructor(
    message: string,
    readonly code: number,
    /** The HTTP status it came with. */
    readonly status?: number,
  ) {
    super(message);
  }
}

const isDigit = (c: number) => c >= 48 && c <= 57;

/**
 * The code a ClickHouse error text starts with: `Code: 27. DB::Exception: …` (20+) or `Code: 27,
 * e.displayText() = …` (18.16). Only at the start (after blanks): a code quoted inside another
 * message (a query's text, a proxy's page) is not the server's. The one place this text is read.
 */
export function codeOfErrorText(text: string): number | undefined {
  let i = 0;
  while (i < text.length && (text[i] === " " || text[i] === "\n" || text[i] === "\r" || text[i] === "\t")) i++;
  if (!text.startsWith("Code: ", i)) return undefined;
  i += 6;
  const start = i;
  while (i < text.length && i - start < 10 && isDigit(text.charCodeAt(i))) i++;
  if (i === start) return undefined;
  return Number(text.slice(start, i));
}

/** A code given as a string of digits (the client's `ClickHouseError.code`, the server's header). */
function numeric(code: unknown): number | undefined {
  if (typeof code !== "string" || code.length === 0 || code.length > 10) return undefined;
  for (let i = 0; i < code.length; i++) if (!isDigit(code.charCodeAt(i))) return undefined;
  return Number(code);
}

/** The server's error code, if `e` is an error the server answered with; undefined for network and other errors. */
export function clickHouseCode(e: unknown): number | undefined {
  if (e instanceof ClickHouseServerError) return e.code;
  if (!(e instanceof Error)) return undefined;
  // The client's ClickHouseError, or one shaped like it (a numeric string `code`); Node's own codes are words (ECONNRESET).
  const typed = numeric((e as { code?: unknown }).code);
  if (typed !== undefined || e instanceof ClickHouseError) return typed;
  return codeOfErrorText(e.message);
}

/**
 * The error for a ClickHouse HTTP answer that is not a success: the header's code when the
 * server sent it, else the one its text starts with. An answer with neither (a proxy's 502 page)
 * is not the server's error and carries no code.
 */
export function errorOfResponse(status: number, codeHeader: string | null, text: string): Error {
  const body = text.trim();
  const code = numeric(codeHeader ?? undefined) ?? codeOfErrorText(body);
  if (code !== undefined) return new ClickHouseServerError(body, code, status);
  return new Error(`ClickHouse answered HTTP ${status}: ${body.slice(0, 300)}`);
}
