import { Elysia } from "elysia";
import { ConfigStore } from "./config/store.ts";
import { capacityDefaults, type NodeOptions } from "./config/env.ts";
import { connectBus, type Bus } from "./bus/connection.ts";
import { EventLog } from "./bus/event-log.ts";
import { StreamCapacity, type CapacityOptions } from "./bus/capacity.ts";
import { httpEvents, ingestDefaults, type IngestServer } from "./ingest/server.ts";
import { rawWebhooks } from "./ingest/webhooks/route.ts";
import { webhookEvents } from "./ingest/webhooks/events.ts";
import { sourceContext, type Source } from "./ingest/source.ts";
import { LiveWindow } from "./debugger/live-window.ts";
import { OutcomeLog } from "./debugger/outcomes.ts";
import { adminRoutes } from "./debugger/routes.ts";
import { replayRoutes } from "./ops/replay-routes.ts";
import { adminGuard } from "./ops/admin-auth.ts";
import { openApiDocument } from "./ops/openapi.ts";
import {
  addNodeSource,
  addPipelineSource,
  addRegistrySource,
  capacityRefusals,
  httpDuration,
  httpRequests,
  publishConflicts,
  publishDuration,
} from "./ops/metrics.ts";
import { log, requestContext } from "./util/log.ts";
import { PortInUseError, portHolder, type PortUse } from "./services/port-check.ts";
import { ensureConsumersAtStart } from "./pipeline/manager.ts";
import { STREAM } from "./bus/subjects.ts";
import { PipelineRuntime } from "./pipeline/host/runtime.ts";
import { PipelineSupervisor } from "./pipeline/host/supervisor.ts";
import type { Pipelines } from "./pipeline/host/pipelines.ts";
import { setExpressionTimeLimit } from "./expr/index.ts";
import type { InserterOptions } from "./sink/clickhouse/inserter.ts";

export const VERSION = {
  name: "tributary",
  version: (await Bun.file(new URL("../package.json", import.meta.url)).json()).version as string,
  bun: Bun.version,
};

const OPENAPI = openApiDocument(VERSION.version);

/** The node's own port, as a refusal to start names it. */
export const HTTP_PORT = (port: number): PortUse => ({
  port,
  role: "HTTP",
  hint: "stop it, or set PORT to a free port",
});

export interface RunningNode {
  /** Every route the node answers, as Elysia registered them. */
  routes: { method: string; path: string }[];
  url: string;
  port: number;
  bus: Bus;
  config: ConfigStore;
  eventLog: EventLog;
  ingest: IngestServer;
  /** Resolves once ClickHouse is reachable, tables migrated and pipelines running (never without CLICKHOUSE_URL). */
  pipelinesReady: Promise<Pipelines>;
  stop(): Promise<void>;
}

export interface PipelineTuning {
  inserter?: InserterOptions;
  capacity?: Partial<CapacityOptions>;
}

/** Wires config, bus and HTTP into one ingestion node. */
export async function startNode(o: NodeOptions & { natsUrl: string } & PipelineTuning): Promise<RunningNode> {
  // process-wide: every filter, mapping, transform and webhook expression reads it per evaluation
  setExpressionTimeLimit(o.expressionTimeoutMs);
  const config = new ConfigStore({ dir: o.pipelinesDir });
  config.watch();
  const warnInsecure = (c: typeof config.current) => {
    for (const x of c.connections.values()) {
      if (x.source === "raw" && !x.check)
        log.warn("raw webhook connection without a check: anyone who knows its URL can write to it", {
          connection: x.connection,
        });
    }
  };
  warnInsecure(config.current);
  config.onChange(warnInsecure);
  const bus = await connectBus({
    url: o.natsUrl,
    streamMaxAgeHours: o.streamMaxAgeHours,
    streamMaxBytes: o.streamMaxBytes,
    streamReplicas: o.streamReplicas,
    dedupWindowHours: o.dedupWindowHours,
    timeoutMs: o.publishTimeoutMs,
  });
  bus.observer = { published: (s) => publishDuration.observe(s), conflicted: () => publishConflicts.inc() };
  const capacity = new StreamCapacity(bus.jsm, { ...capacityDefaults, maxBytes: o.streamMaxBytes, ...o.capacity });
  capacity.start();
  const eventLog = new EventLog(bus, { dedupWindowMs: o.dedupWindowHours * 3600_000, timeoutMs: o.publishTimeoutMs });
  eventLog.onAppend = (bytes) => capacity.added(bytes);
  const sourceConnections = () =>
    [...config.current.connections.values()].filter((c) => c.source !== "raw").map((c) => c.connection);
  eventLog
    .warm(sourceConnections())
    .catch((e) => log.warn("dedup index not loaded yet; it loads on first use", { error: String(e) }));
  config.onChange(() => void eventLog.warm(sourceConnections()).catch(() => {}));

  // Before the HTTP port opens: every pipeline's consumer exists from this node's start.
  await ensureConsumersAtStart(bus, config.current, o.ackWaitMs).catch((e) =>
    log.warn("pipeline consumers not created at start; they are created when the pipelines start", {
      error: String((e as Error).message ?? e),
    }),
  );

  // The debugger's view of recent traffic and of what pipelines did with it.
  const live = new LiveWindow();
  const outcomes = new OutcomeLog();
  const adminEnabled = !!o.adminToken || o.devAdmin;

  // Ingestion never waits for the warehouse: events queue in JetStream until ClickHouse is there.
  // The pipelines run in worker processes (or, with TRIBUTARY_PIPELINE_WORKERS=0, here): never
  // on the thread answering senders.
  let stopping = false;
  let pipelines: Pipelines | undefined;
  const pipelinesReady = new Promise<Pipelines>((resolve) => {
    if (!o.clickhouseUrl) return;
    const runtime = {
      clickhouseUrl: o.clickhouseUrl,
      clickhouseUser: o.clickhouseUser,
      clickhousePassword: o.clickhousePassword,
      clickhouseCluster: o.clickhouseCluster,
      database: o.database,
      streamReplicas: o.streamReplicas,
      batchMaxRows: o.batchMaxRows,
      batchMaxBytes: o.batchMaxBytes,
      batchMaxAgeMs: o.batchMaxAgeMs,
      ackWaitMs: o.ackWaitMs,
      inserter: o.inserter,
    };
    if (o.pipelineWorkers === 0) {
      const r = new PipelineRuntime(bus, config, runtime, adminEnabled ? outcomes : undefined);
      pipelines = r;
      void r.ready.then(() => resolve(r));
      return;
    }
    const s = new PipelineSupervisor({
      count: o.pipelineWorkers,
      outcomes: adminEnabled ? outcomes : undefined,
      init: {
        runtime,
        bus: {
          url: o.natsUrl,
          streamMaxAgeHours: o.streamMaxAgeHours,
          streamMaxBytes: o.streamMaxBytes,
          streamReplicas: o.streamReplicas,
          dedupWindowHours: o.dedupWindowHours,
          publishTimeoutMs: o.publishTimeoutMs,
        },
        pipelinesDir: o.pipelinesDir,
        expressionTimeoutMs: o.expressionTimeoutMs,
        startSeq: bus.startSeq,
        outcomes: adminEnabled,
      },
    });
    pipelines = s;
    void s.ready.then(() => resolve(s));
    // A pipeline a change adds gets every event accepted from the moment this node loaded the
    // change: its consumer is created here, from the stream's position now, before the workers
    // (which read the directory when told) start it.
    let reloads = Promise.resolve();
    config.onChange((c) => {
      const after = bus.jsm.streams.info(STREAM).then((i) => i.state.last_seq);
      reloads = reloads
        .then(async () => {
          await ensureConsumersAtStart({ ...bus, startSeq: await after }, c, o.ackWaitMs);
          await s.reload();
        })
        .catch((e) => log.warn("pipelines not reloaded", { error: String((e as Error).message ?? e) }));
    });
  });
  const removeSource = addPipelineSource(async () => (pipelines ? pipelines.snapshots() : []));
  const removeRegistrySource = addRegistrySource(async () => (pipelines ? pipelines.metrics() : []));
  const started = new WeakMap<Request, number>();

  // Every source shares the node's in-flight budget and event counters.
  const sources = sourceContext(config, eventLog, {
    maxInFlightBytes: o.maxInFlightBytes,
    maxInFlightRequests: ingestDefaults.maxInFlightRequests,
  });
  const ingest = httpEvents({
    trustProxy: o.trustProxy,
    maxRequestBytes: o.maxRequestBytes,
    maxEventBytes: o.maxEventBytes,
    maxEventsPerRequest: o.maxEventsPerRequest,
  }).build(sources);
  const limits = { maxEventBytes: o.maxEventBytes, maxEventsPerRequest: o.maxEventsPerRequest, retryAfterSeconds: 5 };
  const derived = webhookEvents(limits).build(sources);
  // One delivery is one JetStream message: its body must fit the server's max_payload.
  const maxPayload = bus.nc.info?.max_payload ?? 1024 * 1024;
  const webhooks = rawWebhooks({
    maxBodyBytes: Math.min(o.maxRequestBytes, maxPayload - 64 * 1024),
    ...limits,
    events: derived,
  }).build(sources);
  const mounted: Source[] = [ingest, webhooks, derived];

  const removeNodeSource = addNodeSource(() => ({
    ingest: ingest.stats,
    inFlight: {
      bytes: ingest.limiter.inFlightBytes,
      requests: ingest.limiter.inFlightRequests,
      refused: ingest.limiter.rejected,
    },
    capacity: { full: capacity.full, backlogBytes: capacity.backlogBytes },
    dedupIds: eventLog.indexedIds,
  }));

  if (!adminEnabled) log.info("admin API and debugger disabled: set TRIBUTARY_ADMIN_TOKEN to enable them");
  if (adminEnabled) live.start(bus.nc);
  const guard = adminGuard({ token: o.adminToken, devLoopback: o.devAdmin });
  const admin = adminRoutes(config, live, outcomes, guard);
  const replays = replayRoutes(config, () => pipelines, guard);

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
      if (capacity.full && request.method === "POST" && /^\/(v1|beacon)\//.test(new URL(request.url).pathname)) {
        capacityRefusals.inc();
        return new Response(
          JSON.stringify({
            error: "the event stream is nearly full of events not yet loaded into ClickHouse; retry later",
          }),
          {
            status: 503,
            headers: { "Content-Type": "application/json", "Retry-After": "30" },
          },
        );
      }
    })
    .use(mounted.reduce((routes, s) => (s.routes ? routes.use(s.routes) : routes), new Elysia({ name: "sources" })))
    .use(admin)
    .use(replays)
    .get("/healthz", () => ({ ok: true }))
    .get("/version", () => VERSION)
    .get("/openapi.json", () => OPENAPI)
    .get("/readyz", async ({ set, request, server }) => {
      const nats =
        !bus.nc.isClosed() &&
        (await bus.nc.rtt().then(
          () => true,
          () => false,
        ));
      const ch = o.clickhouseUrl ? ((await pipelines?.warehouseUp()) ?? false) : null;
      const ok = nats && ch !== false;
      set.status = ok ? 200 : 503;
      // Anyone may ask whether the node is ready; only the admin sees why not (the configuration
      // error names files and pipelines).
      if (guard(request, server?.requestIP(request)?.address)) return { ok };
      return { ok, nats, clickhouse: ch, config: config.lastError ? { error: config.lastError } : "ok" };
    });
  try {
    // Elysia asks Bun for SO_REUSEPORT by default, which lets a second node bind the same port and
    // take half the traffic. Sharing a port between workers of one node would have to be an
    // explicit option of that node, never the default.
    app.listen({ port: o.port, hostname: o.host, maxRequestBodySize: o.maxRequestBytes * 4, reusePort: false });
  } catch (e) {
    stopping = true;
    capacity.stop();
    removeSource();
    removeRegistrySource();
    removeNodeSource();
    live.stop();
    config.close();
    await pipelines?.stop().catch(() => {});
    await bus.close().catch(() => {});
    if ((e as { code?: string }).code === "EADDRINUSE") throw new PortInUseError(HTTP_PORT(o.port), portHolder(o.port));
    throw e;
  }

  const port = app.server!.port!;
  const url = `http://127.0.0.1:${port}`;
  log.info("tributary node listening", {
    url: `http://${o.host}:${port}`,
    connections: [...config.current.connections.keys()],
  });
  return {
    url,
    port,
    bus,
    config,
    eventLog,
    ingest,
    pipelinesReady,
    routes: app.routes.map((r) => ({ method: r.method, path: r.path })),
    async stop() {
      stopping = true;
      capacity.stop();
      removeSource();
      removeRegistrySource();
      removeNodeSource();
      live.stop();
      // Stop taking requests, let in-flight ones finish their JetStream writes, flush the
      // pipelines' batches, then disconnect.
      await app.stop(false);
      config.close();
      await pipelines?.stop();
      await bus.close();
    },
  };
}
