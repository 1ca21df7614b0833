import { createHash } from "node:crypto";
import { Elysia } from "elysia";
import type { LoadedConnection } from "../../config/loader.ts";
import { BusUnavailableError } from "../../bus/errors.ts";
import { compileExpression, type Expression } from "../../expr/index.ts";
import type { RawRecord } from "../../event/envelope.ts";
import type { IngestLimits } from "../handler.ts";
import { respond as json } from "../http-error.ts";
import type { Source, SourceContext, SourceSpec } from "../source.ts";
import type { WebhookEventSource } from "./events.ts";
import { compileCheck, WebhookCheckError, type WebhookCheck } from "./check.ts";
import { RawBodyError, splitRawBody, storedHeaders } from "./raw-body.ts";
import { ingestDefaults } from "../server.ts";
import { RefusalLog } from "../refusal-log.ts";

export interface WebhookOptions extends IngestLimits {
  /** Largest body accepted; one delivery is one JetStream message, so it also stays under max_payload. */
  maxBodyBytes: number;
  /** The whole body must arrive within this (default: ingestion's); a slower sender gets 503. */
  bodyTimeoutMs?: number;
  /** Where a connection's `events:` sends what it derives. */
  events: WebhookEventSource;
}

interface Compiled {
  check?: WebhookCheck;
  dedup?: Expression;
  events?: Expression;
}

/**
 * `POST /v1/webhooks/<connection>` (PRODUCT.md §2): any payload, authenticated by the
 * connection's `check`, stored as one JetStream message per delivery (whole or not at all),
 * deduplicated by the delivery id, and loaded into the connection's table by its raw pipeline.
 */
export function rawWebhooks(o: WebhookOptions): SourceSpec {
  return { name: "raw-webhooks", build: (cx) => buildRawWebhooks(o, cx) };
}

function buildRawWebhooks(o: WebhookOptions, { config, eventLog, intake, stats }: SourceContext): Source {
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
    return intake.bytes(
      request,
      {
        limit: o.maxBodyBytes,
        timeoutMs: bodyTimeoutMs,
        retryAfterSeconds: o.retryAfterSeconds,
        failure: { message: "webhook failed", fields: { connection: name } },
      },
      async (bytes) => {
        try {
          return await store(c, request, bytes, receivedAt);
        } catch (e) {
          if (e instanceof BusUnavailableError)
            return json(503, { error: e.message }, { "Retry-After": String(o.retryAfterSeconds) });
          throw e;
        }
      },
    );
  }

  async function store(c: LoadedConnection, request: Request, bytes: Uint8Array, receivedAt: number) {
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
      const derived = await o.events.append(c, x.events, docs.parsed, deliveryId, receivedAt);
      if ("unavailable" in derived) return json(503, derived.unavailable.body, derived.unavailable.headers ?? {});
      answer.events = derived.answer;
    }
    return json(200, answer);
  }

  const routes = new Elysia({ name: "webhooks" }).post(
    "/v1/webhooks/:connection",
    ({ params, request }) => handle(params.connection, request),
    { parse: "none" },
  );
  return { name: "raw-webhooks", routes, stats };
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
