import type { Bus } from "./connection.ts";
import { KIND_HEADER, type RecordKind } from "../event/envelope.ts";

/**
 * A shard subject's messages as the shard writer stores them: each holds a JSON array of events
 * in its body and their messageIds in a header, so the dedup index is rebuilt from headers alone.
 */

/** One event ready to store: its messageId and its serialised JSON. */
export interface Entry {
  id: string;
  json: string;
}

/** Header listing the messageIds a message holds, so a node can rebuild its index from headers alone. */
export const IDS_HEADER = "Tributary-Ids";
/**
 * What the dedup index holds for a record: its id within its kind. A raw delivery and an event
 * derived from it may carry the same id (an `events:` expression naming the event after its
 * delivery), and neither is a copy of the other. A message's ids take the kind of its KIND_HEADER;
 * one written before the header existed counts as events.
 */
export const RAW_PREFIX = "\u0000raw\u0000";
export const dedupKey = (kind: RecordKind | string | undefined, id: string) =>
  kind === "raw" ? `${RAW_PREFIX}${id}` : id;
export const dedupKeys = (kind: RecordKind | string | undefined, ids: string[]) =>
  kind === "raw" ? ids.map((id) => dedupKey(kind, id)) : ids;

/** Bytes an id adds to the Tributary-Ids header: its JSON string and a comma. */
export function idHeaderBytes(id: string): number {
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    // Letters, digits, `_ . : -` are written as they are (the common case: UUIDs); anything else is measured.
    if (!((c >= 48 && c <= 58) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 45))
      return Buffer.byteLength(JSON.stringify(id)) + 1;
  }
  return id.length + 3;
}
/**
 * A message's body, the JSON array of its events, as bytes written once into one buffer: events
 * are nearly always ASCII, and then each UTF-16 unit is one byte. An event that is not (its UTF-8
 * differs in length from its text) sends the batch the old way, a joined string NATS encodes.
 */
export function payloadOf(jsons: readonly string[]): Uint8Array | string {
  let units = Math.max(2, jsons.length + 1); // brackets and commas
  for (const j of jsons) units += j.length;
  const out = Buffer.allocUnsafe(units);
  out[0] = 0x5b; // [
  let at = 1;
  for (let i = 0; i < jsons.length; i++) {
    if (i > 0) out[at++] = 0x2c; // ,
    const json = jsons[i]!;
    if (out.write(json, at, "utf8") !== json.length) return `[${jsons.join(",")}]`;
    at += json.length;
  }
  out[at] = 0x5d; // ]
  return out;
}

export const kindOf = (h: { get(k: string): string } | undefined) => h?.get(KIND_HEADER) || undefined;

/** A message as the stream's get API returns it. */
export type StoredMessage = Awaited<ReturnType<Bus["jsm"]["streams"]["getMessage"]>>;

/** JetStream refuses a message whose headers exceed 64 KiB: the id list of one message stays under it. */
export const MAX_IDS_HEADER_BYTES = 60 * 1024;
