/**
 * A Sink is where a pipeline's rows go. It owns everything between "these rows are ready" and "they
 * are stored": batching them (by rows, bytes and age for ClickHouse; per user, in order, for an HTTP
 * destination), the insert or request and its retries, isolating the rows the destination refuses
 * for their content, dead-lettering those, and the flush metrics.
 *
 * Acknowledgements travel with the records (as Vector's event finalizers do): `write` returns, for
 * exactly the rows it was given, a promise that settles once every one of them is stored or
 * dead-lettered, whichever batch each went out in. The runner (src/pipeline/runner.ts) acknowledges
 * a stream message when the write of its rows resolved, so acknowledgements follow the rows.
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
   * Takes `rows` into the sink's batching and resolves once every one of them is stored or refused
   * (each refused one dead-lettered), retrying the destination's outages for as long as it takes.
   * `bytes` is what the rows came from (their stream message's size), for a sink that batches by
   * bytes without serialising rows twice. Rejects only once the sink is stopped.
   */
  write(rows: Row[], bytes?: number): Promise<WriteOutcome>;
  /** Resolves when the sink takes more (back-pressure: the runner stops pulling until then). */
  room(): Promise<void>;
  /** Sends what it holds now, whatever its age (the end of a replay, a stop). */
  flush(): void;
  /** Stops retrying: writes under way reject at their next failure, leaving their messages for redelivery. */
  stop(): void;
}
