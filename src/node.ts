import { ConfigStore } from "./config/store.ts";
import { capacityDefaults, type NodeOptions } from "./config/env.ts";
import { busOptionsOf, connectBus, streamPositions, type Bus } from "./bus/connection.ts";
import { spreadLeaders } from "./bus/leaders.ts";
import { ShardedEventLog } from "./bus/shard-owners.ts";
import { StreamCapacity, type CapacityOptions } from "./bus/capacity.ts";
import type { IngestServer } from "./ingest/server.ts";
import { LiveWindow } from "./debugger/live-window.ts";
import { OutcomeLog } from "./debugger/outcomes.ts";
import { adminRoutes } from "./debugger/routes.ts";
import { replayRoutes } from "./ops/replay-routes.ts";
import { userRoutes } from "./ops/user-routes.ts";
import { adminGuard } from "./ops/admin-auth.ts";
import { openApiDocument } from "./ops/openapi.ts";
import { addPipelineSource, addRegistrySource, publishConflicts, publishDuration } from "./ops/metrics.ts";
import { log } from "./util/log.ts";
import { PortInUseError, ensurePortFree, portHolder, type PortUse } from "./services/port-check.ts";
import { ensureConsumersAtStart } from "./pipeline/manager.ts";
import { PipelineRuntime } from "./pipeline/host/runtime.ts";
import { PipelineSupervisor } from "./pipeline/host/supervisor.ts";
import type { Pipelines } from "./pipeline/host/pipelines.ts";
import { setExpressionTimeLimit } from "./expr/index.ts";
import type { InserterOptions } from "./sink/clickhouse/inserter.ts";
import { ingestApp } from "./node/ingest-app.ts";
import { sharedRateLimitState } from "./ingest/rate-limit.ts";
import { IngestWorkers } from "./node/ingest-workers.ts";
import { PROXY_CLIENT_IP_HEADER, PROXY_SECRET_HEADER, type IngestCounts } from "./node/ingest-protocol.ts";

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
  eventLog: ShardedEventLog;
  /** This thread's Segment/RudderStack routes (with several threads, only this one's share of the traffic). */
  ingest: IngestServer;
  /** The ingest threads besides this one (TRIBUTARY_INGEST_WORKERS), if any. */
  ingestWorkers?: IngestWorkers;
  /** Threads answering HTTP, this one included. */
  threads: number;
  /** What every thread's sources counted, summed (benches; /metrics has the same). */
  ingestCounts(): Promise<IngestCounts & { requestsPerThread: number[] }>;
  /** Resolves once ClickHouse is reachable, tables migrated and pipelines running (never without CLICKHOUSE_URL). */
  pipelinesReady: Promise<Pipelines>;
  stop(): Promise<void>;
}

/** Tuning no environment variable sets (tests and benches): same shape in every thread and worker. */
export interface PipelineTuning {
  inserter?: InserterOptions;
  capacity?: Partial<CapacityOptions>;
  ingest?: { bodyTimeoutMs?: number };
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
  const bus = await connectBus(busOptionsOf(o));
  bus.observer = { published: (s) => publishDuration.observe(s), conflicted: () => publishConflicts.inc() };
  const capacity = new StreamCapacity(
    bus.jsm,
    { ...capacityDefaults, maxBytes: o.streamMaxBytes, ...o.capacity },
    bus.layout.streams,
  );
  capacity.start();
  // Where the partitions' leaders are, spread over the servers first (src/bus/leaders.ts).
  if (bus.layout.partitions > 1 || bus.nc.info?.cluster)
    await spreadLeaders(bus.nc, bus.jsm, bus.layout)
      .then((leaders) => log.info("events streams and their leaders", leaders))
      .catch((e) => log.warn("events streams' leaders not read", { error: String((e as Error).message ?? e) }));
  // Threads answering HTTP: this one (thread 0) and, with several, ingest worker threads sharing
  // the port; each shard of a connection is written by one of them (ShardedEventLog).
  const threads = o.ingestWorkers > 0 ? o.ingestWorkers : navigator.hardwareConcurrency || 1;
  const eventLog = new ShardedEventLog(
    bus,
    { dedupWindowMs: o.dedupWindowHours * 3600_000, timeoutMs: o.publishTimeoutMs },
    0,
    threads,
  );
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
          natsUrl: o.natsUrl,
          streamMaxAgeHours: o.streamMaxAgeHours,
          streamMaxBytes: o.streamMaxBytes,
          streamReplicas: o.streamReplicas,
          streamPartitions: o.streamPartitions,
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
      const after = streamPositions(bus.jsm, bus.layout);
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
  const rateLimitState = threads > 1 ? sharedRateLimitState() : undefined;
  const ia = ingestApp(
    { ...o, threads, maxPayload: bus.nc.info?.max_payload ?? 1024 * 1024, rateLimitState },
    config,
    eventLog,
    capacity,
  );
  const ingest = ia.ingest;

  if (!adminEnabled) log.info("admin API and debugger disabled: set TRIBUTARY_ADMIN_TOKEN to enable them");
  if (adminEnabled) live.start(bus.nc);
  // A request an ingest thread passed on is judged by its sender's address, which the thread
  // names in a header only a thread of this process can vouch for.
  const secret = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex");
  const viaThread = (request: Request) =>
    request.headers.get(PROXY_SECRET_HEADER) === secret
      ? request.headers.get(PROXY_CLIENT_IP_HEADER) || undefined
      : undefined;
  const baseGuard = adminGuard({ token: o.adminToken, devLoopback: o.devAdmin });
  const guard: typeof baseGuard = (request, ip) => baseGuard(request, viaThread(request) ?? ip);
  const admin = adminRoutes(config, live, outcomes, guard);
  const replays = replayRoutes(config, () => pipelines, guard);

  const app = ia.app
    .use(admin)
    .use(replays)
    .use(userRoutes(config, bus, o, guard))
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
  let workers: IngestWorkers | undefined;
  let internal: ReturnType<typeof Bun.serve> | undefined;
  try {
    // Elysia asks Bun for SO_REUSEPORT by default, which would let a second node bind the same
    // port and take half the traffic: only this node's own threads share it, so with several the
    // port is checked free first, and with one it is bound without SO_REUSEPORT.
    if (threads > 1 && o.port !== 0) ensurePortFree(HTTP_PORT(o.port), o.host);
    app.listen({
      port: o.port,
      hostname: o.host,
      maxRequestBodySize: o.maxRequestBytes * 4,
      reusePort: threads > 1,
    });
    if (threads > 1) {
      // What the ingest threads pass on (admin API, debugger, metrics) reaches this thread here.
      internal = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        maxRequestBodySize: o.maxRequestBytes * 4,
        idleTimeout: 0,
        fetch: (request) => app.handle(request),
      });
      workers = new IngestWorkers({
        count: threads,
        options: o,
        port: app.server!.port!,
        mainUrl: `http://127.0.0.1:${internal.port}`,
        secret,
        rateLimitState: rateLimitState!,
        mainLog: eventLog,
      });
      await workers.start();
    }
  } catch (e) {
    await workers?.stop().catch(() => {});
    internal?.stop(true);
    await app.stop().catch(() => {});
    ia.close();
    capacity.stop();
    removeSource();
    removeRegistrySource();
    live.stop();
    config.close();
    await pipelines?.stop().catch(() => {});
    await bus.close().catch(() => {});
    if ((e as { code?: string }).code === "EADDRINUSE") throw new PortInUseError(HTTP_PORT(o.port), portHolder(o.port));
    throw e;
  }
  const removeThreadMetrics = addRegistrySource(async () => (workers ? workers.metrics() : []));

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
    ingestWorkers: workers,
    threads,
    async ingestCounts() {
      const mine: IngestCounts = {
        ...ingest.stats,
        inFlightBytes: ingest.limiter.inFlightBytes,
        inFlightRequests: ingest.limiter.inFlightRequests,
        refused: ingest.limiter.rejected,
        indexedIds: eventLog.indexedIds,
        requests: ia.answered.requests,
      };
      const all = [mine, ...((await workers?.stats()) ?? [])];
      const sum = (k: keyof IngestCounts) => all.reduce((a, c) => a + c[k], 0);
      return {
        accepted: sum("accepted"),
        duplicates: sum("duplicates"),
        rejected: sum("rejected"),
        inFlightBytes: sum("inFlightBytes"),
        inFlightRequests: sum("inFlightRequests"),
        refused: sum("refused"),
        indexedIds: sum("indexedIds"),
        requests: sum("requests"),
        requestsPerThread: all.map((c) => c.requests),
      };
    },
    pipelinesReady,
    routes: app.routes.map((r) => ({ method: r.method, path: r.path })),
    async stop() {
      capacity.stop();
      removeSource();
      removeRegistrySource();
      removeThreadMetrics();
      live.stop();
      // Stop taking requests, let in-flight ones finish their JetStream writes, flush the
      // pipelines' batches, then disconnect.
      // Every thread finishes its requests while all can still take each other's appends, then closes.
      await Promise.all([workers?.drain(), app.stop(false)]);
      await workers?.stop();
      internal?.stop();
      ia.close();
      // The next start loads this thread's shards from here and reads only what comes after.
      await eventLog.snapshot().catch(() => {});
      eventLog.close();
      config.close();
      await pipelines?.stop();
      await bus.close();
    },
  };
}
