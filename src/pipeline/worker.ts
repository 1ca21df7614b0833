import type { Bus } from "../bus/connection.ts";
import { consumerName } from "../bus/subjects.ts";
import { consumePipeline, ensureConsumersOf, type StreamPositions } from "./consumers.ts";
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
 * Runs one pipeline live: a durable pull consumer on the connection's subjects (shared by every
 * node, so nodes split the work and a restart resumes) fed to the Runner (select → stage → sink →
 * ack), the ClickHouse sink batching by rows, bytes and age. Redelivered rows collapse in the
 * ReplacingMergeTree.
 */
export class PipelineWorker {
  readonly stats = new PipelineStats();
  readonly #runner: Runner;
  #running = false;
  #loop?: Promise<unknown>;
  #messages?: { close(): Promise<void> };

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
    const sink = clickHouseSink(warehouse, stage.table, {
      inserter,
      batch: { maxRows: batch.maxRows, maxBytes: batch.maxBytes, maxAgeMs: batch.maxAgeMs },
      deadLetters: { bus, connection, pipeline },
    });
    this.#runner = new Runner(stage, sink, { filter: compileFilter(filter), takes: stage.takes }, this.stats, {
      // Used only by a stage fed by batch (users); the sink batches the others' rows alike.
      stageBatch: { maxRows: batch.maxRows, maxBytes: batch.maxBytes, maxAgeMs: batch.maxAgeMs },
      heartbeatMs: Math.max(250, batch.ackWaitMs / 3),
      ack: (m) => m.ack(),
      onFlushError: (e) =>
        // Only when stopping mid-retry (or a stage that threw): the messages stay unacknowledged and come back.
        log.warn("pipeline messages left for redelivery", { pipeline: this.pipeline, error: String(e) }),
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

  /** Where the consumers start if they do not exist yet (see ensurePipelineConsumer); default: where the node connected. */
  startAfterSeq?: StreamPositions;

  async start(): Promise<void> {
    if (this.#running) return;
    await ensureConsumersOf(this);
    const consumed = await consumePipeline(this.bus, this.connection, this.pipeline);
    this.#running = true;
    this.#messages = consumed;
    this.#loop = this.#runner.run(consumed.messages);
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
}
