import type { LoadedConnection } from "../../config/loader.ts";
import { ingest, type IngestLimits, type IngestResult } from "../handler.ts";
import type { Source, SourceSpec } from "../source.ts";

/** A compiled `events:` expression: one parsed document in, zero or more events out. */
export interface EventsExpression {
  evaluate(input: unknown): unknown;
}

/** What one delivery's `events:` gave: the `events` member of the webhook's answer, or a 503 to answer instead. */
export type DerivedEvents = { answer: Record<string, unknown> } | { unavailable: IngestResult };

/**
 * The events a raw webhook connection's `events:` derives from each delivery (PRODUCT.md §2),
 * appended to the connection's events as if they had been posted to `/v1/events`, without its
 * rate limit. Fed by the raw webhook source, it has no routes of its own.
 */
export interface WebhookEventSource extends Source {
  append(
    connection: LoadedConnection,
    expression: EventsExpression,
    parsed: unknown[],
    deliveryId: string,
    receivedAt: number,
  ): Promise<DerivedEvents>;
}

export function webhookEvents(limits: IngestLimits): SourceSpec<WebhookEventSource> {
  return {
    name: "webhook-events",
    build: ({ eventLog, stats }) => ({
      name: "webhook-events",
      stats,
      async append(connection, expression, parsed, deliveryId, receivedAt) {
        const derived = deriveEvents(expression, parsed, deliveryId);
        if ("error" in derived) return { answer: { accepted: 0, error: derived.error } };
        if (!derived.events.length) return { answer: { accepted: 0 } };
        const r = await ingest({
          connection,
          endpoint: { kind: "events" },
          body: derived.events,
          facts: { receivedAt },
          eventLog,
          limits,
          stats,
        });
        return r.status === 503 ? { unavailable: r } : { answer: r.body };
      },
    }),
  };
}

/** `events:` turns each document into zero or more events; their messageIds derive from the delivery so retries dedup. */
function deriveEvents(
  e: EventsExpression,
  parsed: unknown[],
  deliveryId: string,
): { events: unknown[] } | { error: string } {
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
