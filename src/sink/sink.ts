/**
 * A Sink is where a pipeline's rows go. It owns everything between "these rows are ready" and "they
 * are stored": the insert, its retries, isolating the rows the destination refuses for their content,
 * dead-lettering those, and the flush metrics. The runner (src/pipeline/runner.ts) acknowledges the
 * stream messages a batch came from only once `write` resolved, so acknowledgements follow the rows.
 *
 * A new destination implements this interface beside src/sink/clickhouse/ and is built where
 * `clickHouseSink` is (src/sink/clickhouse/sink.ts), by the worker, replay and scripts/dlq.ts.
 */

export type Row = Record<string, unknown>;

/** A row the destination refused for its content (retrying cannot help), with its reason. */
export interface RefusedRow {
  row: Row;
  reason: string;
}

export interface WriteOutcome {
  /** Rows stored. */
  written: number;
  /** Rows refused for their content; already dead-lettered when the sink has a dead-letter destination. */
  refused: RefusedRow[];
}

export interface Sink {
  /** What the rows are for (a ClickHouse table), as metrics and dead letters name it. */
  readonly table: string;
  /**
   * Stores `rows`, retrying the destination's outages for as long as it takes; resolves once every
   * row is stored or refused (and each refused one dead-lettered). Throws only after `stop()`.
   */
  write(rows: Row[]): Promise<WriteOutcome>;
  /** Stops retrying: a `write` under way throws at its next failure, leaving its batch for redelivery. */
  stop(): void;
}
