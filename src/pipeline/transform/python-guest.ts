/**
 * Python source run inside the Pyodide worker before the user's code (see python-worker.ts).
 *
 * `__tributary_setup(tick)` closes the interpreter to user code (imports of the JS bridge, package
 * loading, network, processes, signals), drops every JavaScript object but `tick` and makes the
 * JsProxy classes inert, and returns `load` (or a string saying why the set-up failed). It runs
 * during boot, outside the user's load budget.
 * `load(source, filename, texts…)` installs the audit hook that closes frames, gc and the tracer to
 * guest code, compiles and runs the user's module in a fresh namespace and returns the batch runner,
 * or a string saying why the code does not load.
 *
 * The runner takes one JSON array of events and returns one JSON array of results:
 *   null           transform returned None (no change)
 *   [1, {...}]     the dict it returned
 *   [0, "error"]   the event failed
 * It calls `tick(i)` (a JS function) before event i and `tick(n)` after the last: the worker uses it
 * to give each event its own deadline, to publish progress to the host, and it answers whether the
 * previous event hit the time limit (1) or the memory limit (2).
 */
export const guestSetupSource = String.raw`
def __tributary_setup(tick):
    import sys, builtins, json

    decode = json.JSONDecoder().decode
    encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
    Base = BaseException
    isinst, typ, strt, dictt, calls = isinstance, type, str, dict, callable

    # --- close the interpreter -----------------------------------------------------------------
    blocked = (
        "js", "pyodide_js", "pyodide", "_pyodide", "_pyodide_core", "micropip", "pyodide_http",
        "ctypes", "_ctypes", "socket", "_socket", "ssl", "_ssl", "select", "selectors",
        "subprocess", "_posixsubprocess", "multiprocessing", "_multiprocessing", "asyncio",
        "_asyncio", "concurrent", "signal", "_signal", "webbrowser", "urllib.request",
        "http.client", "http.server", "ftplib", "smtplib", "poplib", "imaplib", "xmlrpc",
        "socketserver", "wsgiref", "_pyrepl", "pty", "tty", "faulthandler", "_testcapi",
        "_testinternalcapi", "ensurepip", "venv", "idlelib", "pdb", "code", "site",
    )

    def is_blocked(name):
        for b in blocked:
            if name == b or name.startswith(b + "."):
                return True
        return False

    def refuse(name):
        return ModuleNotFoundError(
            "import of '%s' is not allowed in transformations" % name, name=name)

    class Blocker:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if is_blocked(name):
                raise refuse(name)
            return None

        @staticmethod
        def find_module(name, path=None):
            if is_blocked(name):
                raise refuse(name)
            return None

    sys.meta_path.insert(0, Blocker)
    for name in list(sys.modules):
        if is_blocked(name):
            del sys.modules[name]

    real_import = builtins.__import__

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and isinst(name, strt):
            if is_blocked(name):
                raise refuse(name)
            for f in fromlist or ():
                if isinst(f, strt) and is_blocked(name + "." + f):
                    raise refuse(name + "." + f)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = guarded_import
    import os, posix
    for mod in (os, posix):
        for attr in (
            "system", "popen", "_exit", "abort", "kill", "killpg", "fork", "forkpty", "vfork",
            "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
            "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
            "posix_spawn", "posix_spawnp", "register_at_fork",
        ):
            try:
                delattr(mod, attr)
            except AttributeError:
                pass
    for name in ("_", "PYTHONINSPECT"):
        os.environ.pop(name, None)
    sys.dont_write_bytecode = True
    for name in ("exit", "quit", "help", "copyright", "credits", "license"):
        try:
            delattr(builtins, name)
        except AttributeError:
            pass

    # --- no JavaScript object stays reachable ---------------------------------------------------
    # Pyodide's import machinery keeps JsProxy objects of its public and internal API (JsLoader
    # objects, the JsFinder's registry). Drop every reference to every JsProxy but 'tick', then make
    # the JsProxy classes inert: no attribute, item or iteration access, so a proxy reached anyway
    # (or made later through pyodide's helpers) leads nowhere. Calling stays: 'tick' is one.
    import gc
    JsMeta = typ(typ(tick))

    def is_js(o):
        return isinst(typ(o), JsMeta)

    for finder in list(sys.meta_path):
        if typ(finder).__name__ == "JsFinder":
            sys.meta_path.remove(finder)
            jsproxies = getattr(finder, "jsproxies", None)
            if isinst(jsproxies, dictt):
                jsproxies.clear()
    sys.path_importer_cache.clear()
    for name in list(sys.modules):
        if is_blocked(name) or is_js(sys.modules[name]):
            del sys.modules[name]
    found = []
    for o in gc.get_objects():
        for x in gc.get_referents(o):
            if is_js(x) and x is not tick and not any(x is y for y in found):
                found.append(x)
    found = tuple(found)
    for x in found:
        for r in gc.get_referrers(x):
            if r is found:
                continue
            if not isinst(r, (dictt, list)):
                r = getattr(r, "__dict__", None)  # attributes held inline until asked for
            if isinst(r, dictt):
                for k in [k for k, v in r.items() if v is x]:
                    del r[k]
            elif isinst(r, list):
                r[:] = [v for v in r if v is not x]
    del found, x, r, o
    gc.collect()

    def inert(self, *args, **kwargs):
        raise PermissionError("JavaScript objects are not available in transformations")

    def js_classes():
        out, todo = [], [object]
        while todo:
            c = todo.pop()
            try:
                subs = typ.__subclasses__(c)
            except Base:
                continue
            for sc in subs:
                if sc not in out:
                    out.append(sc)
                    todo.append(sc)
        return [c for c in out if isinst(c, JsMeta)]

    for cls in js_classes():
        for attr in (
            "__getattribute__", "__getattr__", "__setattr__", "__delattr__", "__dir__",
            "__getitem__", "__setitem__", "__delitem__", "__iter__", "__next__", "__aiter__",
            "__anext__", "__await__", "__len__", "__contains__", "__enter__", "__exit__",
            "__reversed__", "__buffer__",
        ):
            try:
                setattr(cls, attr, inert)
            except Base:
                pass
    live = []
    for o in gc.get_objects():
        for x in gc.get_referents(o):
            if is_js(x) and x is not tick:
                live.append(typ(o).__name__ + ("(%s)" % ",".join(strt(k) for k in o.keys())[:300] if isinst(o, dictt) else ""))
    if live:
        return "sandbox set-up failed: JavaScript objects still reachable from " + "; ".join(live)

    # --- frames, the object graph and the tracer are closed to guest code ------------------------
    # The runner's frames hold 'tick' and the batch; gc.get_objects() reaches every object. Both are
    # reached only through audited operations, so an audit hook (which nothing can remove) refuses
    # them. 'trusted' is set only around our own traceback walk, which runs no guest code.
    trusted = [False]
    frame_attrs = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code", "ag_code", "f_back"))
    denied_events = frozenset((
        "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
        "sys.setprofile", "sys._setprofileallthreads", "sys._settraceallthreads",
        "sys.monitoring.register_callback", "sys.addaudithook", "sys.remote_exec",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "gc.get_freeze",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.addressof", "ctypes.string_at",
        "ctypes.call_function", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
        "os.forkpty", "os.kill", "os.killpg", "subprocess.Popen", "socket.__new__",
        "socket.connect", "socket.bind", "socket.getaddrinfo", "webbrowser.open", "pty.spawn",
        "cpython.run_command", "cpython.run_file", "cpython.run_module", "cpython.run_startup",
    ))
    startswith = strt.startswith

    def audit(event, args):
        if trusted[0]:
            return
        if event == "object.__getattr__":
            if len(args) > 1 and args[1] in frame_attrs:
                raise PermissionError("frame introspection is not available in transformations")
            return
        if event in denied_events:
            raise PermissionError("%s is not available in transformations" % event)
        if event == "import" and args and isinst(args[0], strt) and is_blocked(args[0]):
            raise refuse(args[0])
        if event == "open" and len(args) > 1 and isinst(args[1], strt) and any(c in args[1] for c in "wax+"):
            raise PermissionError("writing files is not available in transformations")

    def load(source, filename, load_timeout_text, timeout_text, memory_text):
        # --- load the user's code ------------------------------------------------------------------
        tb_of = BaseException.__traceback__.__get__

        def where(e):
            line = None
            trusted[0] = True
            try:
                tb = tb_of(e)
                while tb is not None:
                    if tb.tb_frame.f_code.co_filename == filename:
                        line = tb.tb_lineno
                    tb = tb.tb_next
            finally:
                trusted[0] = False
            return line

        def describe(e):
            try:
                text = strt(e)
            except Base:
                text = "<unprintable>"
            name = getattr(typ(e), "__name__", "Exception")
            if not isinst(name, strt):
                name = "Exception"
            msg = name + ": " + text if text else name
            line = where(e)
            if line is not None:
                msg += " (line %d)" % line
            return msg[:2000]

        try:
            code = compile(source, filename, "exec", dont_inherit=True)
        except SyntaxError as e:
            return "%s: %s (line %s)" % (typ(e).__name__, e.msg, e.lineno)
        except Base as e:
            return "does not compile: " + describe(e)
        ns = {"__name__": "transform", "__builtins__": builtins}
        sys.addaudithook(audit)
        try:
            try:
                exec(code, ns)
                failure = None
            except KeyboardInterrupt:
                failure = "top-level code " + load_timeout_text
            except MemoryError:
                failure = "top-level code " + memory_text
            except Base as e:
                failure = "top-level code failed: " + describe(e)
        except Base:
            failure = "top-level code " + load_timeout_text
        status = tick(0)
        if status == 1:
            return "top-level code " + load_timeout_text
        if status == 2:
            return "top-level code " + memory_text
        if failure is not None:
            return failure
        fn = ns.get("transform")
        if fn is None:
            return "the code defines no transform(event) function"
        if not calls(fn):
            return "transform is not a function (it is %s)" % typ(fn).__name__

        # --- the batch runner ----------------------------------------------------------------------
        timeout_result = encode([0, "transform " + timeout_text])
        memory_result = encode([0, "transform " + memory_text])

        def one(event):
            try:
                r = fn(event)
                if r is None:
                    return "null"
                if not isinst(r, dictt):
                    return encode([0, "transform must return a dict or None, not " + typ(r).__name__])
                for k in r:
                    if typ(k) is not strt:
                        return encode([0, "transform returned a dict with a non-string key: %r" % (k,)])
                try:
                    body = encode(r)
                except (TypeError, ValueError, RecursionError) as e:
                    return encode([0, "transform result is not JSON: " + describe(e)])
                return "[1," + body + "]"
            except KeyboardInterrupt:
                return timeout_result
            except MemoryError:
                return memory_result
            except Base as e:
                return encode([0, describe(e)])

        def run(batch):
            events = decode(batch)
            out = []
            for i in range(len(events)):
                status = tick(i)
                if status:
                    out[-1] = timeout_result if status == 1 else memory_result
                    if status == 2:
                        return "[" + ",".join(out) + "]"
                try:
                    res = one(events[i])
                except Base:
                    res = timeout_result
                out.append(res)
            status = tick(len(events))
            if status and out:
                out[-1] = timeout_result if status == 1 else memory_result
            return "[" + ",".join(out) + "]"

        return run

    return load
`;
