import { connect, type NatsConnection } from "@nats-io/transport-node";
import { nanos } from "@nats-io/nats-core";
import { DiscardPolicy, jetstream, jetstreamManager, StorageType, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
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

export interface Bus {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  options: BusOptions;
  close(): Promise<void>;
}

export async function connectBus(options: BusOptions): Promise<Bus> {
  const nc = await connect({
    servers: options.url.split(",").map((s) => s.trim()).filter(Boolean),
    name: options.name ?? "tributary",
    maxReconnectAttempts: -1, // a node outlives any NATS restart
    reconnectTimeWait: 250,
    waitOnFirstConnect: true,
    timeout: 5000,
  });
  (async () => {
    for await (const s of nc.status()) {
      if (s.type === "disconnect" || s.type === "reconnect") log.warn(`nats ${s.type}`, { server: String((s as { server?: string }).server ?? "") });
    }
  })().catch(() => {});
  const jsm = await jetstreamManager(nc, { timeout: options.timeoutMs });
  await ensureStream(jsm, options);
  const js = jetstream(nc, { timeout: options.timeoutMs });
  return {
    nc,
    js,
    jsm,
    options,
    close: async () => {
      await nc.drain().catch(() => nc.close());
    },
  };
}

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
    // Full drops the oldest messages; StreamCapacity makes the node refuse events long before
    // those could be ones a pipeline has not loaded yet.
    discard: DiscardPolicy.Old,
  };
  try {
    const info = await jsm.streams.info(STREAM);
    const c = info.config;
    if (c.max_age !== config.max_age || c.num_replicas !== config.num_replicas || c.max_bytes !== config.max_bytes || c.discard !== config.discard) {
      await jsm.streams.update(STREAM, { max_age: config.max_age, num_replicas: config.num_replicas, max_bytes: config.max_bytes, discard: config.discard });
      log.info("events stream updated", { max_age_hours: o.streamMaxAgeHours, replicas: o.streamReplicas, max_bytes: config.max_bytes });
    }
  } catch (e) {
    if (!/stream not found/i.test(String((e as Error).message))) throw e;
    await jsm.streams.add(config);
    log.info("events stream created", { stream: STREAM });
  }
}
