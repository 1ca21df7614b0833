import type { NodeOptions } from "../../config/env.ts";
import type { Outcome } from "../../event/outcome.ts";
import type { RuntimeOptions } from "./runtime.ts";

/**
 * Messages between a node and its pipeline worker processes (Bun IPC, JSON). The node asks, the
 * worker answers by `id`; outcomes and replay progress flow from the worker unasked.
 */
export interface Init {
  type: "init";
  runtime: RuntimeOptions;
  bus: Pick<
    NodeOptions,
    | "streamMaxAgeHours"
    | "streamMaxBytes"
    | "streamReplicas"
    | "streamPartitions"
    | "dedupWindowHours"
    | "publishTimeoutMs"
  > & { natsUrl: string };
  pipelinesDir: string;
  expressionTimeoutMs: number;
  /** The stream's last sequence when the node connected: its first configuration's pipelines start after it. */
  startSeq?: number[];
  /** Report per-event outcomes (the debugger is on). */
  outcomes: boolean;
}

export type Method = "snapshots" | "lastError" | "reload" | "warehouseUp" | "replay" | "metrics" | "stop";

export interface Call {
  type: "call";
  id: number;
  method: Method;
  args?: unknown;
}

export type ToWorker = Init | Call;

export interface OutcomeBatch {
  type: "outcomes";
  records: [connection: string, messageId: string, pipeline: string, outcome: Outcome, reason?: string][];
  loaded: [connection: string, pipeline: string, messageIds: string[]][];
}

export type FromWorker =
  | { type: "ready" }
  | { type: "result"; id: number; value?: unknown; error?: string }
  | { type: "progress"; id: number; progress: unknown }
  | OutcomeBatch;
