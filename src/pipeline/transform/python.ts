/**
 * Python transformations, run by Pyodide (CPython compiled to WebAssembly) in a Worker of their own.
 * The guest side is python-worker.ts (+ python-guest.ts for the Python part).
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
import type { FromWorker, ToWorker } from "./python-worker.ts";
import {
  TransformLoadError,
  transformLimitDefaults,
  type SandboxedTransform,
  type TransformLimits,
  type TransformResult,
} from "./types.ts";

const chunkMaxEvents = 500;
const chunkMaxBytes = 1024 * 1024;
/** Pyodide's own boot (no user code yet); generous for a loaded machine. */
const bootTimeoutMs = 60_000;

const fail = (error: string): TransformResult => ({ ok: false, error });
const absoluteNow = () => performance.timeOrigin + performance.now();

/** Compile and load user code; throws TransformLoadError if it doesn't compile or defines no `transform`. */
export async function createPythonTransform(
  source: string,
  limits?: Partial<TransformLimits>,
): Promise<SandboxedTransform> {
  const l: TransformLimits = { ...transformLimitDefaults, ...limits };
  if (!(l.timeoutMs > 0) || !(l.memoryBytes > 0)) throw new RangeError(`invalid transform limits ${JSON.stringify(l)}`);
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

/** Top-level code of the user's module: its own, longer budget. */
const loadBudgetMs = (l: TransformLimits) => Math.max(1000, l.timeoutMs * 10);
/** How long the host lets one event (or phase) run before it stops the worker. */
const stallLimitMs = (l: TransformLimits) => l.timeoutMs + Math.max(1000, l.timeoutMs);

type Exchange =
  | { kind: "message"; msg: FromWorker }
  /** The worker was stopped or died; `progress`: the published counter (index of the running event + 1). */
  | { kind: "stopped"; progress: number; reason: string; stalled: boolean };

export class PythonTransform implements SandboxedTransform {
  /** Stats for tests/diagnostics. */
  restarts = 0;
  private worker: Worker | undefined;
  /** [started, stamp]: see ToWorker "init". */
  private readonly progress = new Int32Array(new SharedArrayBuffer(16));
  private epoch = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private disposed = false;
  private nextId = 1;
  private abortCurrent: ((reason: string) => void) | undefined;

  constructor(
    private readonly source: string,
    private readonly limits: TransformLimits,
  ) {}

  transformBatch(events: unknown[]): Promise<TransformResult[]> {
    const p = this.queue.then(() => this.runBatch(events));
    this.queue = p.catch(() => {});
    return p;
  }

  dispose() {
    this.disposed = true;
    this.abortCurrent?.("transform disposed");
    this.stopWorker();
  }

  /**
   * Events already in JSON text (one document each, as the sandbox process receives them): they
   * cross into the interpreter as they are, without a parse and a second stringify.
   */
  transformJsonBatch(encoded: string[]): Promise<TransformResult[]> {
    const p = this.queue.then(() =>
      this.runEncoded(
        encoded,
        encoded.map((_, i) => i),
        new Array(encoded.length),
      ),
    );
    this.queue = p.catch(() => {});
    return p;
  }

  private async runBatch(events: unknown[]): Promise<TransformResult[]> {
    const results: (TransformResult | undefined)[] = new Array(events.length);
    const encoded: string[] = new Array(events.length);
    const todo: number[] = [];
    for (let i = 0; i < events.length; i++) {
      try {
        encoded[i] = JSON.stringify(events[i]) ?? "null";
        todo.push(i);
      } catch (e) {
        results[i] = fail(`event is not JSON-serializable: ${(e as Error).message}`);
      }
    }
    return this.runEncoded(encoded, todo, results);
  }

  private async runEncoded(
    encoded: string[],
    todo: number[],
    results: (TransformResult | undefined)[],
  ): Promise<TransformResult[]> {
    let start = 0;
    while (start < todo.length) {
      let end = start;
      let bytes = 0;
      while (
        end < todo.length &&
        end - start < chunkMaxEvents &&
        (end === start || bytes + encoded[todo[end]!]!.length <= chunkMaxBytes)
      ) {
        bytes += encoded[todo[end]!]!.length + 1;
        end++;
      }
      await this.runChunk(todo.slice(start, end), encoded, results);
      start = end;
    }
    return results.map((r) => r ?? fail("internal error: event not processed"));
  }

  /** Run the events `indices` (into `encoded`/`results`) to completion, through restarts. */
  private async runChunk(indices: number[], encoded: string[], results: (TransformResult | undefined)[]) {
    let pending = indices;
    const failAll = (error: string) => {
      for (const i of pending) results[i] = fail(error);
      pending = [];
    };
    while (pending.length > 0) {
      if (this.disposed) return failAll("transform disposed");
      if (!this.worker) {
        this.restarts++;
        const r = await this.spawn();
        if (r !== true) return failAll(`sandbox could not be restarted: ${r.message}`);
      }
      const sub = pending;
      const id = this.nextId++;
      const out = await this.exchange(
        { type: "batch", id, json: `[${sub.map((i) => encoded[i]).join(",")}]`, count: sub.length },
        (m) => (m.type === "result" || m.type === "broken") && m.id === id,
        stallLimitMs(this.limits),
        sub.length + 1,
      );
      if (out.kind === "message" && out.msg.type === "result") {
        const parsed = parseResults(out.msg.json, sub.length);
        if (!parsed) {
          this.stopWorker();
          return failAll("sandbox returned malformed results");
        }
        parsed.forEach((r, k) => (results[sub[k]!] = r));
        pending = sub.slice(parsed.length);
        if (out.msg.recycle || parsed.length < sub.length) this.stopWorker(); // heap at its cap: start afresh
        continue;
      }
      // Stopped, crashed or broken: the results of this exchange are lost. Fail the event that was
      // running (the worker published its index) and replay the others in a new worker.
      this.stopWorker();
      if (this.disposed) return failAll("transform disposed");
      const progress = out.kind === "stopped" ? out.progress : Atomics.load(this.progress, 0);
      const reason =
        out.kind === "stopped"
          ? out.stalled
            ? `transform exceeded the time limit (${this.limits.timeoutMs} ms) and did not stop; the sandbox was restarted`
            : out.reason
          : `sandbox failed: ${(out.msg as Extract<FromWorker, { type: "broken" }>).message}`;
      const at = Math.max(0, progress - 1);
      if (at >= sub.length) return failAll(reason);
      results[sub[at]!] = fail(reason);
      pending = sub.filter((_, k) => k !== at);
    }
  }

  /** Start a worker and load the user's code in it: true, or why not. */
  async spawn(): Promise<true | Error> {
    this.epoch = absoluteNow();
    const useSnapshot = snapshot;
    const makeSnapshot = !snapshot && !snapshotRequested;
    if (makeSnapshot) snapshotRequested = true;
    const w = new Worker(new URL("./python-worker.ts", import.meta.url).href);
    (w as unknown as { unref?: () => void }).unref?.(); // an idle sandbox must not keep the process alive
    this.worker = w;
    let booted = false;
    const out = await this.exchange(
      {
        type: "init",
        source: this.source,
        timeoutMs: this.limits.timeoutMs,
        memoryBytes: this.limits.memoryBytes,
        loadBudgetMs: loadBudgetMs(this.limits),
        progress: this.progress.buffer as SharedArrayBuffer,
        epoch: this.epoch,
        snapshot: useSnapshot,
        makeSnapshot,
      },
      (m) => {
        if (m.type === "booted") booted = true;
        if (m.type === "snapshot" && m.snapshot instanceof Uint8Array) snapshot = m.snapshot;
        return m.type === "ready" || m.type === "loadError";
      },
      () => (booted ? loadBudgetMs(this.limits) + Math.max(1000, this.limits.timeoutMs) : bootTimeoutMs),
      1,
    );
    if (out.kind === "message" && out.msg.type === "ready") return true;
    this.stopWorker();
    if (makeSnapshot && !snapshot) snapshotRequested = false; // let a later worker try
    if (useSnapshot && !booted && snapshot === useSnapshot) {
      snapshot = undefined; // a snapshot that does not boot: never again, boot this one normally
      return this.spawn();
    }
    if (out.kind === "stopped") {
      return booted
        ? new TransformLoadError(`Python transform does not load: top-level code did not finish (${out.reason})`)
        : new Error(`Python runtime did not start: ${out.reason}`);
    }
    const m = out.msg as Extract<FromWorker, { type: "loadError" }>;
    return m.config ? new TransformLoadError(`Python transform does not load: ${m.message}`) : new Error(m.message);
  }

  /**
   * Send one message to the worker and wait for the matching reply, while watching the progress
   * buffer: when the event (or phase) running has been running for longer than the limit, stop the
   * worker. Start times are stamped by the worker, so a busy host thread does not make events look
   * slow; `doneAt`: the progress value meaning "all events done", never stopped for.
   */
  private exchange(
    message: ToWorker,
    matches: (m: FromWorker) => boolean,
    limit: number | (() => number),
    doneAt: number,
  ): Promise<Exchange> {
    const w = this.worker!;
    const limitMs = typeof limit === "number" ? () => limit : limit;
    return new Promise<Exchange>((resolve) => {
      const pollMs = Math.max(5, Math.min(50, this.limits.timeoutMs / 4));
      const finish = (x: Exchange) => {
        clearInterval(timer);
        w.removeEventListener("message", onMessage);
        w.removeEventListener("error", onError);
        w.removeEventListener("close", onClose);
        this.abortCurrent = undefined;
        resolve(x);
      };
      const stopped = (reason: string, stalled = false) =>
        finish({ kind: "stopped", progress: Atomics.load(this.progress, 0), reason, stalled });
      const onMessage = (e: MessageEvent<FromWorker>) => {
        if (matches(e.data)) finish({ kind: "message", msg: e.data });
      };
      const onError = (e: ErrorEvent) => stopped(`sandbox crashed: ${e.message}`);
      const onClose = () => stopped("sandbox exited");
      const timer = setInterval(() => {
        if (Atomics.load(this.progress, 0) >= doneAt) return;
        const running = absoluteNow() - this.epoch - Atomics.load(this.progress, 1);
        const l = limitMs();
        if (running > l) stopped(`sandbox did not respond within ${Math.round(l)} ms`, true);
      }, pollMs);
      this.abortCurrent = (reason) => stopped(reason);
      Atomics.store(this.progress, 1, Math.round(absoluteNow() - this.epoch)); // the worker is idle: the phase starts now
      Atomics.store(this.progress, 0, 0);
      w.addEventListener("message", onMessage);
      w.addEventListener("error", onError);
      w.addEventListener("close", onClose);
      w.postMessage(message);
    });
  }

  private stopWorker() {
    const w = this.worker;
    this.worker = undefined;
    w?.terminate();
  }
}

/** The runner's JSON: one entry per event, null | [1, dict] | [0, error]; undefined if malformed. */
function parseResults(json: string, max: number): TransformResult[] | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!Array.isArray(raw) || raw.length > max) return undefined;
  const out: TransformResult[] = [];
  for (const r of raw) {
    if (r === null) out.push({ ok: true, value: undefined });
    else if (Array.isArray(r) && r[0] === 1 && r[1] !== null && typeof r[1] === "object" && !Array.isArray(r[1]))
      out.push({ ok: true, value: r[1] });
    else if (Array.isArray(r) && r[0] === 0 && typeof r[1] === "string") out.push(fail(r[1]));
    else return undefined;
  }
  return out;
}
