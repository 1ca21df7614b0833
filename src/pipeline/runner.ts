import type { JsMsg } from "@nats-io/jetstream";
import { type Selection, selectEvents } from "../event/selection.ts";
import type { Sink } from "../sink/sink.ts";
import { log } from "../util/log.ts";
import type { Stage } from "./stage.ts";
import type { PipelineStats } from "./stats.ts";

type Json = Record<string, unknown>;

export interface RunnerOptions {
  /** A batch goes to the sink once it holds this many kept records… */
  maxRows: number;
  /** …or its messages this many bytes… */
  maxBytes: number;
  /** …or its first message is this old (Infinity: only by size, or when the caller says a message is the last). */
  maxAgeMs: number;
  /** How often held messages are marked as being worked on (a third of the consumer's ack_wait); 0: never. */
  heartbeatMs: number;
  /** Acknowledges a loaded batch's messages (the live pipeline acks, a replay waits for JetStream's reply). */
  ack(messages: JsMsg[]): Promise<void> | void;
  /** Selects and counts, writes and acknowledges nothing (a replay's --dry-run). */
  dryRun?: boolean;
  /** A batch that failed (only when stopping mid-retry, or a stage that threw) stays unacknowledged. */
  onFlushError?(error: unknown): void;
}

/** What the caller of `run` decides per message (a replay's bounds; the live pipeline has none). */
export interface RunControl {
  /** Before the message is taken: true ends the run without it (it stays unacknowledged). */
  stopBefore?(m: JsMsg): boolean;
  /** After it is taken: true makes it the last, its batch flushed at once. */
  isLast?(m: JsMsg): boolean;
  /** After the message is taken (and its batch flushed when it was full). */
  after?(m: JsMsg): void;
}

/**
 * The one path from stream messages to stored rows, shared by the live pipelines (PipelineWorker)
 * and by replays: select (src/event/selection.ts) → batch by rows, bytes and age → the stage's rows
 * → the sink (insert, refused rows dead-lettered) → acknowledge. Messages are acknowledged only
 * after the sink confirmed the rows they produced, so a crash anywhere means redelivery, never loss.
 * A full batch holds the consumer loop until it is stored (back-pressure); held messages are marked
 * as being worked on so JetStream does not redeliver them to another node meanwhile.
 */
export class Runner {
  /** After a batch is stored: the messageIds it carried (for the debugger). */
  onLoaded?: (messageIds: string[]) => void;
  /** After each batch: how many records it kept and how many rows were stored. */
  onFlushed?: (kept: number, written: number) => void;
  /** Takes effect from the next message on. */
  selection: Selection;

  #events: Json[] = [];
  #pending: JsMsg[] = [];
  /** The messages of the batch being written. */
  #inFlight: JsMsg[] = [];
  #bytes = 0;
  #ageTimer?: ReturnType<typeof setTimeout>;
  #heartbeat?: ReturnType<typeof setInterval>;
  #flushing: Promise<void> = Promise.resolve();

  constructor(
    readonly stage: Stage,
    readonly sink: Sink,
    selection: Selection,
    readonly stats: PipelineStats,
    readonly options: RunnerOptions,
  ) {
    this.selection = selection;
  }

  /** Consumes `messages` until they end; true when `control` ended the run. */
  async run(messages: AsyncIterable<JsMsg>, control: RunControl = {}): Promise<boolean> {
    if (this.options.heartbeatMs > 0 && !this.#heartbeat) {
      this.#heartbeat = setInterval(() => {
        for (const m of this.#pending) m.working();
        for (const m of this.#inFlight) m.working();
      }, this.options.heartbeatMs);
    }
    try {
      for await (const m of messages) {
        if (control.stopBefore?.(m)) return true;
        await this.#take(m);
        const last = control.isLast?.(m) ?? false;
        if (last || this.#events.length >= this.options.maxRows || this.#bytes >= this.options.maxBytes) {
          // Back-pressure: stop pulling until this batch is stored.
          await this.flush();
        } else if (!this.#ageTimer && Number.isFinite(this.options.maxAgeMs)) {
          this.#ageTimer = setTimeout(() => void this.flush(), this.options.maxAgeMs);
        }
        control.after?.(m);
        if (last) return true;
      }
      return false;
    } finally {
      clearInterval(this.#heartbeat);
      this.#heartbeat = undefined;
    }
  }

  async #take(m: JsMsg): Promise<void> {
    // Selected into a local list, then joined to the batch with the message: selection may give the
    // loop a turn, and a flush in that turn must neither ack `m` nor take half of its events.
    const kept: Json[] = [];
    await selectEvents(m, this.selection, this.stats, kept);
    this.#pending.push(m);
    this.#bytes += m.data.length;
    for (const e of kept) this.#events.push(e);
  }

  /** Sends what is held to the sink; one batch at a time, each taking what accumulated when it starts. */
  flush(): Promise<void> {
    clearTimeout(this.#ageTimer);
    this.#ageTimer = undefined;
    this.#flushing = this.#flushing
      .then(() => this.#flush())
      .catch((e) => {
        if (this.options.onFlushError) this.options.onFlushError(e);
        else log.warn("pipeline batch left for redelivery", { table: this.stage.table, error: String(e) });
      });
    return this.#flushing;
  }

  /**
   * Ends a run whose messages were closed: waits for `run` (the loop may be held by a full batch),
   * then stores what is held. If the sink stays away past `graceMs`, what is left stays
   * unacknowledged, for redelivery.
   */
  async stop(graceMs: number, run?: Promise<unknown>): Promise<void> {
    clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
    const t = setTimeout(() => this.sink.stop(), graceMs);
    await run?.catch(() => {});
    await this.flush();
    clearTimeout(t);
  }

  async #flush(): Promise<void> {
    const events = this.#events;
    const messages = this.#pending;
    this.#events = [];
    this.#pending = [];
    this.#bytes = 0;
    if (!messages.length) return;
    if (this.options.dryRun) {
      this.onFlushed?.(events.length, 0);
      return;
    }
    this.#inFlight = messages;
    const rows = await this.stage.toRows(events, this.stats);
    const outcome = await this.sink.write(rows);
    // The sink stored the refused rows as dead letters before resolving.
    this.stats.deadLettered += outcome.refused.length;
    for (const r of outcome.refused)
      this.stats.recordError(
        `${this.stage.kind === "export" ? "the destination refused the event" : "ClickHouse refused the row"}: ${r.reason}`,
        (r.row.message_id ?? r.row.messageId) as string,
      );
    await this.stage.afterInsert?.();
    this.onLoaded?.(events.map((e) => e.messageId as string));
    await this.options.ack(messages);
    this.#inFlight = [];
    this.stats.loaded += outcome.written;
    if (outcome.written) this.stats.lastLoadAt = new Date().toISOString();
    this.onFlushed?.(events.length, outcome.written);
  }
}
