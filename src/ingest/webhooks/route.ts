import { createHash } from "node:crypto";
import { Elysia } from "elysia";
import type { ConfigStore } from "../../config/store.ts";
import type { LoadedConnection } from "../../config/loader.ts";
import type { EventLog } from "../../bus/event-log.ts";
import { BusUnavailableError } from "../../bus/errors.ts";
import { compileExpression, type Expression } from "../../expr/index.ts";
import type { RawRecord } from "../../pipeline/raw-stage.ts";
import {
  readBody,
  PayloadTooLargeError,
  BadEncodingError,
  BodyTimeoutError,
  BodyAbortedError,
  BodyOverloadError,
  SMALL_BODY_BYTES,
} from "../body.ts";
import { ingest, type IngestLimits, type IngestStats } from "../handler.ts";
import type { InFlightLimiter } from "../overload.ts";
import { compileCheck, WebhookCheckError, type WebhookCheck } from "./check.ts";
import { RawBodyError, splitRawBody, storedHeaders } from "./raw-body.ts";
import { ingestDefaults } from "../server.ts";
import { RefusalLog } from "../refusal-log.ts";
import { log } from "../../util/log.ts";

export interface WebhookOptions extends IngestLimits {
  /** Largest body accepted; one delivery is one JetStream message, so it also stays under max_payload. */
  maxBodyBytes: number;
  /** The whole body must arrive within this (default: ingestion's); a slower sender gets 503. */
  bodyTimeoutMs?: number;
}

interface Compiled {
  check?: WebhookCheck;
  dedup?: Expression;
  events?: Expression;
}

const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });

/**
 * `POST /v1/webhooks/<connection>` (PRODUCT.md §2): any payload, authenticated by the
 * connection's `check`, stored as one JetStream message per delivery (whole or not at all),
 * deduplicated by the delivery id, and loaded into the connection's table by its raw pipeline.
 */
export function webhookRoutes(
  config: ConfigStore,
  eventLog: EventLog,
  limiter: InFlightLimiter,
  stats: IngestStats,
  o: WebhookOptions,
) {
  const bodyTimeoutMs = o.bodyTimeoutMs ?? ingestDefaults.bodyTimeoutMs;
  // Refused signatures are logged at warn, rate-limited per connection and reason.
  const refusals = new RefusalLog();
  const compiled = new WeakMap<LoadedConnection, Compiled>();
  const compiledOf = (c: LoadedConnection): Compiled => {
    let x = compiled.get(c);
    if (!x) {
      x = {
        check: compileCheck(c),
        dedup: c.dedup && "jsonata" in c.dedup ? compileExpression(c.dedup.jsonata) : undefined,
        events: c.events ? compileExpression(c.events) : undefined,
      };
      compiled.set(c, x);
    }
    return x;
  };

  async function handle(name: string, request: Request): Promise<Response> {
    const receivedAt = Date.now();
    const c = config.current.connections.get(name);
    if (!c || c.source !== "raw") return json(404, { error: `no raw webhook connection named "${name}"` });
    // Reserved as bytes arrive (see ingest's server.ts): a stalled sender holds at most SMALL_BODY_BYTES.
    let reserved = Math.min(
      Number(request.headers.get("content-length") ?? 0) || SMALL_BODY_BYTES,
      SMALL_BODY_BYTES,
      o.maxBodyBytes,
    );
    if (!limiter.tryAcquire(reserved))
      return json(429, { error: "node overloaded; retry later" }, { "Retry-After": "1" });
    const grow = (size: number) => {
      if (size <= reserved) return true;
      if (!limiter.tryGrow(size - reserved)) return false;
      reserved = size;
      return true;
    };
    try {
      let bytes: Uint8Array;
      try {
        bytes = await readBody(request, { limit: o.maxBodyBytes, timeoutMs: bodyTimeoutMs, grow });
      } catch (e) {
        if (e instanceof PayloadTooLargeError) return json(413, { error: e.message });
        if (e instanceof BadEncodingError || e instanceof BodyAbortedError) return json(400, { error: e.message });
        if (e instanceof BodyOverloadError) return json(429, { error: e.message }, { "Retry-After": "1" });
        if (e instanceof BodyTimeoutError)
          return json(503, { error: e.message }, { Connection: "close", "Retry-After": String(o.retryAfterSeconds) });
        throw e;
      }
      const x = compiledOf(c);
      try {
        x.check?.verify(bytes, request.headers);
      } catch (e) {
        if (e instanceof WebhookCheckError) {
          // The reason is the check's fixed wording (which header, which rule), never a secret.
          refusals.warn(`webhook\n${c.connection}\n${e.message}`, "webhook refused: check failed", {
            connection: c.connection,
            reason: e.message,
          });
          return json(401, { error: `unauthorized: ${e.message}` });
        }
        throw e;
      }
      let docs;
      try {
        docs = splitRawBody(bytes, c.body ?? "json");
      } catch (e) {
        if (e instanceof RawBodyError) return json(400, { error: e.message });
        throw e;
      }
      const deliveryId = deliveryIdOf(c, x, request.headers, bytes, docs.parsed);
      if (typeof deliveryId !== "string") return json(400, { error: deliveryId.error });
      const record: RawRecord = {
        messageId: deliveryId,
        raw: {
          receivedAt: new Date(receivedAt).toISOString(),
          headers: storedHeaders(request.headers, c.headers, secretHeaderOf(c)),
          rows: docs.rows,
        },
      };
      const stored = await eventLog.append(c.connection, [{ id: deliveryId, json: JSON.stringify(record) }], "raw");
      const answer: Record<string, unknown> = {
        accepted: stored.stored,
        rows: docs.rows.length,
        ...(stored.duplicates && { duplicate: true }),
      };
      if (x.events) {
        const derived = deriveEvents(x.events, docs.parsed, deliveryId);
        if ("error" in derived) answer.events = { accepted: 0, error: derived.error };
        else if (derived.events.length) {
          const r = await ingest(c, { kind: "events" }, derived.events, { receivedAt }, eventLog, o, stats);
          if (r.status === 503) return json(503, r.body, r.headers);
          answer.events = r.body;
        } else answer.events = { accepted: 0 };
      }
      return json(200, answer);
    } catch (e) {
      if (e instanceof BusUnavailableError)
        return json(503, { error: e.message }, { "Retry-After": String(o.retryAfterSeconds) });
      log.error("webhook failed", { connection: name, error: String((e as Error)?.stack ?? e) });
      return json(503, { error: "internal error; retry later" }, { "Retry-After": String(o.retryAfterSeconds) });
    } finally {
      limiter.release(reserved);
    }
  }

  return new Elysia({ name: "webhooks" }).post(
    "/v1/webhooks/:connection",
    ({ params, request }) => handle(params.connection, request),
    { parse: "none" },
  );
}

/** The header that carries a `{header, equals}` check's shared secret (never stored). */
function secretHeaderOf(c: LoadedConnection): string | undefined {
  return typeof c.check === "object" && "equals" in c.check ? c.check.header : undefined;
}

/** The delivery id: the configured header, or JSONata over the body, else a hash of the body. */
function deliveryIdOf(
  c: LoadedConnection,
  x: Compiled,
  headers: Headers,
  bytes: Uint8Array,
  parsed: unknown[],
): string | { error: string } {
  if (c.dedup && "header" in c.dedup) {
    const v = headers.get(c.dedup.header);
    if (v) return boundedId(v);
  }
  if (x.dedup) {
    let v: unknown;
    try {
      v = x.dedup.evaluate(parsed.length === 1 ? parsed[0] : parsed);
    } catch (e) {
      return { error: `dedup expression failed: ${(e as Error).message}` };
    }
    if (typeof v === "string" || typeof v === "number") return boundedId(String(v));
    return { error: `dedup expression "${x.dedup.source}" gave no id for this body` };
  }
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Delivery ids the sender gives are kept up to this length; longer ones are hashed. */
export const MAX_DELIVERY_ID = 80;

/**
 * A sender's delivery id as stored: itself up to 80 characters, else `id-sha256:` and the SHA-256
 * of the whole id (74 characters), so ids that differ anywhere stay apart. A body hash is
 * `sha256:…`, so neither form can be taken for the other.
 */
export function boundedId(id: string): string {
  return id.length <= MAX_DELIVERY_ID ? id : `id-sha256:${createHash("sha256").update(id).digest("hex")}`;
}

/** `events:` turns each document into zero or more events; their messageIds derive from the delivery so retries dedup. */
function deriveEvents(e: Expression, parsed: unknown[], deliveryId: string): { events: unknown[] } | { error: string } {
  const events: unknown[] = [];
  for (let d = 0; d < parsed.length; d++) {
    let v: unknown;
    try {
      v = e.evaluate(parsed[d]);
    } catch (err) {
      return { error: `events expression failed on document ${d}: ${(err as Error).message}` };
    }
    const list = v === undefined ? [] : Array.isArray(v) ? v : [v];
    list.forEach((ev, k) => {
      if (
        ev &&
        typeof ev === "object" &&
        !Array.isArray(ev) &&
        (ev as { messageId?: unknown }).messageId === undefined
      ) {
        events.push({ ...ev, messageId: `${deliveryId}:${d}:${k}` });
      } else events.push(ev);
    });
  }
  return { events };
}
