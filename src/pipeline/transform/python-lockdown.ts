/**
 * Step 3 of the Pyodide sandbox (see python-worker.ts): lock down the worker's JS realm once Pyodide
 * has booted, so a JS object reached from Python (a Python sandbox is never airtight) gives nothing to
 * escape with: no code generation, no host I/O, no loaders, no file-system or socket back-ends.
 */

const g = globalThis as unknown as Record<string, unknown>;

/** Remove what a JS object reached from Python could be used for: code generation, I/O, loaders. */
export function lockDownRealm(py: Record<string, unknown>) {
  const thrower = () => {
    throw new Error("not available in a transformation sandbox");
  };
  const scrub = (o: unknown, names: string[]) => {
    if (!o || typeof o !== "object") return;
    for (const n of names) {
      try {
        Object.defineProperty(o, n, { value: thrower, writable: false, configurable: false });
      } catch {
        /* not configurable: leave it */
      }
    }
  };
  const module = py._module as Record<string, unknown> & { FS: Record<string, unknown>; API: Record<string, unknown> };
  const fs = module.FS;
  const filesystems = fs.filesystems as Record<string, unknown> | undefined;
  if (filesystems) {
    for (const k of Object.keys(filesystems)) if (k !== "MEMFS") delete filesystems[k];
    Object.freeze(filesystems);
  }
  scrub(fs, ["mount", "unmount", "forceLoadFile", "createLazyFile", "createPreloadedFile", "syncfs"]);
  // The file-system and socket back-ends close over Node's `fs` and `ws` (Pyodide runs in Node mode
  // under Bun), down to their nested `node_ops` / `stream_ops` / `websocket_sock_ops`. None is used
  // once the host file system is never mounted: every function at every depth becomes a thrower
  // that cannot be redefined, and the objects are frozen.
  const seen = new Set<object>();
  const gut = (o: unknown, depth: number) => {
    if (!o || (typeof o !== "object" && typeof o !== "function") || seen.has(o as object) || depth > 6) return;
    seen.add(o as object);
    for (const n of Object.getOwnPropertyNames(o)) {
      const d = Object.getOwnPropertyDescriptor(o, n);
      if (!d) continue;
      if ("value" in d && typeof d.value === "function") {
        try {
          Object.defineProperty(o, n, { value: thrower, writable: false, configurable: false });
        } catch {
          /* non-configurable already */
        }
      } else if ("value" in d && d.value && typeof d.value === "object") gut(d.value, depth + 1);
      else if (!("value" in d)) {
        try {
          Object.defineProperty(o, n, { get: thrower, set: thrower, configurable: false });
        } catch {
          /* non-configurable accessor */
        }
      }
    }
    try {
      Object.freeze(o);
    } catch {
      /* exotic object */
    }
  };
  for (const k of [
    "NODEFS",
    "NODERAWFS",
    "PROXYFS",
    "WORKERFS",
    "IDBFS",
    "NODESOCKFS",
    "SOCKFS",
    "NODEFS_mount_opts",
  ]) {
    const f = module[k];
    if (f && typeof f === "object") gut(f, 0);
    try {
      Object.defineProperty(module, k, { value: undefined, writable: false, configurable: false });
    } catch {
      /* not configurable */
    }
  }
  scrub(module, [
    "loadDynamicLibrary",
    "loadWebAssemblyModule",
    "dlopenInternal",
    "asyncLoad",
    "initRandomFill",
    "FS_stdin_getChar",
    "__emscripten_system",
    "_emscripten_run_script",
    "_emscripten_run_script_int",
    "_emscripten_run_script_string",
    "_emscripten_async_load_script",
    "_emscripten_websocket_new",
    "setWasmTableEntry",
    "addFunction",
    "readBinary",
    "readAsync",
    "instantiateWasm",
  ]);
  scrub(module.API, [
    "loadBinaryFile",
    "initializeNodeSockFS",
    "loadScript",
    "loadDynlib",
    "loadPackage",
    "install",
    "bootstrapFinalizedPromise",
    "rawRun",
    "runPythonInternal",
    "setPyodideModule",
  ]);
  delete module.API._nodeSock;
  // The public API object: everything.
  for (const k of Object.getOwnPropertyNames(py)) {
    if (typeof py[k] === "function") scrub(py, [k]);
  }
  // The realm: no code generation, no host I/O.
  const ctors = [
    Function,
    Object.getPrototypeOf(async () => {}).constructor,
    Object.getPrototypeOf(function* () {}).constructor,
    Object.getPrototypeOf(async function* () {}).constructor,
  ] as { prototype: object }[];
  for (const C of ctors) {
    Object.defineProperty(C.prototype, "constructor", { value: thrower, writable: false, configurable: false });
  }
  const quiet = () => {};
  for (const k of ["log", "info", "warn", "error", "debug", "trace"]) {
    (console as unknown as Record<string, unknown>)[k] = quiet; // a fatal error would dump Pyodide's source
  }
  for (const name of [
    "process",
    "require",
    "fetch",
    "WebSocket",
    "Worker",
    "XMLHttpRequest",
    "EventSource",
    "navigator",
    "ShadowRealm",
    "BroadcastChannel",
    "MessageChannel",
    "Buffer",
    "HTMLRewriter",
    "eval",
    "importScripts",
    "Request",
    "Response",
    "FormData",
    "Headers",
    "Blob",
    "File",
    "alert",
    "prompt",
    "confirm",
  ]) {
    try {
      delete g[name];
    } catch {
      /* non-configurable */
    }
  }
}
