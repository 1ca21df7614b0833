import { LOG_FORMATS, type LogFormat } from "../util/log.ts";

/**
 * Node settings from the environment, with every default in one place.
 * PRODUCT.md §1 explains the limits: Segment's Webhooks destination batches up to 4,000
 * events and never retries a 413, so the request limit is generous.
 */
export interface NodeOptions {
  port: number;
  host: string;
  natsUrl?: string;
  /** One URL, or a replicated cluster's servers separated by commas (tried in turn). */
  clickhouseUrl?: string;
  /** A `remote_servers` cluster of one shard: tables are Replicated*MergeTree, created ON CLUSTER. */
  clickhouseCluster?: string;
  clickhouseUser: string;
  clickhousePassword: string;
  database: string;
  pipelinesDir: string;
  dataDir: string;
  trustProxy: boolean;
  adminToken?: string;
  /** Without an admin token, open the admin API to loopback callers (development). */
  devAdmin: boolean;
  maxRequestBytes: number;
  maxEventBytes: number;
  maxEventsPerRequest: number;
  /** Decompressed request bytes being worked on at once; beyond it requests get 429. */
  maxInFlightBytes: number;
  /** How long to wait for JetStream acks before answering 503. */
  publishTimeoutMs: number;
  streamMaxAgeHours: number;
  /** Storage the events stream may use; when it is nearly full the node answers 503 instead of accepting. 0 = no limit. */
  streamMaxBytes: number;
  streamReplicas: number;
  dedupWindowHours: number;
  /** A pipeline's batch goes to ClickHouse at whichever comes first. */
  batchMaxRows: number;
  batchMaxBytes: number;
  batchMaxAgeMs: number;
  /** JetStream redelivers what a pipeline read but did not acknowledge (a node that died) after this. */
  ackWaitMs: number;
  /** Per event, for each filter, mapping, `jsonata` transform, `events:` and `dedup: {jsonata}` (src/pipeline/jsonata/deadline.ts). */
  expressionTimeoutMs: number;
  /** LOG_FORMAT; unset: pretty when stderr is a terminal, JSON otherwise (src/util/log.ts). */
  logFormat?: LogFormat;
}

export const defaults: NodeOptions = {
  port: 2022,
  host: "0.0.0.0",
  clickhouseUser: "default",
  clickhousePassword: "",
  database: "tributary",
  pipelinesDir: "pipelines",
  dataDir: "data",
  trustProxy: false,
  devAdmin: false,
  maxRequestBytes: 16 * 1024 * 1024,
  maxEventBytes: 256 * 1024,
  maxEventsPerRequest: 20_000,
  // Parsed events take ~10x their JSON in memory: 64 MiB of bodies in flight is ~700 MiB of heap.
  maxInFlightBytes: 64 * 1024 * 1024,
  publishTimeoutMs: 5_000,
  streamMaxAgeHours: 7 * 24,
  streamMaxBytes: 0,
  streamReplicas: 1,
  dedupWindowHours: 24,
  // Big enough batches for ClickHouse (it prefers few large inserts), short enough for "seconds to queryable".
  batchMaxRows: 50_000,
  batchMaxBytes: 16 * 1024 * 1024,
  batchMaxAgeMs: 1000,
  ackWaitMs: 30_000,
  // Expressions run on the main thread, so this is what one hostile event may hold the node for. Normal
  // ones take microseconds (a millisecond in the interpreter fallback): 100 ms leaves room for a GC
  // pause or a busy machine, and matches the JavaScript/Python transforms' per-event limit.
  expressionTimeoutMs: 100,
};

const num = (v: string | undefined, d: number) => {
  if (v === undefined || v === "") return d;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`environment: expected a non-negative number, got "${v}"`);
  return n;
};
const bool = (v: string | undefined) => v !== undefined && /^(1|true|yes|on)$/i.test(v);
const str = (v: string | undefined) => (v === undefined || v === "" ? undefined : v);
const positive = (v: string | undefined, d: number) => {
  const n = num(v, d);
  if (n === 0) throw new Error(`environment: expected a positive number, got "${v}"`);
  return n;
};

const oneOf = <T extends string>(v: string | undefined, allowed: readonly T[], name: string): T | undefined => {
  if (v === undefined || v === "") return undefined;
  const x = v.toLowerCase() as T;
  if (!allowed.includes(x)) throw new Error(`environment: ${name} must be ${allowed.join(" or ")}, got "${v}"`);
  return x;
};

export function optionsFromEnv(env: Record<string, string | undefined> = process.env): NodeOptions {
  return {
    port: num(env.PORT, defaults.port),
    host: env.HOST ?? defaults.host,
    natsUrl: str(env.NATS_URL),
    clickhouseUrl: str(env.CLICKHOUSE_URL),
    clickhouseCluster: str(env.TRIBUTARY_CLICKHOUSE_CLUSTER),
    clickhouseUser: env.CLICKHOUSE_USER ?? defaults.clickhouseUser,
    clickhousePassword: env.CLICKHOUSE_PASSWORD ?? defaults.clickhousePassword,
    database: env.TRIBUTARY_DATABASE ?? defaults.database,
    pipelinesDir: env.TRIBUTARY_PIPELINES ?? defaults.pipelinesDir,
    dataDir: env.TRIBUTARY_DATA ?? defaults.dataDir,
    trustProxy: bool(env.TRUST_PROXY),
    adminToken: str(env.TRIBUTARY_ADMIN_TOKEN),
    devAdmin: bool(env.TRIBUTARY_DEV_ADMIN),
    maxRequestBytes: num(env.TRIBUTARY_MAX_REQUEST_BYTES, defaults.maxRequestBytes),
    maxEventBytes: num(env.TRIBUTARY_MAX_EVENT_BYTES, defaults.maxEventBytes),
    maxEventsPerRequest: num(env.TRIBUTARY_MAX_EVENTS_PER_REQUEST, defaults.maxEventsPerRequest),
    maxInFlightBytes: num(env.TRIBUTARY_MAX_IN_FLIGHT_BYTES, defaults.maxInFlightBytes),
    publishTimeoutMs: num(env.TRIBUTARY_PUBLISH_TIMEOUT_MS, defaults.publishTimeoutMs),
    streamMaxAgeHours: num(env.TRIBUTARY_STREAM_MAX_AGE_HOURS, defaults.streamMaxAgeHours),
    streamMaxBytes: num(env.TRIBUTARY_STREAM_MAX_BYTES, defaults.streamMaxBytes),
    streamReplicas: num(env.TRIBUTARY_STREAM_REPLICAS, defaults.streamReplicas),
    dedupWindowHours: num(env.TRIBUTARY_DEDUP_WINDOW_HOURS, defaults.dedupWindowHours),
    batchMaxRows: num(env.TRIBUTARY_BATCH_MAX_ROWS, defaults.batchMaxRows),
    batchMaxBytes: num(env.TRIBUTARY_BATCH_MAX_BYTES, defaults.batchMaxBytes),
    batchMaxAgeMs: num(env.TRIBUTARY_BATCH_MAX_AGE_MS, defaults.batchMaxAgeMs),
    ackWaitMs: num(env.TRIBUTARY_ACK_WAIT_MS, defaults.ackWaitMs),
    expressionTimeoutMs: positive(env.TRIBUTARY_EXPRESSION_TIMEOUT_MS, defaults.expressionTimeoutMs),
    logFormat: oneOf(env.LOG_FORMAT, LOG_FORMATS, "LOG_FORMAT"),
  };
}
