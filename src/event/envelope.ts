/**
 * The record envelope: what a stream message holds, `events` (ingested events) or `raw` (raw webhook
 * deliveries). A message holds one kind only, named by its KIND_HEADER. Readers tell the kinds apart
 * by this header, never by a field of the record, which a sender controls. Messages written before
 * the header existed have none: for those, `isLegacyRawRecord` recognises a raw delivery by shape.
 */
export const KIND_HEADER = "Tributary-Kind";
export type RecordKind = "events" | "raw";

/** What a raw webhook delivery looks like in the stream (and to `nats sub`). */
export interface RawRecord {
  messageId: string;
  raw: { receivedAt: string; headers: Record<string, string>; rows: string[] };
}

/**
 * A raw webhook delivery in a message written before the record envelope existed: exactly
 * `{messageId, raw}`. An ingested event is always stored with `receivedAt`, `type` and more, so no
 * event a sender sent has this shape.
 */
export function isLegacyRawRecord(e: unknown): boolean {
  if (!e || typeof e !== "object") return false;
  const keys = Object.keys(e);
  const raw = (e as Record<string, unknown>).raw;
  return keys.length === 2 && "messageId" in e && "raw" in e && !!raw && typeof raw === "object";
}

/** The kind of one record of a message whose KIND_HEADER is `header` (undefined or "" before the envelope). */
export function recordKind(header: string | undefined, record: unknown): RecordKind {
  if (header) return header === "raw" ? "raw" : "events";
  return isLegacyRawRecord(record) ? "raw" : "events";
}
