import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "../../bus/connection.ts";
import type { DestinationOptions } from "../../config/destination.ts";
import type { Selection } from "../../event/selection.ts";
import { compileFilter } from "../../expr/index.ts";
import type { ExportSink } from "../../sink/http/export-sink.ts";
import { ExportStats } from "../../sink/http/stats.ts";
import { log } from "../../util/log.ts";
import { Runner } from "../runner.ts";
import { PipelineStats } from "../stats.ts";
import { type BatchOptions, batchDefaults, durableName } from "../worker.ts";
import { consumePipeline, ensureConsumersOf, pipelineConsumers, type StreamPositions } from "../consumers.ts";
import { Lease, type LeaseOptions, leaseBucket, leaseDefaults, leaseKey } from "./lease.ts";
import { exportSink } from "./sink.ts";
import type { ExportStage } from "./stage.ts";

/**
 * Runs one export pipeline on this node: a standby until it holds the pipeline's lease (lease.ts),
 * then the cluster's one sender, through the Runner. Each stream message's kept events go to the
 * sink in stream order (the sink keeps each user's order and sends users in parallel); the message
 * is acknowledged once all of them are 2xx'd or dead-lettered, whatever order messages finish in. When the sink holds
 * `maxQueuedEvents`, the loop stops pulling: the events wait in the stream, and this pipeline's
 * wait slows no other one (each pipeline has its own consumer, sink and loop).
 *
 * Taking over: JetStream would redeliver the previous holder's unacknowledged messages only after
 * ack_wait, behind newer ones, which would reorder a user's events. So the new holder first sends,
 * in stream order, every message between the consumer's ack floor and its last delivered one
 * (read with a consumer of its own), and only then takes new messages from the durable consumer;
 * the old ones, when redelivered, are acknowledged once their copy is sent. Some may be sent twice
 * (those the old holder had sent but not acknowledged), with the same messageIds.
 */
export class ExportWorker {
  readonly stats = new PipelineStats();
  readonly exportStats = new ExportStats();
  #selection: Selection;
  startAfterSeq?: StreamPositions;
  /** Unused by exports: their outcomes are per event, through stats.onOutcome, with the HTTP status. */
  onLoaded?: (messageIds: string[]) => void;

  #abort = new AbortController();
  #loop?: Promise<void>;
  #lease?: Lease;
  #sink?: ExportSink;
  #messages?: { close(): Promise<void> };
  /** The sending period's runner (a new one each time this node becomes the sender). */
  #runner?: Runner;
  #active = false;
  #stopping = false;

  constructor(
    readonly bus: Bus,
    readonly connection: string,
    readonly pipeline: string,
    filter: string | undefined,
    readonly stage: ExportStage,
    readonly destination: DestinationOptions,
    readonly batch: BatchOptions = batchDefaults,
    readonly lease: LeaseOptions = leaseDefaults,
  ) {
    this.#selection = { filter: compileFilter(filter), takes: stage.takes };
  }

  /** Takes effect from the next message on. */
  get selection(): Selection {
    return this.#selection;
  }
  set selection(s: Selection) {
    this.#selection = s;
    if (this.#runner) this.#runner.selection = s;
  }

  get durable(): string {
    return durableName(this.connection, this.pipeline);
  }

  /** Whether this node is the pipeline's sender now (else a standby). */
  get active(): boolean {
    return this.#active;
  }

  setFilter(filter: string | undefined): void {
    this.selection = { ...this.selection, filter: compileFilter(filter) };
  }

  set consents(purposes: string[] | undefined) {
    this.selection = { ...this.selection, consents: purposes };
  }
  get consents(): string[] | undefined {
    return this.selection.consents;
  }

  async start(): Promise<void> {
    await ensureConsumersOf(this);
    const kv = await leaseBucket(this.bus, this.lease);
    this.#lease = new Lease(kv, leaseKey(this.connection, this.pipeline), this.lease);
    this.#loop = this.#run();
  }

  /** Until stopped: wait for the lease, send while it is held, and again after losing it. */
  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    while (!signal.aborted) {
      const lost = new AbortController();
      try {
        await this.#lease!.acquire(signal, () => lost.abort());
        log.info("export pipeline active on this node", { pipeline: this.pipeline, connection: this.connection });
        this.#active = true;
        await this.#send(AbortSignal.any([signal, lost.signal]));
      } catch (e) {
        if (!signal.aborted) {
          log.warn("export pipeline interrupted; trying again", { pipeline: this.pipeline, error: String(e) });
          await Bun.sleep(1000);
        }
      } finally {
        this.#active = false;
        this.#sink?.stop();
        this.#sink = undefined;
        if (!lost.signal.aborted) await this.#lease?.release();
      }
    }
  }

  /** One period as the sender: catch up what a previous holder left, then the durable consumer. */
  async #send(signal: AbortSignal): Promise<void> {
    const sink = exportSink(this.destination, {
      stats: this.exportStats,
      deadLetters: { bus: this.bus, connection: this.connection, pipeline: this.pipeline },
      onOutcome: (id, outcome, reason) => this.stats.onOutcome?.(id, outcome, reason),
    });
    this.#sink = sink;
    // A message that cannot be staged ends the period: sending what follows it first would reorder
    // its users' events. The period starts again (after a pause) from the consumer's ack floor.
    const failed = new AbortController();
    let failure: unknown;
    const period = AbortSignal.any([signal, failed.signal]);
    const runner = new Runner(this.stage, sink, this.selection, this.stats, {
      heartbeatMs: Math.max(250, this.batch.ackWaitMs / 3),
      ack: (m) => m.ack(),
      onFlushError: (e) => {
        // Stopped or taken over: the messages stay unacknowledged and come again.
        if (period.aborted) return;
        failure = e;
        failed.abort();
      },
    });
    this.#runner = runner;
    // Stopping the sink too: the loop may be waiting for room in it, and an iterator closes only
    // once the loop leaves it.
    let close: () => void = () => {};
    const abort = () => {
      sink.stop();
      close();
    };
    period.addEventListener("abort", abort, { once: true });
    try {
      /** Messages (`stream:sequence`) sent by the catch-up, and when each is settled. */
      const copies = new Map<string, Promise<boolean>>();
      // Per partition: a user's events keep their order within each stream (README, Partitions).
      const delivered = new Map<string, number>();
      for (const { stream, partition, info } of await pipelineConsumers(this.bus, this.connection, this.pipeline)) {
        if (!info) throw new Error(`consumer ${this.durable} missing on ${stream}`);
        delivered.set(stream, info.delivered.stream_seq);
        if (info.num_ack_pending > 0 && info.delivered.stream_seq > info.ack_floor.stream_seq) {
          const from = info.ack_floor.stream_seq + 1;
          const to = info.delivered.stream_seq;
          const messages = await this.#catchUpMessages(partition, from);
          close = () => void messages.close().catch(() => {});
          try {
            if (!period.aborted)
              await runner.run(messages, {
                acknowledge: false,
                stopBefore: (m) => m.seq > to || period.aborted,
                isLast: (m) => m.seq === to || m.info.pending === 0,
                onSettled: (m, done) => copies.set(`${stream}:${m.seq}`, done),
              });
          } finally {
            close();
          }
        }
        period.throwIfAborted();
      }
      const consumed = await consumePipeline(this.bus, this.connection, this.pipeline);
      this.#messages = consumed;
      close = () => void consumed.close();
      if (period.aborted) close();
      await runner.run(consumed.messages, {
        stopBefore: () => period.aborted,
        // Its copy went in the catch-up: acknowledged once that is settled.
        settledElsewhere: (m) =>
          m.seq <= (delivered.get(m.info.stream) ?? 0) ? copies.get(`${m.info.stream}:${m.seq}`) : undefined,
      });
      // Closed by stop(): what is under way gets its grace period before the sink stops.
      if (this.#stopping && !period.aborted)
        await new Promise((resolve) => period.addEventListener("abort", resolve, { once: true }));
      if (failure !== undefined) throw failure;
    } finally {
      period.removeEventListener("abort", abort);
    }
  }

  /** The previous holder's messages from `from` on, in stream order, through a consumer of this node's own. */
  async #catchUpMessages(partition: number, from: number) {
    const stream = this.bus.layout.streams[partition]!;
    log.info("export pipeline catching up what the previous sender left", { pipeline: this.pipeline, stream, from });
    const consumer = await this.bus.js.consumers.get(stream, {
      // One subject as a string: a list needs nats-server 2.10.
      filter_subjects: this.bus.layout.consumerFilter(this.connection, partition),
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: from,
    });
    return consumer.consume({ max_bytes: 8 * 1024 * 1024 });
  }

  /**
   * Stops taking messages; what is under way gets `graceMs` to be sent, then the rest stays
   * unacknowledged, for the next sender. The lease is given up at once.
   */
  async stop(graceMs = 5000): Promise<void> {
    this.#stopping = true;
    // Not awaited yet: close() resolves once the loop has left the iterator, and the loop may be
    // waiting for room in the sink, which only stopping the sink gives.
    const closing = this.#messages?.close().catch(() => {});
    const deadline = Date.now() + graceMs;
    this.#sink?.flush();
    while ((this.#runner?.pending ?? 0) > 0 && Date.now() < deadline) await Bun.sleep(50);
    this.#abort.abort();
    this.#sink?.stop();
    await closing;
    await this.#loop?.catch(() => {});
    this.stage.dispose?.();
  }
}
