import { nanos } from "@nats-io/nats-core";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type ConsumerInfo,
  type ConsumerMessages,
  type JsMsg,
} from "@nats-io/jetstream";
import type { Bus } from "../bus/connection.ts";
import { consumerName, legacyConsumerName } from "../bus/subjects.ts";
import { log } from "../util/log.ts";

/**
 * Stream positions, by partition: where a pipeline's new consumers start (after them). One number
 * is every partition's (a single-stream deployment, or tests that start from the beginning).
 */
export type StreamPositions = number | readonly number[];

const positionIn = (p: StreamPositions, partition: number): number => (typeof p === "number" ? p : (p[partition] ?? 0));

/**
 * Creates the pipeline's durable consumer on every partition that holds some of the connection's
 * shards, unless it exists (the same name on each stream). A new one starts after `afterSeq` (the
 * manager passes the positions when the configuration that added the pipeline was loaded, or when
 * the node connected), so it gets every event accepted from then on however long the pipeline
 * takes to start. A consumer of an earlier version (`legacyConsumerName`, single stream only) hands
 * over its position: the new one starts after its ack floor (what it had not acknowledged comes
 * again; rows collapse in ClickHouse), and `migratedFrom` names the old one, which the manager
 * deletes once every pipeline that shared it has its own.
 */
export async function ensurePipelineConsumer(
  bus: Bus,
  connection: string,
  pipeline: string,
  ackWaitMs: number,
  afterSeq: StreamPositions,
): Promise<{ migratedFrom?: string }> {
  let migratedFrom: string | undefined;
  for (const k of bus.layout.partitionsOf(connection)) {
    const r = await ensureOn(bus, k, connection, pipeline, ackWaitMs, positionIn(afterSeq, k));
    migratedFrom ??= r.migratedFrom;
  }
  return migratedFrom ? { migratedFrom } : {};
}

/** What a pipeline worker (live or export) knows of where its consumers start. */
export interface ConsumerOwner {
  readonly bus: Bus;
  readonly connection: string;
  readonly pipeline: string;
  readonly batch: { ackWaitMs: number };
  /** Where the consumers start if they do not exist yet; default: where the node connected. */
  startAfterSeq?: StreamPositions;
}

/** The worker's consumers on every partition, created where it was told to start (see ensurePipelineConsumer). */
export const ensureConsumersOf = (w: ConsumerOwner) =>
  ensurePipelineConsumer(w.bus, w.connection, w.pipeline, w.batch.ackWaitMs, w.startAfterSeq ?? w.bus.startSeq ?? 0);

async function ensureOn(
  bus: Bus,
  partition: number,
  connection: string,
  pipeline: string,
  ackWaitMs: number,
  afterSeq: number,
): Promise<{ migratedFrom?: string }> {
  const stream = bus.layout.streams[partition]!;
  const name = consumerName(connection, pipeline);
  const filter = bus.layout.consumerFilter(connection, partition);
  const ackWait = nanos(ackWaitMs);
  const info = await consumerInfo(bus, stream, name);
  if (info) {
    if (info.config.filter_subject !== filter)
      throw new Error(`consumer ${name} reads ${info.config.filter_subject}, not ${filter}`);
    if (info.config.ack_wait !== ackWait) await bus.jsm.consumers.update(stream, name, { ack_wait: ackWait });
    // Another node created it first, from a later point than this node's: what this node accepted
    // in between is in the stream but not for this pipeline. Never silent.
    const from = info.config.deliver_policy === DeliverPolicy.StartSequence ? (info.config.opt_start_seq ?? 0) : 0;
    if (from > afterSeq + 1) {
      log.warn(
        "pipeline consumer was created by another node from a later point: load what came before with a replay",
        {
          pipeline,
          connection,
          consumer: name,
          stream,
          startsAt: from,
          replay: `bun run replay ${connection} --pipeline '${pipeline}' --from-seq ${afterSeq + 1}${bus.layout.partitions > 1 ? ` --partition ${partition}` : ""}`,
        },
      );
    }
    return {};
  }
  // Names of the old scheme exist only on the single stream (partitions came later).
  const legacy = legacyConsumerName(connection, pipeline);
  const old = bus.layout.partitions === 1 ? await consumerInfo(bus, stream, legacy) : undefined;
  // Under the old names two connections could share a consumer: it belongs to the one it reads.
  const from = old && old.config.filter_subject === filter ? old : undefined;
  const start = from ? positionOf(from) : afterSeq;
  try {
    await bus.jsm.consumers.add(stream, {
      durable_name: name,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      ack_wait: ackWait,
      max_ack_pending: 10_000,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: start + 1,
    });
  } catch (e) {
    // Another node created it meanwhile: theirs is as good.
    if (!(await consumerInfo(bus, stream, name))) throw e;
  }
  if (from) log.info("pipeline consumer migrated", { from: legacy, to: name, afterSeq: start });
  return from ? { migratedFrom: legacy } : {};
}

export const consumerInfo = (bus: Bus, stream: string, name: string): Promise<ConsumerInfo | undefined> =>
  bus.jsm.consumers.info(stream, name).catch((e) => {
    if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.ConsumerNotFound) return undefined;
    throw e;
  });

/**
 * The stream sequence up to which a consumer is done. Its ack floor once it acknowledged anything;
 * before that, where it started if it delivered nothing yet; else (delivered, nothing acknowledged)
 * nothing is known to be done, so the whole stream comes again.
 */
function positionOf(c: ConsumerInfo): number {
  if (c.ack_floor.consumer_seq > 0) return c.ack_floor.stream_seq;
  if (c.delivered.consumer_seq === 0) return c.delivered.stream_seq;
  return 0;
}

/** The pipeline's consumer on each of its partitions' streams (undefined where it does not exist). */
export async function pipelineConsumers(
  bus: Bus,
  connection: string,
  pipeline: string,
): Promise<{ partition: number; stream: string; info: ConsumerInfo | undefined }[]> {
  const name = consumerName(connection, pipeline);
  return Promise.all(
    bus.layout.partitionsOf(connection).map(async (partition) => {
      const stream = bus.layout.streams[partition]!;
      return { partition, stream, info: await consumerInfo(bus, stream, name).catch(() => undefined) };
    }),
  );
}

/** Messages still to load for the pipeline over all its partitions; null when no consumer answered. */
export async function pipelineLag(bus: Bus, connection: string, pipeline: string): Promise<number | null> {
  let lag: number | null = null;
  for (const { info } of await pipelineConsumers(bus, connection, pipeline))
    if (info) lag = (lag ?? 0) + info.num_pending + info.num_ack_pending;
  return lag;
}

/**
 * Reads the pipeline's durable consumer on every partition as one sequence of messages: each
 * partition's in its stream order, partitions interleaved as their messages arrive. Each message
 * is acknowledged on its own stream (its reply subject says which).
 */
export async function consumePipeline(
  bus: Bus,
  connection: string,
  pipeline: string,
): Promise<{ messages: AsyncIterable<JsMsg>; close(): Promise<void> }> {
  const name = consumerName(connection, pipeline);
  const all: ConsumerMessages[] = [];
  try {
    for (const k of bus.layout.partitionsOf(connection)) {
      const consumer = await bus.js.consumers.get(bus.layout.streams[k]!, name);
      // Bounded by bytes, not messages: stream messages carry hundreds of events, and a pull sized
      // in messages can exceed the connection's pending limit, which makes NATS drop the connection
      // that also publishes ingested events (a slow consumer). Split between the partitions.
      // Short pull expiry: after a consumer leader change or a node leaving, a lost pull request is
      // replaced within seconds instead of the 30 s default.
      const maxBytes = Math.max(1024 * 1024, Math.floor((8 * 1024 * 1024) / bus.layout.partitions));
      all.push(await consumer.consume({ max_bytes: maxBytes, expires: 5_000 }));
    }
  } catch (e) {
    await Promise.all(all.map((m) => m.close().catch(() => {})));
    throw e;
  }
  if (all.length === 1) return { messages: all[0]!, close: () => all[0]!.close().then(() => {}) };
  const messages = merge(all);
  return {
    messages,
    close: async () => {
      messages.release();
      await Promise.all(all.map((m) => m.close().catch(() => {})));
    },
  };
}

/**
 * The items of several async sequences as one, each source's in its order. A source yields its
 * next item only once the previous one was taken, so back-pressure reaches every source; the
 * merged sequence ends when all of them have, and fails when one fails. `release()` lets go of
 * what is queued and of what the sources still yield (their owner is closing them: unacknowledged
 * messages come again), so a source never waits on a reader that has stopped reading.
 */
export function merge<T>(sources: readonly AsyncIterable<T>[]): AsyncIterable<T> & { release(): void } {
  const ready: { value: T; taken: () => void }[] = [];
  let live = sources.length;
  let failure: { error: unknown } | undefined;
  let released = false;
  let wake: (() => void) | undefined;
  const signal = () => {
    wake?.();
    wake = undefined;
  };
  const release = () => {
    released = true;
    for (const item of ready.splice(0)) item.taken();
    signal();
  };
  for (const source of sources) {
    void (async () => {
      try {
        for await (const value of source) {
          if (released) continue;
          await new Promise<void>((taken) => {
            ready.push({ value, taken });
            signal();
          });
        }
      } catch (error) {
        failure ??= { error };
      } finally {
        live--;
        signal();
      }
    })();
  }
  return {
    release,
    [Symbol.asyncIterator]: () => ({
      async next(): Promise<IteratorResult<T>> {
        for (;;) {
          const item = released ? undefined : ready.shift();
          if (item) {
            item.taken();
            return { value: item.value, done: false };
          }
          if (failure) throw failure.error;
          if (live === 0 || released) return { value: undefined, done: true };
          await new Promise<void>((r) => (wake = r));
        }
      },
      async return(): Promise<IteratorResult<T>> {
        release();
        return { value: undefined, done: true };
      },
    }),
  };
}
