/**
 * The Pyodide sandbox: runs inside its own Worker, started by python.ts. One worker = one interpreter
 * with one transformation loaded. See python.ts for the design; this file is the guest side:
 *
 *  1. Before Pyodide is instantiated, the WebAssembly imports of the interpreter are gated
 *     (`gateImports`): heap growth is capped, and the host capabilities emscripten would give the
 *     interpreter (shell commands through `system()`, sockets, dlopen of new WebAssembly, writing or
 *     creating files) are refused. Everything Python can do to the outside goes through these imports,
 *     so this holds whatever the Python code does.
 *  2. Pyodide boots with an empty object as the `js` module, stdin closed and stdout/stderr discarded.
 *  3. The JS realm of the worker is locked down (`lockDownRealm`, python-lockdown.ts): no code generation (eval, Function
 *     constructors), no `process`, `fetch`, `WebSocket`, `Worker`, …, and the Pyodide API objects lose
 *     their file-system / package / network entry points. Should Python code reach a JS object in
 *     spite of step 4, it finds nothing to escape with.
 *  4. `__tributary_setup` (python-guest.ts) closes the Python side (import blocker, os.system & co.
 *     removed), loads the user's module and returns the batch runner.
 *
 * Time limit: the interpreter polls the "interrupt buffer" every few dozen bytecodes; ours is an
 * object whose getter answers SIGINT once the running event's deadline (set by `tick`) has passed, so
 * Python raises KeyboardInterrupt in the transformation. Code that ignores it (catches it, or sits in
 * a long C call) is stopped by the host, which watches the progress counter and terminates the worker.
 */
import { loadPyodide } from "pyodide";
import { formatBytes } from "./host.ts";
import { guestSetupSource } from "./python-guest.ts";
import { lockDownRealm } from "./python-lockdown.ts";
import type { FromWorker, ToWorker } from "./python-protocol.ts";

/** Errno values of emscripten's libc. */
const EACCES = 2;
const ENOSYS = 52;
/** open(2) flags that write or create: O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND. */
const O_WRITE_FLAGS = 1 | 2 | 0o100 | 0o1000 | 0o2000;
const SIGINT = 2;
const sourceFile = "<transform>";

const send: (m: FromWorker) => void = (globalThis as unknown as { postMessage: (m: unknown) => void }).postMessage.bind(
  globalThis,
);
const now: () => number = performance.now.bind(performance);
const origin = performance.timeOrigin;
const atomicsStore = Atomics.store;

// ---- state shared by the gates, the interrupt hook and tick() ---------------------------------
/** After boot: refuse what user code must not do. Before: Pyodide itself loads files etc. */
let locked = false;
let heapCap = Infinity;
let memory: WebAssembly.Memory | undefined;
/** Index of the running event; -1: the phase before the first event (loading, or decoding a batch). */
let current = -1;
let count = 0;
let deadline = Infinity;
let fired = false;
let timedOutAt = -2;
let memoryRefusedAt = -2;
let memoryRefused = false;
let progress: Int32Array | undefined;
let epoch = 0;
let timeoutMs = 100;

class GuestExit extends Error {}

/** The imports the sandbox depends on gating: a Pyodide build without them is refused, not run open. */
const requiredImports = [
  "emscripten_resize_heap",
  "_emscripten_system",
  "__syscall_socket",
  "__syscall_openat",
  "_dlopen_js",
];

/** Wrap the interpreter's WebAssembly imports (done once, at instantiation). */
function gateImports() {
  const instantiate = WebAssembly.instantiate as (src: unknown, imports?: WebAssembly.Imports) => Promise<unknown>;
  const gated = async (src: unknown, imports?: WebAssembly.Imports) => {
    const env = imports?.env as Record<string, unknown> | undefined;
    if (env && typeof env.emscripten_resize_heap === "function") {
      const missing = requiredImports.filter((n) => typeof env[n] !== "function");
      if (missing.length > 0) throw new Error(`unsupported Pyodide build: no ${missing.join(", ")} import to gate`);
      wrapEnv(env);
      const wasi = imports?.wasi_snapshot_preview1 as Record<string, unknown> | undefined;
      if (wasi && wasi !== env) wrapEnv(wasi);
      WebAssembly.instantiate = instantiate as typeof WebAssembly.instantiate; // only the interpreter
    }
    const out = (await instantiate.call(WebAssembly, src, imports)) as { instance?: WebAssembly.Instance };
    const mem = out.instance?.exports.memory;
    if (env && mem instanceof WebAssembly.Memory) capGrowth(mem);
    return out;
  };
  WebAssembly.instantiate = gated as typeof WebAssembly.instantiate;
}

function wrapEnv(env: Record<string, unknown>) {
  type Fn = (...a: number[]) => number;
  const wrap = (name: string, f: (orig: Fn) => Fn) => {
    const orig = env[name];
    if (typeof orig === "function") env[name] = f(orig as Fn);
  };
  const refuseWhenLocked = (name: string, result: number) =>
    wrap(
      name,
      (orig) =>
        (...a) =>
          locked ? result : orig(...a),
    );
  wrap("emscripten_resize_heap", (orig) => (requested) => {
    if (requested >>> 0 > heapCap) {
      memoryRefused = true;
      memoryRefusedAt = current;
      return 0;
    }
    return orig(requested);
  });
  wrap("_emscripten_system", () => (command) => (command ? -1 : 0)); // "no shell available"
  for (const name of [
    "__syscall_socket",
    "__syscall_connect",
    "__syscall_bind",
    "__syscall_listen",
    "__syscall_accept4",
    "__syscall_sendto",
    "__syscall_sendmsg",
    "__syscall_recvfrom",
    "__syscall_recvmsg",
    "__syscall_getsockopt",
    "__syscall_getpeername",
    "__syscall_getsockname",
    "_maybe_connect_async",
    "__syscall_mkdirat",
    "__syscall_mknodat",
    "__syscall_unlinkat",
    "__syscall_rmdir",
    "__syscall_renameat",
    "__syscall_symlinkat",
    "__syscall_truncate64",
    "__syscall_ftruncate64",
    "__syscall_fallocate",
    "__syscall_pipe",
    "__syscall_chmod",
    "__syscall_fchmod",
    "__syscall_fchmodat2",
    "__syscall_fchownat",
    "__syscall_fchown32",
    "__syscall_utimensat",
  ]) {
    refuseWhenLocked(name, -EACCES);
  }
  wrap(
    "__syscall_openat",
    (orig) => (dirfd, path, flags, varargs) =>
      locked && (flags! & O_WRITE_FLAGS) !== 0 ? -EACCES : orig(dirfd!, path!, flags!, varargs!),
  );
  refuseWhenLocked("_dlopen_js", 0);
  wrap(
    "_emscripten_dlopen_js",
    (orig) =>
      (...a) =>
        locked ? 0 : orig(...a),
  );
  refuseWhenLocked("_setitimer_js", -ENOSYS);
  for (const name of ["exit", "proc_exit"]) {
    wrap(name, (orig) => (...a) => {
      if (locked) throw new GuestExit("the transformation tried to exit the interpreter");
      return orig(...a);
    });
  }
}

/**
 * Never let the heap grow past heapCap: emscripten over-grows (by up to 20%) when it grows, so
 * clamp the actual growth to the cap; a request beyond the cap is refused in emscripten_resize_heap.
 */
function capGrowth(mem: WebAssembly.Memory) {
  memory = mem;
  const grow = mem.grow;
  Object.defineProperty(mem, "grow", {
    value(pages: number) {
      const cur = mem.buffer.byteLength;
      const cap = Math.floor(heapCap / 65536) * 65536;
      if (cur + pages * 65536 > cap) pages = Math.max(0, Math.floor((cap - cur) / 65536));
      return grow.call(mem, pages);
    },
  });
}

/** The interpreter's periodic signal check (every few dozen bytecodes) reads element 0. */
const interruptBuffer = {
  get 0(): number {
    if (fired || now() <= deadline) return 0;
    fired = true;
    timedOutAt = current;
    return SIGINT;
  },
  set 0(_v: number) {},
};

/**
 * Called by the runner before event i (and with i = count after the last). Guest code is not meant
 * to reach it (frames are closed to it), but if it does it can only stretch its budget to what the
 * batch would have had: indices never pass `count`, and no call lifts the deadline while Python
 * runs — only runBatch does, once the runner has returned.
 */
function tick(i: number): number {
  if (typeof i !== "number" || i !== current + 1 || i > count) return 0; // out of order: not from the runner
  const prev = current;
  const status = memoryRefusedAt === prev ? 2 : timedOutAt === prev ? 1 : 0;
  current = i;
  fired = false;
  deadline = now() + timeoutMs;
  publish(i + 1);
  return status;
}

function resetPhase(n: number, phaseDeadline: number) {
  current = -1;
  count = n;
  deadline = phaseDeadline;
  fired = false;
  timedOutAt = -2;
  memoryRefusedAt = -2;
  publish(0);
}

function publish(started: number) {
  if (!progress) return;
  atomicsStore(progress, 1, Math.round(origin + now() - epoch));
  atomicsStore(progress, 0, started);
}

type PyCallable = ((...args: unknown[]) => unknown) & { destroy?: () => void };

let runner: PyCallable | undefined;

async function init(m: Extract<ToWorker, { type: "init" }>) {
  timeoutMs = m.timeoutMs;
  progress = new Int32Array(m.progress);
  epoch = m.epoch;
  gateImports();
  const indexURL = new URL(".", import.meta.resolve("pyodide")).pathname;
  const discard = { write: (b: Uint8Array) => b.length };
  const snapshot = m.snapshot;
  m.snapshot = undefined;
  const py = (await loadPyodide({
    indexURL,
    jsglobals: Object.freeze(Object.create(null)),
    env: { HOME: "/home/pyodide" },
    stdout: () => {},
    stderr: () => {},
    packages: [],
    ...(snapshot ? { _loadSnapshot: snapshot } : m.makeSnapshot ? { _makeSnapshot: true } : {}),
  })) as unknown as Record<string, unknown> & {
    setStdout(o: unknown): void;
    setStderr(o: unknown): void;
    setStdin(o: unknown): void;
    setInterruptBuffer(b: unknown): void;
    unregisterJsModule(name: string): void;
    makeMemorySnapshot(): Uint8Array;
    runPython(code: string, opts?: { globals?: unknown }): unknown;
    globals: { get(name: string): unknown; delete(name: string): void };
    _module: { HEAPU8: Uint8Array };
  };
  if (m.makeSnapshot && !snapshot) {
    try {
      const snap = py.makeMemorySnapshot();
      send({ type: "snapshot", snapshot: snap });
    } catch {
      /* no snapshot: later workers boot normally */
    }
  }
  py.setStdout(discard);
  py.setStderr(discard);
  py.setStdin({ error: true });
  py.unregisterJsModule("js");
  py.unregisterJsModule("pyodide_js");
  py.runPython(guestSetupSource);
  const setup = py.globals.get("__tributary_setup") as PyCallable;
  py.globals.delete("__tributary_setup");
  let load: PyCallable | string;
  try {
    load = setup(tick) as PyCallable | string;
  } finally {
    setup.destroy?.();
  }
  if (typeof load === "string") {
    send({ type: "loadError", message: `Python sandbox set-up failed: ${load}`, config: false });
    return;
  }
  py.setInterruptBuffer(interruptBuffer);
  publish(0); // the host now measures the load budget
  send({ type: "booted" });

  lockDownRealm(py);
  locked = true;
  const heapBytes = (memory?.buffer.byteLength ?? py._module.HEAPU8.length) as number;
  heapCap = heapBytes + m.memoryBytes;
  resetPhase(0, now() + m.loadBudgetMs);
  const memoryText = `exceeded the memory limit (${formatBytes(m.memoryBytes)})`;
  let out: unknown;
  try {
    out = load(
      m.source,
      sourceFile,
      `exceeded the time limit (${m.loadBudgetMs} ms)`,
      `exceeded the time limit (${m.timeoutMs} ms)`,
      memoryText,
    );
  } catch (e) {
    const msg = errorText(e);
    send({ type: "loadError", message: memoryRefused ? `top-level code ${memoryText}` : msg, config: memoryRefused });
    return;
  } finally {
    load.destroy?.();
  }
  if (typeof out === "string") {
    send({ type: "loadError", message: out, config: true });
    return;
  }
  runner = out as PyCallable;
  send({ type: "ready", heapBytes, capBytes: heapCap });
}

function runBatch(m: Extract<ToWorker, { type: "batch" }>) {
  if (!runner) {
    send({ type: "broken", id: m.id, message: "sandbox not loaded" });
    return;
  }
  memoryRefused = false;
  resetPhase(m.count, Infinity);
  let json: unknown;
  try {
    json = runner(m.json);
  } catch (e) {
    deadline = Infinity;
    send({ type: "broken", id: m.id, message: errorText(e) });
    return;
  }
  deadline = Infinity;
  if (typeof json !== "string") {
    send({ type: "broken", id: m.id, message: "runner returned no results" });
    return;
  }
  send({ type: "result", id: m.id, json, recycle: memoryRefused });
}

function errorText(e: unknown): string {
  const s = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return s.length > 2000 ? `${s.slice(0, 2000)}…` : s;
}

let queue: Promise<void> = Promise.resolve();
addEventListener("message", (e: Event) => {
  const m = (e as MessageEvent<ToWorker>).data;
  queue = queue.then(async () => {
    if (m.type === "init") {
      try {
        await init(m);
      } catch (err) {
        send({ type: "loadError", message: `Python runtime failed to start: ${errorText(err)}`, config: false });
      }
    } else if (m.type === "batch") runBatch(m);
  });
});
