import { createHash, timingSafeEqual } from "node:crypto";
import type { Config, LoadedConnection } from "../config/loader.ts";

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
