import { sinkBatchRows, sinkFlushDuration } from "../ops/metrics.ts";
import { nanos } from "@nats-io/nats-core";
import {
  AckPolicy,
  DeliverPolicy,
  type Consumer,
  type ConsumerInfo,
  type ConsumerMessages,
  type JsMsg,
} from "@nats-io/jetstream";
import type { Bus } from "../bus/connection.ts";
import { STREAM, connectionSubjects, consumerName, legacyConsumerName } from "../bus/subjects.ts";
import { KIND_HEADER } from "../bus/shard-writer.ts";
import { publishDeadLetters } from "../bus/dead-letters.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { Inserter, inserterDefaults, type InserterOptions } from "../sink/clickhouse/inserter.ts";
import { ExpressionTimeoutError, compileFilter, type EventFilter } from "../expr/index.ts";
import { consentGranted } from "../ingest/consent.ts";
import { PipelineStats } from "./stats.ts";
import { log } from "../util/log.ts";
import { defaults } from "../config/env.ts";

export interface BatchOptions {
  maxRows: number;
  maxBytes: number;
  maxAgeMs: number;
  /** The consumer's ack_wait: how soon a dead node's unacknowledged batch is redelivered. */
  ackWaitMs: number;
}

export const batchDefaults: BatchOptions = {
  maxRows: defaults.batchMaxRows,
  maxBytes: defaults.batchMaxBytes,
  maxAgeMs: defaults.batchMaxAgeMs,
  ackWaitMs: defaults.ackWaitMs,
};

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
    if (/consumer not found/i.test(String((e as Error).message))) return undefined;
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

type Json = Record<string, unknown>;

/** What a kind of pipeline does with the events its filter kept: the rows for its table. */
export interface PipelineStage {
  readonly table: string;
  /** Takes raw webhook deliveries instead of events (a raw connection's stream holds both). */
  readonly raw?: boolean;
  /** Rows for a batch of kept events; per-event failures are recorded on `stats`, never thrown. */
  toRows(events: Json[], stats: PipelineStats): Promise<Json[]> | Json[];
  /** After ClickHouse confirmed the batch, before its messages are acknowledged. */
  afterInsert?(): Promise<void>;
  dispose?(): void;
}

export interface Selection {
  filter: EventFilter;
  consents?: string[];
  /** The stage takes raw webhook deliveries instead of events. */
  raw: boolean;
}

/**
 * The events of one stream message that a pipeline keeps (its filter, then its consents), with
 * every decision counted and, when the debugger listens, recorded per event. Shared by the live
 * workers and by replays, so a replay decides exactly as the pipeline did.
 */
/**
 * After an event whose filter ran out of time the node's loop gets a turn before the next event: a
 * message full of hostile events costs the pipeline the limit per event, but never holds HTTP
 * answers or other pipelines for longer than one limit.
 */
const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A raw webhook delivery in a message written before the record envelope (KIND_HEADER) existed:
 * exactly `{messageId, raw}`. An ingested event is always stored with `receivedAt`, `type` and more,
 * so no event a sender sent has this shape.
 */
function isLegacyRawRecord(e: unknown): boolean {
  if (!e || typeof e !== "object") return false;
  const keys = Object.keys(e);
  return (
    keys.length === 2 && "messageId" in e && "raw" in e && !!(e as Json).raw && typeof (e as Json).raw === "object"
  );
}

export async function selectEvents(
  m: { json<T>(): T; seq: number; headers?: { get(k: string): string } },
  sel: Selection,
  stats: PipelineStats,
  into: Json[],
): Promise<void> {
  let events: Json[];
  try {
    events = m.json<Json[]>();
  } catch (err) {
    // Not written by Tributary (someone published by hand): keep it visible, never block on it.
    stats.recordError(`unreadable stream message ${m.seq}: ${(err as Error).message}`);
    return;
  }
  // The record envelope says what the message holds; a field of the record never does.
  const kind = m.headers?.get(KIND_HEADER) || undefined;
  for (const e of Array.isArray(events) ? events : [events]) {
    if ((kind ? kind === "raw" : isLegacyRawRecord(e)) !== sel.raw) continue;
    stats.received++;
    const id = e.messageId as string;
    let keep: boolean;
    try {
      keep = sel.filter.test(e);
    } catch (err) {
      stats.recordError(`filter failed: ${(err as Error).message}`, id);
      if (err instanceof ExpressionTimeoutError) await yieldToLoop();
      continue;
    }
    if (!keep) {
      stats.filteredOut++;
      stats.onOutcome?.(id, "filtered", sel.filter.source ? `filter ${sel.filter.source} is false` : undefined);
      continue;
    }
    if (sel.consents?.length && !consentGranted(e, sel.consents)) {
      stats.consentFailed++;
      stats.onOutcome?.(id, "filtered", `consent missing for ${sel.consents.join(", ")}`);
      continue;
    }
    stats.onOutcome?.(id, "kept");
    into.push(e);
  }
}

/**
 * Runs one pipeline: a durable pull consumer on the connection's subjects (shared by every
 * node, so nodes split the work and a restart resumes), the filter, the stage that turns kept
 * events into rows, and a batching insert. Messages are acknowledged only after ClickHouse
 * confirmed the rows they produced, so a crash anywhere means redelivery, never loss;
 * redelivered rows collapse in the ReplacingMergeTree.
 */
export class PipelineWorker {
  readonly stats = new PipelineStats();
  /** After a batch is in ClickHouse: the messageIds it carried (for the debugger). */
  onLoaded?: (messageIds: string[]) => void;
  #filter: EventFilter;
  #running = false;
  #loop?: Promise<void>;
  #inserter: Inserter;
  #pending: JsMsg[] = [];
  /** The messages of the batch being inserted. */
  #inFlight: JsMsg[] = [];

  constructor(
    readonly bus: Bus,
    readonly warehouse: Warehouse,
    readonly connection: string,
    readonly pipeline: string,
    filter: string | undefined,
    readonly stage: PipelineStage,
    readonly batch: BatchOptions = batchDefaults,
    inserter: InserterOptions = inserterDefaults,
  ) {
    this.#filter = compileFilter(filter);
    this.#inserter = new Inserter(warehouse, stage.table, inserter);
  }

  get durable(): string {
    return durableName(this.connection, this.pipeline);
  }

  /** Takes effect from the next event on. */
  setFilter(filter: string | undefined): void {
    this.#filter = compileFilter(filter);
  }

  /** Consent purposes an event must grant to reach this pipeline (PRODUCT.md §1 "Consent"). */
  consents?: string[];

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
    this.#loop = this.#run(this.#messages);
    // Held messages (open batch, insert being retried) are still being worked on: keep JetStream
    // from redelivering them to another node while this one is alive.
    this.#heartbeat = setInterval(
      () => {
        for (const m of this.#pending) m.working();
        for (const m of this.#inFlight) m.working();
      },
      Math.max(250, this.batch.ackWaitMs / 3),
    );
  }

  /** Flushes what it holds; if ClickHouse stays away past the grace period, leaves it unacknowledged for redelivery. */
  async stop(graceMs = 5000): Promise<void> {
    if (!this.#running) return;
    this.#running = false;
    clearInterval(this.#heartbeat);
    // Unacknowledged messages still buffered by the client are redelivered after ack_wait.
    await this.#messages?.close();
    const t = setTimeout(() => this.#inserter.stop(), graceMs);
    await this.#loop;
    await this.#flushing;
    await this.#flush().catch(() => {});
    clearTimeout(t);
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

  /** Kept events of the open batch. */
  #events: Json[] = [];
  #bytes = 0;
  #ageTimer?: ReturnType<typeof setTimeout>;
  #flushing: Promise<void> = Promise.resolve();
  #messages?: ConsumerMessages;
  #heartbeat?: ReturnType<typeof setInterval>;

  async #run(messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      await this.#take(m);
      if (this.#events.length >= this.batch.maxRows || this.#bytes >= this.batch.maxBytes) {
        // Back-pressure: stop pulling until this batch is in ClickHouse.
        await this.#scheduleFlush();
      } else if (!this.#ageTimer) {
        this.#ageTimer = setTimeout(() => void this.#scheduleFlush(), this.batch.maxAgeMs);
      }
    }
  }

  async #take(m: JsMsg): Promise<void> {
    // Selected into a local list, then joined to the batch with the message: selection may give the
    // loop a turn, and a flush in that turn must neither ack `m` nor take half of its events.
    const kept: Json[] = [];
    await selectEvents(m, { filter: this.#filter, consents: this.consents, raw: !!this.stage.raw }, this.stats, kept);
    this.#pending.push(m);
    this.#bytes += m.data.length;
    for (const e of kept) this.#events.push(e);
  }

  /** One insert at a time; each takes what has accumulated when it starts. */
  #scheduleFlush(): Promise<void> {
    clearTimeout(this.#ageTimer);
    this.#ageTimer = undefined;
    this.#flushing = this.#flushing
      .then(() => this.#flush())
      .catch((e) => {
        // Only when stopping mid-retry: the messages stay unacknowledged and come back.
        log.warn("pipeline batch left for redelivery", { pipeline: this.pipeline, error: String(e) });
      });
    return this.#flushing;
  }

  async #flush(): Promise<void> {
    const events = this.#events;
    const messages = this.#pending;
    this.#events = [];
    this.#pending = [];
    this.#bytes = 0;
    if (!messages.length) return;
    this.#inFlight = messages;
    const rows = await this.stage.toRows(events, this.stats);
    const stopTimer = sinkFlushDuration.startTimer({ table: this.stage.table });
    const outcome = await this.#inserter.insert(rows);
    stopTimer();
    sinkBatchRows.observe({ table: this.stage.table }, rows.length);
    if (outcome.rejected.length) {
      await this.#deadLetter(outcome.rejected);
    }
    await this.stage.afterInsert?.();
    this.onLoaded?.(events.map((e) => e.messageId as string));
    for (const m of messages) m.ack();
    this.#inFlight = [];
    this.stats.loaded += outcome.inserted;
    if (outcome.inserted) this.stats.lastLoadAt = new Date().toISOString();
  }

  async #deadLetter(rejected: { row: Record<string, unknown>; reason: string }[]): Promise<void> {
    const letters = rejected.map((r) => ({
      connection: this.connection,
      pipeline: this.pipeline,
      table: this.stage.table,
      messageId: (r.row.message_id ?? r.row.delivery_id) as string,
      reason: r.reason,
      at: new Date().toISOString(),
      event: r.row,
    }));
    // Acknowledging before the dead letters are stored would lose them: retry until JetStream takes them.
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await publishDeadLetters(this.bus, letters);
        break;
      } catch (e) {
        if (!this.#running && delay >= 5000) throw e;
        log.warn("dead-letter publish failed; retrying", { pipeline: this.pipeline, error: String(e) });
        await Bun.sleep(delay);
      }
    }
    this.stats.deadLettered += rejected.length;
    for (const r of rejected)
      this.stats.recordError(`ClickHouse refused the row: ${r.reason}`, r.row.message_id as string);
  }
}
