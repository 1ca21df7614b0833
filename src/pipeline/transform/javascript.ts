/**
 * JavaScript transformations, sandboxed in QuickJS (quickjs-emscripten, sync WASM build), in a worker thread.
 *
 * Files: javascript.ts (this, the parent side on the shared transform host, host.ts: what a round of a
 * batch sends and who failed after a stall), javascript-protocol.ts (messages, encoding, budgets),
 * javascript-worker.ts (the worker), javascript-sandbox.ts (QuickJS runtime, per-event isolation),
 * javascript-sandbox-host.ts (the worker's batch loop, rebuilds), javascript-guest.ts (code evaluated
 * inside QuickJS), javascript-bjson.ts (events in QuickJS's binary format).
 *
 * Isolation
 *  - Each transformation owns a worker thread, and in it a WASM module instance, a QuickJS runtime and a
 *    context. Nothing from the host is exposed: the guest global holds only the ECMAScript built-ins and a
 *    no-op `console` (no `fetch`, `require`, `process`, `Bun`, timers, WebAssembly; no module loader, so
 *    `import()` rejects). User code never runs on the node's event loop.
 *  - Memory: the WASM linear memory of the sandbox has a fixed maximum (memoryBytes + 16 MiB for the
 *    engine, ≥ 32 MiB): QuickJS's setMemoryLimit is not a total in this build (see wasmMemoryBytes).
 *    Stack: setMaxStackSize(256 KiB). Running out of either fails the event.
 *  - After the user's top-level code ran, the built-ins are frozen (SES-style, with the usual
 *    "override mistake" enablements), so one event cannot pollute Object.prototype & co. for the next.
 *    The user's own top-level variables do persist across the events of one sandbox (like module state
 *    in a serverless function) until the sandbox is rebuilt; transforms should not rely on either.
 *
 * Batching
 *  A batch goes to the worker in messages of 128 events, the next encoded while the worker runs the
 *  previous. Events cross into QuickJS in its binary object format (one buffer per chunk, decoded with
 *  JS_ReadObject: ~4× cheaper than JSON.parse inside QuickJS; JSON text if the self-test at start fails),
 *  results come back as one JSON string per chunk. A guest-side runner, created before the user's code so
 *  it holds pristine intrinsics, loops over the events with a try/catch per event: a throw, a stack
 *  overflow or a caught out-of-memory fails only its event; results must be plain JSON objects, or
 *  undefined/null for "no change".
 *
 * Per-event time budget
 *  Before each event the runner ticks a counter in guest memory that the host reads directly; the
 *  runtime's interrupt handler sees a new count as a new event and gives it timeoutMs from then, and
 *  interrupts once that passes. (The tick calls into the host only for a chunk's first event or when
 *  5 ms passed: a host call per event would cost as much as a small transform.) An abort the guest
 *  cannot catch ends the chunk: the counter names the event that was running, the runner's `take()`
 *  returns the results already computed, that event fails, the sandbox is rebuilt (user code
 *  reloaded) and the rest continues.
 *
 * Watchdog
 *  QuickJS polls its interrupt handler only every ~10,000 bytecode branches, so a loop whose every
 *  iteration calls a slow built-in (`'x'.repeat(1e6)`) would overrun the deadline by seconds or
 *  minutes. The worker publishes the event it last reported and when it started in a SharedArrayBuffer;
 *  while a batch is in flight the parent checks it and, once that has run 2 × timeoutMs + 250 ms,
 *  terminates the worker. Results reported along the way are kept; as the stalled event may have started
 *  unreported within 5 ms of the last report, the unfinished events of the stalled message are replayed
 *  one per message in a new worker, where the next stall names its event exactly and fails it alone.
 */
import { complete, decodeResultObject, fail, parseResults, resolveLimits, WorkerHost, type Results } from "./host.ts";
import {
  encodeEvents,
  javascriptTopLevelBudgetMs,
  messageEvents,
  post,
  progressBytes,
  stallLimitMs,
  startupGraceMs,
  type FromWorker,
} from "./javascript-protocol.ts";
import { TransformLoadError, type SandboxedTransform, type TransformLimits, type TransformResult } from "./types.ts";

/** Compile and load user code; throws TransformLoadError if it doesn't compile or defines no `transform`. */
export async function createJavaScriptTransform(
  source: string,
  limits?: Partial<TransformLimits>,
): Promise<SandboxedTransform> {
  const t = new JavaScriptTransform(source, resolveLimits(limits));
  await t.start();
  return t;
}

/** One message of a batch in flight: the batch's event indices it carries, what came back so far. */
interface Sent {
  id: number;
  indices: number[];
  done: boolean;
  partials: { indices: number[]; json: string }[];
}

/** The running event as the worker published it: its message and its index there (-1: none). */
interface Position {
  messageId: number;
  index: number;
}

export class JavaScriptTransform extends WorkerHost<FromWorker, Position> {
  /** Whether the worker's QuickJS reads bjson (else events go as JSON text). */
  private binary = false;
  /** Whether the worker reports each event as it starts (else only when its interrupt handler notices). */
  private exactProgress = false;
  private readonly progress = new SharedArrayBuffer(progressBytes);
  private readonly ints = new Int32Array(this.progress, 0, 2);
  private readonly floats = new Float64Array(this.progress, 0, 2);
  private nextId = 1;

  constructor(
    private readonly source: string,
    limits: TransformLimits,
  ) {
    super(limits);
  }

  /** Start the first worker; throws TransformLoadError for the user's code. */
  async start(): Promise<void> {
    const r = await this.spawn();
    if (r !== true) throw r;
  }

  transformBatch(events: unknown[]): Promise<TransformResult[]> {
    return this.serial(async () => {
      const results: Results = new Array(events.length);
      /** Events to send one per message: they were in flight when a sandbox stalled, culprit unknown. */
      const solo = new Set<number>();
      const all = Array.from({ length: events.length }, (_, i) => i);
      await this.drive(all, results, (pending) => this.round(events, pending, results, solo));
      return complete(results);
    });
  }

  /** Post all of `pending` in messages and collect their results; after a stop, decide who failed. */
  private async round(events: unknown[], pending: number[], results: Results, solo: Set<number>) {
    const sent: Sent[] = [];
    let stopAfter = false;
    const ending = await this.converse(
      () => {
        // Encode and post message by message: the worker starts on the first while the next is encoded.
        let group: number[] = [];
        const flush = () => {
          if (group.length === 0) return;
          const { input, carried } = encodeEvents(this.binary, events, group, results);
          group = [];
          if (carried.length === 0) return;
          const m: Sent = { id: this.nextId++, indices: carried, done: false, partials: [] };
          sent.push(m);
          post(this.worker!, { type: "batch", id: m.id, input });
        };
        for (const i of pending) {
          if (solo.has(i)) {
            flush();
            group.push(i);
            flush();
          } else {
            group.push(i);
            if (group.length >= messageEvents) flush();
          }
        }
        flush();
        return sent.length === 0;
      },
      (msg) => {
        const m = "id" in msg ? sent.find((x) => x.id === msg.id) : undefined;
        if (!m) return false;
        if (msg.type === "partial") m.partials.push(msg);
        else {
          m.done = true;
          const parsed =
            msg.type === "results" ? parseResults(msg.json, m.indices.length, decodeResultObject) : undefined;
          if (parsed)
            parsed.forEach((r, k) => {
              results[m.indices[k]!] = r;
            });
          else {
            for (const i of m.indices)
              results[i] = fail(
                msg.type === "failed" ? `sandbox failed: ${msg.message}` : "sandbox returned malformed results",
              );
            stopAfter = true;
          }
        }
        return sent.every((x) => x.done);
      },
      this.watchdog((i) => stallLimitMs(this.limits, i)),
    );
    if (stopAfter) this.stopWorker();
    if (!ending.stopped) return { pending: pending.filter((i) => results[i] === undefined) };
    // The worker was stopped (stalled or crashed): keep the results it reported, fail the event
    // that was running if that is certain, else send the unfinished events of the stalled message
    // one per message so the next stall names its event. Replay the rest in a new worker.
    this.stopWorker();
    const { messageId: runningIn, index: at } = ending.position;
    for (const m of sent) {
      if (m.done) continue;
      for (const p of m.partials) {
        parseResults(p.json, p.indices.length, decodeResultObject)?.forEach((r, k) => {
          const i = m.indices[p.indices[k]!];
          if (i !== undefined) results[i] = r;
        });
      }
      if (m.id !== runningIn) continue;
      const unfinished = m.indices.filter((i) => results[i] === undefined);
      if (m.indices.length === 1 || (unfinished.length === 1 && this.exactProgress)) {
        for (const i of unfinished) results[i] = fail(ending.reason);
      } else if (this.exactProgress && at >= 0 && at < m.indices.length) {
        results[m.indices[at]!] ??= fail(ending.reason);
      } else for (const i of unfinished) solo.add(i);
    }
    return { pending: pending.filter((i) => results[i] === undefined), stopped: ending.reason };
  }

  /** Start a worker and load the user's code in it: true, or why not. */
  async spawn(): Promise<true | Error> {
    const w = this.startWorker(new URL("./javascript-worker.ts", import.meta.url));
    let reply: FromWorker | undefined;
    const ending = await this.converse(
      () => {
        post(w, { type: "init", source: this.source, limits: this.limits, progress: this.progress });
        return false;
      },
      (m) => {
        if (m.type !== "ready" && m.type !== "loadError") return false;
        reply = m;
        return true;
      },
      this.watchdog(() => javascriptTopLevelBudgetMs(this.limits) + startupGraceMs),
    );
    if (reply?.type === "ready") {
      this.binary = reply.binary;
      this.exactProgress = reply.exactProgress;
      return true;
    }
    this.stopWorker();
    if (ending.stopped) return new TransformLoadError(`JavaScript transform does not load: ${ending.reason}`);
    const m = reply as Extract<FromWorker, { type: "loadError" }>;
    return m.config ? new TransformLoadError(m.message) : new Error(m.message);
  }

  /** Once the running event (or phase, index -1) has run longer than limitMs(index), the worker is stopped. */
  private watchdog(limitMs: (eventIndex: number) => number) {
    return {
      pollMs: Math.max(5, Math.min(50, this.limits.timeoutMs / 2)),
      begin: () => {
        this.ints[0] = -1;
        this.ints[1] = 0;
        this.floats[1] = Date.now();
      },
      overrun: () => {
        const i = this.ints[0]!;
        const limit = limitMs(i);
        if (Date.now() - this.floats[1]! <= limit) return undefined;
        return i >= 0
          ? `transform exceeded the time limit of ${this.limits.timeoutMs} ms (sandbox stopped after ${limit} ms)`
          : `sandbox did not respond within ${limit} ms`;
      },
      position: (): Position => ({ messageId: this.ints[1]!, index: this.ints[0]! }),
    };
  }
}
