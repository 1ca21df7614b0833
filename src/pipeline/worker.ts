import { nanos } from "@nats-io/nats-core";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type Consumer,
  type ConsumerInfo,
  type ConsumerMessages,
} from "@nats-io/jetstream";
import type { Bus } from "../bus/connection.ts";
import { STREAM, connectionSubjects, consumerName, legacyConsumerName } from "../bus/subjects.ts";
import { compileFilter } from "../expr/index.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { inserterDefaults, type InserterOptions } from "../sink/clickhouse/inserter.ts";
import { clickHouseSink } from "../sink/clickhouse/sink.ts";
import { Runner } from "./runner.ts";
import type { Stage } from "./stage.ts";
import { PipelineStats } from "./stats.ts";
import { log } from "../util/log.ts";
import { batchDefaults as envBatchDefaults } from "../config/env.ts";

export interface BatchOptions {
  maxRows: number;
  maxBytes: number;
  maxAgeMs: number;
  /** The consumer's ack_wait: how soon a dead node's unacknowledged batch is redelivered. */
  ackWaitMs: number;
}

/** From config/env.ts, the one place defaults live. */
export const batchDefaults: BatchOptions = envBatchDefaults;

/** The pipeline's durable consumer (injective: see consumerName). */
export const durableName = consumerName;

/**
 * Creates the pipeline's durable consumer unless it exists. A new one starts after stream sequence
 * `afterSeq` (the manager passes the sequence when the configuration that added the pipeline was
 * loaded, or when the node connected), so it gets every event accepted from then on however long
 * the pipeline takes to start. A consumer of an earlier version (`legacyConsumerName`) for the
 * same connection hands over its position: the new one starts after its ack floor (what it had
 * not acknowledged comes again; rows collapse in ClickHouse), and `migratedFrom` names the old one,
 * which the manager deletes once every pipeline that shared it has its own.
 */
export async function ensurePipelineConsumer(
  bus: Bus,
  connection: string,
  pipeline: string,
  ackWaitMs: number,
  afterSeq: number,
): Promise<{ migratedFrom?: string }> {
  const name = durableName(connection, pipeline);
  const filter = connectionSubjects(connection);
  const ackWait = nanos(ackWaitMs);
  const info = await consumerInfo(bus, name);
  if (info) {
    if (info.config.filter_subject !== filter)
      throw new Error(`consumer ${name} reads ${info.config.filter_subject}, not ${filter}`);
    if (info.config.ack_wait !== ackWait) await bus.jsm.consumers.update(STREAM, name, { ack_wait: ackWait });
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
          startsAt: from,
          replay: `bun run replay ${connection} --pipeline '${pipeline}' --from-seq ${afterSeq + 1}`,
        },
      );
    }
    return {};
  }
  const legacy = legacyConsumerName(connection, pipeline);
  const old = await consumerInfo(bus, legacy);
  // Under the old names two connections could share a consumer: it belongs to the one it reads.
  const from = old && old.config.filter_subject === filter ? old : undefined;
  const start = from ? positionOf(from) : afterSeq;
  try {
    await bus.jsm.consumers.add(STREAM, {
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
    if (!(await consumerInfo(bus, name))) throw e;
  }
  if (from) log.info("pipeline consumer migrated", { from: legacy, to: name, afterSeq: start });
  return from ? { migratedFrom: legacy } : {};
}

const consumerInfo = (bus: Bus, name: string): Promise<ConsumerInfo | undefined> =>
  bus.jsm.consumers.info(STREAM, name).catch((e) => {
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

/**
 * Runs one pipeline live: a durable pull consumer on the connection's subjects (shared by every
 * node, so nodes split the work and a restart resumes) fed to the Runner (select → stage → sink →
 * ack). Redelivered rows collapse in the ReplacingMergeTree.
 */
export class PipelineWorker {
  readonly stats = new PipelineStats();
  readonly #runner: Runner;
  #running = false;
  #loop?: Promise<unknown>;
  #messages?: ConsumerMessages;

  constructor(
    readonly bus: Bus,
    readonly warehouse: Warehouse,
    readonly connection: string,
    readonly pipeline: string,
    filter: string | undefined,
    readonly stage: Stage,
    readonly batch: BatchOptions = batchDefaults,
    inserter: InserterOptions = inserterDefaults,
  ) {
    const sink = clickHouseSink(warehouse, stage.table, { inserter, deadLetters: { bus, connection, pipeline } });
    this.#runner = new Runner(stage, sink, { filter: compileFilter(filter), takes: stage.takes }, this.stats, {
      maxRows: batch.maxRows,
      maxBytes: batch.maxBytes,
      maxAgeMs: batch.maxAgeMs,
      heartbeatMs: Math.max(250, batch.ackWaitMs / 3),
      ack: (messages) => {
        for (const m of messages) m.ack();
      },
      onFlushError: (e) =>
        // Only when stopping mid-retry: the messages stay unacknowledged and come back.
        log.warn("pipeline batch left for redelivery", { pipeline: this.pipeline, error: String(e) }),
    });
  }

  get durable(): string {
    return durableName(this.connection, this.pipeline);
  }

  /** After a batch is in ClickHouse: the messageIds it carried (for the debugger). */
  set onLoaded(f: ((messageIds: string[]) => void) | undefined) {
    this.#runner.onLoaded = f;
  }
  get onLoaded(): ((messageIds: string[]) => void) | undefined {
    return this.#runner.onLoaded;
  }

  /** Takes effect from the next event on. */
  setFilter(filter: string | undefined): void {
    this.#runner.selection = { ...this.#runner.selection, filter: compileFilter(filter) };
  }

  /** Consent purposes an event must grant to reach this pipeline (PRODUCT.md §1 "Consent"). */
  set consents(purposes: string[] | undefined) {
    this.#runner.selection = { ...this.#runner.selection, consents: purposes };
  }
  get consents(): string[] | undefined {
    return this.#runner.selection.consents;
  }

  /** Where the consumer starts if it does not exist yet (see ensurePipelineConsumer); default: where the node connected. */
  startAfterSeq?: number;

  async start(): Promise<void> {
    if (this.#running) return;
    const consumer = await this.#consumer();
    this.#running = true;
    // Bounded by bytes, not messages: stream messages carry hundreds of events, and a pull sized
    // in messages can exceed the connection's pending limit, which makes NATS drop the connection
    // that also publishes ingested events (a slow consumer).
    // Short pull expiry: after a consumer leader change or a node leaving, a lost pull request is
    // replaced within seconds instead of the 30 s default.
    this.#messages = await consumer.consume({ max_bytes: 8 * 1024 * 1024, expires: 5_000 });
    this.#loop = this.#runner.run(this.#messages);
  }

  /** Flushes what it holds; if ClickHouse stays away past the grace period, leaves it unacknowledged for redelivery. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    // Unacknowledged messages still buffered by the client are redelivered after ack_wait.
    await this.#messages?.close();
    await this.#runner.stop(graceMs, this.#loop);
    this.stage.dispose?.();
  }

  async #consumer(): Promise<Consumer> {
    await ensurePipelineConsumer(
      this.bus,
      this.connection,
      this.pipeline,
      this.batch.ackWaitMs,
      this.startAfterSeq ?? this.bus.startSeq ?? 0,
    );
    return this.bus.js.consumers.get(STREAM, this.durable);
  }
}
