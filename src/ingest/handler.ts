import type { LoadedConnection } from "../config/loader.ts";
import type { EventLog } from "../bus/event-log.ts";
import { BusUnavailableError } from "../bus/errors.ts";
import type { Entry } from "../bus/shard-writer.ts";
import { validateEnvelope, validateEvent, type Event, type EventType } from "./event-schema.ts";
import { normaliseEvent, NormaliseError, type RequestFacts } from "./normalise.ts";
import { rateLimitedEvents, type RateLimiter } from "./rate-limit.ts";
import { log as logger } from "../util/log.ts";

/** Which body shape an endpoint takes (PRODUCT.md §1). */
export type Endpoint = { kind: "events" } | { kind: "batch" } | { kind: "single"; type: EventType };

export interface Rejection {
  index: number;
  messageId?: string;
  error: string;
}

export interface IngestResult {
  status: number;
  body: Record<string, unknown>;
  headers?: Record<string, string>;
}

export interface IngestLimits {
  maxEventBytes: number;
  maxEventsPerRequest: number;
  retryAfterSeconds: number;
}

export interface IngestStats {
  accepted: number;
  duplicates: number;
  rejected: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** How deep an event may nest (the event itself is level 1); deeper is rejected, naming the field. */
export const MAX_EVENT_DEPTH = 100;
/** Rejection messages echo at most this much (a hostile key or value could be megabytes). */
const MAX_ERROR_CHARS = 300;
const clip = (s: string) => (s.length > MAX_ERROR_CHARS ? `${s.slice(0, MAX_ERROR_CHARS)}…` : s);

/** True when `v` (at `depth`) holds no container deeper than MAX_EVENT_DEPTH and no infinite number. */
function storable(v: unknown, depth: number): boolean {
  if (depth > MAX_EVENT_DEPTH) return false;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const x = v[i];
      if (typeof x === "object" ? x !== null && !storable(x, depth + 1) : typeof x === "number" && !Number.isFinite(x))
        return false;
    }
    return true;
  }
  const o = v as Record<string, unknown>;
  for (const k in o) {
    const x = o[k];
    if (typeof x === "object" ? x !== null && !storable(x, depth + 1) : typeof x === "number" && !Number.isFinite(x))
      return false;
  }
  return true;
}

/**
 * What JSON cannot store faithfully in an event: nesting deeper than {@link MAX_EVENT_DEPTH}
 * (JSON.parse takes any depth, but serialising it again overflows the stack after seconds of
 * work, here or in a pipeline), and numbers JSON.parse turned into ±Infinity (`1e400`), which
 * JSON.stringify would silently write as `null`. `undefined` when there is neither; else the
 * problem, naming the field. Costs well under a microsecond for an ordinary event.
 */
export function unstorable(event: Record<string, unknown>): string | undefined {
  if (storable(event, 1)) return undefined;
  const walk = (v: unknown, depth: number, path: string): string | undefined => {
    if (typeof v === "number")
      return Number.isFinite(v) ? undefined : `"${path}" is a number too large for JSON (it overflows to Infinity)`;
    if (typeof v !== "object" || v === null) return undefined;
    if (depth > MAX_EVENT_DEPTH) return `"${path.split(".")[0]}" nests deeper than ${MAX_EVENT_DEPTH} levels`;
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const p = walk(v[i], depth + 1, `${path}.${i}`);
        if (p) return p;
      }
    } else {
      for (const k in v) {
        const p = walk((v as Record<string, unknown>)[k], depth + 1, path ? `${path}.${k}` : k);
        if (p) return p;
      }
    }
    return undefined;
  };
  return walk(event, 1, "") ?? "event cannot be written as JSON";
}

/** A rejection, echoing the sender's own messageId (never one generated here) when it is a valid one. */
function rejection(index: number, raw: unknown, error: string): Rejection {
  const messageId =
    isObject(raw) && typeof raw.messageId === "string" && raw.messageId.length <= 100 ? raw.messageId : undefined;
  return { index, ...(messageId !== undefined && { messageId }), error: clip(error) };
}

/** Splits a parsed body into its events and the request-level facts, or says what is wrong. */
export function eventsOf(
  endpoint: Endpoint,
  body: unknown,
): { events: unknown[]; batch?: Partial<RequestFacts> } | { error: string } {
  switch (endpoint.kind) {
    case "events":
      if (Array.isArray(body)) return { events: body };
      if (isObject(body)) return { events: [body] };
      return { error: "body must be an event object or an array of events" };
    case "batch": {
      const problem = validateEnvelope(body);
      if (problem) return { error: problem };
      const b = body as {
        batch: unknown[];
        context?: Record<string, unknown>;
        integrations?: Record<string, unknown>;
        sentAt?: string;
      };
      return { events: b.batch, batch: { context: b.context, integrations: b.integrations, sentAt: b.sentAt } };
    }
    case "single":
      if (!isObject(body)) return { error: "body must be an event object" };
      return { events: [{ ...body, type: endpoint.type }] };
  }
}

/** The write key some SDKs send in the body (sendBeacon, old analytics-node). */
export function bodyWriteKey(body: unknown): string | undefined {
  if (isObject(body) && typeof body.writeKey === "string") return body.writeKey;
  return undefined;
}

/** One request's events for {@link ingest}. */
export interface IngestRequest {
  connection: LoadedConnection;
  endpoint: Endpoint;
  /** The parsed body. */
  body: unknown;
  facts: RequestFacts;
  eventLog: EventLog;
  limits: IngestLimits;
  stats: IngestStats;
  /** Per-connection rate limits; none for events derived from a webhook delivery. */
  rateLimiter?: RateLimiter;
}

/**
 * Validates, normalises and durably stores the events of one request for one connection.
 * A 2xx is returned only once JetStream has acknowledged every accepted event.
 */
export async function ingest({
  connection,
  endpoint,
  body,
  facts,
  eventLog: log,
  limits,
  stats,
  rateLimiter,
}: IngestRequest): Promise<IngestResult> {
  const split = eventsOf(endpoint, body);
  if ("error" in split) return { status: 400, body: { error: split.error } };
  const { events } = split;
  if (events.length > limits.maxEventsPerRequest)
    return {
      status: 413,
      body: { error: `a request may hold at most ${limits.maxEventsPerRequest} events; this one has ${events.length}` },
    };
  if (events.length === 0) return { status: 400, body: { error: "no events in the request" } };

  const requestFacts: RequestFacts = {
    receivedAtIso: new Date(facts.receivedAt).toISOString(),
    ipPolicy: connection.ip,
    ...facts,
    ...split.batch,
  };
  const rejected: Rejection[] = [];
  const entries: Entry[] = [];
  for (let index = 0; index < events.length; index++) {
    const raw = events[index];
    const problem = validateEvent(raw);
    if (problem) {
      rejected.push(rejection(index, raw, problem));
      continue;
    }
    let event: Event;
    try {
      event = normaliseEvent(raw as Event, requestFacts);
    } catch (e) {
      if (!(e instanceof NormaliseError)) throw e;
      rejected.push(rejection(index, raw, e.message));
      continue;
    }
    // A write key in the body authenticates the request; it is never stored.
    delete event.writeKey;
    // Checked before JSON.stringify: overflowing the stack on a 100,000-deep event takes seconds.
    const unfit = unstorable(event);
    if (unfit) {
      rejected.push(rejection(index, raw, unfit));
      continue;
    }
    const json = JSON.stringify(event);
    // A UTF-16 unit is at most 3 UTF-8 bytes: only count bytes when the length says it could matter.
    if (json.length * 3 > limits.maxEventBytes && Buffer.byteLength(json) > limits.maxEventBytes) {
      rejected.push(
        rejection(
          index,
          raw,
          `event is ${Buffer.byteLength(json)} bytes as JSON, over the ${limits.maxEventBytes}-byte limit`,
        ),
      );
      continue;
    }
    entries.push({ id: event.messageId!, json });
  }
  if (entries.length === 0) {
    stats.rejected += rejected.length;
    return { status: 400, body: { error: "no valid events in the request", rejected } };
  }

  // Counted in the events this request would store: invalid ones are not charged.
  const limited = rateLimiter?.take(connection.connection, connection.rateLimit, entries.length);
  if (limited && !limited.ok) {
    rateLimitedEvents.inc({ connection: connection.connection }, entries.length);
    return {
      status: 429,
      body: { error: limited.error },
      ...(limited.retryAfterSeconds !== undefined && { headers: { "Retry-After": String(limited.retryAfterSeconds) } }),
    };
  }
  stats.rejected += rejected.length;

  try {
    const r = await log.append(connection.connection, entries);
    stats.accepted += r.stored;
    stats.duplicates += r.duplicates;
  } catch (e) {
    // Nothing is acknowledged: the sender will retry, so the events are not charged twice.
    if (limited) rateLimiter!.refund(connection.connection, entries.length);
    if (e instanceof BusUnavailableError) {
      logger.warn("events not stored: bus unavailable", {
        connection: connection.connection,
        events: entries.length,
        error: e.message,
      });
      return {
        status: 503,
        body: { error: "events could not be stored durably; retry later" },
        headers: { "Retry-After": String(limits.retryAfterSeconds) },
      };
    }
    throw e;
  }
  return { status: 200, body: rejected.length ? { accepted: entries.length, rejected } : { accepted: entries.length } };
}
