import type { RecordKind } from "../event/envelope.ts";
import type { PipelineStats } from "./stats.ts";

type Json = Record<string, unknown>;

/** The kinds of pipeline: `import: events`, `import: users`, a raw connection's table loader, and `export: events`. */
export type StageKind = "events" | "users" | "raw" | "export";

/**
 * What a kind of pipeline does with the records its selection kept: the rows for its table. A stage
 * declares its kind and the records it takes; nothing reads them off its table name.
 */
export interface Stage {
  readonly kind: StageKind;
  /** The table its rows are for (an export: its destination, as `webhook:<url>`). */
  readonly table: string;
  /** Ingested events, or raw webhook deliveries (a raw connection's stream holds both). */
  readonly takes: RecordKind;
  /** Rows for a batch of kept records; per-record failures are recorded on `stats`, never thrown. */
  toRows(records: Json[], stats: PipelineStats): Promise<Json[]> | Json[];
  /** After the sink confirmed the batch, before its messages are acknowledged. */
  afterInsert?(): Promise<void>;
  dispose?(): void;
}
