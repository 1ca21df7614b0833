import { connect, type NatsConnection } from "@nats-io/transport-node";
import { nanos } from "@nats-io/nats-core";
import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { STREAM, streamLayout, type StreamLayout } from "./subjects.ts";
import {
  JsCodes,
  StreamLayoutError,
  apiCode,
  isNoResponders,
  isPlacementError,
  isStreamNotFound,
  isTransient,
} from "./errors.ts";
import { log } from "../util/log.ts";

export interface BusOptions {
  /** One URL or a comma-separated list; the client reconnects to any of them. */
  url: string;
  streamMaxAgeHours: number;
  /** 0: no limit. */
  streamMaxBytes?: number;
  streamReplicas: number;
  /** Events streams (TRIBUTARY_STREAM_PARTITIONS; default 1): see StreamLayout. */
  streamPartitions?: number;
  /**
   * Take the partition count from the events streams that exist (tools: dlq, replay, forget,
   * resolve read the deployment as it is); a node instead refuses a count its streams do not have.
   */
  adoptLayout?: boolean;
  dedupWindowHours: number;
  /** Per JetStream API call / publish. */
  timeoutMs: number;
  name?: string;
}

/** Told what the bus does, for metrics (src/node.ts connects it to src/ops/metrics.ts: the bus imports no ops). */
export interface BusObserver {
  /** A batch of events stored, `seconds` after it was published. */
  published(seconds: number): void;
  /** A publish refused because the shard subject had moved on (wrong last sequence); it is retried. */
  conflicted(): void;
}

export interface Bus {
  nc: NatsConnection;
  observer?: BusObserver;
  js: JetStreamClient;
  jsm: JetStreamManager;
  options: BusOptions;
  /** Which events stream holds which shard subject. */
  layout: StreamLayout;
  /**
   * Each events stream's last sequence (by partition) when this process connected, before it
   * could accept anything: pipelines of the configuration it started with begin after it.
   */
  startSeq?: number[];
  close(): Promise<void>;
}

/** The bus settings of a node's options (tools such as replay and dlq connect as the node would). */
export function busOptionsOf(
  o: {
    natsUrl?: string;
    streamMaxAgeHours: number;
    streamMaxBytes: number;
    streamReplicas: number;
    streamPartitions?: number;
    dedupWindowHours: number;
    publishTimeoutMs: number;
  },
  name?: string,
  tool?: { adoptLayout: boolean },
): BusOptions {
  return {
    adoptLayout: tool?.adoptLayout ?? false,
    url: o.natsUrl ?? "nats://127.0.0.1:4222",
    streamMaxAgeHours: o.streamMaxAgeHours,
    streamMaxBytes: o.streamMaxBytes,
    streamReplicas: o.streamReplicas,
    streamPartitions: o.streamPartitions ?? 1,
    dedupWindowHours: o.dedupWindowHours,
    timeoutMs: o.publishTimeoutMs,
    name,
  };
}

export async function connectBus(options: BusOptions): Promise<Bus> {
  const nc = await connect({
    servers: options.url
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean),
    name: options.name ?? "tributary",
    maxReconnectAttempts: -1, // a node outlives any NATS restart
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    timeout: 5000,
  });
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect")
        log.warn(`nats ${s.type}`, { server: String((s as { server?: string }).server ?? "") });
    }
  })().catch(() => {});
  // No API check here: a cluster still electing its JetStream leader answers nothing yet.
  const jsm = await jetstreamManager(nc, { timeout: options.timeoutMs, checkAPI: false });
  let layout = streamLayout(options.streamPartitions ?? 1);
  let startSeq: number[] = [];
  await untilJetStreamAnswers(async () => {
    if (options.adoptLayout) {
      const found = await existingPartitions(jsm);
      if (found && found !== layout.partitions) {
        log.info("using the events streams' partition count", { partitions: found });
        options = { ...options, streamPartitions: found };
        layout = streamLayout(found);
      }
    }
    await ensureStream(jsm, options);
    startSeq = await streamPositions(jsm, layout);
  }, options.streamReplicas);
  if (nc.info?.cluster && options.streamReplicas < 3) {
    log.warn(
      "connected to a NATS cluster but the events stream has fewer than 3 replicas: a 2xx then means on disk on fewer servers; set TRIBUTARY_STREAM_REPLICAS=3",
      { replicas: options.streamReplicas, cluster: nc.info.cluster },
    );
  }
  const js = jetstream(nc, { timeout: options.timeoutMs });
  return {
    nc,
    js,
    jsm,
    options,
    layout,
    startSeq,
    close: async () => {
      await nc.drain().catch(() => nc.close());
    },
  };
}

/** Other streams Tributary creates, which follow the events stream's replica count once they exist. */
const SIDE_STREAMS = ["TRIBUTARY_DLQ", "TRIBUTARY_DEDUP", "KV_tributary_identities", "KV_tributary_profiles"];

/**
 * Retries while JetStream cannot answer yet — a cluster electing its meta leader after a
 * restart, a server still recovering its store, peers not all reported to a fresh meta leader —
 * rather than failing the node's start. More replicas than servers fails after a short wait.
 */
async function untilJetStreamAnswers(
  f: () => Promise<void>,
  replicas: number,
  deadlineMs = 120_000,
  placementMs = 30_000,
): Promise<void> {
  const started = Date.now();
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await f();
    } catch (e) {
      if (e instanceof StreamLayoutError) throw e;
      const m = String((e as Error).message ?? e);
      if (isNoResponders(e))
        throw new Error(`JetStream is not enabled on the NATS server (start it with -js): ${m}`, { cause: e });
      const placement = isPlacementError(e) && !(apiCode(e) === JsCodes.ReplicasNotSupported);
      const transient = placement || isTransient(e);
      const elapsed = Date.now() - started;
      if (!transient || elapsed > deadlineMs || (placement && elapsed > placementMs)) throw replicaError(e, replicas);
      log.warn("JetStream not ready; retrying", { error: m, retryInMs: delay });
      await Bun.sleep(delay);
    }
  }
}

/** A clearer error for replica counts the servers cannot hold. */
function replicaError(e: unknown, replicas: number): Error {
  const m = String((e as Error).message ?? e);
  if (isPlacementError(e)) {
    return new Error(
      `TRIBUTARY_STREAM_REPLICAS=${replicas}: the NATS servers cannot hold ${replicas} replicas of ${STREAM} (${m}); it needs a JetStream cluster of at least ${replicas} servers`,
      { cause: e },
    );
  }
  return e as Error;
}

/**
 * Brings an existing stream to `replicas` copies. JetStream changes the peer set in place: the
 * leader keeps every message, and new replicas copy them from it before they count towards the
 * quorum, so nothing is lost; consumers that did not set their own replica count follow.
 */
async function scaleStream(jsm: JetStreamManager, name: string, replicas: number): Promise<void> {
  const info = await jsm.streams.info(name).catch((e) => {
    if (isStreamNotFound(e)) return undefined;
    throw e;
  });
  if (!info || (info.config.num_replicas || 1) === replicas) return;
  const from = info.config.num_replicas || 1;
  await jsm.streams.update(name, { num_replicas: replicas });
  (replicas < from ? log.warn : log.info)(`stream replicas ${replicas < from ? "reduced" : "increased"}`, {
    stream: name,
    from,
    to: replicas,
    messages: info.state.messages,
  });
}

/** Commands ask the bus module for it; it lives with the other JetStream error checks. */
export { isStreamNotFound };

/** Each events stream's last sequence, by partition. */
export async function streamPositions(jsm: JetStreamManager, layout: StreamLayout): Promise<number[]> {
  return Promise.all(layout.streams.map(async (name) => (await jsm.streams.info(name)).state.last_seq));
}

const PARTITION_STREAM_NAME = /^TRIBUTARY_EVENTS_P\d+$/;

/**
 * The events streams on the servers, whatever the layout: each with the partition count it was
 * made for (its description says "partition k of N"; 0 when it does not) and what it holds.
 */
async function listEventStreams(jsm: JetStreamManager): Promise<{ name: string; of: number; messages: number }[]> {
  const found: { name: string; of: number; messages: number }[] = [];
  for await (const s of jsm.streams.list()) {
    const name = s.config.name;
    if (name === STREAM) found.push({ name, of: 1, messages: s.state.messages });
    else if (PARTITION_STREAM_NAME.test(name))
      found.push({
        name,
        of: Number(/ of (\d+)$/.exec(s.config.description ?? "")?.[1] ?? 0),
        messages: s.state.messages,
      });
  }
  return found.sort((a, b) => a.name.length - b.name.length || a.name.localeCompare(b.name));
}

/** The events streams' names (tools that read without the node's settings). */
export async function eventStreams(jsm: JetStreamManager): Promise<string[]> {
  return (await listEventStreams(jsm)).map((s) => s.name);
}

/** The partition count of the events streams on the servers (commands read a deployment as it is); undefined when there are none. */
export async function existingPartitions(jsm: JetStreamManager): Promise<number | undefined> {
  return (await listEventStreams(jsm)).find((s) => s.of > 0)?.of;
}

const describe = (k: number, n: number) => `Tributary events, partition ${k} of ${n}`;

/**
 * Refuses a partition count other than the one the deployment's events streams were made with.
 * Events of the other layout are still in its streams; changing the count means draining every
 * pipeline and removing them first.
 */
async function checkLayout(jsm: JetStreamManager, layout: StreamLayout): Promise<void> {
  const found = await listEventStreams(jsm);
  const other = found.find((f) => f.of !== layout.partitions || !layout.streams.includes(f.name));
  if (!other) return;
  const theirs = other.of || "an unknown number of";
  const messages = found.reduce((n, f) => n + f.messages, 0);
  throw new StreamLayoutError(
    `TRIBUTARY_STREAM_PARTITIONS=${layout.partitions}, but this deployment's events are in ${theirs} stream(s) ` +
      `(${found.map((f) => f.name).join(", ")}: ${messages} messages). A messageId's stream depends on the count, so ` +
      `changing it on a running deployment would store retries twice. Keep TRIBUTARY_STREAM_PARTITIONS=${other.of || "as it was"}, ` +
      `or let every pipeline load what the streams hold (npm run stream), stop the nodes, delete those streams (nats stream rm) and start with the new count.`,
  );
}

/** Creates the events streams of the layout, or updates the settings that can change without losing data. */
export async function ensureStream(jsm: JetStreamManager, o: BusOptions): Promise<void> {
  const layout = streamLayout(o.streamPartitions ?? 1);
  await checkLayout(jsm, layout);
  for (let k = 0; k < layout.partitions; k++) await ensureOneStream(jsm, o, layout, k);
  // Replicas change on their own (and so do the side streams'), so a scale never rides along
  // with other settings.
  for (const name of [...layout.streams, ...SIDE_STREAMS]) await scaleStream(jsm, name, o.streamReplicas);
}

async function ensureOneStream(jsm: JetStreamManager, o: BusOptions, layout: StreamLayout, k: number): Promise<void> {
  const name = layout.streams[k]!;
  const config = {
    name,
    subjects: layout.streamSubjects(k),
    ...(layout.partitions > 1 ? { description: describe(k, layout.partitions) } : {}),
    storage: StorageType.File,
    max_age: nanos(o.streamMaxAgeHours * 3600_000),
    num_replicas: o.streamReplicas,
    // Dedup is ours (see subjects.ts), but a short native window also catches the client's own resends.
    duplicate_window: nanos(120_000),
    max_msg_size: -1,
    // TRIBUTARY_STREAM_MAX_BYTES is the whole deployment's: each partition holds its share.
    max_bytes: o.streamMaxBytes ? Math.floor(o.streamMaxBytes / layout.partitions) : -1,
    // Full refuses new messages (the node answers 503) rather than dropping the oldest, which
    // could be events no pipeline has loaded; StreamCapacity purges what every pipeline loaded.
    discard: DiscardPolicy.New,
  };
  try {
    const info = await jsm.streams.info(name);
    const c = info.config;
    if (c.max_age !== config.max_age || c.max_bytes !== config.max_bytes || c.discard !== config.discard) {
      await jsm.streams.update(name, {
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        discard: config.discard,
      });
      log.info("events stream updated", {
        stream: name,
        max_age_hours: o.streamMaxAgeHours,
        max_bytes: config.max_bytes,
      });
    }
  } catch (e) {
    if (!isStreamNotFound(e)) throw e;
    try {
      await jsm.streams.add(config);
      log.info("events stream created", { stream: name, replicas: o.streamReplicas });
    } catch (e2) {
      // Another node starting at the same moment created it first ("already in use", or on
      // nats-server 2.9 sometimes "subjects overlap"): use theirs, then check its settings.
      const theirs = await jsm.streams.info(name).catch(() => undefined);
      if (!theirs) throw e2;
      return ensureOneStream(jsm, o, layout, k);
    }
  }
}
