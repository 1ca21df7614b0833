/**
 * A Sink is where a pipeline's rows go. It owns everything between "these rows are ready" and "they
 * are stored": batching them (by rows, bytes and age for ClickHouse; per user, in order, for an HTTP
 * destination), the insert or request and its retries, isolating the rows the destination refuses
 * for their content, dead-lettering those, and the flush metrics.
 *
 * Acknowledgements travel with the records (as Vector's event finalizers do): `accept` takes rows
 * with an Acknowledgement that is told exactly once what became of all of them (stored or
 * dead-lettered, or given up), whichever batch each went out in. The runner
 * (src/pipeline/runner.ts) acknowledges a stream message when its rows' acknowledgement is told
 * they are stored, so acknowledgements follow the rows. An object, not a promise, per hand-over:
 * a pipeline hands over thousands a second.
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

/** What travels with rows into a sink: told once, when all of them are settled. */
export interface Acknowledgement {
  /** Every row stored or refused for its content (each refused one dead-lettered). */
  stored(outcome: WriteOutcome): void;
  /** Given up (the sink stopped): their messages stay unacknowledged, for redelivery. */
  failed(error: unknown): void;
}

export interface Sink {
  /** What the rows are for (a ClickHouse table), as metrics and dead letters name it. */
  readonly table: string;
  /**
   * Takes `rows` into the sink's batching; `ack` is told once every one of them is stored or
   * refused (each refused one dead-lettered), the destination's outages retried for as long as it
   * takes, or that they were given up once the sink stopped. `bytes` is what the rows came from
   * (their stream message's size), for a sink that batches by bytes without serialising rows twice.
   */
  accept(rows: Row[], ack: Acknowledgement, bytes?: number): void;
  /** `accept` as a promise (scripts/dlq.ts, tests): resolves with the rows' outcome, rejects once given up. */
  write(rows: Row[]): Promise<WriteOutcome>;
  /** Resolves when the sink takes more (back-pressure: the runner stops pulling until then). */
  room(): Promise<void>;
  /** Sends what it holds now, whatever its age (the end of a replay, a stop). */
  flush(): void;
  /** Stops retrying: what is under way is given up at its next failure, left for redelivery. */
  stop(): void;
}

/** The outcome of rows that needed nothing stored. */
export const NOTHING_WRITTEN: WriteOutcome = Object.freeze({ written: 0, refused: [] }) as WriteOutcome;

/** `write` for a sink: `accept` with an acknowledgement that settles a promise. */
export const writeThrough = (sink: Pick<Sink, "accept">, rows: Row[]): Promise<WriteOutcome> =>
  new Promise((stored, failed) => sink.accept(rows, { stored, failed }));
