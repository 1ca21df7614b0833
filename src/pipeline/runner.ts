import type { JsMsg } from "@nats-io/jetstream";
import { type Selection, selectEvents } from "../event/selection.ts";
import { NOTHING_WRITTEN, type Sink, type WriteOutcome } from "../sink/sink.ts";
import { log } from "../util/log.ts";
import { feedOf, type Stage } from "./stage.ts";
import { type Owner, Taken } from "./taken.ts";
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

/**
 * The one path from stream messages to stored rows, for live pipelines (PipelineWorker), export
 * pipelines (ExportWorker, its take-over catch-up included) and replays: select
 * (src/event/selection.ts) → stage → sink → acknowledge. The sink batches; the acknowledgement
 * travels with the records (Sink.accept): a message is acknowledged once the sink tells it that
 * every row it produced is stored or dead-lettered, whichever batch each went in and in whatever
 * order the sink's batches finish (an export's users proceed in parallel). A message that produced
 * no rows is acknowledged right after the message before it, in order with the rest. The loop waits for the sink's
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
  /** Settlements under way, and who waits for there to be none (`flush`). */
  #unsettled = 0;
  readonly #drained: (() => void)[] = [];
  #lastLoadMs = 0;
  /** The last message (or stage batch) handed over: one without rows is acknowledged after it, in order. */
  #last?: Taken;
  readonly #owner: Owner = {
    stored: (t, outcome) => this.#stored(t, outcome),
    failed: (t, error) => this.#failed(t, error),
  };

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
      // The loop takes one message at a time, so staging it now keeps stream order. Synchronous
      // unless the stage is: a message costs no turn of the event loop it does not need.
      const staged = this.#stage(new Taken(this.#owner, [m], kept, m.data.length, acknowledge, control.onSettled));
      if (staged) await staged;
      return;
    }
    // Joined to the open stage batch only now, whole: selection may give the loop a turn, and a
    // cut by age in that turn must take none of this message or all of it.
    const open = (this.#open ??= new Taken(this.#owner, [], [], 0, acknowledge, control.onSettled));
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
    this.#unsettled++;
    void copy
      .then((ok) => {
        this.#release(m);
        if (ok) return this.options.ack(m);
      })
      .catch((e) => this.#give([m], e))
      .finally(() => this.#settled());
  }

  /** Stages the open stage batch (after the one before it); resolves once it is stored. */
  #cut(): Promise<void> {
    clearTimeout(this.#ageTimer);
    this.#ageTimer = undefined;
    const taken = this.#open;
    this.#open = undefined;
    if (!taken) return this.#staging;
    this.#staging = this.#staging.then(() => this.#stage(taken));
    return this.#staging;
  }

  /** The stage's rows for what was taken, handed to the sink; a promise only when something is awaited. */
  #stage(t: Taken): Promise<void> | undefined {
    let rows: Json[] | Promise<Json[]>;
    try {
      rows = this.stage.toRows(t.records, this.stats);
    } catch (e) {
      // Not a record's failure (those are the stage's to dead-letter): the messages come again.
      this.#give(t.messages, e);
      return;
    }
    if (rows instanceof Promise)
      return rows.then(
        (r) => this.#hand(t, r),
        (e) => this.#give(t.messages, e),
      );
    return this.#hand(t, rows);
  }

  /** Hands the rows to the sink with `t`, their acknowledgement. */
  #hand(t: Taken, rows: Json[]): Promise<void> | undefined {
    // The rows wait in the sink's batch: the records they came from need not wait with them.
    t.kept = t.records.length;
    if (this.onLoaded) t.ids = t.records.map((e) => e.messageId as string);
    t.records = [];
    this.#unsettled++;
    if (t.onSettled) for (const m of t.messages) t.onSettled(m, t.done);
    const previous = this.#last;
    this.#last = t;
    if (rows.length) this.sink.accept(rows, t, t.bytes);
    else if (!previous || previous.ordered) this.#stored(t, NOTHING_WRITTEN);
    else (previous.followers ??= []).push(t);
    if (!this.#byBatch) return;
    // Stored, and afterInsert done, before the next stage batch is staged.
    this.sink.flush();
    return t.done.then(() => {});
  }

  /** The sink stored (or dead-lettered) every row of `t`. */
  #stored(t: Taken, outcome: WriteOutcome): void {
    if (t.settled) return;
    try {
      this.#count(outcome);
      if (this.stage.afterInsert)
        void this.stage.afterInsert().then(
          () => this.#acknowledge(t, outcome),
          (e) => this.#failed(t, e),
        );
      else this.#acknowledge(t, outcome);
    } catch (e) {
      this.#failed(t, e);
    }
  }

  #acknowledge(t: Taken, outcome: WriteOutcome): void {
    try {
      this.onLoaded?.(t.ids ?? []);
      let acks: Promise<void>[] | undefined;
      if (t.acknowledge)
        for (const m of t.messages) {
          this.#release(m);
          const ack = this.options.ack(m);
          if (ack) (acks ??= []).push(ack);
        }
      this.#ordered(t);
      if (acks)
        void Promise.all(acks).then(
          () => this.#finish(t, outcome),
          (e) => this.#failed(t, e),
        );
      else this.#finish(t, outcome);
    } catch (e) {
      this.#failed(t, e);
    }
  }

  #finish(t: Taken, outcome: WriteOutcome): void {
    this.stats.loaded += outcome.written;
    if (outcome.written) this.#loadedNow();
    t.settle(true);
    this.#settled();
    this.onFlushed?.(t.kept, outcome.written);
  }

  /** Given up (the sink stopped, afterInsert or an acknowledgement failed): left for redelivery. */
  #failed(t: Taken, error: unknown): void {
    if (t.settled) return;
    this.#give(t.messages, error);
    this.#ordered(t);
    t.settle(false);
    this.#settled();
  }

  /** Messages without rows waiting for `t` go now, in order. */
  #ordered(t: Taken): void {
    t.ordered = true;
    const followers = t.followers;
    t.followers = undefined;
    if (followers) for (const f of followers) this.#stored(f, NOTHING_WRITTEN);
  }

  /** lastLoadAt, formatted at most once a millisecond (messages settle by the thousand). */
  #loadedNow(): void {
    const now = Date.now();
    if (now === this.#lastLoadMs) return;
    this.#lastLoadMs = now;
    this.stats.lastLoadAt = new Date(now).toISOString();
  }

  #settled(): void {
    if (--this.#unsettled === 0) for (const w of this.#drained.splice(0)) w();
  }

  /** The sink stored the refused rows as dead letters before resolving. */
  #count(outcome: WriteOutcome): void {
    this.stats.deadLettered += outcome.refused.length;
    const what = this.stage.kind === "export" ? "the destination refused the event" : "ClickHouse refused the row";
    for (const r of outcome.refused)
      this.stats.recordError(`${what}: ${r.reason}`, (r.row.message_id ?? r.row.messageId) as string);
  }

  /** Leaves the messages unacknowledged, for redelivery. */
  #give(messages: JsMsg[], error: unknown): void {
    for (const m of messages) this.#release(m);
    if (this.options.onFlushError) this.options.onFlushError(error);
    else log.warn("pipeline messages left for redelivery", { table: this.stage.table, error: String(error) });
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
    if (this.#unsettled > 0) await new Promise<void>((resolve) => this.#drained.push(resolve));
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
