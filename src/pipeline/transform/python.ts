/**
 * Python transformations, run by Pyodide (CPython compiled to WebAssembly) in a Worker of their own.
 * This file is the parent side, on the shared transform host (host.ts): what a round of a batch sends
 * and who failed after a stop. python-protocol.ts holds the messages, encodings and budgets; the
 * guest side is python-worker.ts (+ python-lockdown.ts, and python-guest.ts for the Python part).
 *
 * User code: a module defining `transform(event)`; `event` is the event as a dict (parsed from JSON);
 * it returns a dict (Customer Model properties; keys strings, values JSON) or None for "no change".
 *
 * Batching: a batch crosses as one JSON string in and one JSON string out (cut in chunks of at most
 * 500 events / 1 MiB); the loop over events runs in Python, one try/except per event.
 *
 * Time limit (`timeoutMs`, per call of transform): before each event the Python runner calls `tick`,
 * which starts the event's own deadline and publishes the event index in a SharedArrayBuffer. The
 * interpreter polls its interrupt buffer every few dozen bytecodes; past the deadline the poll answers
 * SIGINT and Python raises KeyboardInterrupt inside the transformation, which fails that event (also if
 * the transformation catches it and returns). The other events of the batch go on in the same
 * interpreter. A transformation that does not give up (catches KeyboardInterrupt and keeps going,
 * blocks in a long C call like `10**10**8`) is noticed by the host, which watches the published index:
 * one index for longer than timeoutMs + max(timeoutMs, 1 s) and the worker is terminated; that event
 * fails and the rest of the chunk is replayed in a new worker (user code reloaded). The same happens
 * when the interpreter dies (os.abort via ctypes, a WebAssembly trap, a Pyodide fatal error).
 * Top-level code gets max(1 s, 10 × timeoutMs) at load.
 *
 * Memory limit (`memoryBytes`): the WebAssembly heap of the interpreter may not grow more than
 * memoryBytes beyond its size once Pyodide has booted (~30 MiB; booted heap, stdlib modules imported
 * later, the user's module and its state, the chunk of events in flight and the results all live in
 * it). A growth request past the cap is refused, so Python raises MemoryError (emscripten's usual
 * over-growth is clamped to the cap too). An event that runs into the cap fails, and since a
 * WebAssembly heap never shrinks the worker is then replaced before the next event runs. Memory held
 * outside the heap is not counted, which is why writing files (the in-memory file system keeps file
 * data as JS arrays), pipes and JS objects are closed to user code.
 *
 * Closed to user code (see python-worker.ts): `import js` (an empty module), `pyodide_js`, `pyodide.*`
 * (ffi, code.run_js, http), `micropip`/package loading, `ctypes`, sockets/ssl/http clients,
 * `subprocess`, `signal`, `asyncio`; `os.system`, `os._exit`, `os.kill`, exec/spawn/fork are removed.
 * Below Python, the interpreter's WebAssembly imports refuse shell commands (stock Pyodide runs
 * `os.system` through node:child_process), sockets, dlopen and every call that writes or creates a
 * file; the host file system is never mounted (the in-memory one holds the stdlib and empty home/tmp
 * directories: `open('/etc/passwd')` is FileNotFoundError). The worker's JS realm has no eval /
 * Function constructors, `process`, `fetch`, `WebSocket`, `Worker`, … left, and Pyodide's mount /
 * package / file-loading entry points are replaced by throwing stubs, so a JS object reached by
 * introspection (a Python sandbox is never airtight) gives nothing to escape with.
 * What stays: pure computation, the stdlib modules not listed, reading the in-memory FS.
 *
 * One worker per transformation, started once and reused for all batches. Pyodide's first boot in a
 * process takes ~1.5 s; that worker also hands back a memory snapshot of the freshly booted
 * interpreter (before any setup or user code), from which later workers — other transformations,
 * restarts — boot in ~0.3 s. The user's module state (globals) lives as long as its worker.
 */
import {
  complete,
  cut,
  encodeJson,
  fail,
  parseResults,
  resolveLimits,
  WorkerHost,
  type Round,
  type Watchdog,
} from "./host.ts";
import {
  bootTimeoutMs,
  chunkMaxBytes,
  chunkMaxEvents,
  decodePythonResult,
  progressInts,
  pythonTopLevelBudgetMs,
  stallLimitMs,
  type FromWorker,
  type ToWorker,
} from "./python-protocol.ts";
import { TransformLoadError, type SandboxedTransform, type TransformLimits, type TransformResult } from "./types.ts";

const absoluteNow = () => performance.timeOrigin + performance.now();

/** Compile and load user code; throws TransformLoadError if it doesn't compile or defines no `transform`. */
export async function createPythonTransform(
  source: string,
  limits?: Partial<TransformLimits>,
): Promise<SandboxedTransform> {
  const l = resolveLimits(limits);
  if (typeof source !== "string") throw new TransformLoadError("Python transformation source must be a string");
  const t = new PythonTransform(source, l);
  const r = await t.spawn();
  if (r !== true) {
    t.dispose();
    throw r;
  }
  return t;
}

/**
 * A memory snapshot of a freshly booted interpreter (no user code, taken before any setup), made by
 * the first worker of the process: later workers boot from it in ~0.25 s instead of ~1.5 s. Each
 * worker gets its own copy (~30 MiB, held here for the life of the process).
 */
let snapshot: Uint8Array | undefined;
let snapshotRequested = false;

/** The published counter: index of the running event + 1 (0: before the first). */
type Position = number;

export class PythonTransform extends WorkerHost<FromWorker, Position> {
  /** [started, stamp]: see ToWorker "init". */
  private readonly progress = new Int32Array(new SharedArrayBuffer(progressInts * 4));
  private epoch = 0;
  private nextId = 1;

  constructor(
    private readonly source: string,
    limits: TransformLimits,
  ) {
    super(limits);
  }

  transformBatch(events: unknown[]): Promise<TransformResult[]> {
    return this.serial(async () => {
      const results: (TransformResult | undefined)[] = new Array(events.length);
      const { encoded, todo } = encodeJson(events, results);
      return this.runEncoded(encoded, todo, results);
    });
  }

  /**
   * Events already in JSON text (one document each, as the sandbox process receives them): they
   * cross into the interpreter as they are, without a parse and a second stringify.
   */
  transformJsonBatch(encoded: string[]): Promise<TransformResult[]> {
    return this.serial(() =>
      this.runEncoded(
        encoded,
        encoded.map((_, i) => i),
        new Array(encoded.length),
      ),
    );
  }

  private async runEncoded(encoded: string[], todo: number[], results: (TransformResult | undefined)[]) {
    await this.drive(todo, results, (pending) => this.round(pending, encoded, results));
    return complete(results);
  }

  /** Run the next chunk of `pending`; after a stop, fail the event that was running (the worker published it). */
  private async round(pending: number[], encoded: string[], results: (TransformResult | undefined)[]): Promise<Round> {
    const sub = cut(pending, {
      maxEvents: chunkMaxEvents,
      maxBytes: chunkMaxBytes,
      sizeOf: (i) => encoded[i]!.length,
    })[0]!;
    const rest = pending.slice(sub.length);
    const id = this.nextId++;
    let reply: FromWorker | undefined;
    const out = await this.exchange(
      { type: "batch", id, json: `[${sub.map((i) => encoded[i]).join(",")}]`, count: sub.length },
      (m) => {
        if ((m.type !== "result" && m.type !== "broken") || m.id !== id) return false;
        reply = m;
        return true;
      },
      this.watchdog(() => stallLimitMs(this.limits), sub.length + 1),
    );
    if (!out.stopped && reply?.type === "result") {
      const parsed = parseResults(reply.json, sub.length, decodePythonResult, true);
      if (!parsed) {
        this.stopWorker();
        for (const i of sub) results[i] = fail("sandbox returned malformed results");
        return { pending: rest };
      }
      parsed.forEach((r, k) => {
        results[sub[k]!] = r;
      });
      if (reply.recycle || parsed.length < sub.length) this.stopWorker(); // heap at its cap: start afresh
      return { pending: sub.slice(parsed.length).concat(rest) };
    }
    // Stopped, crashed or broken: the results of this exchange are lost. Fail the event that was
    // running (the worker published its index) and replay the others in a new worker.
    this.stopWorker();
    const reason = out.stopped
      ? out.stalled
        ? `transform exceeded the time limit (${this.limits.timeoutMs} ms) and did not stop; the sandbox was restarted`
        : out.reason
      : `sandbox failed: ${(reply as Extract<FromWorker, { type: "broken" }>).message}`;
    if (this.disposed) return { pending, stopped: reason };
    const at = Math.max(0, (out.stopped ? out.position : Atomics.load(this.progress, 0)) - 1);
    if (at >= sub.length) {
      for (const i of sub) results[i] = fail(reason);
      return { pending: rest, stopped: reason };
    }
    results[sub[at]!] = fail(reason);
    return { pending: sub.filter((_, k) => k !== at).concat(rest), stopped: reason };
  }

  /** Start a worker and load the user's code in it: true, or why not. */
  async spawn(): Promise<true | Error> {
    this.epoch = absoluteNow();
    const useSnapshot = snapshot;
    const makeSnapshot = !snapshot && !snapshotRequested;
    if (makeSnapshot) snapshotRequested = true;
    this.startWorker(new URL("./python-worker.ts", import.meta.url));
    let booted = false;
    let reply: FromWorker | undefined;
    const out = await this.exchange(
      {
        type: "init",
        source: this.source,
        timeoutMs: this.limits.timeoutMs,
        memoryBytes: this.limits.memoryBytes,
        loadBudgetMs: pythonTopLevelBudgetMs(this.limits),
        progress: this.progress.buffer as SharedArrayBuffer,
        epoch: this.epoch,
        snapshot: useSnapshot,
        makeSnapshot,
      },
      (m) => {
        if (m.type === "booted") booted = true;
        if (m.type === "snapshot" && m.snapshot instanceof Uint8Array) snapshot = m.snapshot;
        if (m.type !== "ready" && m.type !== "loadError") return false;
        reply = m;
        return true;
      },
      this.watchdog(
        () => (booted ? pythonTopLevelBudgetMs(this.limits) + Math.max(1000, this.limits.timeoutMs) : bootTimeoutMs),
        1,
      ),
    );
    if (!out.stopped && reply?.type === "ready") return true;
    this.stopWorker();
    if (makeSnapshot && !snapshot) snapshotRequested = false; // let a later worker try
    if (useSnapshot && !booted && snapshot === useSnapshot) {
      snapshot = undefined; // a snapshot that does not boot: never again, boot this one normally
      return this.spawn();
    }
    if (out.stopped) {
      return booted
        ? new TransformLoadError(`Python transform does not load: top-level code did not finish (${out.reason})`)
        : new Error(`Python runtime did not start: ${out.reason}`);
    }
    const m = reply as Extract<FromWorker, { type: "loadError" }>;
    return m.config ? new TransformLoadError(`Python transform does not load: ${m.message}`) : new Error(m.message);
  }

  /** Post one message and wait for the reply `onMessage` accepts, the watchdog watching. */
  private exchange(message: ToWorker, onMessage: (m: FromWorker) => boolean, watchdog: Watchdog<Position>) {
    const w = this.worker!;
    return this.converse(
      () => {
        w.postMessage(message);
        return false;
      },
      onMessage,
      watchdog,
    );
  }

  /**
   * Stop the worker once the event (or phase) running has been running for longer than the limit.
   * Start times are stamped by the worker, so a busy host thread does not make events look slow;
   * `doneAt`: the progress value meaning "all events done", never stopped for.
   */
  private watchdog(limitMs: () => number, doneAt: number): Watchdog<Position> {
    return {
      pollMs: Math.max(5, Math.min(50, this.limits.timeoutMs / 4)),
      begin: () => {
        Atomics.store(this.progress, 1, Math.round(absoluteNow() - this.epoch)); // the worker is idle: the phase starts now
        Atomics.store(this.progress, 0, 0);
      },
      overrun: () => {
        if (Atomics.load(this.progress, 0) >= doneAt) return undefined;
        const running = absoluteNow() - this.epoch - Atomics.load(this.progress, 1);
        const l = limitMs();
        return running > l ? `sandbox did not respond within ${Math.round(l)} ms` : undefined;
      },
      position: () => Atomics.load(this.progress, 0),
    };
  }
}
