import type { Outcome, OutcomeRecorder } from "../event/outcome.ts";

export type { Outcome };

export interface OutcomeRecord {
  pipeline: string;
  outcome: Outcome;
  reason?: string;
  at: string;
}

/**
 * Per-event pipeline outcomes of the recent events this node processed, bounded per connection
 * (oldest forgotten first), so the debugger can say why an event was kept, filtered or failed.
 */
export class OutcomeLog implements OutcomeRecorder {
  readonly #byConnection = new Map<string, Map<string, OutcomeRecord[]>>();

  constructor(readonly perConnection = 10_000) {}

  record(connection: string, messageId: string, pipeline: string, outcome: Outcome, reason?: string): void {
    let m = this.#byConnection.get(connection);
    if (!m) this.#byConnection.set(connection, (m = new Map()));
    let list = m.get(messageId);
    if (!list) {
      if (m.size >= this.perConnection) m.delete(m.keys().next().value!);
      m.set(messageId, (list = []));
    }
    list.push({ pipeline, outcome, ...(reason !== undefined && { reason }), at: new Date().toISOString() });
    if (list.length > 50) list.shift();
  }

  /** Marks kept events as loaded, except those a later step failed. */
  loaded(connection: string, pipeline: string, messageIds: string[]): void {
    const m = this.#byConnection.get(connection);
    for (const id of messageIds) {
      const last = m?.get(id)?.findLast((r) => r.pipeline === pipeline);
      if (last?.outcome !== "failed") this.record(connection, id, pipeline, "loaded");
    }
  }

  get(connection: string, messageId: string): OutcomeRecord[] {
    return this.#byConnection.get(connection)?.get(messageId) ?? [];
  }
}
