import type { JsMsg } from "@nats-io/jetstream";
import { DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "../../bus/connection.ts";
import type { DestinationOptions } from "../../config/destination.ts";
import { type Selection, selectEvents } from "../../event/selection.ts";
import { compileFilter } from "../../expr/index.ts";
import type { ExportSink } from "../../sink/http/export-sink.ts";
import { ExportStats } from "../../sink/http/stats.ts";
import { log } from "../../util/log.ts";
import { PipelineStats } from "../stats.ts";
import { type BatchOptions, batchDefaults, durableName } from "../worker.ts";
import { consumePipeline, ensurePipelineConsumer, pipelineConsumers, type StreamPositions } from "../consumers.ts";
import { Lease, type LeaseOptions, leaseBucket, leaseDefaults, leaseKey } from "./lease.ts";
import { exportSink } from "./sink.ts";
import type { ExportStage } from "./stage.ts";

type Json = Record<string, unknown>;

/**
 * Runs one export pipeline on this node: a standby until it holds the pipeline's lease (lease.ts),
 * then the cluster's one sender. Each stream message's kept events go to the sink in stream order
 * (the sink keeps each user's order and sends users in parallel); the message is acknowledged once
 * all of them are 2xx'd or dead-lettered, whatever order messages finish in. When the sink holds
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
  selection: Selection;
  startAfterSeq?: StreamPositions;
  /** Unused by exports: their outcomes are per event, through stats.onOutcome, with the HTTP status. */
  onLoaded?: (messageIds: string[]) => void;

  #abort = new AbortController();
  #loop?: Promise<void>;
  #lease?: Lease;
  #sink?: ExportSink;
  #messages?: { close(): Promise<void> };
  /** Messages whose events are not all settled: marked as being worked on, so none is redelivered meanwhile. */
  readonly #held = new Set<JsMsg>();
  #heartbeat?: ReturnType<typeof setInterval>;
  /** Messages (`stream:sequence`) sent by a take-over's catch-up, and when each is settled. */
  #caughtUp = new Map<string, Promise<boolean>>();
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
    this.selection = { filter: compileFilter(filter), takes: stage.takes };
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
    await ensurePipelineConsumer(
      this.bus,
      this.connection,
      this.pipeline,
      this.batch.ackWaitMs,
      this.startAfterSeq ?? this.bus.startSeq ?? 0,
    );
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
        this.#held.clear();
        clearInterval(this.#heartbeat);
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
    this.#caughtUp = new Map();
    const heartbeatMs = Math.max(250, this.batch.ackWaitMs / 3);
    this.#heartbeat = setInterval(() => {
      for (const m of this.#held) m.working();
    }, heartbeatMs);
    // Per partition: a user's events keep their order within each stream (README, Partitions).
    const delivered = new Map<string, number>();
    for (const { stream, partition, info } of await pipelineConsumers(this.bus, this.connection, this.pipeline)) {
      if (!info) throw new Error(`consumer ${this.durable} is missing on ${stream}`);
      delivered.set(stream, info.delivered.stream_seq);
      if (info.num_ack_pending > 0 && info.delivered.stream_seq > info.ack_floor.stream_seq)
        await this.#catchUp(sink, partition, info.ack_floor.stream_seq + 1, info.delivered.stream_seq, signal);
      signal.throwIfAborted();
    }
    const consumed = await consumePipeline(this.bus, this.connection, this.pipeline);
    this.#messages = consumed;
    // Stopping the sink too: the loop may be waiting for room in it, and the iterator closes only
    // once the loop leaves it.
    const close = () => {
      sink.stop();
      void consumed.close();
    };
    signal.addEventListener("abort", close, { once: true });
    try {
      for await (const m of consumed.messages) {
        if (signal.aborted) break;
        const copy =
          m.seq <= (delivered.get(m.info.stream) ?? 0) ? this.#caughtUp.get(`${m.info.stream}:${m.seq}`) : undefined;
        if (copy) {
          // Its copy went in the catch-up: acknowledged once that is settled.
          this.#held.add(m);
          void copy.then((ok) => {
            this.#held.delete(m);
            if (ok) m.ack();
          });
          continue;
        }
        await this.#process(sink, m, true);
        await sink.room();
      }
      // Closed by stop(): what is under way gets its grace period before the sink stops.
      if (this.#stopping && !signal.aborted)
        await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
    } finally {
      signal.removeEventListener("abort", close);
    }
  }

  /** The previous holder's messages, in stream order, through a consumer of this node's own. */
  async #catchUp(sink: ExportSink, partition: number, from: number, to: number, signal: AbortSignal): Promise<void> {
    const stream = this.bus.layout.streams[partition]!;
    log.info("export pipeline catching up what the previous sender left", {
      pipeline: this.pipeline,
      stream,
      from,
      to,
    });
    const consumer = await this.bus.js.consumers.get(stream, {
      // One subject as a string: a list needs nats-server 2.10.
      filter_subjects: this.bus.layout.consumerFilter(this.connection, partition),
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: from,
    });
    const messages = await consumer.consume({ max_bytes: 8 * 1024 * 1024 });
    const close = () => {
      sink.stop();
      void messages.close();
    };
    signal.addEventListener("abort", close, { once: true });
    try {
      for await (const m of messages) {
        if (m.seq > to || signal.aborted) break;
        this.#caughtUp.set(`${stream}:${m.seq}`, (await this.#process(sink, m, false)).settled);
        await sink.room();
        if (m.seq === to || m.info.pending === 0) break;
      }
    } finally {
      signal.removeEventListener("abort", close);
      void messages.close().catch(() => {});
    }
  }

  /**
   * Selects and transforms one message's events and hands them to the sink, in stream order;
   * resolves once they are handed over, with a promise of whether they all settled. `durable`: the
   * message is the durable consumer's, to keep alive and acknowledge (a catch-up's is not).
   */
  async #process(sink: ExportSink, m: JsMsg, durable: boolean): Promise<{ settled: Promise<boolean> }> {
    if (durable) this.#held.add(m);
    const kept: Json[] = [];
    await selectEvents(m, this.selection, this.stats, kept);
    const rows = await this.stage.toRows(kept, this.stats);
    const settled = sink.write(rows).then(
      (outcome) => {
        this.stats.loaded += outcome.written;
        this.stats.deadLettered += outcome.refused.length;
        for (const r of outcome.refused)
          this.stats.recordError(`destination refused the event: ${r.reason}`, String(r.row.messageId));
        if (outcome.written) this.stats.lastLoadAt = new Date().toISOString();
        this.#held.delete(m);
        if (durable) m.ack();
        return true;
      },
      () => {
        // The sink stopped: the message stays unacknowledged and comes again.
        this.#held.delete(m);
        return false;
      },
    );
    return { settled };
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
    while (this.#held.size && Date.now() < deadline) await Bun.sleep(50);
    this.#abort.abort();
    this.#sink?.stop();
    await closing;
    await this.#loop?.catch(() => {});
    this.stage.dispose?.();
  }
}
