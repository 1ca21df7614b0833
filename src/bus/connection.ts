import { connect, type NatsConnection } from "@nats-io/transport-node";
import { nanos } from "@nats-io/nats-core";
import {
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { STREAM, SUBJECT_ROOT } from "./subjects.ts";
import { log } from "../util/log.ts";

export interface BusOptions {
  /** One URL or a comma-separated list; the client reconnects to any of them. */
  url: string;
  streamMaxAgeHours: number;
  /** 0: no limit. */
  streamMaxBytes?: number;
  streamReplicas: number;
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
  /**
   * The events stream's last sequence when this process connected, before it could accept
   * anything: pipelines of the configuration it started with begin after it (see PipelineWorker).
   */
  startSeq?: number;
  close(): Promise<void>;
}

/** The bus settings of a node's options (tools such as replay and dlq connect as the node would). */
export function busOptionsOf(
  o: {
    natsUrl?: string;
    streamMaxAgeHours: number;
    streamMaxBytes: number;
    streamReplicas: number;
    dedupWindowHours: number;
    publishTimeoutMs: number;
  },
  name?: string,
): BusOptions {
  return {
    url: o.natsUrl ?? "nats://127.0.0.1:4222",
    streamMaxAgeHours: o.streamMaxAgeHours,
    streamMaxBytes: o.streamMaxBytes,
    streamReplicas: o.streamReplicas,
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
  let startSeq = 0;
  await untilJetStreamAnswers(async () => {
    await ensureStream(jsm, options);
    startSeq = (await jsm.streams.info(STREAM)).state.last_seq;
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
      const m = String((e as Error).message ?? e);
      if (/no responders/i.test(m))
        throw new Error(`JetStream is not enabled on the NATS server (start it with -js): ${m}`, { cause: e });
      const placement = /no suitable peers|insufficient resources/i.test(m);
      const transient = placement || /timeout|temporarily unavailable|disconnect|connection closed/i.test(m);
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
  if (/non-clustered|insufficient resources|no suitable peers|replicas/i.test(m)) {
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

/** JetStream's own answer (API code 10059), whatever text a server version words it with. */
export const isStreamNotFound = (e: unknown): boolean =>
  e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound;

/** Creates the events stream, or updates the settings that can change without losing data. */
export async function ensureStream(jsm: JetStreamManager, o: BusOptions): Promise<void> {
  const config = {
    name: STREAM,
    subjects: [`${SUBJECT_ROOT}.>`],
    storage: StorageType.File,
    max_age: nanos(o.streamMaxAgeHours * 3600_000),
    num_replicas: o.streamReplicas,
    // Dedup is ours (see subjects.ts), but a short native window also catches the client's own resends.
    duplicate_window: nanos(120_000),
    max_msg_size: -1,
    max_bytes: o.streamMaxBytes ? o.streamMaxBytes : -1,
    // Full refuses new messages (the node answers 503) rather than dropping the oldest, which
    // could be events no pipeline has loaded; StreamCapacity purges what every pipeline loaded.
    discard: DiscardPolicy.New,
  };
  try {
    const info = await jsm.streams.info(STREAM);
    const c = info.config;
    if (c.max_age !== config.max_age || c.max_bytes !== config.max_bytes || c.discard !== config.discard) {
      await jsm.streams.update(STREAM, {
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        discard: config.discard,
      });
      log.info("events stream updated", { max_age_hours: o.streamMaxAgeHours, max_bytes: config.max_bytes });
    }
  } catch (e) {
    if (!isStreamNotFound(e)) throw e;
    try {
      await jsm.streams.add(config);
      log.info("events stream created", { stream: STREAM, replicas: o.streamReplicas });
    } catch (e2) {
      // Another node starting at the same moment created it first ("already in use", or on
      // nats-server 2.9 sometimes "subjects overlap"): use theirs, then check its settings.
      const theirs = await jsm.streams.info(STREAM).catch(() => undefined);
      if (!theirs) throw e2;
      return ensureStream(jsm, o);
    }
  }
  // Replicas change on their own (and so do the side streams'), so a scale never rides along
  // with other settings.
  for (const name of [STREAM, ...SIDE_STREAMS]) await scaleStream(jsm, name, o.streamReplicas);
}
