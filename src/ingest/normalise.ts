import type { Event } from "./event-schema.ts";
import { enrich, EnrichError, mergeContext } from "./enrich.ts";
import type { IpPolicy } from "./ip.ts";

/** What the request contributes to every event in it. */
export interface RequestFacts {
  receivedAt: number;
  /** receivedAt as ISO-8601, formatted once per request rather than once per event. */
  receivedAtIso?: string;
  /** Address of the client in canonical form, already resolved through X-Forwarded-For when trusted. */
  ip?: string;
  /** The connection's `ip` setting (keep, mask24, drop), applied before the event is stored. */
  ipPolicy?: IpPolicy;
  /** `/v1/batch` top-level fields. */
  context?: Record<string, unknown>;
  integrations?: Record<string, unknown>;
  sentAt?: string;
}

export class NormaliseError extends Error {
  override name = "NormaliseError";
}

const time = (field: string, value: string): number => {
  const t = Date.parse(value);
  if (Number.isNaN(t)) throw new NormaliseError(`"${field}" is not a valid date: "${value}"`);
  return t;
};

const ID_FIELDS = ["userId", "anonymousId", "groupId", "previousId"] as const;

// Already in the form toISOString() gives: kept as sent, saving a format per field per event.
const CANONICAL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const iso = (field: string, value: string): string => (CANONICAL.test(value) && !Number.isNaN(Date.parse(value)) ? value : new Date(time(field, value)).toISOString());

/**
 * Segment's normalisation (PRODUCT.md §1), on a validated event, with the enrichment and privacy
 * rules of src/ingest/enrich.ts. Returns a new object; the input is left as it was. Throws
 * {@link NormaliseError} naming the field when the event cannot be stored.
 */
export function normaliseEvent(input: Event, facts: RequestFacts, newId: () => string = crypto.randomUUID.bind(crypto)): Event {
  const e: Event = { ...input };
  for (const f of ID_FIELDS) {
    const v = e[f];
    if (typeof v === "number") (e as Record<string, unknown>)[f] = String(v);
  }
  const own = e.context as Record<string, unknown> | undefined;
  const context = facts.context ? mergeContext(facts.context, own) : own && { ...own };
  if (context) e.context = context;
  try {
    enrich(e, context, facts);
  } catch (err) {
    if (err instanceof EnrichError) throw new NormaliseError(err.message);
    throw err;
  }
  if (facts.integrations) e.integrations = { ...facts.integrations, ...(e.integrations as Record<string, unknown> | undefined) };
  if (e.sentAt === undefined && facts.sentAt !== undefined) e.sentAt = facts.sentAt;
  if (e.messageId === undefined) e.messageId = newId();

  const receivedAt = facts.receivedAt;
  e.receivedAt = facts.receivedAtIso ?? new Date(receivedAt).toISOString();
  // The client's own clock reading: Segment SDKs send it as `timestamp`, RudderStack's as `originalTimestamp`.
  const original = e.originalTimestamp ?? e.timestamp;
  let timestamp: string;
  if (e.originalTimestamp !== undefined && e.timestamp !== undefined) {
    // Already normalised upstream: an event forwarded by Segment (whose receivedAt may be hours
    // before ours, after retries) or a RudderStack SDK call with an explicit backfill timestamp.
    // Correcting it again against our clock would move it to "now".
    timestamp = iso("timestamp", e.timestamp);
  } else if (original !== undefined && e.sentAt !== undefined) {
    // Corrects client clock skew: the delay the client measured, applied to our clock.
    const delay = time("sentAt", e.sentAt) - time(e.originalTimestamp ? "originalTimestamp" : "timestamp", original);
    timestamp = new Date(receivedAt - delay).toISOString();
  } else {
    timestamp = e.timestamp !== undefined ? iso("timestamp", e.timestamp) : (e.receivedAt as string);
  }
  if (original !== undefined) e.originalTimestamp = iso("originalTimestamp", original);
  if (e.sentAt !== undefined) e.sentAt = iso("sentAt", e.sentAt);
  e.timestamp = timestamp;
  return e;
}
