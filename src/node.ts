import { Elysia } from "elysia";
import { createClient, type ClickHouseClient } from "@clickhouse/client";
import { ConfigStore } from "./config/store.ts";
import type { NodeOptions } from "./config/env.ts";
import { connectBus, type Bus } from "./bus/connection.ts";
import { EventLog } from "./bus/event-log.ts";
import { ingestRoutes, type IngestServer } from "./ingest/server.ts";
import { log } from "./util/log.ts";

export interface RunningNode {
  url: string;
  port: number;
  bus: Bus;
  config: ConfigStore;
  eventLog: EventLog;
  ingest: IngestServer;
  stop(): Promise<void>;
}

/** Wires config, bus and HTTP into one ingestion node. */
export async function startNode(o: NodeOptions & { natsUrl: string }): Promise<RunningNode> {
  const config = new ConfigStore({ dir: o.pipelinesDir });
  config.watch();
  const bus = await connectBus({
    url: o.natsUrl,
    streamMaxAgeHours: o.streamMaxAgeHours,
    streamReplicas: o.streamReplicas,
    dedupWindowHours: o.dedupWindowHours,
    timeoutMs: o.publishTimeoutMs,
  });
  const eventLog = new EventLog(bus, { dedupWindowMs: o.dedupWindowHours * 3600_000, timeoutMs: o.publishTimeoutMs });
  const sourceConnections = () => [...config.current.connections.values()].filter((c) => c.source !== "raw").map((c) => c.connection);
  eventLog.warm(sourceConnections()).catch((e) => log.warn("dedup index not loaded yet; it loads on first use", { error: String(e) }));
  config.onChange(() => void eventLog.warm(sourceConnections()).catch(() => {}));

  const clickhouse: ClickHouseClient | undefined = o.clickhouseUrl
    ? createClient({ url: o.clickhouseUrl, username: o.clickhouseUser, password: o.clickhousePassword })
    : undefined;

  const ingest = ingestRoutes(config, eventLog, {
    trustProxy: o.trustProxy,
    maxRequestBytes: o.maxRequestBytes,
    maxEventBytes: o.maxEventBytes,
    maxEventsPerRequest: o.maxEventsPerRequest,
    maxInFlightBytes: o.maxInFlightBytes,
  });

  const app = new Elysia()
    .use(ingest.app)
    .get("/healthz", () => ({ ok: true }))
    .get("/readyz", async ({ set }) => {
      const nats = !bus.nc.isClosed() && (await bus.nc.rtt().then(() => true, () => false));
      const ch = clickhouse ? await clickhouse.ping().then((r) => r.success, () => false) : null;
      const ok = nats && ch !== false;
      set.status = ok ? 200 : 503;
      return { ok, nats, clickhouse: ch, config: config.lastError ? { error: config.lastError } : "ok" };
    })
    .listen({ port: o.port, hostname: o.host, maxRequestBodySize: o.maxRequestBytes * 4 });

  const port = app.server!.port!;
  const url = `http://127.0.0.1:${port}`;
  log.info("tributary node listening", { url: `http://${o.host}:${port}`, connections: [...config.current.connections.keys()] });
  return {
    url,
    port,
    bus,
    config,
    eventLog,
    ingest,
    async stop() {
      // Stop taking requests, let in-flight ones finish their JetStream writes, then disconnect.
      await app.stop(false);
      config.close();
      await bus.close();
      await clickhouse?.close();
    },
  };
}
