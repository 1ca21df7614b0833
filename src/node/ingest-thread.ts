/// <reference lib="webworker" />
import { StreamCapacity } from "../bus/capacity.ts";
import { busOptionsOf, connectBus } from "../bus/connection.ts";
import { ShardedEventLog } from "../bus/shard-owners.ts";
import { capacityDefaults } from "../config/env.ts";
import { ConfigStore } from "../config/store.ts";
import { setExpressionTimeLimit } from "../expr/index.ts";
import { publishConflicts, publishDuration, registry } from "../ops/metrics.ts";
import { log } from "../util/log.ts";
import { ingestApp } from "./ingest-app.ts";
import {
  PROXY_CLIENT_IP_HEADER,
  PROXY_SECRET_HEADER,
  type FromIngestThread,
  type IngestCounts,
  type IngestThreadInit,
  type ToIngestThread,
} from "./ingest-protocol.ts";

/**
 * An ingest worker thread: answers senders on the node's port (SO_REUSEPORT) with the same
 * sources as the main thread, its own NATS connection, and the shards it owns (ShardedEventLog).
 * Anything else (admin API, debugger, metrics, readiness) is passed on to the main thread.
 */
declare const self: Worker;
const send = (m: FromIngestThread) => self.postMessage(m);

let eventLog: ShardedEventLog | undefined;
let counts: (() => IngestCounts) | undefined;
let drain: (() => Promise<void>) | undefined;
let stop: (() => Promise<void>) | undefined;

async function start(m: IngestThreadInit) {
  const o = m.options;
  setExpressionTimeLimit(o.expressionTimeoutMs);
  const config = new ConfigStore({ dir: o.pipelinesDir });
  config.watch();
  const bus = await connectBus(busOptionsOf(o, `tributary-ingest-${m.index}`));
  bus.observer = { published: (s) => publishDuration.observe(s), conflicted: () => publishConflicts.inc() };
  const capacity = new StreamCapacity(
    bus.jsm,
    { ...capacityDefaults, maxBytes: o.streamMaxBytes, ...o.capacity },
    bus.layout.streams,
  );
  capacity.start();
  eventLog = new ShardedEventLog(
    bus,
    { dedupWindowMs: o.dedupWindowHours * 3600_000, timeoutMs: o.publishTimeoutMs },
    m.index,
    m.count,
  );
  eventLog.onAppend = (bytes) => capacity.added(bytes);
  for (const p of m.peers) eventLog.setPeer(p.peer, p.port);
  // This thread's shards load their dedup index ahead of traffic (a first append would wait for it).
  const owned = eventLog;
  const sourceConnections = () =>
    [...config.current.connections.values()].filter((c) => c.source !== "raw").map((c) => c.connection);
  void owned.warm(sourceConnections()).catch(() => {});
  config.onChange(() => void owned.warm(sourceConnections()).catch(() => {}));

  const ia = ingestApp(
    { ...o, threads: m.count, maxPayload: bus.nc.info?.max_payload ?? 1024 * 1024, rateLimitState: m.rateLimitState },
    config,
    eventLog,
    capacity,
  );
  const app = ia.app.all("*", async ({ request, server }) => {
    const url = new URL(request.url);
    const headers = new Headers(request.headers);
    headers.set(PROXY_SECRET_HEADER, m.secret);
    headers.set(PROXY_CLIENT_IP_HEADER, server?.requestIP(request)?.address ?? "");
    const upstream = await fetch(m.mainUrl + url.pathname + url.search, {
      method: request.method,
      headers,
      body: request.method === "GET" || request.method === "HEAD" ? undefined : request.body,
      redirect: "manual",
      // @ts-expect-error Bun streams a request body through
      duplex: "half",
      decompress: false,
    });
    // A live feed is relayed a chunk at a time, as the client reads: a client that stops reading
    // stops this relay, and the main thread's bound on what it holds per client applies.
    if (!upstream.body || !upstream.headers.get("content-type")?.startsWith("text/event-stream")) return upstream;
    const reader = upstream.body.getReader();
    const relay = new ReadableStream<Uint8Array>(
      {
        async pull(c) {
          const { value, done } = await reader.read();
          if (done) c.close();
          else c.enqueue(value);
        },
        cancel: (why) => reader.cancel(why),
      },
      { highWaterMark: 0 },
    );
    return new Response(relay, { status: upstream.status, headers: upstream.headers });
  });
  app.listen({
    port: m.port,
    hostname: o.host,
    maxRequestBodySize: o.maxRequestBytes * 4,
    reusePort: true,
  });
  counts = () => ({
    ...ia.ingest.stats,
    inFlightBytes: ia.ingest.limiter.inFlightBytes,
    inFlightRequests: ia.ingest.limiter.inFlightRequests,
    refused: ia.ingest.limiter.rejected,
    indexedIds: eventLog?.indexedIds ?? 0,
    requests: ia.answered.requests,
  });
  // Two steps, so that no thread closes while another may still pass it an append: every thread
  // stops listening and finishes its requests first, then each closes.
  let drained: Promise<void> | undefined;
  drain = () =>
    (drained ??= (async () => {
      await app.stop(false);
    })());
  stop = async () => {
    ia.close();
    await eventLog?.snapshot().catch(() => {});
    capacity.stop();
    config.close();
    eventLog?.close();
    await bus.close();
  };
  send({ type: "ready" });
}

self.onmessage = (e: MessageEvent<ToIngestThread>) => {
  const m = e.data;
  switch (m.type) {
    case "init":
      start(m).catch((err) => {
        log.error("ingest thread failed to start", { thread: m.index, error: String((err as Error).message ?? err) });
        send({ type: "failed", error: String((err as Error).message ?? err) });
      });
      return;
    case "peer":
      eventLog?.setPeer(m.peer, m.port);
      return;
    case "metrics":
      void registry.getMetricsAsJSON().then((values) => send({ type: "metrics", id: m.id, values }));
      return;
    case "stats":
      if (counts) send({ type: "stats", id: m.id, stats: counts() });
      return;
    case "drain":
      void (drain?.() ?? Promise.resolve()).catch(() => {}).then(() => send({ type: "drained" }));
      return;
    case "stop":
      void (stop?.() ?? Promise.resolve()).catch(() => {}).then(() => send({ type: "stopped" }));
  }
};
