import { publishDeadLetters, type DeadLetter } from "../../bus/dead-letters.ts";
import type { Bus } from "../../bus/connection.ts";
import { sinkBatchRows, sinkFlushDuration } from "./metrics.ts";
import { log } from "../../util/log.ts";
import type { Row, Sink, WriteOutcome } from "../sink.ts";
import { Inserter, inserterDefaults, type InserterOptions } from "./inserter.ts";
import type { Warehouse } from "./server.ts";

/** Where refused rows go: the pipeline's dead-letter subject (TRIBUTARY_DLQ). */
export interface DeadLetterDestination {
  bus: Bus;
  connection: string;
  pipeline: string;
}

export interface ClickHouseSinkOptions {
  inserter?: InserterOptions;
  /** Without one, refused rows are only returned (scripts/dlq.ts --redrive: they are letters already). */
  deadLetters?: DeadLetterDestination;
  /** Called before each insert retry. */
  onRetry?: (attempt: number, error: unknown) => void;
}

/**
 * The ClickHouse sink: one table's inserts with capped exponential backoff, bisection of a refused
 * batch down to the rows ClickHouse refuses for their content (the Inserter), and those rows stored
 * as dead letters with ClickHouse's reason before `write` resolves, so acknowledging after it never
 * loses one.
 */
export class ClickHouseSink implements Sink {
  readonly #inserter: Inserter;
  #stopped = false;

  constructor(
    readonly warehouse: Warehouse,
    readonly table: string,
    readonly options: ClickHouseSinkOptions = {},
  ) {
    this.#inserter = new Inserter(warehouse, table, options.inserter ?? inserterDefaults, options.onRetry);
  }

  stop(): void {
    this.#stopped = true;
    this.#inserter.stop();
  }

  async write(rows: Row[]): Promise<WriteOutcome> {
    const stopTimer = sinkFlushDuration.startTimer({ table: this.table });
    const outcome = await this.#inserter.insert(rows);
    stopTimer();
    sinkBatchRows.observe({ table: this.table }, rows.length);
    if (outcome.rejected.length && this.options.deadLetters)
      await this.#deadLetter(this.options.deadLetters, outcome.rejected);
    return { written: outcome.inserted, refused: outcome.rejected };
  }

  async #deadLetter(to: DeadLetterDestination, refused: { row: Row; reason: string }[]): Promise<void> {
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
