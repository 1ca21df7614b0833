import { Elysia } from "elysia";
import type { StreamCapacity } from "../bus/capacity.ts";
import type { EventLog } from "../bus/event-log.ts";
import type { NodeOptions } from "../config/env.ts";
import { ingestDefaults } from "../config/env.ts";
import type { ConfigStore } from "../config/store.ts";
import { httpEvents, type IngestServer } from "../ingest/server.ts";
import { sourceContext, type Source } from "../ingest/source.ts";
import { webhookEvents } from "../ingest/webhooks/events.ts";
import { rawWebhooks } from "../ingest/webhooks/route.ts";
import { addNodeSource, capacityRefusals, httpDuration, httpRequests } from "../ops/metrics.ts";
import { log, requestContext } from "../util/log.ts";

export type IngestAppOptions = Pick<
  NodeOptions,
  "trustProxy" | "maxRequestBytes" | "maxEventBytes" | "maxEventsPerRequest" | "maxInFlightBytes"
> & {
  /** Threads answering HTTP: each gets an equal share of the node's in-flight budget. */
  threads: number;
  /** The largest message the NATS server takes (a raw delivery is one message). */
  maxPayload: number;
  /** Rate-limit buckets every thread of the node takes from. */
  rateLimitState?: SharedArrayBuffer;
  /** Tuning no variable sets (tests): the body deadline. */
  ingest?: { bodyTimeoutMs?: number };
};

export interface IngestApp {
  /** Request ids, HTTP metrics, the capacity guard, every source's routes and /healthz. */
  app: Elysia;
  /** The Segment/RudderStack-compatible routes: their counters and in-flight limiter. */
  ingest: IngestServer;
  /** Requests this thread answered (SO_REUSEPORT's share of the connections, for the benches). */
  readonly answered: { requests: number };
  /** Stops reporting this thread's counters to /metrics. */
  close(): void;
}

const EVENT_POST = /^\/(v1|beacon)\//;

/**
 * What every thread answering senders runs: the node's main thread and each ingest worker build
 * the same app, so a request is answered the same whichever thread the kernel gave it to.
 */
export function ingestApp(
  o: IngestAppOptions,
  config: ConfigStore,
  eventLog: EventLog,
  capacity: StreamCapacity,
): IngestApp {
  const started = new WeakMap<Request, number>();
  const answered = { requests: 0 };
  // Every source of this thread shares its in-flight budget and event counters.
  const sources = sourceContext(config, eventLog, {
    maxInFlightBytes: Math.max(1, Math.floor(o.maxInFlightBytes / o.threads)),
    maxInFlightRequests: Math.max(1, Math.floor(ingestDefaults.maxInFlightRequests / o.threads)),
  });
  const ingest = httpEvents({
    trustProxy: o.trustProxy,
    maxRequestBytes: o.maxRequestBytes,
    maxEventBytes: o.maxEventBytes,
    maxEventsPerRequest: o.maxEventsPerRequest,
    rateLimitState: o.rateLimitState,
    ...(o.ingest?.bodyTimeoutMs !== undefined && { bodyTimeoutMs: o.ingest.bodyTimeoutMs }),
  }).build(sources);
  const limits = { maxEventBytes: o.maxEventBytes, maxEventsPerRequest: o.maxEventsPerRequest, retryAfterSeconds: 5 };
  const derived = webhookEvents(limits).build(sources);
  const webhooks = rawWebhooks({
    // One delivery is one JetStream message: its body must fit the server's max_payload.
    maxBodyBytes: Math.min(o.maxRequestBytes, o.maxPayload - 64 * 1024),
    ...limits,
    bodyTimeoutMs: o.ingest?.bodyTimeoutMs,
    events: derived,
  }).build(sources);
  const mounted: Source[] = [ingest, webhooks, derived];

  const close = addNodeSource(() => ({
    ingest: ingest.stats,
    inFlight: {
      bytes: ingest.limiter.inFlightBytes,
      requests: ingest.limiter.inFlightRequests,
      refused: ingest.limiter.rejected,
    },
    capacity: { full: capacity.full, backlogBytes: capacity.backlogBytes },
    dedupIds: eventLog.indexedIds,
    dedupBytes: eventLog.indexBytes,
  }));

  const app = new Elysia()
    .onRequest(({ request, set }) => {
      started.set(request, performance.now());
      // A caller's (or proxy's) request id is kept when it looks like one; otherwise we make one.
      const incoming = request.headers.get("x-request-id");
      const requestId = incoming && /^[\w.:-]{1,128}$/.test(incoming) ? incoming : crypto.randomUUID();
      requestContext.enterWith({ requestId });
      set.headers["x-request-id"] = requestId;
    })
    .onAfterResponse((ctx) => {
      const c = ctx as unknown as {
        route?: string;
        request: Request;
        set: { status?: number | string };
        responseValue?: unknown;
      };
      const status = String(c.responseValue instanceof Response ? c.responseValue.status : (c.set.status ?? 200));
      const route = c.route ?? "unmatched";
      const t0 = started.get(c.request);
      answered.requests++;
      httpRequests.inc({ route, status });
      if (t0 !== undefined) httpDuration.observe({ route, status }, (performance.now() - t0) / 1000);
      log.debug("request", {
        method: c.request.method,
        route,
        status: Number(status),
        ms: t0 === undefined ? undefined : Math.round(performance.now() - t0),
      });
    })
    .onBeforeHandle(({ request }) => {
      // Back-pressure: refuse new events while the stream could not keep them (see StreamCapacity).
      if (capacity.full && request.method === "POST" && EVENT_POST.test(new URL(request.url).pathname)) {
        capacityRefusals.inc();
        return new Response(
          JSON.stringify({
            error: "the event stream is nearly full of events not yet loaded into ClickHouse; retry later",
          }),
          { status: 503, headers: { "Content-Type": "application/json", "Retry-After": "30" } },
        );
      }
    })
    .use(mounted.reduce((routes, s) => (s.routes ? routes.use(s.routes) : routes), new Elysia({ name: "sources" })))
    .get("/healthz", () => ({ ok: true }));
  return { app: app as unknown as Elysia, ingest, answered, close };
}
