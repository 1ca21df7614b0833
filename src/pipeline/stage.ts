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
  /**
   * How the runner feeds it, declared, never guessed. "message" (the default): each stream
   * message's kept records as the message comes, its rows handed to the sink at once (the sink
   * batches). "batch": the kept records of many messages at a time (the runner's stage batch), one
   * batch after the other, each stored and followed by afterInsert before the next is staged
   * (users: profiles resolved once per batch, the identities of a batch written once its users rows are).
   */
  readonly feed?: "message" | "batch";
  /** Rows for kept records; per-record failures are recorded on `stats`, never thrown. */
  toRows(records: Json[], stats: PipelineStats): Promise<Json[]> | Json[];
  /** After the sink stored a batch's rows, before its messages are acknowledged (only with feed "batch"). */
  afterInsert?(): Promise<void>;
  dispose?(): void;
}

/** How the runner feeds `stage` (see Stage.feed). */
export const feedOf = (stage: Stage): "message" | "batch" => stage.feed ?? "message";
