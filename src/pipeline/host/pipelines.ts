import type { PipelineSnapshot } from "../stats.ts";
import type { ReplayOptions, ReplayProgress } from "../replay.ts";

/**
 * The running pipelines of a node, wherever they run: in the node's own thread (PipelineRuntime)
 * or in worker processes (PipelineSupervisor). Everything outside src/pipeline reaches them
 * through this, so where a stage runs is configuration (TRIBUTARY_PIPELINE_WORKERS), not code.
 */
export interface Pipelines {
  /** Counts, consumer lag and last errors of every running pipeline. */
  snapshots(): Promise<PipelineSnapshot[]>;
  /** One pipeline's, by `connection/pipeline`; undefined while it is not running. */
  snapshot(key: string): Promise<PipelineSnapshot | undefined>;
  /** Why the last configuration could not be applied in full (one line per problem), if it could not. */
  lastError(): Promise<string | undefined>;
  /** Re-reads the configuration directory and applies it now, as a file change would. */
  reload(): Promise<void>;
  /** Whether ClickHouse answers now. */
  warehouseUp(): Promise<boolean>;
  /** Runs a replay where the pipelines run (never on a thread answering senders). */
  replay(o: Omit<ReplayOptions, "onProgress">, onProgress: (p: ReplayProgress) => void): Promise<ReplayProgress>;
  /** prom-client metric values recorded where the pipelines run (sink histograms), to merge into /metrics. */
  metrics(): Promise<unknown[][]>;
  /** Process ids of the worker processes (empty in-process): what a kill test kills. */
  readonly pids: number[];
  /** Flushes and stops them; `snapshots()` then gives the final counts. */
  stop(): Promise<void>;
}

/** `connection/pipeline`, as logs, metrics and the manager name a pipeline. */
export const pipelineKey = (connection: string, pipeline: string) => `${connection}/${pipeline}`;

/**
 * Which of `count` workers runs a connection's pipelines: a stable hash, so a connection stays on
 * one worker across restarts and reloads (its users pipelines' compare-and-set needs no more).
 */
export function workerOf(connection: string, count: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < connection.length; i++) h = Math.imul(h ^ connection.charCodeAt(i), 0x01000193);
  return (h >>> 0) % count;
}
