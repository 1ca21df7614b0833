import { AggregatorRegistry, Counter, Gauge, Histogram } from "prom-client";
import { registry } from "../util/metrics-registry.ts";
// Registered where they are recorded; imported so that every process's registry has them.
import "../sink/clickhouse/metrics.ts";
import type { PipelineSnapshot } from "../pipeline/stats.ts";

/**
 * Prometheus metrics of a node (GET /metrics). Counters of HTTP, JetStream and the sink are
 * updated where the work happens; pipeline counts and consumer lag are read from the running
 * pipelines at scrape time, so they are never out of step with GET /v1/pipelines.
 */
export { registry };

export const httpRequests = new Counter({
  name: "tributary_http_requests_total",
  help: "HTTP requests by route and status",
  labelNames: ["route", "status"] as const,
  registers: [registry],
});

export const httpDuration = new Histogram({
  name: "tributary_http_request_duration_seconds",
  help: "HTTP request latency by route and status",
  labelNames: ["route", "status"] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

export const publishDuration = new Histogram({
  name: "tributary_jetstream_publish_duration_seconds",
  help: "Time from publishing a batch of events to JetStream's acknowledgement",
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
  registers: [registry],
});

export type { PipelineSnapshot };

/** Where scrape-time pipeline figures come from: each running node registers one. */
const sources = new Set<() => Promise<PipelineSnapshot[]>>();
export function addPipelineSource(f: () => Promise<PipelineSnapshot[]>): () => void {
  sources.add(f);
  return () => void sources.delete(f);
}
export async function pipelineSnapshots(): Promise<PipelineSnapshot[]> {
  return (await Promise.all([...sources].map((f) => f()))).flat();
}

const STAGES = [
  "received",
  "filteredOut",
  "consentFailed",
  "forgotten",
  "transformed",
  "failed",
  "loaded",
  "deadLettered",
] as const;
const snake = (s: string) => s.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());

new Gauge({
  name: "tributary_pipeline_events",
  help: "Events seen by each pipeline on this node since it started, by stage (received, filtered_out, consent_failed, forgotten, transformed, failed, loaded, dead_lettered)",
  labelNames: ["connection", "pipeline", "stage"] as const,
  registers: [registry],
  async collect() {
    this.reset();
    for (const p of await pipelineSnapshots()) {
      for (const s of STAGES) this.set({ connection: p.connection, pipeline: p.pipeline, stage: snake(s) }, p[s] ?? 0);
    }
  },
});

new Gauge({
  name: "tributary_pipeline_dead_letters",
  help: "Rows waiting in the dead-letter stream per pipeline (bun run dlq lists and redrives them)",
  labelNames: ["connection", "pipeline"] as const,
  registers: [registry],
  async collect() {
    this.reset();
    for (const p of await pipelineSnapshots())
      this.set({ connection: p.connection, pipeline: p.pipeline }, p.deadLetters);
  },
});

new Gauge({
  name: "tributary_pipeline_consumer_lag",
  help: "Messages in the stream not yet acknowledged by the pipeline's consumer (pending + in flight)",
  labelNames: ["connection", "pipeline"] as const,
  registers: [registry],
  async collect() {
    this.reset();
    for (const p of await pipelineSnapshots())
      if (p.lag !== null) this.set({ connection: p.connection, pipeline: p.pipeline }, p.lag);
  },
});

/** Export pipelines' figures (src/sink/http): each gauge reads the snapshots of those that export. */
const exportGauge = (
  name: string,
  help: string,
  labels: readonly string[],
  values: (e: NonNullable<PipelineSnapshot["export"]>) => [Record<string, string>, number][],
) =>
  new Gauge({
    name,
    help,
    labelNames: ["connection", "pipeline", ...labels],
    registers: [registry],
    async collect() {
      this.reset();
      for (const p of await pipelineSnapshots())
        if (p.export)
          for (const [l, v] of values(p.export)) this.set({ connection: p.connection, pipeline: p.pipeline, ...l }, v);
    },
  });
exportGauge(
  "tributary_export_events",
  "Events an export pipeline sent (2xx) or dead-lettered, since the node started",
  ["outcome"],
  (e) => [
    [{ outcome: "sent" }, e.sent],
    [{ outcome: "dead_lettered" }, e.deadLettered],
  ],
);
exportGauge(
  "tributary_export_requests",
  "Requests to the destination that were retried (408, 429, 5xx, timeout, connection error) or failed for good",
  ["result"],
  (e) => [
    [{ result: "retried" }, e.retried],
    [{ result: "failed" }, e.failed],
  ],
);
exportGauge("tributary_export_in_flight", "Requests to the destination under way", [], (e) => [[{}, e.inFlight]]);
exportGauge("tributary_export_queued_events", "Events read from the stream, waiting to be sent", [], (e) => [
  [{}, e.queued],
]);
exportGauge("tributary_export_active", "1 where this node is the pipeline's sender, 0 on a standby", [], (e) => [
  [{}, e.role === "active" ? 1 : 0],
]);
exportGauge(
  "tributary_export_request_latency_ms",
  "Destination answer latency by HTTP status (0: no answer): count, mean and max in ms",
  ["status", "stat"],
  (e) =>
    Object.entries(e.latencyByStatus).flatMap(([status, l]) => [
      [{ status, stat: "count" }, l.count] as [Record<string, string>, number],
      [{ status, stat: "mean" }, l.meanMs] as [Record<string, string>, number],
      [{ status, stat: "max" }, l.maxMs] as [Record<string, string>, number],
    ]),
);

/**
 * What a running node's components count, read at scrape time like the pipelines: the ingest
 * routes' `IngestStats` and in-flight limiter, the stream's capacity guard, the dedup index.
 */
export interface NodeSnapshot {
  /** Events of HTTP ingest and webhook-derived events: stored, already stored (same messageId), invalid. */
  ingest: { accepted: number; duplicates: number; rejected: number };
  /** Request bodies being worked on now, and requests refused with 429 because the limit was reached. */
  inFlight: { bytes: number; requests: number; refused: number };
  /** The back-pressure guard (src/bus/capacity.ts): refusing now, and its estimate of unloaded bytes. */
  capacity: { full: boolean; backlogBytes: number };
  /** messageIds held by this node's dedup index. */
  dedupIds: number;
  /** Bytes of memory that index holds. */
  dedupBytes: number;
}

const nodeSources = new Set<() => NodeSnapshot>();
export function addNodeSource(f: () => NodeSnapshot): () => void {
  nodeSources.add(f);
  return () => void nodeSources.delete(f);
}
/** Summed over the nodes of this process (one in production; tests may start several). */
const sum = (f: (s: NodeSnapshot) => number) => {
  let n = 0;
  for (const source of nodeSources) n += f(source());
  return n;
};

new Counter({
  name: "tributary_ingest_events_total",
  help: "Events received over HTTP (ingest routes and webhook-derived events) by outcome: accepted (stored), duplicate (messageId already stored), rejected (invalid)",
  labelNames: ["outcome"] as const,
  registers: [registry],
  collect() {
    this.reset();
    this.inc(
      { outcome: "accepted" },
      sum((s) => s.ingest.accepted),
    );
    this.inc(
      { outcome: "duplicate" },
      sum((s) => s.ingest.duplicates),
    );
    this.inc(
      { outcome: "rejected" },
      sum((s) => s.ingest.rejected),
    );
  },
});

new Gauge({
  name: "tributary_ingest_in_flight_bytes",
  help: "Decompressed request bytes being worked on now (TRIBUTARY_MAX_IN_FLIGHT_BYTES bounds it)",
  registers: [registry],
  collect() {
    this.set(sum((s) => s.inFlight.bytes));
  },
});

new Gauge({
  name: "tributary_ingest_in_flight_requests",
  help: "Requests whose bodies are being worked on now",
  registers: [registry],
  collect() {
    this.set(sum((s) => s.inFlight.requests));
  },
});

new Counter({
  name: "tributary_ingest_overloaded_requests_total",
  help: "Requests refused with 429 because the in-flight limit of bytes or requests was reached",
  registers: [registry],
  collect() {
    this.reset();
    this.inc(sum((s) => s.inFlight.refused));
  },
});

new Gauge({
  name: "tributary_stream_capacity_full",
  help: "1 while the events stream is nearly full of events not yet loaded and the node answers 503 to new events, else 0",
  registers: [registry],
  collect() {
    this.set(sum((s) => (s.capacity.full ? 1 : 0)));
  },
});

new Gauge({
  name: "tributary_stream_backlog_bytes",
  help: "The capacity guard's estimate of stream bytes no pipeline has loaded yet (0 without TRIBUTARY_STREAM_MAX_BYTES)",
  registers: [registry],
  collect() {
    this.set(sum((s) => s.capacity.backlogBytes));
  },
});

export const capacityRefusals = new Counter({
  name: "tributary_stream_capacity_refused_requests_total",
  help: "Event requests answered 503 because the events stream was nearly full of events not yet loaded",
  registers: [registry],
});

new Gauge({
  name: "tributary_dedup_index_ids",
  help: "messageIds in this node's dedup index (those stored within TRIBUTARY_DEDUP_WINDOW_HOURS on the shards it wrote or warmed)",
  registers: [registry],
  collect() {
    this.set(sum((s) => s.dedupIds));
  },
});

new Gauge({
  name: "tributary_dedup_index_bytes",
  help: "Memory held by this node's dedup index (fingerprint tables and block ranges; about 4 bytes per id)",
  registers: [registry],
  collect() {
    this.set(sum((s) => s.dedupBytes));
  },
});

export const publishConflicts = new Counter({
  name: "tributary_jetstream_publish_conflicts_total",
  help: "Publishes JetStream refused because the shard subject had moved on (another node wrote it first): each is re-read, deduplicated and retried",
  registers: [registry],
});

/**
 * Metric values recorded in other processes of the node (the pipeline workers' sink histograms),
 * merged into /metrics at scrape time: each source gives one prom-client JSON dump per process.
 */
const registrySources = new Set<() => Promise<unknown[][]>>();
export function addRegistrySource(f: () => Promise<unknown[][]>): () => void {
  registrySources.add(f);
  return () => void registrySources.delete(f);
}

/** The node's /metrics text: this process's registry, with every worker process's values summed in. */
export async function renderMetrics(): Promise<string> {
  const others = (await Promise.all([...registrySources].map((f) => f().catch(() => [])))).flat();
  if (!others.length) return registry.metrics();
  const mine = await registry.getMetricsAsJSON();
  return AggregatorRegistry.aggregate([mine, ...(others as (typeof mine)[])]).metrics();
}
