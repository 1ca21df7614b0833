import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createPythonTransform } from "../../src/pipeline/transform/python.ts";
import {
  TransformLoadError,
  type SandboxedTransform,
  type TransformResult,
} from "../../src/pipeline/transform/types.ts";

// Pyodide boots in ~1–2 s per worker: the tests share instances and start them in parallel.
const identify = await Bun.file(join(import.meta.dir, "../fixtures/segment-identify.json")).json();
const marker = join(tmpdir(), `tributary-python-escape-${process.pid}`);

const source = String.raw`
import os

def transform(event):
    kind = event.get("kind", "identify")
    if kind == "identify":
        t = event["traits"]
        return {"email": t["email"].lower(), "plan": t["plan"], "company": t["company"], "user_id": event["userId"]}
    if kind == "none":
        return None
    if kind == "raise":
        raise ValueError("bad event " + str(event["n"]))
    if kind == "loop":
        while True:
            pass
    if kind == "stubborn":
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    if kind == "alloc":
        a = []
        while True:
            a.append(bytearray(10**7))
    if kind == "alloc_ok":
        return {"len": len(bytearray(32 * 1024 * 1024))}
    if kind == "list":
        return [1, 2]
    if kind == "set":
        return {"s": {1, 2}}
    if kind == "import_js":
        import js
        return {"escaped": str(js.process)}
    if kind == "import_pyodide_js":
        import pyodide_js
        return {"escaped": str(pyodide_js.version)}
    if kind == "ffi":
        from pyodide.ffi import to_js
        return {"escaped": str(to_js({}))}
    if kind == "run_js":
        from pyodide.code import run_js
        return {"escaped": run_js("globalThis.process.env.HOME")}
    if kind == "passwd":
        return {"passwd": open("/etc/passwd").read()}
    if kind == "micropip":
        import micropip
        return {"escaped": "micropip"}
    if kind == "system":
        return {"status": __import__("os").system("id")}
    if kind == "write":
        with open("/tmp/x", "w") as f:
            f.write("x" * 1000)
        return {"wrote": True}
    if kind == "listdir":
        return {"root": sorted(os.listdir("/")), "home": sorted(os.listdir("/home"))}
    return {"kind": kind}
`;

// Takes the Python-level guards apart (a Python sandbox is never airtight), then tries the host.
const deepSource = String.raw`
def transform(event):
    import sys, builtins
    sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", "") != "Blocker"]
    imp = builtins.__import__
    if hasattr(imp, "__closure__"):
        builtins.__import__ = [c.cell_contents for c in imp.__closure__
                               if getattr(c.cell_contents, "__name__", "") == "__import__"][0]
    what = event["what"]
    if what == "system":
        import ctypes
        return {"status": ctypes.CDLL(None).system(("touch " + event["path"]).encode())}
    if what == "socket":
        import _socket
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.connect(("127.0.0.1", 80))
        return {"connected": True}
    if what == "js":
        import js  # unregistered, not only blocked
        return {"js": repr(js)}
    if what == "jsproxy":
        import gc
        mods = {m.__name__: m for m in gc.get_objects() if type(m).__name__ == "module"}
        packages = mods["pyodide._package_loader"].loadedPackages
        return {"global": repr(packages.constructor.constructor("return globalThis")())}
`;

/** 1-based line of the first line of `src` containing `text` (error messages name user-code lines). */
const lineOf = (src: string, text: string) => {
  const i = src.split("\n").findIndex((l) => l.includes(text));
  if (i < 0) throw new Error(`no line with ${text}`);
  return i + 1;
};

let shared: SandboxedTransform;
let deep: SandboxedTransform;
const ok = (value: unknown): TransformResult => ({ ok: true, value });

beforeAll(async () => {
  [shared, deep] = await Promise.all([
    createPythonTransform(source, { timeoutMs: 1000 }),
    createPythonTransform(deepSource, { timeoutMs: 1000 }),
  ]);
}, 60_000);

afterAll(() => {
  shared?.dispose();
  deep?.dispose();
  rmSync(marker, { force: true });
});

describe("Python transformations (Pyodide worker)", () => {
  test("maps the Segment identify fixture to a concrete dict", async () => {
    const [r] = await shared.transformBatch([identify]);
    expect(r).toEqual(
      ok({ email: "emily.johnson@example.com", plan: "Enterprise", company: "Acme Corp", user_id: "703991475" }),
    );
  });

  test("None means no change; KeyError and non-dict results fail their event only", async () => {
    const rs = await shared.transformBatch([
      { kind: "none" },
      { kind: "identify", traits: {} },
      { kind: "set" },
      identify,
    ]);
    expect(rs[0]).toEqual({ ok: true, value: undefined });
    expect(rs[1]).toEqual({ ok: false, error: `KeyError: 'email' (line ${lineOf(source, 't["email"]')})` });
    expect(rs[2]!.ok).toBe(false);
    expect((rs[2] as { error: string }).error).toContain("not JSON serializable");
    expect(rs[3]!.ok).toBe(true);
  });

  test("in a mixed batch only the bad events fail: raise, endless loop, unbounded allocation, non-dict", async () => {
    const rs = await shared.transformBatch([
      { kind: "a" },
      { kind: "raise", n: 7 },
      { kind: "b" },
      { kind: "loop" },
      { kind: "c" },
      { kind: "alloc" },
      { kind: "d" },
      { kind: "list" },
      identify,
    ]);
    expect(rs).toEqual([
      ok({ kind: "a" }),
      { ok: false, error: `ValueError: bad event 7 (line ${lineOf(source, "raise ValueError")})` },
      ok({ kind: "b" }),
      { ok: false, error: "transform exceeded the time limit (1000 ms)" },
      ok({ kind: "c" }),
      { ok: false, error: "transform exceeded the memory limit (64 MiB)" },
      ok({ kind: "d" }),
      { ok: false, error: "transform must return a dict or None, not list" },
      ok({ email: "emily.johnson@example.com", plan: "Enterprise", company: "Acme Corp", user_id: "703991475" }),
    ]);
    // and the next batch runs normally
    expect(await shared.transformBatch([{ kind: "after" }, { kind: "alloc_ok" }])).toEqual([
      ok({ kind: "after" }),
      ok({ len: 32 * 1024 * 1024 }),
    ]);
  }, 30_000);

  test("a transformation that swallows the interrupt is stopped, its worker replaced, the rest goes on", async () => {
    const t0 = performance.now();
    const rs = await shared.transformBatch([{ kind: "a" }, { kind: "stubborn" }, { kind: "b" }]);
    expect(rs[0]).toEqual(ok({ kind: "a" }));
    expect(rs[1]!.ok).toBe(false);
    expect((rs[1] as { error: string }).error).toContain("exceeded the time limit (1000 ms)");
    expect(rs[2]).toEqual(ok({ kind: "b" }));
    expect(performance.now() - t0).toBeGreaterThan(2000); // stopped by the host, after its grace (limit + max(limit, 1 s))
    expect(await shared.transformBatch([identify])).toEqual([
      ok({ email: "emily.johnson@example.com", plan: "Enterprise", company: "Acme Corp", user_id: "703991475" }),
    ]);
  }, 30_000);

  test("escape attempts fail their own event or stay inside the sandbox", async () => {
    const kinds = [
      "import_js",
      "import_pyodide_js",
      "ffi",
      "run_js",
      "passwd",
      "micropip",
      "system",
      "write",
      "listdir",
      "ok",
    ];
    const rs = await shared.transformBatch(kinds.map((kind) => ({ kind })));
    const byKind = Object.fromEntries(kinds.map((k, i) => [k, rs[i]!]));
    const notAllowed = (name: string, line: number): TransformResult => ({
      ok: false,
      error: `ModuleNotFoundError: import of '${name}' is not allowed in transformations (line ${line})`,
    });
    expect(byKind.import_js).toEqual(notAllowed("js", lineOf(source, "import js")));
    expect(byKind.import_pyodide_js).toEqual(notAllowed("pyodide_js", lineOf(source, "import pyodide_js")));
    expect(byKind.ffi).toEqual(notAllowed("pyodide.ffi", lineOf(source, "from pyodide.ffi")));
    expect(byKind.run_js).toEqual(notAllowed("pyodide.code", lineOf(source, "from pyodide.code")));
    expect(byKind.micropip).toEqual(notAllowed("micropip", lineOf(source, "import micropip")));
    // the in-memory file system has no /etc/passwd; the host's is never mounted
    expect(byKind.passwd).toEqual({
      ok: false,
      error: `FileNotFoundError: [Errno 44] No such file or directory: '/etc/passwd' (line ${lineOf(source, "/etc/passwd")})`,
    });
    expect(byKind.system).toEqual({
      ok: false,
      error: `AttributeError: module 'os' has no attribute 'system' (line ${lineOf(source, '.system("id")')})`,
    });
    expect(byKind.write).toEqual({
      ok: false,
      error: `PermissionError: writing files is not available in transformations (line ${lineOf(source, '"/tmp/x"')})`,
    });
    expect(byKind.listdir).toEqual(ok({ root: ["dev", "home", "lib", "proc", "tmp"], home: ["pyodide", "web_user"] }));
    expect(byKind.ok).toEqual(ok({ kind: "ok" }));
  });

  test("with the Python guards taken apart, the interpreter still cannot run commands, connect or reach JS", async () => {
    rmSync(marker, { force: true });
    const rs = await deep.transformBatch([
      { what: "system", path: marker },
      { what: "socket" },
      { what: "js" },
      { what: "jsproxy" },
    ]);
    // The import blocker and __import__ are gone, but imports still raise the "import" audit event,
    // and the audit hook (which nothing can remove) refuses them, and gc with them.
    expect(rs[0]).toEqual({
      ok: false,
      error: `ModuleNotFoundError: import of 'ctypes' is not allowed in transformations (line ${lineOf(deepSource, "import ctypes")})`,
    });
    expect(existsSync(marker)).toBe(false);
    expect(rs[1]).toEqual({
      ok: false,
      error: `ModuleNotFoundError: import of '_socket' is not allowed in transformations (line ${lineOf(deepSource, "import _socket")})`,
    });
    expect(rs[2]).toEqual({
      ok: false,
      error: `ModuleNotFoundError: import of 'js' is not allowed in transformations (line ${lineOf(deepSource, "import js")})`,
    });
    expect(rs[3]).toEqual({
      ok: false,
      error: `PermissionError: gc.get_objects is not available in transformations (line ${lineOf(deepSource, "gc.get_objects()")})`,
    });
  });

  test("events that are not JSON fail alone", async () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const rs = await shared.transformBatch([{ kind: "x", big: 1n }, cyclic, { kind: "y" }]);
    expect(rs[0]!.ok).toBe(false);
    expect((rs[0] as { error: string }).error).toStartWith("event is not JSON-serializable");
    expect(rs[1]!.ok).toBe(false);
    expect(rs[2]).toEqual(ok({ kind: "y" }));
  });
});

describe("loading Python transformations", () => {
  const loadError = async (src: string, limits?: { timeoutMs: number }) => {
    try {
      const t = await createPythonTransform(src, limits);
      t.dispose();
    } catch (e) {
      expect(e).toBeInstanceOf(TransformLoadError);
      return (e as Error).message;
    }
    throw new Error("expected a TransformLoadError");
  };

  test("syntax errors, a missing or non-callable transform and failing top-level code are TransformLoadErrors", async () => {
    const [syntax, missing, notCallable, topLevelImport, topLevelLoop] = await Promise.all([
      loadError("import json\n\ndef transform(event)\n    return {}\n"),
      loadError("def transfrom(event):\n    return {}\n"),
      loadError("transform = 42\n"),
      loadError("import js\ndef transform(event):\n    return {}\n"),
      loadError("while True:\n    pass\n", { timeoutMs: 50 }),
    ]);
    expect(syntax).toBe("Python transform does not load: SyntaxError: expected ':' (line 3)");
    expect(missing).toBe("Python transform does not load: the code defines no transform(event) function");
    expect(notCallable).toBe("Python transform does not load: transform is not a function (it is int)");
    expect(topLevelImport).toBe(
      "Python transform does not load: top-level code failed: ModuleNotFoundError: import of 'js' is not allowed in transformations (line 1)",
    );
    expect(topLevelLoop).toBe("Python transform does not load: top-level code exceeded the time limit (1000 ms)");
  }, 60_000);
});
