/** What a pipeline did with one event: what the Event debugger shows and `lastErrors` explains. */
export type Outcome = "kept" | "filtered" | "transformed" | "failed" | "loaded";

/**
 * Where a pipeline reports its per-event outcomes. The debugger's OutcomeLog implements it; the
 * pipelines depend on this, not on the debugger.
 */
export interface OutcomeRecorder {
  record(connection: string, messageId: string, pipeline: string, outcome: Outcome, reason?: string): void;
  /** The kept events of a batch the sink stored. */
  loaded(connection: string, pipeline: string, messageIds: string[]): void;
}
