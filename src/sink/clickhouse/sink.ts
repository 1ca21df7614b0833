import { publishDeadLetters, type DeadLetter } from "../../bus/dead-letters.ts";
import type { Bus } from "../../bus/connection.ts";
import { sinkBatchRows, sinkFlushDuration } from "./metrics.ts";
import { log } from "../../util/log.ts";
import {
  type Acknowledgement,
  NOTHING_WRITTEN,
  type RefusedRow,
  type Row,
  type Sink,
  type WriteOutcome,
  writeThrough,
} from "../sink.ts";
import { Inserter, inserterDefaults, type InserterOptions } from "./inserter.ts";
import type { Warehouse } from "./server.ts";

/** Where refused rows go: the pipeline's dead-letter subject (TRIBUTARY_DLQ). */
export interface DeadLetterDestination {
  bus: Bus;
  connection: string;
  pipeline: string;
}

/** When the rows written so far go out as one insert. */
export interface ClickHouseBatchOptions {
  /** Once the batch holds this many rows… */
  maxRows: number;
  /** …or its writes this many bytes (what the rows came from: their stream messages)… */
  maxBytes: number;
  /** …or its first write is this old (Infinity: only by size, or when flushed). */
  maxAgeMs: number;
}

export interface ClickHouseSinkOptions {
  inserter?: InserterOptions;
  /** Without it, each write is an insert of its own, at once (scripts/dlq.ts --redrive). */
  batch?: ClickHouseBatchOptions;
  /** Without one, refused rows are only returned (scripts/dlq.ts --redrive: they are letters already). */
  deadLetters?: DeadLetterDestination;
  /** Called before each insert retry. */
  onRetry?: (attempt: number, error: unknown) => void;
  /** After each insert: how many rows it carried and what became of them. */
  onInsert?: (rows: number, outcome: WriteOutcome) => void;
}

/** One hand-over: its rows, and the acknowledgement told when they are stored or refused. */
interface Part {
  rows: Row[];
  ack: Acknowledgement;
}

interface Batch {
  parts: Part[];
  rows: number;
  bytes: number;
}

const emptyBatch = (): Batch => ({ parts: [], rows: 0, bytes: 0 });

/**
 * The ClickHouse sink: batches the rows it is given by rows, bytes and age (Vector's clickhouse
 * sink owns its batching likewise), inserts one batch at a time with capped exponential backoff,
 * bisects a refused batch down to the rows ClickHouse refuses for their content (the Inserter), and
 * stores those as dead letters with ClickHouse's reason. Each hand-over's acknowledgement is told
 * once its own rows are stored or dead-lettered, so acknowledging after it never loses one.
 */
export class ClickHouseSink implements Sink {
  readonly #inserter: Inserter;
  #stopped = false;
  #open = emptyBatch();
  #ageTimer?: ReturnType<typeof setTimeout>;
  /** Inserts in order, one at a time; never rejects (a failed insert rejects its writes). */
  #inserting: Promise<void> = Promise.resolve();
  /** The insert of the last batch closed because it was full: the writer waits for it (back-pressure). */
  #full?: Promise<void>;

  constructor(
    readonly warehouse: Warehouse,
    readonly table: string,
    readonly options: ClickHouseSinkOptions = {},
  ) {
    this.#inserter = new Inserter(warehouse, table, options.inserter ?? inserterDefaults, options.onRetry);
  }

  accept(rows: Row[], ack: Acknowledgement, bytes = 0): void {
    if (this.#stopped) {
      ack.failed(new Error(`the ClickHouse sink of ${this.table} stopped`));
      return;
    }
    if (!rows.length) {
      ack.stored(NOTHING_WRITTEN);
      return;
    }
    const open = this.#open;
    open.parts.push({ rows, ack });
    open.rows += rows.length;
    open.bytes += bytes;
    const b = this.options.batch;
    if (!b || open.rows >= b.maxRows || open.bytes >= b.maxBytes) this.#full = this.#close();
    else if (!this.#ageTimer && Number.isFinite(b.maxAgeMs))
      this.#ageTimer = setTimeout(() => void this.#close(), b.maxAgeMs);
  }

  write(rows: Row[]): Promise<WriteOutcome> {
    return writeThrough(this, rows);
  }

  /** While a full batch is being inserted, the next waits: a slow ClickHouse holds the consumer loop. */
  room(): Promise<void> {
    return this.#full ?? Promise.resolve();
  }

  flush(): void {
    void this.#close();
  }

  /** What is held is tried once more; an insert failing from now on rejects its writes, for redelivery. */
  stop(): void {
    this.#stopped = true;
    this.#inserter.stop();
    this.flush();
  }

  #close(): Promise<void> {
    clearTimeout(this.#ageTimer);
    this.#ageTimer = undefined;
    const batch = this.#open;
    if (!batch.parts.length) return this.#inserting;
    this.#open = emptyBatch();
    const done = this.#inserting.then(() => this.#insert(batch));
    this.#inserting = done;
    void done.then(() => {
      if (this.#full === done) this.#full = undefined;
    });
    return done;
  }

  async #insert(batch: Batch): Promise<void> {
    const rows = batch.parts.length === 1 ? batch.parts[0]!.rows : batch.parts.flatMap((p) => p.rows);
    let outcome: WriteOutcome;
    try {
      outcome = await this.#store(rows);
    } catch (e) {
      for (const p of batch.parts) p.ack.failed(e);
      return;
    }
    this.options.onInsert?.(rows.length, outcome);
    if (batch.parts.length === 1) return batch.parts[0]!.ack.stored(outcome);
    if (!outcome.refused.length) {
      for (const p of batch.parts) p.ack.stored({ written: p.rows.length, refused: [] });
      return;
    }
    // Rare: each refused row back to the write it came in.
    const partOf = new Map<Row, number>();
    batch.parts.forEach((p, i) => {
      for (const r of p.rows) partOf.set(r, i);
    });
    const refused: RefusedRow[][] = batch.parts.map(() => []);
    for (const r of outcome.refused) refused[partOf.get(r.row)!]!.push(r);
    batch.parts.forEach((p, i) => {
      p.ack.stored({ written: p.rows.length - refused[i]!.length, refused: refused[i]! });
    });
  }

  /** One insert: the rows stored, the refused ones dead-lettered. */
  async #store(rows: Row[]): Promise<WriteOutcome> {
    const stopTimer = sinkFlushDuration.startTimer({ table: this.table });
    const outcome = await this.#inserter.insert(rows);
    stopTimer();
    sinkBatchRows.observe({ table: this.table }, rows.length);
    if (outcome.rejected.length && this.options.deadLetters)
      await this.#deadLetter(this.options.deadLetters, outcome.rejected);
    return { written: outcome.inserted, refused: outcome.rejected };
  }

  async #deadLetter(to: DeadLetterDestination, refused: RefusedRow[]): Promise<void> {
    const at = new Date().toISOString();
    const letters: DeadLetter[] = refused.map((r) => ({
      connection: to.connection,
      pipeline: to.pipeline,
      table: this.table,
      messageId: (r.row.message_id ?? r.row.delivery_id) as string,
      reason: r.reason,
      at,
      event: r.row,
    }));
    // Acknowledging before the dead letters are stored would lose them: retry until JetStream takes them.
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await publishDeadLetters(to.bus, letters);
        return;
      } catch (e) {
        if (this.#stopped && delay >= 5000) throw e;
        log.warn("dead-letter publish failed; retrying", { pipeline: to.pipeline, error: String(e) });
        await Bun.sleep(delay);
      }
    }
  }
}

/** The one way the worker, replay and scripts/dlq.ts build a ClickHouse sink. */
export const clickHouseSink = (warehouse: Warehouse, table: string, options?: ClickHouseSinkOptions): ClickHouseSink =>
  new ClickHouseSink(warehouse, table, options);
