/** Messages between a JavaScript transformation (javascript.ts) and its worker (javascript-worker.ts). */
import type { TransformLimits } from "./types.ts";

/** Events as they cross to the worker: JSON text each, or one bjson batch (see javascript-bjson.ts). */
export type WireEvents =
  | { kind: "json"; events: string[] }
  | { kind: "bjson"; bytes: Uint8Array; headerEnd: number; ends: number[] };

export type ToWorker =
  | { type: "init"; source: string; limits: TransformLimits; progress: SharedArrayBuffer }
  | { type: "batch"; id: number; input: WireEvents };

export type FromWorker =
  /**
   * `binary`: the sandbox reads bjson events (else send JSON). `exactProgress`: the progress buffer
   * names each event as it starts (else only once the interrupt handler notices it, so after a stall
   * the event it names may not be the one that stalled).
   */
  | { type: "ready"; binary: boolean; exactProgress: boolean }
  | { type: "loadError"; message: string; config: boolean }
  /** `json`: the TransformResult of each event of the message, in order. */
  | { type: "results"; id: number; json: string }
  /** Results known before the message is done: `json` holds the TransformResult of each of `indices`. */
  | { type: "partial"; id: number; indices: number[]; json: string }
  | { type: "failed"; id: number; message: string };

/**
 * The progress buffer, written by the worker, read by the parent's watchdog. Int32 [0]: index (in its
 * message) of the running event, -1 for none; Int32 [1]: that message's id; Float64 [1]: when the
 * event, or the phase, started (epoch ms).
 */
export const progressBytes = 16;
