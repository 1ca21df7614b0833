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

// A date the calendar has: Date.parse rolls "2025-02-30" over to March 2nd rather than refusing it.
// `value` starts YYYY-MM-DD (the schema's pattern); read without a regex, as this runs per timestamp.
const digits = (s: string, at: number, n: number) => {
  let v = 0;
  for (let i = at; i < at + n; i++) v = v * 10 + s.charCodeAt(i) - 48;
  return v;
};
const realDate = (value: string): boolean => {
  if (value.length < 10 || value[4] !== "-" || value[7] !== "-") return true;
  const month = digits(value, 5, 2),
    day = digits(value, 8, 2);
  if (month < 1 || month > 12 || day < 1) return false;
  if (day <= 28) return true;
  const year = digits(value, 0, 4);
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  return day <= (month === 2 ? (leap ? 29 : 28) : month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31);
};

// What ISO-8601 (and ClickHouse's DateTime64 parser) can write with a 4-digit year: a zone offset or
// a clock-skew correction can push a time outside it, and toISOString() would then give "+010000-…".
const MIN_TIME = Date.parse("0000-01-01T00:00:00.000Z");
const MAX_TIME = Date.parse("9999-12-31T23:59:59.999Z");
const inRange = (field: string, t: number, how = ""): number => {
  if (t < MIN_TIME || t > MAX_TIME) throw new NormaliseError(`"${field}"${how} falls outside the years 0000 to 9999`);
  return t;
};

/** `s[at, at+n)` as a number, or -1 when one of them is not a digit. */
const digitsOrNot = (s: string, at: number, n: number) => {
  let v = 0;
  for (let i = at; i < at + n; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
};
const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * The time of a timestamp written exactly as toISOString() writes it (`YYYY-MM-DDTHH:MM:SS.sssZ`,
 * a day the calendar has, hours 00–23, seconds 00–59), by arithmetic; else undefined and the caller
 * asks Date.parse. SDKs send this form, three fields an event: Date.parse costs ~0.2 µs each.
 * Days are counted from the civil date (H. Hinnant's days_from_civil), valid for every 4-digit year.
 */
export function canonicalTime(s: string): number | undefined {
  if (
    s.length !== 24 ||
    s.charCodeAt(4) !== 45 /* - */ ||
    s.charCodeAt(7) !== 45 ||
    s.charCodeAt(10) !== 84 /* T */ ||
    s.charCodeAt(13) !== 58 /* : */ ||
    s.charCodeAt(16) !== 58 ||
    s.charCodeAt(19) !== 46 /* . */ ||
    s.charCodeAt(23) !== 90 /* Z */
  )
    return undefined;
  const year = digitsOrNot(s, 0, 4),
    month = digitsOrNot(s, 5, 2),
    day = digitsOrNot(s, 8, 2),
    hour = digitsOrNot(s, 11, 2),
    minute = digitsOrNot(s, 14, 2),
    second = digitsOrNot(s, 17, 2),
    ms = digitsOrNot(s, 20, 3);
  if (year < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59)
    return undefined;
  if (second < 0 || second > 59 || ms < 0) return undefined;
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  if (day > (month === 2 && leap ? 29 : DAYS[month - 1]!)) return undefined;
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  const days = era * 146097 + doe - 719468;
  return ((days * 24 + hour) * 60 + minute) * 60000 + second * 1000 + ms;
}

const time = (field: string, value: string): number => {
  const fast = canonicalTime(value);
  if (fast !== undefined) return fast;
  const t = Date.parse(value);
  if (Number.isNaN(t) || !realDate(value)) throw new NormaliseError(`"${field}" is not a valid date: "${value}"`);
  return t;
};

const ID_FIELDS = ["userId", "anonymousId", "groupId", "previousId"] as const;

// Already in the form toISOString() gives: kept as sent, saving a format per field per event.
const CANONICAL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const iso = (field: string, value: string): string => {
  if (canonicalTime(value) !== undefined) return value;
  const t = time(field, value);
  return CANONICAL.test(value) ? value : new Date(inRange(field, t)).toISOString();
};

/**
 * Segment's normalisation (PRODUCT.md §1), on a validated event, with the enrichment and privacy
 * rules of src/ingest/enrich.ts. Returns a new object; the input is left as it was. Throws
 * {@link NormaliseError} naming the field when the event cannot be stored.
 */
export function normaliseEvent(
  input: Event,
  facts: RequestFacts,
  newId: () => string = crypto.randomUUID.bind(crypto),
): Event {
  const e: Event = { ...input };
  for (const f of ID_FIELDS) {
    const v = e[f];
    if (typeof v === "number") {
      // Past 2^53 a JSON number has already been rounded (12345678901234567890 → …567000): two users would merge.
      if (Math.abs(v) > Number.MAX_SAFE_INTEGER)
        throw new NormaliseError(`"${f}" is a number too large to keep exactly; send it as a string`);
      (e as Record<string, unknown>)[f] = String(v);
    }
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
  if (facts.integrations)
    e.integrations = { ...facts.integrations, ...(e.integrations as Record<string, unknown> | undefined) };
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
    timestamp = new Date(
      inRange(
        "timestamp",
        receivedAt - delay,
        ` corrected for clock skew (receivedAt − (sentAt − ${e.originalTimestamp ? "originalTimestamp" : "timestamp"}))`,
      ),
    ).toISOString();
  } else {
    timestamp = e.timestamp !== undefined ? iso("timestamp", e.timestamp) : (e.receivedAt as string);
  }
  if (original !== undefined) e.originalTimestamp = iso("originalTimestamp", original);
  if (e.sentAt !== undefined) e.sentAt = iso("sentAt", e.sentAt);
  e.timestamp = timestamp;
  return e;
}
