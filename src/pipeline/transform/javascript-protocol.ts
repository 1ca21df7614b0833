/**
 * The JavaScript guest's protocol: the messages between the host (javascript.ts, on the shared
 * transform host, host.ts) and its worker (javascript-worker.ts), how events are encoded for it, where
 * it publishes the running event, and the budgets it gets.
 */
import { BjsonWriter } from "./javascript-bjson.ts";
import { fail, type Results } from "./host.ts";
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

/** Events per message to the worker: the next message is encoded while the worker runs this one. */
export const messageEvents = 128;
/** Starting a worker + compiling the WASM module can be slow on a loaded machine. */
export const startupGraceMs = 10_000;
/** Budget for the user's top-level code, which runs once per (re)build of the sandbox. */
export const javascriptTopLevelBudgetMs = (l: TransformLimits) => Math.max(1000, l.timeoutMs);
/** How long the host lets an event (index ≥ 0) or a phase outside events (-1) run before it stops the worker. */
export const stallLimitMs = (l: TransformLimits, eventIndex: number) =>
  eventIndex >= 0 ? l.timeoutMs * 2 + 250 : javascriptTopLevelBudgetMs(l) + 1000;

/** The events at `indices` for the wire; those that cannot be serialized fail in `results`. */
export function encodeEvents(
  binary: boolean,
  events: unknown[],
  indices: number[],
  results: Results,
): { input: WireEvents; carried: number[] } {
  const carried: number[] = [];
  if (binary) {
    const { batch, errors } = BjsonWriter.encodeBatch(indices.map((i) => events[i]));
    indices.forEach((i, k) => {
      if (errors[k] === undefined) carried.push(i);
      else results[i] = fail(`event is not JSON-serializable: ${errors[k]}`);
    });
    return { input: { kind: "bjson", ...batch }, carried };
  }
  const texts: string[] = [];
  for (const i of indices) {
    try {
      texts.push(JSON.stringify(events[i]) ?? "null");
      carried.push(i);
    } catch (e) {
      results[i] = fail(`event is not JSON-serializable: ${(e as Error).message}`);
    }
  }
  return { input: { kind: "json", events: texts }, carried };
}

/** Post a message; a bjson batch's bytes are transferred, not copied. */
export function post(worker: Worker, m: ToWorker) {
  if (m.type === "batch" && m.input.kind === "bjson") worker.postMessage(m, [m.input.bytes.buffer as ArrayBuffer]);
  else worker.postMessage(m);
}
