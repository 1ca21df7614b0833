import type { JsMsg } from "@nats-io/jetstream";
import { type Selection, selectEvents } from "../event/selection.ts";
import type { Sink, WriteOutcome } from "../sink/sink.ts";
import { log } from "../util/log.ts";
import { feedOf, type Stage } from "./stage.ts";
import type { PipelineStats } from "./stats.ts";

type Json = Record<string, unknown>;

/** The stage batch of a stage fed by batch (users): kept records of many messages at a time. */
export interface StageBatchOptions {
  /** Staged once it holds this many kept records… */
  maxRows: number;
  /** …or its messages this many bytes… */
  maxBytes: number;
  /** …or its first message is this old (Infinity: only by size, or when flushed). */
  maxAgeMs: number;
}

export interface RunnerOptions {
  /** How often held messages are marked as being worked on (a third of the consumer's ack_wait); 0: never. */
  heartbeatMs: number;
  /** Acknowledges a message whose records are all stored or dead-lettered (a replay waits for JetStream's reply). */
  ack(m: JsMsg): Promise<void> | void;
  /** For a stage fed by batch (Stage.feed); the sink batches for the others. Default: one message each. */
  stageBatch?: StageBatchOptions;
  /** Selects and counts, writes and acknowledges nothing (a replay's --dry-run). */
  dryRun?: boolean;
  /** Messages left unacknowledged for redelivery: their stage threw, or their write failed once the sink stopped. */
  onFlushError?(error: unknown): void;
}

/** What the caller of `run` decides per message (a replay's bounds, an export's take-over). */
export interface RunControl {
  /** Before the message is taken: true ends the run without it (it stays unacknowledged). */
  stopBefore?(m: JsMsg): boolean;
  /** After it is taken: true ends the run after it (what is held goes out with `flush`). */
  isLast?(m: JsMsg): boolean;
  /** After the message is taken. */
  after?(m: JsMsg): void;
  /** false: messages are neither kept alive nor acknowledged (read with a consumer of the caller's own). */
  acknowledge?: boolean;
  /** Each taken message's settlement: true once its records are all stored or dead-lettered, false if given up. */
  onSettled?(m: JsMsg, done: Promise<boolean>): void;
  /**
   * A message whose records went out already (an export's take-over sent its copy): not selected
   * or staged again, acknowledged once that settles true.
   */
  settledElsewhere?(m: JsMsg): Promise<boolean> | undefined;
}

/** Messages staged together, and what is to become of them. */
interface Taken {
  messages: JsMsg[];
  records: Json[];
  bytes: number;
  acknowledge: boolean;
  onSettled?: RunControl["onSettled"];
}

/**
 * The one path from stream messages to stored rows, for live pipelines (PipelineWorker), export
 * pipelines (ExportWorker, its take-over catch-up included) and replays: select
 * (src/event/selection.ts) → stage → sink → acknowledge. The sink batches; the acknowledgement
 * travels with the records: a message is acknowledged once the sink's `write` of its rows resolved
 * (every row stored or dead-lettered), whichever batch each went in and in whatever order the sink's
 * batches finish (an export's users proceed in parallel). A message that produced no rows is
 * acknowledged after the message before it, in order with the rest. The loop waits for the sink's
 * room before the next message (back-pressure); held messages are marked as being worked on so
 * JetStream does not redeliver them meanwhile. A crash anywhere means redelivery, never loss.
 */
export class Runner {
  /** After a message's (or stage batch's) rows are stored: the messageIds it carried (for the debugger). */
  onLoaded?: (messageIds: string[]) => void;
  /** After each message (or stage batch) settled: how many records it kept and how many rows were stored. */
  onFlushed?: (kept: number, written: number) => void;
  /** Takes effect from the next message on. */
  selection: Selection;

  readonly #byBatch: boolean;
  #open?: Taken;
  #ageTimer?: ReturnType<typeof setTimeout>;
  #heartbeat?: ReturnType<typeof setInterval>;
  #running = false;
  /** Stage calls, in stream order and one at a time (each hands its rows to the sink in that order). */
  #staging: Promise<void> = Promise.resolve();
  /** Messages taken and not yet acknowledged or given up. */
  readonly #held = new Set<JsMsg>();
  /** Settlements under way, for `flush` to wait on. */
  readonly #settling = new Set<Promise<unknown>>();
  /** The last settlement: one without rows waits for it, so it is acknowledged in order. */
  #previous: Promise<unknown> = Promise.resolve();

  constructor(
    readonly stage: Stage,
    readonly sink: Sink,
    selection: Selection,
    readonly stats: PipelineStats,
    readonly options: RunnerOptions,
  ) {
    this.selection = selection;
    this.#byBatch = feedOf(stage) === "batch";
  }

  /** Messages taken and not yet acknowledged or given up. */
  get pending(): number {
    return this.#held.size;
  }

  /** Consumes `messages` until they end; true when `control` ended the run. */
  async run(messages: AsyncIterable<JsMsg>, control: RunControl = {}): Promise<boolean> {
    this.#running = true;
    if (this.options.heartbeatMs > 0 && !this.#heartbeat)
      this.#heartbeat = setInterval(() => {
        for (const m of this.#held) m.working();
      }, this.options.heartbeatMs);
    try {
      for await (const m of messages) {
        if (control.stopBefore?.(m)) return true;
        const copy = control.settledElsewhere?.(m);
        if (copy) this.#follow(m, copy);
        else await this.#take(m, control);
        control.after?.(m);
        if (control.isLast?.(m)) return true;
        await this.sink.room();
      }
      return false;
    } finally {
      this.#running = false;
      this.#idle();
    }
  }

  async #take(m: JsMsg, control: RunControl): Promise<void> {
    const kept: Json[] = [];
    await selectEvents(m, this.selection, this.stats, kept);
    if (this.options.dryRun) {
      this.onFlushed?.(kept.length, 0);
      return;
    }
    const acknowledge = control.acknowledge !== false;
    if (acknowledge) this.#held.add(m);
    if (!this.#byBatch) {
      this.#open = { messages: [m], records: kept, bytes: m.data.length, acknowledge, onSettled: control.onSettled };
      await this.#cut();
      return;
    }
    // Joined to the open stage batch only now, whole: selection may give the loop a turn, and a
    // cut by age in that turn must take none of this message or all of it.
    const open = (this.#open ??= { messages: [], records: [], bytes: 0, acknowledge, onSettled: control.onSettled });
    open.messages.push(m);
    open.bytes += m.data.length;
    for (const e of kept) open.records.push(e);
    const b = this.options.stageBatch ?? { maxRows: 0, maxBytes: 0, maxAgeMs: 0 };
    if (open.records.length >= b.maxRows || open.bytes >= b.maxBytes) await this.#cut();
    else if (!this.#ageTimer && Number.isFinite(b.maxAgeMs))
      this.#ageTimer = setTimeout(() => void this.#cut(), b.maxAgeMs);
  }

  /** A message whose copy another run sent: acknowledged once that settled. */
  #follow(m: JsMsg, copy: Promise<boolean>): void {
    this.#held.add(m);
    this.#track(
      copy.then((ok) => {
        this.#release(m);
        if (ok) return this.options.ack(m);
      }),
    );
  }

  /** Stages what was taken (after what was taken before it); resolves once its rows are handed to the sink. */
  #cut(): Promise<void> {
    clearTimeout(this.#ageTimer);
    this.#ageTimer = undefined;
    const taken = this.#open;
    this.#open = undefined;
    if (!taken) return this.#staging;
    this.#staging = this.#staging.then(() => this.#stage(taken));
    return this.#staging;
  }

  async #stage(t: Taken): Promise<void> {
    let rows: Json[];
    try {
      rows = await this.stage.toRows(t.records, this.stats);
    } catch (e) {
      // Not a record's failure (those are the stage's to dead-letter): the messages come again.
      this.#give(t, e);
      return;
    }
    const written = this.sink.write(rows, t.bytes);
    const settled = this.#settle(t, written, rows.length === 0);
    if (!this.#byBatch) return;
    // Stored, and afterInsert done, before the next stage batch is staged.
    this.sink.flush();
    await settled;
  }

  #settle(t: Taken, written: Promise<WriteOutcome>, empty: boolean): Promise<boolean> {
    const previous = this.#previous;
    const settled = (async () => {
      try {
        const outcome = await written;
        if (empty) await previous;
        this.#count(outcome);
        await this.stage.afterInsert?.();
        this.onLoaded?.(t.records.map((e) => e.messageId as string));
        if (t.acknowledge) {
          for (const m of t.messages) this.#release(m);
          if (t.messages.length === 1) await this.options.ack(t.messages[0]!);
          else await Promise.all(t.messages.map((m) => this.options.ack(m)));
        }
        this.stats.loaded += outcome.written;
        if (outcome.written) this.stats.lastLoadAt = new Date().toISOString();
        this.onFlushed?.(t.records.length, outcome.written);
        return true;
      } catch (e) {
        this.#give(t, e);
        return false;
      }
    })();
    this.#previous = settled;
    if (t.onSettled) for (const m of t.messages) t.onSettled(m, settled);
    this.#track(settled);
    return settled;
  }

  /** The sink stored the refused rows as dead letters before resolving. */
  #count(outcome: WriteOutcome): void {
    this.stats.deadLettered += outcome.refused.length;
    const what = this.stage.kind === "export" ? "the destination refused the event" : "ClickHouse refused the row";
    for (const r of outcome.refused)
      this.stats.recordError(`${what}: ${r.reason}`, (r.row.message_id ?? r.row.messageId) as string);
  }

  /** Leaves the messages unacknowledged, for redelivery. */
  #give(t: Taken, error: unknown): void {
    for (const m of t.messages) this.#release(m);
    if (this.options.onFlushError) this.options.onFlushError(error);
    else log.warn("pipeline messages left for redelivery", { table: this.stage.table, error: String(error) });
  }

  #track(p: Promise<unknown>): void {
    this.#settling.add(p);
    void p.finally(() => this.#settling.delete(p));
  }

  #release(m: JsMsg): void {
    this.#held.delete(m);
    if (!this.#held.size) this.#idle();
  }

  /** The heartbeat stops once nothing is held and no run is taking messages. */
  #idle(): void {
    if (this.#running || this.#held.size) return;
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
  }

  /** Sends what is held now and waits until every message taken so far is settled. */
  async flush(): Promise<void> {
    await this.#cut();
    this.sink.flush();
    await Promise.all([...this.#settling]);
  }

  /**
   * Ends a run whose messages were closed: waits for `run` (the loop may be waiting for the sink's
   * room), then stores what is held. If the sink stays away past `graceMs`, it is stopped and what
   * is left stays unacknowledged, for redelivery.
   */
  async stop(graceMs: number, run?: Promise<unknown>): Promise<void> {
    const t = setTimeout(() => this.sink.stop(), graceMs);
    await run?.catch(() => {});
    await this.flush();
    clearTimeout(t);
  }
}
