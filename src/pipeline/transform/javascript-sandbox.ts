/**
 * The QuickJS side of JavaScript transformations: one runtime + context with the user's code loaded,
 * running one chunk of events with failures isolated per event. Runs inside the transform's worker
 * thread (javascript-worker.ts), driven by javascript-sandbox-host.ts; see javascript.ts for the design.
 */
import {
  newQuickJSWASMModule,
  newVariant,
  RELEASE_SYNC,
  type QuickJSContext,
  type QuickJSHandle,
  type QuickJSRuntime,
  type QuickJSWASMModule,
} from "quickjs-emscripten";
import { BjsonWriter, bjsonSelfTestJson, bjsonVersion } from "./javascript-bjson.ts";
import {
  bjsonCheckSource,
  cellTickFactorySource,
  lockdownSource,
  preludeSource,
  runnerFactorySource,
} from "./javascript-guest.ts";
import { decodeResultObject, formatBytes, parseResults } from "./host.ts";
import { javascriptTopLevelBudgetMs } from "./javascript-protocol.ts";
import { TransformLoadError, type TransformLimits, type TransformResult } from "./types.ts";

/** QuickJS's own stack limit; well below what the host's native stack allows for WASM frames. */
const maxStackBytes = 256 * 1024;
const sourceName = "transform.js";

/**
 * What the sandbox's WASM linear memory may grow to. QuickJS's own limit (`setMemoryLimit`) is not a
 * total in this build: without malloc_usable_size it only bounds single allocations, and ArrayBuffers
 * are not counted at all (quickjs-emscripten issues #255, #271). So each sandbox gets its own fixed-maximum
 * WebAssembly.Memory: the JS heap may use memoryBytes, plus 16 MiB for the engine itself (code, stack,
 * runtime), at least 32 MiB in all. Any allocation beyond fails as a QuickJS out-of-memory.
 */
export const wasmMemoryBytes = (l: TransformLimits) => {
  const page = 64 * 1024;
  return Math.ceil(Math.max(l.memoryBytes + 16 * 1024 * 1024, 32 * 1024 * 1024) / page) * page;
};

export async function newModule(limits: TransformLimits): Promise<QuickJSWASMModule> {
  const page = 64 * 1024;
  const wasmMemory = new WebAssembly.Memory({
    initial: (16 * 1024 * 1024) / page,
    maximum: wasmMemoryBytes(limits) / page,
  });
  return newQuickJSWASMModule(newVariant(RELEASE_SYNC, { wasmMemory }));
}

/** Events for the sandbox: JSON text each, or bjson values sharing one header (javascript-bjson.ts). */
export type EventsInput =
  | { kind: "json"; events: string[] }
  | { kind: "bjson"; header: Uint8Array; events: Uint8Array[] };

/** Called when an event starts (its index in the batch) or a phase outside any event starts (-1). */
export type ProgressListener = (eventIndex: number) => void;
/**
 * Called with results known before the batch ends (`json`: array of TransformResult for `indices`), so a
 * parent that has to stop a stalled sandbox keeps them instead of replaying those events.
 */
export type PartialListener = (indices: number[], json: string) => void;

export type ChunkOutcome =
  | { ok: true; json: string }
  /** `at`: index (in the chunk) of the event running when the sandbox aborted; -1 before the first, len after the last. */
  | { ok: false; at: number; done: TransformResult[] | undefined; error: string };

/** One QuickJS runtime + context with the user's code loaded and the batch runner ready. */
export class Sandbox {
  deadline = Infinity;
  /** Events started in the current run() (tick mode; in cell mode the count lives in guest memory). */
  private ticks = 0;
  /** Cell mode: the byte address, in WASM memory, of the Int32 the guest's tick increments. */
  private cellAddress: number | undefined;
  private heapView: Int32Array | undefined;
  /** Cell mode: the count the interrupt handler saw last. */
  private seenTicks = 0;
  /** Whether this QuickJS reads the bjson that BjsonWriter writes. */
  readonly binary: boolean;
  private onTick: (k: number) => void = () => {};
  private readonly rt: QuickJSRuntime;
  private readonly ctx: QuickJSContext;
  private run: QuickJSHandle | undefined;
  private take: QuickJSHandle | undefined;

  /** Throws TransformLoadError for problems with the user's code. */
  constructor(
    mod: QuickJSWASMModule,
    source: string,
    private readonly limits: TransformLimits,
  ) {
    this.rt = mod.newRuntime();
    this.ctx = this.rt.newContext();
    try {
      this.rt.setMemoryLimit(limits.memoryBytes);
      this.rt.setMaxStackSize(maxStackBytes);
      this.rt.setInterruptHandler(() => {
        if (this.cellAddress !== undefined) {
          // Cell mode: a new count means a new event started since the last look; its budget starts now.
          const t = this.readCell();
          if (t !== this.seenTicks) {
            this.seenTicks = t;
            this.deadline = performance.now() + this.limits.timeoutMs;
            this.onTick(t - 1);
          }
        }
        return performance.now() > this.deadline;
      });
      this.binary = this.bjsonWorks();
      this.load(source);
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  private load(source: string) {
    const { ctx } = this;
    this.deadline = Infinity;
    using intrinsics = this.evalInternal(preludeSource);
    using lockdown = this.evalInternal(lockdownSource);
    using factory = this.evalInternal(runnerFactorySource);
    using cellFactory = this.evalInternal(cellTickFactorySource);

    const budget = javascriptTopLevelBudgetMs(this.limits);
    this.deadline = performance.now() + budget;
    const loaded = ctx.evalCode(source, sourceName);
    this.deadline = Infinity;
    if (loaded.error) {
      const err = describeGuestError(ctx.dump(loaded.error));
      loaded.error.dispose();
      throw new TransformLoadError(
        `JavaScript transform does not load: ${err.interrupted ? `top-level code ran longer than ${budget} ms` : err.text}`,
      );
    }
    loaded.value.dispose();
    // Found whether declared with function, var, let or const.
    const got = ctx.evalCode(`typeof transform === "function" ? transform : undefined`, "<tributary>");
    if (got.error) {
      const err = describeGuestError(ctx.dump(got.error));
      got.error.dispose();
      throw new TransformLoadError(`JavaScript transform does not load: ${err.text}`);
    }
    using fn = got.value;
    if (ctx.typeof(fn) !== "function") {
      throw new TransformLoadError("JavaScript transform does not define a function `transform(event)`");
    }
    this.deadline = performance.now() + budget;
    {
      const r = ctx.callFunction(lockdown, ctx.undefined, intrinsics);
      if (r.error) {
        const err = describeGuestError(ctx.dump(r.error));
        r.error.dispose();
        throw new TransformLoadError(
          `JavaScript transform does not load: freezing the built-ins failed: ${err.interrupted ? "timed out" : err.text}`,
        );
      }
      r.value.dispose();
    }
    this.deadline = Infinity;

    using hostTick = ctx.newFunction("tick", () => {
      const t = this.cellAddress !== undefined ? this.readCell() : ++this.ticks;
      this.seenTicks = t;
      this.deadline = performance.now() + this.limits.timeoutMs;
      this.onTick(t - 1);
    });
    using tick = this.cellTick(cellFactory, hostTick) ?? hostTick.dup();
    using api = ctx.unwrapResult(ctx.callFunction(factory, ctx.undefined, tick, fn));
    this.run = ctx.getProp(api, "run");
    this.take = ctx.getProp(api, "take");
  }

  /**
   * The guest's `tick` without a host call per event (a host function call costs about as much as a
   * small transform): a guest function incrementing an Int32 in an ArrayBuffer whose memory the host
   * allocated, so the host reads the count straight from WASM memory; the interrupt handler notices
   * each new event (within ~10k bytecode branches) and starts its time budget, and the host tick is
   * still called when 5 ms passed since the last one, so slow events are reported as they start.
   * Relies on quickjs-emscripten internals (the context's memory/ffi/module); checked here, and
   * undefined (tick by host call for every event) if anything differs.
   */
  private cellTick(factory: QuickJSHandle, hostTick: QuickJSHandle): QuickJSHandle | undefined {
    const c = this.ctx as unknown as {
      memory?: {
        newHeapBufferPointer?(a: Uint8Array): { value: { pointer: number } };
        heapValueHandle?(p: number): QuickJSHandle;
      };
      ffi?: { QTS_NewArrayBuffer?(ctx: unknown, p: number, n: number): number };
      ctx?: { value: unknown };
      module?: { HEAPU8?: Uint8Array };
    };
    try {
      const { memory, ffi, module } = c;
      if (
        !memory?.newHeapBufferPointer ||
        !memory.heapValueHandle ||
        !ffi?.QTS_NewArrayBuffer ||
        !c.ctx ||
        !module?.HEAPU8
      )
        return undefined;
      // QuickJS adopts the allocation (frees it with the ArrayBuffer), so the pointer stays valid as long as the guest holds it.
      const pointer = memory.newHeapBufferPointer(new Uint8Array(8)).value.pointer;
      using ab = memory.heapValueHandle(ffi.QTS_NewArrayBuffer(c.ctx.value, pointer, 8));
      const made = this.ctx.callFunction(factory, this.ctx.undefined, ab, hostTick);
      if (made.error) {
        made.error.dispose();
        return undefined;
      }
      const tick = made.value;
      this.cellAddress = pointer;
      this.writeCell(41);
      const r = this.ctx.callFunction(tick, this.ctx.undefined);
      const ok = !r.error && this.readCell() === 42 && this.seenTicks === 42;
      (r.error ?? r.value).dispose();
      if (ok) return tick;
      this.cellAddress = undefined;
      tick.dispose();
      return undefined;
    } catch {
      this.cellAddress = undefined;
      return undefined;
    }
  }

  /**
   * An ArrayBuffer holding `bytes`, like ctx.newArrayBuffer but checking the allocation: with a full heap,
   * quickjs-emscripten's own helper would copy to address 0. Throws if WASM memory is exhausted.
   */
  private newBytes(bytes: Uint8Array): QuickJSHandle {
    const c = this.ctx as unknown as {
      memory?: { heapValueHandle?(p: number): QuickJSHandle };
      ffi?: { QTS_NewArrayBuffer?(ctx: unknown, p: number, n: number): number };
      ctx?: { value: unknown };
      module?: { HEAPU8?: Uint8Array; _malloc?(n: number): number };
    };
    const { memory, ffi, module } = c;
    if (!memory?.heapValueHandle || !ffi?.QTS_NewArrayBuffer || !c.ctx || !module?._malloc || !module.HEAPU8) {
      return this.ctx.newArrayBuffer(bytes.buffer as ArrayBuffer);
    }
    const pointer = module._malloc(Math.max(1, bytes.length));
    if (!pointer) throw new Error("out of memory");
    (c.module as { HEAPU8: Uint8Array }).HEAPU8.set(bytes, pointer); // HEAPU8 read again: malloc may have grown memory
    return memory.heapValueHandle(ffi.QTS_NewArrayBuffer(c.ctx.value, pointer, bytes.length)); // QuickJS adopts it
  }

  private heap(): Int32Array {
    const buf = (this.ctx as unknown as { module: { HEAPU8: Uint8Array } }).module.HEAPU8.buffer;
    if (this.heapView?.buffer !== buf) this.heapView = new Int32Array(buf); // WASM memory grew: new buffer
    return this.heapView;
  }

  private readCell(): number {
    return this.heap()[this.cellAddress! >> 2]!;
  }

  private writeCell(v: number) {
    this.heap()[this.cellAddress! >> 2] = v;
  }

  get cellMode(): boolean {
    return this.cellAddress !== undefined;
  }

  /** Events started in the current (or last) run(); len + 1 once the loop is done. */
  ticksNow(): number {
    return this.cellAddress !== undefined ? this.readCell() : this.ticks;
  }

  /** Check, in the pristine context, that QuickJS's binary format is the one BjsonWriter writes. */
  private bjsonWorks(): boolean {
    const { ctx } = this;
    try {
      using probe = ctx.newObject();
      using encoded = ctx.encodeBinaryJSON(probe);
      using bytes = ctx.getArrayBuffer(encoded);
      if (bytes.value[0] !== bjsonVersion) return false;
      const { batch } = BjsonWriter.encodeBatch([JSON.parse(bjsonSelfTestJson)]);
      const { header, events } = BjsonWriter.slices(batch);
      using ab = ctx.newArrayBuffer(BjsonWriter.document(header, events).buffer as ArrayBuffer);
      using decoded = ctx.decodeBinaryJSON(ab);
      using check = this.evalInternal(bjsonCheckSource);
      using expected = ctx.newString(bjsonSelfTestJson);
      const r = ctx.callFunction(check, ctx.undefined, decoded, expected);
      if (r.error) {
        r.error.dispose();
        return false;
      }
      using ok = r.value;
      return ctx.dump(ok) === true;
    } catch {
      return false;
    }
  }

  /** Our own guest code: a failure here is a sandbox problem, reported as a load error. */
  private evalInternal(code: string): QuickJSHandle {
    const r = this.ctx.evalCode(code, "<tributary>");
    if (r.error) {
      const err = describeGuestError(this.ctx.dump(r.error));
      r.error.dispose();
      throw new TransformLoadError(`JavaScript sandbox setup failed: ${err.text}`);
    }
    return r.value;
  }

  /**
   * Run one chunk (events already JSON-encoded); on success the guest's JSON array of TransformResult,
   * unparsed. `onTick(k)` is told when the k-th event of the chunk starts (k = n after the last).
   * Throws only for host/WASM-level failures.
   */
  runChunk(input: EventsInput, chunk: number[], onTick: (k: number) => void): ChunkOutcome {
    const { ctx } = this;
    const n = chunk.length;
    this.ticks = 0;
    if (this.cellAddress !== undefined) this.writeCell(0);
    this.seenTicks = 0;
    this.onTick = onTick;
    this.deadline = performance.now() + this.limits.timeoutMs; // parsing the chunk has a budget too
    let arg: QuickJSHandle;
    if (input.kind === "json") {
      arg = ctx.newString(`[${chunk.map((i) => input.events[i]!).join(",")}]`);
    } else {
      const doc = BjsonWriter.document(
        input.header,
        chunk.map((i) => input.events[i]!),
      );
      let ab: QuickJSHandle;
      try {
        ab = this.newBytes(doc);
      } catch {
        this.deadline = Infinity;
        return {
          ok: false,
          at: -1,
          done: undefined,
          error: `sandbox out of memory (limit ${formatBytes(this.limits.memoryBytes)})`,
        };
      }
      arg = ctx.decodeBinaryJSON(ab); // on failure (OOM) not an array: the runner throws before the first event
      ab.dispose();
    }
    const r = ctx.callFunction(this.run!, ctx.undefined, arg);
    arg.dispose();
    this.deadline = Infinity;
    this.onTick = () => {};
    if (!r.error) {
      const json = ctx.getString(r.value);
      r.value.dispose();
      return { ok: true, json };
    }
    const err = describeGuestError(ctx.dump(r.error));
    r.error.dispose();
    const at = this.ticksNow() - 1;
    let done: TransformResult[] | undefined;
    if (at > 0 && at <= n) {
      this.deadline = performance.now() + this.limits.timeoutMs;
      const p = ctx.callFunction(this.take!, ctx.undefined);
      this.deadline = Infinity;
      if (p.error) p.error.dispose();
      else {
        done = parseResults(ctx.getString(p.value), Math.min(at, n), decodeResultObject);
        p.value.dispose();
      }
    }
    const error = err.interrupted
      ? `transform exceeded the time limit of ${this.limits.timeoutMs} ms`
      : err.outOfMemory
        ? `transform exceeded the memory limit of ${formatBytes(this.limits.memoryBytes)}`
        : `sandbox aborted: ${err.text}`;
    return { ok: false, at, done, error };
  }

  dispose() {
    this.run?.dispose();
    this.take?.dispose();
    this.run = this.take = undefined;
    this.ctx.dispose();
    this.rt.dispose();
  }
}

interface GuestError {
  text: string;
  interrupted: boolean;
  outOfMemory: boolean;
}

function describeGuestError(dumped: unknown): GuestError {
  if (dumped && typeof dumped === "object") {
    const e = dumped as { name?: unknown; message?: unknown; stack?: unknown };
    const name = typeof e.name === "string" ? e.name : "Error";
    const message = typeof e.message === "string" ? e.message : JSON.stringify(dumped);
    const where = typeof e.stack === "string" ? /transform\.js:(\d+):(\d+)/.exec(e.stack) : null;
    return {
      text: `${name}: ${message}${where ? ` (line ${where[1]}, column ${where[2]})` : ""}`,
      interrupted: name === "InternalError" && message === "interrupted",
      outOfMemory: name === "InternalError" && message === "out of memory",
    };
  }
  // QuickJS throws `null` when it cannot even allocate the exception.
  return { text: String(dumped), interrupted: false, outOfMemory: dumped === null };
}
