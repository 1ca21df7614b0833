/**
 * The Python guest's protocol: the messages between the host (python.ts, on the shared transform
 * host, host.ts) and its worker (python-worker.ts), how events and results are encoded (JSON text
 * both ways), where the worker publishes the running event, and the budgets it gets.
 */
import type { DecodeResult } from "./host.ts";
import type { TransformLimits } from "./types.ts";

export type ToWorker =
  /**
   * `progress`: Int32Array [started, stamp]: `started` = index of the running event + 1 (0: before the
   * first), `stamp` = when it started, in ms since `epoch` (performance.timeOrigin + now() scale).
   */
  | {
      type: "init";
      source: string;
      timeoutMs: number;
      memoryBytes: number;
      loadBudgetMs: number;
      progress: SharedArrayBuffer;
      epoch: number;
      /** Boot from this memory snapshot of a freshly booted interpreter (~0.25 s instead of ~1.5 s). */
      snapshot?: Uint8Array;
      /** Boot normally and send a snapshot of the booted interpreter (before any setup) back. */
      makeSnapshot?: boolean;
    }
  /** `json`: the chunk's events as one JSON array (each event's text as it came). */
  | { type: "batch"; id: number; json: string; count: number };

export type FromWorker =
  | { type: "booted" }
  | { type: "snapshot"; snapshot: Uint8Array }
  | { type: "ready"; heapBytes: number; capBytes: number }
  | { type: "loadError"; message: string; config: boolean }
  /** `json`: one result per event, possibly fewer than sent when `recycle` (the memory limit was hit). */
  | { type: "result"; id: number; json: string; recycle: boolean }
  /** The interpreter failed outside the per-event handling (fatal error, runner failure). */
  | { type: "broken"; id: number; message: string };

/** Int32 elements of the progress buffer (see ToWorker "init"). */
export const progressInts = 4;

/** A chunk crosses as one JSON string in and one out: this bounds the text the interpreter holds. */
export const chunkMaxEvents = 500;
export const chunkMaxBytes = 1024 * 1024;
/** Pyodide's own boot (no user code yet); generous for a loaded machine. */
export const bootTimeoutMs = 60_000;
/** Top-level code of the user's module: its own, longer budget. */
export const pythonTopLevelBudgetMs = (l: TransformLimits) => Math.max(1000, l.timeoutMs * 10);
/** How long the host lets one event (or phase) run before it stops the worker. */
export const stallLimitMs = (l: TransformLimits) => l.timeoutMs + Math.max(1000, l.timeoutMs);

/** The runner's JSON entry per event: null (no change) | [1, dict] | [0, error]. */
export const decodePythonResult: DecodeResult = (r) => {
  if (r === null) return { ok: true, value: undefined };
  if (Array.isArray(r) && r[0] === 1 && r[1] !== null && typeof r[1] === "object" && !Array.isArray(r[1]))
    return { ok: true, value: r[1] };
  if (Array.isArray(r) && r[0] === 0 && typeof r[1] === "string") return { ok: false, error: r[1] };
  return undefined;
};
