import { createHash, timingSafeEqual } from "node:crypto";
import type { Config, LoadedConnection } from "../config/loader.ts";
import { HttpError } from "./http-error.ts";

/**
 * Write-key lookup. Keys are indexed by their SHA-256 digest, so the map lookup's timing depends
 * on the digest rather than on how many leading characters of a real key an attacker guessed;
 * the final comparison is constant-time as well.
 */
export class WriteKeyIndex {
  #byDigest = new Map<string, { key: Buffer; connection: LoadedConnection }>();

  constructor(config: Config) {
    for (const c of config.connections.values()) {
      if (c.source === "raw") continue;
      for (const k of c.writeKeys ?? []) this.#byDigest.set(digest(k), { key: Buffer.from(k), connection: c });
    }
  }

  lookup(key: string | undefined): LoadedConnection | undefined {
    if (!key) return undefined;
    const hit = this.#byDigest.get(digest(key));
    if (!hit) return undefined;
    const given = Buffer.from(key);
    return given.length === hit.key.length && timingSafeEqual(given, hit.key) ? hit.connection : undefined;
  }
}

function digest(key: string): string {
  return createHash("sha256").update(key).digest("base64");
}

/**
 * The write key from `Authorization: Bearer <key>` or `Basic base64(<key>:)` (Segment and
 * RudderStack SDKs). `undefined` when the header is absent or malformed.
 */
export function writeKeyFromHeader(header: string | null): string | undefined {
  if (!header) return undefined;
  const space = header.indexOf(" ");
  if (space < 0) return undefined;
  const scheme = header.slice(0, space).toLowerCase();
  const value = header.slice(space + 1).trim();
  if (!value) return undefined;
  if (scheme === "bearer") return value;
  if (scheme !== "basic") return undefined;
  let decoded: string;
  try {
    decoded = Buffer.from(value, "base64").toString("utf8");
  } catch {
    return undefined;
  }
  const colon = decoded.indexOf(":");
  const user = colon < 0 ? decoded : decoded.slice(0, colon);
  return user || undefined;
}

/**
 * The string value of the top-level `"writeKey"` of a JSON object body, found without parsing
 * the rest: nested values are skipped by matching brackets and strings, and nothing is built.
 * A body whose key cannot be known this way (not an object, malformed before the key is found,
 * no string `writeKey`) gives `undefined`, so a request without a key header costs one linear
 * scan before it is refused, never a `JSON.parse` of a body full of objects. Like `JSON.parse`,
 * the last of duplicate keys wins. The caller still checks, after parsing an authenticated body,
 * that the parsed `writeKey` is the one found here.
 */
export function topLevelWriteKey(text: string): string | undefined {
  let i = skipSpace(text, 0);
  if (text.charCodeAt(i) !== 0x7b /* { */) return undefined;
  i = skipSpace(text, i + 1);
  if (text.charCodeAt(i) === 0x7d /* } */) return undefined;
  let found: string | undefined;
  for (;;) {
    if (text.charCodeAt(i) !== 0x22 /* " */) return undefined;
    const keyEnd = stringEnd(text, i);
    if (keyEnd < 0) return undefined;
    const key = decodeJsonString(text, i, keyEnd);
    if (key === undefined) return undefined;
    i = skipSpace(text, keyEnd);
    if (text.charCodeAt(i) !== 0x3a /* : */) return undefined;
    i = skipSpace(text, i + 1);
    const valueEnd = valueEndAt(text, i);
    if (valueEnd < 0) return undefined;
    if (key === "writeKey") found = text.charCodeAt(i) === 0x22 ? decodeJsonString(text, i, valueEnd) : undefined;
    i = skipSpace(text, valueEnd);
    const c = text.charCodeAt(i);
    if (c === 0x7d /* } */) return found;
    if (c !== 0x2c /* , */) return undefined;
    i = skipSpace(text, i + 1);
  }
}

function skipSpace(text: string, i: number): number {
  for (;;) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) return i;
    i++;
  }
}

/** `text[start]` is `"`: the index just past its closing quote, or -1. */
function stringEnd(text: string, start: number): number {
  let from = start + 1;
  for (;;) {
    const q = text.indexOf('"', from);
    if (q < 0) return -1;
    let backslashes = 0;
    for (let j = q - 1; text.charCodeAt(j) === 0x5c; j--) backslashes++;
    if (backslashes % 2 === 0) return q + 1;
    from = q + 1;
  }
}

function decodeJsonString(text: string, start: number, end: number): string | undefined {
  const raw = text.slice(start, end);
  if (!raw.includes("\\")) return raw.slice(1, -1);
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === "string" ? v : undefined;
  } catch {
    return undefined;
  }
}

/** The index just past the JSON value starting at `i` (brackets and strings matched, not validated), or -1. */
function valueEndAt(text: string, i: number): number {
  const c = text.charCodeAt(i);
  if (c === 0x22) return stringEnd(text, i);
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const d = text.charCodeAt(j);
      if (d === 0x22) {
        j = stringEnd(text, j);
        if (j < 0) return -1;
        j--;
      } else if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) {
        if (--depth === 0) return j + 1;
      }
    }
    return -1;
  }
  let j = i;
  for (; j < text.length; j++) {
    const d = text.charCodeAt(j);
    if (d === 0x2c || d === 0x7d || d === 0x5d || d === 0x20 || d === 0x09 || d === 0x0a || d === 0x0d) break;
  }
  return j > i ? j : -1;
}

/** Any authentication failure: the same answer whatever failed, so a caller learns nothing about which keys exist. */
export class UnauthorizedError extends HttpError {
  readonly status = 401;
  readonly code = "UNAUTHORIZED";
  constructor() {
    super("unauthorized: send a valid write key");
    this.name = "UnauthorizedError";
  }
  override get headers(): Record<string, string> {
    return { "WWW-Authenticate": 'Basic realm="tributary"' };
  }
}
