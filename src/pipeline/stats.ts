import type { Outcome } from "../event/outcome.ts";
import type { ExportSnapshot } from "../sink/http/stats.ts";

/**
 * What `/v1/pipelines` adds under `export` for an export pipeline: its destination (type and URL,
 * never headers, keys or secrets), whether this node is its sender, and the sink's counters.
 */
export interface ExportPipelineSnapshot extends ExportSnapshot {
  destination: { type: string; url: string };
  role: "active" | "standby";
}

/** What GET /v1/pipelines and /metrics show of one running pipeline. */
export interface PipelineSnapshot {
  connection: string;
  pipeline: string;
  import: string;
  received: number;
  filteredOut: number;
  consentFailed: number;
  transformed: number;
  failed: number;
  loaded: number;
  deadLettered: number;
  /** Dead letters waiting in TRIBUTARY_DLQ for this pipeline (all nodes'), until redriven. */
  deadLetters: number;
  lag: number | null;
  lastLoadAt: string | null;
  lastErrors: { at: string; messageId?: string; error: string }[];
  /** Events of forgotten users dropped before selection (`npm run forget`). */
  forgotten?: number;
  /** An export pipeline's sender figures (src/sink/http). */
  export?: ExportPipelineSnapshot;
}

/** Counters of one pipeline, as GET /v1/pipelines and /metrics show them. */
export class PipelineStats {
  /** Per-event outcomes for the Event debugger; unset when nobody can look. */
  onOutcome?: (messageId: string, outcome: Outcome, reason?: string) => void;
  received = 0;
  filteredOut = 0;
  /** Kept by the filter but lacking a consent purpose the pipeline requires. */
  consentFailed = 0;
  /** Events of a forgotten user (a tombstoned userId or anonymousId), dropped by selection. */
  forgotten = 0;
  transformed = 0;
  failed = 0;
  loaded = 0;
  deadLettered = 0;
  lastLoadAt?: string;
  readonly lastErrors: { at: string; messageId?: string; error: string }[] = [];

  recordError(error: string, messageId?: string): void {
    this.failed++;
    this.lastErrors.push({ at: new Date().toISOString(), messageId, error });
    if (this.lastErrors.length > 20) this.lastErrors.shift();
    if (messageId !== undefined) this.onOutcome?.(messageId, "failed", error);
  }
}
