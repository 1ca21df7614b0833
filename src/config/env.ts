import { type Static, type TObject, type TSchema, Type } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { LOG_LEVELS, type LogFormat, type LogLevel } from "../util/log.ts";

/**
 * The node's settings: every environment variable it reads, with its type, range, default and
 * description, is one entry of the `Environment` schema below, and every default of the code's
 * tuning is in this file. docs/configuration.md's environment table is generated from the schema
 * (scripts/config-reference.ts), so the two cannot drift. As nats.js does, `defaultOptions()`
 * gives the defaults and `parseOptions()` the validated options; a bad value is an
 * `EnvironmentError` naming the variable. PRODUCT.md §1 explains the limits: Segment's Webhooks
 * destination batches up to 4,000 events and never retries a 413, so the request limit is generous.
 */

const MIB = 1024 * 1024;

/** A byte count: the reference also shows it in KiB / MiB. */
const bytes = (minimum: number, d: number, description: string) =>
  Type.Integer({ minimum, default: d, description, unit: "bytes" });
const int = (minimum: number, d: number, description: string, maximum?: number) =>
  Type.Integer({ minimum, ...(maximum === undefined ? {} : { maximum }), default: d, description });
const positive = (d: number, description: string) => Type.Number({ exclusiveMinimum: 0, default: d, description });
const flag = (description: string) => Type.Boolean({ default: false, description });
/** Unset (or empty) means the feature is off, or something else is done: the description says what. */
const unset = (description: string) => Type.Optional(Type.String({ description }));
const text = (d: string, description: string) => Type.String({ default: d, description });
const oneOf = <T extends string>(values: readonly T[], description: string, d?: T) =>
  Type.Union(
    values.map((v) => Type.Literal(v)),
    { description, ...(d === undefined ? {} : { default: d }) },
  );

/** Every variable the node reads, in the order the reference lists them. */
export const Environment = Type.Object({
  PORT: int(0, 2022, "HTTP port of the node.", 65535),
  HOST: text("0.0.0.0", "Address the HTTP server listens on."),
  NATS_URL: unset(
    "NATS server URL; a cluster's servers separated by commas (tried in turn). Unset: `npm start` runs a local `nats-server -js` on `NATS_PORT`, with its data under `TRIBUTARY_DATA`.",
  ),
  NATS_PORT: int(1, 4222, "Port of the local nats-server `npm start` runs when `NATS_URL` is unset.", 65535),
  CLICKHOUSE_URL: unset(
    "ClickHouse HTTP URL; the replicas of a replicated setup separated by commas (tried in turn). Unset: `npm start` runs a local clickhouse-server on `CLICKHOUSE_HTTP_PORT`.",
  ),
  CLICKHOUSE_HTTP_PORT: int(
    1,
    8123,
    "HTTP port of the local clickhouse-server `npm start` runs when `CLICKHOUSE_URL` is unset.",
    65535,
  ),
  CLICKHOUSE_TCP_PORT: int(1, 9000, "Native-protocol port of that local clickhouse-server.", 65535),
  CLICKHOUSE_USER: text("default", "ClickHouse user."),
  CLICKHOUSE_PASSWORD: text("", "ClickHouse password."),
  TRIBUTARY_CLICKHOUSE_CLUSTER: unset(
    'A `remote_servers` cluster of one shard: tables are `Replicated*MergeTree`, created `ON CLUSTER` (the README\'s "Replicated ClickHouse").',
  ),
  TRIBUTARY_DATABASE: text("tributary", "ClickHouse database of the `events`, `users` and raw webhook tables."),
  TRIBUTARY_PIPELINES: text("pipelines", "The configuration directory this reference describes."),
  TRIBUTARY_DATA: text("data", "Data directory of the local nats-server and clickhouse-server."),
  TRUST_PROXY: flag(
    "`1`, `true`, `yes` or `on`: the client address is the first `X-Forwarded-For` hop, not the socket's. Only behind a proxy you trust.",
  ),
  TRIBUTARY_ADMIN_TOKEN: unset(
    "Bearer token of the admin API and the Event debugger. Unset: both are off (but see `TRIBUTARY_DEV_ADMIN`).",
  ),
  TRIBUTARY_DEV_ADMIN: flag(
    "Without an admin token, open the admin API and the debugger to loopback callers only (development).",
  ),
  TRIBUTARY_MAX_REQUEST_BYTES: bytes(1, 16 * MIB, "Largest request body after decompression; larger is 413."),
  TRIBUTARY_MAX_EVENT_BYTES: bytes(
    1,
    256 * 1024,
    "Largest event as JSON; a larger one is rejected on its own, the rest of the batch kept.",
  ),
  TRIBUTARY_MAX_EVENTS_PER_REQUEST: int(1, 20_000, "Most events in one request."),
  // Parsed events take ~10x their JSON in memory: 64 MiB of bodies in flight is ~700 MiB of heap.
  TRIBUTARY_MAX_IN_FLIGHT_BYTES: bytes(
    1,
    64 * MIB,
    "Decompressed request bytes being worked on at once; beyond it requests get 429.",
  ),
  TRIBUTARY_PUBLISH_TIMEOUT_MS: int(1, 5_000, "How long to wait for JetStream to acknowledge before answering 503."),
  TRIBUTARY_STREAM_MAX_AGE_HOURS: Type.Number({
    minimum: 0,
    default: 7 * 24,
    description: "How long the events stream keeps events: what `replay` can reach.",
  }),
  TRIBUTARY_STREAM_MAX_BYTES: bytes(
    0,
    0,
    "Storage the events stream may use; near it the node answers 503 rather than push out events a pipeline has not loaded. 0: no limit.",
  ),
  // JetStream keeps at most 5 replicas of a stream.
  TRIBUTARY_STREAM_REPLICAS: int(1, 1, "JetStream replicas of the streams (with a NATS cluster).", 5),
  TRIBUTARY_STREAM_PARTITIONS: int(
    1,
    1,
    "Events streams (`TRIBUTARY_EVENTS_P0`…), each with its own leader, a connection's shards spread over them by a hash of (connection, shard); 1 keeps the single stream `TRIBUTARY_EVENTS`. Fixed for a deployment's life: a node refuses another count while the streams of the old one exist (README, Sizing).",
    64,
  ),
  TRIBUTARY_DEDUP_WINDOW_HOURS: Type.Number({
    minimum: 0,
    default: 24,
    description: "How long a `messageId` is remembered per connection, so a retried event is stored once.",
  }),
  // Read by src/bus/event-log.ts where the writers are built (every ingest thread); validated here.
  TRIBUTARY_DEDUP_SNAPSHOT_SECONDS: Type.Number({
    minimum: 0,
    default: 60,
    description:
      "How often each shard's dedup index is written as a snapshot (stream `TRIBUTARY_DEDUP`): a restarted node loads it and reads only the stream since. 0: no snapshots (a restart reads the whole window).",
  }),
  // Big enough batches for ClickHouse (it prefers few large inserts), short enough for "seconds to queryable".
  TRIBUTARY_BATCH_MAX_ROWS: int(1, 50_000, "A pipeline's batch goes to ClickHouse at this many rows…"),
  TRIBUTARY_BATCH_MAX_BYTES: bytes(1, 16 * MIB, "…or this many bytes…"),
  TRIBUTARY_BATCH_MAX_AGE_MS: int(0, 1000, "…or this age, whichever comes first."),
  TRIBUTARY_ACK_WAIT_MS: int(
    1,
    30_000,
    "JetStream redelivers what a pipeline read but did not acknowledge (a node that died) after this.",
  ),
  TRIBUTARY_PIPELINE_WORKERS: int(
    0,
    1,
    "Processes that run the pipelines (consumers, filters, transforms, inserts), each a share of the connections, so no pipeline work runs on the threads answering senders. 0: on the node's own thread (embedding, debugging).",
    64,
  ),
  TRIBUTARY_INGEST_WORKERS: int(
    0,
    0,
    "Threads answering HTTP on the node's port (they share it with `SO_REUSEPORT`). 0: one per core. On a small machine whose cores nats-server and ClickHouse share, 1 costs less CPU per event (README, Benchmarks).",
    256,
  ),
  // Expressions run where their pipeline runs, so this is what one hostile event may hold it for. Normal
  // ones take microseconds (a millisecond in the interpreter fallback): 100 ms leaves room for a GC
  // pause or a busy machine, and matches the JavaScript/Python transforms' per-event limit.
  TRIBUTARY_EXPRESSION_TIMEOUT_MS: positive(
    100,
    "Time limit of each JSONata evaluation (filters, `mapping`, `jsonata`, `events:`, `dedup: {jsonata}`) per event; past it that event fails with `D1012`.",
  ),
  TRIBUTARY_TRANSFORM_TIMEOUT_MS: positive(100, "Time limit of a JavaScript or Python transform per event."),
  TRIBUTARY_TRANSFORM_MEMORY_MB: positive(64, "Interpreter heap of a JavaScript or Python sandbox, in MiB."),
  TRIBUTARY_SANDBOX_CPU_SECONDS: positive(600, "CPU time of one sandbox process; it is replaced at 90 %."),
  // 65534: nobody/nogroup.
  TRIBUTARY_SANDBOX_UID: int(1, 65534, "User id sandbox processes run as when the node runs as root."),
  TRIBUTARY_SANDBOX_GID: int(1, 65534, "Group id sandbox processes run as when the node runs as root."),
  LOG_LEVEL: oneOf(LOG_LEVELS, "Least severe level logged: `debug`, `info`, `warn` or `error`.", "info"),
  LOG_FORMAT: Type.Optional(
    oneOf(
      ["json", "pretty"] as const,
      "`json` (one JSON object per line) or `pretty` (one short line per record). Unset: pretty when stderr is a terminal, JSON otherwise.",
    ),
  ),
  NO_COLOR: unset("Set to anything: no colours in terminal logs."),
});
export type Environment = Static<typeof Environment>;

export interface NodeOptions {
  port: number;
  host: string;
  natsUrl?: string;
  /** The local nats-server's port when `natsUrl` is unset (src/main.ts). */
  natsPort: number;
  /** One URL, or a replicated cluster's servers separated by commas (tried in turn). */
  clickhouseUrl?: string;
  /** The local clickhouse-server's ports when `clickhouseUrl` is unset (src/main.ts). */
  clickhouseHttpPort: number;
  clickhouseTcpPort: number;
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
  /** Events streams, by a hash of (connection, shard); src/bus/subjects.ts StreamLayout. */
  streamPartitions: number;
  dedupWindowHours: number;
  /** A pipeline's batch goes to ClickHouse at whichever comes first. */
  batchMaxRows: number;
  batchMaxBytes: number;
  batchMaxAgeMs: number;
  /** JetStream redelivers what a pipeline read but did not acknowledge (a node that died) after this. */
  ackWaitMs: number;
  /** Per event, for each filter, mapping, `jsonata` transform, `events:` and `dedup: {jsonata}` (src/expr/jsonata/deadline.ts). */
  expressionTimeoutMs: number;
  /** Processes running the pipelines; 0: in this process (src/pipeline/host). */
  pipelineWorkers: number;
  /** Threads answering HTTP; 0: one per core. */
  ingestWorkers: number;
  /** LOG_LEVEL: the least severe level logged (src/main.ts sets it in src/util/log.ts). */
  logLevel: LogLevel;
  /** LOG_FORMAT; unset: pretty when stderr is a terminal, JSON otherwise (src/util/log.ts). */
  logFormat?: LogFormat;
}

/** The node's options from validated variables: each field names the variable it comes from. */
function toOptions(env: Environment): NodeOptions {
  return {
    port: env.PORT,
    host: env.HOST,
    natsUrl: env.NATS_URL,
    natsPort: env.NATS_PORT,
    clickhouseUrl: env.CLICKHOUSE_URL,
    clickhouseHttpPort: env.CLICKHOUSE_HTTP_PORT,
    clickhouseTcpPort: env.CLICKHOUSE_TCP_PORT,
    clickhouseCluster: env.TRIBUTARY_CLICKHOUSE_CLUSTER,
    clickhouseUser: env.CLICKHOUSE_USER,
    clickhousePassword: env.CLICKHOUSE_PASSWORD,
    database: env.TRIBUTARY_DATABASE,
    pipelinesDir: env.TRIBUTARY_PIPELINES,
    dataDir: env.TRIBUTARY_DATA,
    trustProxy: env.TRUST_PROXY,
    adminToken: env.TRIBUTARY_ADMIN_TOKEN,
    devAdmin: env.TRIBUTARY_DEV_ADMIN,
    maxRequestBytes: env.TRIBUTARY_MAX_REQUEST_BYTES,
    maxEventBytes: env.TRIBUTARY_MAX_EVENT_BYTES,
    maxEventsPerRequest: env.TRIBUTARY_MAX_EVENTS_PER_REQUEST,
    maxInFlightBytes: env.TRIBUTARY_MAX_IN_FLIGHT_BYTES,
    publishTimeoutMs: env.TRIBUTARY_PUBLISH_TIMEOUT_MS,
    streamMaxAgeHours: env.TRIBUTARY_STREAM_MAX_AGE_HOURS,
    streamMaxBytes: env.TRIBUTARY_STREAM_MAX_BYTES,
    streamReplicas: env.TRIBUTARY_STREAM_REPLICAS,
    streamPartitions: env.TRIBUTARY_STREAM_PARTITIONS,
    dedupWindowHours: env.TRIBUTARY_DEDUP_WINDOW_HOURS,
    batchMaxRows: env.TRIBUTARY_BATCH_MAX_ROWS,
    batchMaxBytes: env.TRIBUTARY_BATCH_MAX_BYTES,
    batchMaxAgeMs: env.TRIBUTARY_BATCH_MAX_AGE_MS,
    ackWaitMs: env.TRIBUTARY_ACK_WAIT_MS,
    expressionTimeoutMs: env.TRIBUTARY_EXPRESSION_TIMEOUT_MS,
    pipelineWorkers: env.TRIBUTARY_PIPELINE_WORKERS,
    ingestWorkers: env.TRIBUTARY_INGEST_WORKERS,
    logLevel: env.LOG_LEVEL,
    logFormat: env.LOG_FORMAT,
  };
}

/** Variables the node refused, each named with what it takes; `npm start` prints the message and exits. */
export class EnvironmentError extends Error {
  readonly code = "ENVIRONMENT";
  constructor(readonly problems: { variable: string; value: string; expected: string }[]) {
    // "environment: " is how src/main.ts tells a refusal a user can act on from a crash.
    super(`environment: ${problems.map((p) => `${p.variable}: expected ${p.expected}, got "${p.value}"`).join("; ")}`);
    this.name = "EnvironmentError";
  }
}

type S = TSchema & Record<string, any>;

/** What a variable takes, in words: "an integer 1–5", "a number > 0", "json or pretty". */
export function expectedText(schema: TSchema): string {
  const s = schema as S;
  if (Array.isArray(s.anyOf)) {
    const values = (s.anyOf as S[]).map((b) => String(b.const));
    return `${values.slice(0, -1).join(", ")} or ${values.at(-1)}`;
  }
  switch (s.type) {
    case "integer":
    case "number": {
      const what = s.type === "integer" ? "an integer" : "a number";
      if (s.minimum !== undefined && s.maximum !== undefined) return `${what} ${s.minimum}–${s.maximum}`;
      if (s.exclusiveMinimum !== undefined) return `${what} > ${s.exclusiveMinimum}`;
      if (s.minimum !== undefined) return `${what} ≥ ${s.minimum}`;
      return what;
    }
    case "boolean":
      return "1, true, yes or on (0, false, no or off)";
    default:
      return "text";
  }
}

const TRUE = /^(1|true|yes|on)$/i;
const FALSE = /^(0|false|no|off)$/i;

/**
 * A variable's text as its schema's type. Empty counts as unset, except for a string with a
 * default (an empty password is a password); `undefined` means "use the default".
 */
function convert(s: S, raw: string): unknown {
  if (Array.isArray(s.anyOf)) return raw.toLowerCase();
  switch (s.type) {
    case "integer":
    case "number":
      return raw.trim() === "" ? Number.NaN : Number(raw);
    case "boolean":
      return TRUE.test(raw) ? true : FALSE.test(raw) ? false : raw;
    default:
      return raw;
  }
}

/** The options a node runs with when no variable is set. */
export function defaultOptions(): NodeOptions {
  return parseOptions({});
}

/** The variables of `schema` read from `env`, validated; refusals name each bad variable. */
function parseVariables<T extends TObject>(schema: T, env: Record<string, string | undefined>): Static<T> {
  const values: Record<string, unknown> = {};
  const problems: EnvironmentError["problems"] = [];
  for (const [variable, s] of Object.entries(schema.properties as Record<string, S>)) {
    const raw = env[variable];
    if (raw === undefined || (raw === "" && !(s.type === "string" && s.default !== undefined))) {
      if (s.default !== undefined) values[variable] = s.default;
      continue;
    }
    const value = convert(s, raw);
    if (Value.Check(s, value)) values[variable] = value;
    else problems.push({ variable, value: raw, expected: expectedText(s) });
  }
  if (problems.length) throw new EnvironmentError(problems);
  return values as Static<T>;
}

/** Every variable of `Environment` read from `env`, validated, as the node's options. */
export function parseOptions(env: Record<string, string | undefined> = process.env): NodeOptions {
  return toOptions(parseVariables(Environment, env));
}

const SandboxEnvironment = Type.Pick(Environment, [
  "TRIBUTARY_TRANSFORM_TIMEOUT_MS",
  "TRIBUTARY_TRANSFORM_MEMORY_MB",
  "TRIBUTARY_SANDBOX_CPU_SECONDS",
  "TRIBUTARY_SANDBOX_UID",
  "TRIBUTARY_SANDBOX_GID",
]);

/** The sandbox's variables, validated as the node's are (for src/pipeline/transform/sandbox-isolation.ts). */
export function parseSandboxEnvironment(
  env: Record<string, string | undefined> = process.env,
): Static<typeof SandboxEnvironment> {
  return parseVariables(SandboxEnvironment, env);
}

/** The name main.ts, scripts and benches have always called. */
export const optionsFromEnv = parseOptions;

export const defaults: NodeOptions = defaultOptions();

/*
 * Defaults of tuning no variable sets, one object per component, in the component's option shape
 * (src/config imports nothing above it, so the types are the components' own, structurally).
 */

/** The back-pressure guard (src/bus/capacity.ts): refuse from 80 % of max_bytes, accept again below 60 %. */
export const capacityDefaults = { maxBytes: 0, refuseRatio: 0.8, resumeRatio: 0.6, intervalMs: 500 };

/** ClickHouse insert retries (src/sink/clickhouse/inserter.ts). */
export const inserterDefaults = { initialBackoffMs: 200, maxBackoffMs: 10_000 };

/** A pipeline's batching (src/pipeline/worker.ts). */
export const batchDefaults = {
  maxRows: defaults.batchMaxRows,
  maxBytes: defaults.batchMaxBytes,
  maxAgeMs: defaults.batchMaxAgeMs,
  ackWaitMs: defaults.ackWaitMs,
};

/** HTTP intake (src/ingest/server.ts, and webhooks' body timeout). */
export const ingestDefaults = {
  trustProxy: defaults.trustProxy,
  maxRequestBytes: defaults.maxRequestBytes,
  maxEventBytes: defaults.maxEventBytes,
  maxEventsPerRequest: defaults.maxEventsPerRequest,
  maxInFlightBytes: defaults.maxInFlightBytes,
  maxInFlightRequests: 4096,
  retryAfterSeconds: 5,
  bodyTimeoutMs: 60_000,
  // analytics-node before 3.1 sends the key only in the body, in batches of about 500 KB.
  maxBodyKeyBytes: MIB,
  maxBodyKeyInFlightBytes: 16 * MIB,
  maxBodyKeyInFlightRequests: 256,
};

const sandboxEnv = parseSandboxEnvironment({});

/** A JavaScript or Python transform's per-event limits (src/pipeline/transform/types.ts). */
export const transformLimitDefaults = {
  timeoutMs: sandboxEnv.TRIBUTARY_TRANSFORM_TIMEOUT_MS,
  memoryBytes: sandboxEnv.TRIBUTARY_TRANSFORM_MEMORY_MB * MIB,
};

/** A sandbox process (src/pipeline/transform/sandbox-isolation.ts `defaultSandboxOptions`). */
export const sandboxDefaults = {
  limits: transformLimitDefaults,
  cpuSeconds: sandboxEnv.TRIBUTARY_SANDBOX_CPU_SECONDS,
  uid: sandboxEnv.TRIBUTARY_SANDBOX_UID,
  gid: sandboxEnv.TRIBUTARY_SANDBOX_GID,
};

/** Refused-request log lines (src/ingest/refusal-log.ts). */
export const refusalLogDefaults = { windowMs: 60_000, maxLinesPerWindow: 100, maxSubjects: 10_000 };
