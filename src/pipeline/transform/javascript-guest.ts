/**
 * Guest-side code for the JavaScript sandbox (evaluated inside QuickJS, never in the host).
 *
 * `runnerFactorySource` is evaluated before the user's code, so the intrinsics it captures
 * (JSON.parse, JSON.stringify, Array.isArray, ...) are pristine whatever the user's code does later.
 * Calling it with (tick, transform) gives `{ run, take }`:
 *  - run(batch): takes the batch (JSON text, or the array decoded from bjson), calls `tick()` (counts
 *    events for the host, see cellTickFactorySource; reachable only through this closure) before each
 *    event and once after the loop, and returns a JSON array of TransformResult, one per event; after an
 *    out-of-memory it stops early (fewer results: the host rebuilds the sandbox for the rest). Each event
 *    is released once done (a whole batch kept alive makes every GC pass slower). The runner uses only
 *    intrinsics captured before user code ran; user code can at most garble its own results, which the
 *    host validates.
 *  - take(): the results of the events that completed before an uncatchable abort (interrupt, OOM).
 */
export const runnerFactorySource = String.raw`(function () {
  "use strict";
  var parse = JSON.parse, stringify = JSON.stringify, isArray = Array.isArray,
      getProto = Object.getPrototypeOf, ObjProto = Object.prototype, PromiseCtor = Promise, ErrorCtor = Error,
      join = Function.prototype.call.bind(Array.prototype.join);
  var PREFIX = "transform must return an object (or undefined/null for no change), got ";
  function describe(v) {
    var t = typeof v;
    if (t === "object") {
      if (isArray(v)) return "an array";
      if (v instanceof PromiseCtor) return "a Promise (async transforms are not supported)";
      var c;
      try { c = getProto(v).constructor.name; } catch (e) { c = undefined; }
      return "an instance of " + (typeof c === "string" && c ? c : "a class");
    }
    if (t === "function") return "a function";
    return "a " + t;
  }
  function errText(e) {
    try {
      if (e === null) return "InternalError: out of memory"; // QuickJS throws null when it cannot even allocate the error
      if (e instanceof ErrorCtor) return "" + e.name + ": " + e.message;
      var s = typeof e === "string" ? e : stringify(e);
      return "transform threw " + (typeof s === "string" ? s : "" + e);
    } catch (x) {
      return "transform threw a value that cannot be printed";
    }
  }
  function fail(msg) { return '{"ok":false,"error":' + stringify(msg) + "}"; }
  return function (tick, T) {
    var out = [], n = 0;
    function run(json) { // the batch: JSON text, or the array decoded from bjson
      out = []; n = 0;
      var events = typeof json === "string" ? parse(json) : json;
      if (!isArray(events)) throw new TypeError("tributary: the batch did not reach the sandbox");
      var len = events.length;
      for (var i = 0; i < len; i++) {
        tick();
        var r;
        try {
          var ev = events[i];
          events[i] = undefined; // free each event once done: a batch kept alive makes every GC pass slow
          var v = T(ev);
          if (v === undefined || v === null) r = '{"ok":true}';
          else if (typeof v !== "object" || isArray(v) || v instanceof PromiseCtor) r = fail(PREFIX + describe(v));
          else {
            var p = getProto(v);
            if (p !== ObjProto && p !== null) r = fail(PREFIX + describe(v));
            else {
              var s = stringify(v);
              r = typeof s === "string" && s[0] === "{" ? '{"ok":true,"value":' + s + "}"
                : fail("transform result does not serialize to a JSON object (check toJSON)");
            }
          }
        } catch (e) {
          var text = errText(e);
          r = fail(text);
          if (text === "InternalError: out of memory") {
            // Memory may still be held (globals): stop here, the host rebuilds the sandbox for the rest.
            out[n++] = r;
            break;
          }
        }
        out[n++] = r;
      }
      tick();
      return "[" + join(out, ",") + "]";
    }
    function take() { return "[" + join(out, ",") + "]"; }
    return { run: run, take: take };
  };
})()`;

/**
 * No host objects in the guest: a no-op `console` (so user code that logs does not throw) is the only
 * global added. Returns the names of the built-in globals, for `lockdownSource`.
 */
export const preludeSource = String.raw`(function () {
  var noop = function () {};
  Object.defineProperty(globalThis, "console", {
    value: Object.freeze({ log: noop, info: noop, warn: noop, error: noop, debug: noop, trace: noop }),
    writable: false, enumerable: false, configurable: false,
  });
  return Object.getOwnPropertyNames(globalThis);
})()`;

/**
 * Evaluated before the user's code (so it works with pristine intrinsics), the result called after it
 * with the names of the built-in globals (from preludeSource): freezes everything reachable from them,
 * so deliberate top-level polyfills stay but one event cannot pollute Object.prototype & co. for the
 * next ones. The global object itself is not frozen: the user's own top-level variables remain (see
 * javascript.ts).
 */
export const lockdownSource = String.raw`(function () {
  "use strict";
  var G = globalThis, gopd = Object.getOwnPropertyDescriptor, defProp = Object.defineProperty, freeze = Object.freeze,
      getProto = Object.getPrototypeOf, ownKeys = Reflect.ownKeys, call = Function.prototype.call,
      hasOwn = call.bind(Object.prototype.hasOwnProperty), wsHas = call.bind(WeakSet.prototype.has),
      wsAdd = call.bind(WeakSet.prototype.add), WS = WeakSet, TypeErr = TypeError, Str = String;
  var errs = [Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError, AggregateError];
  if (typeof InternalError === "function") errs[errs.length] = InternalError;
  var hidden = [
    function () {}, function* () {}, async function () {}, async function* () {}, (function* () {})(),
    [][Symbol.iterator](), "" [Symbol.iterator](), new Map().entries(), new Set().values(),
    /a/[Symbol.matchAll](""), getProto(Int8Array), (async function () {})(),
    Object.prototype, Function.prototype, Array.prototype, Promise.prototype,
  ];
  // Frozen prototypes make 'obj.toString = f' / 'this.name = "MyError"' fail on the instance (the
  // "override mistake"). As in SES, these few properties become accessors whose setter defines an own
  // property on the instance instead; assigning on the intrinsic itself still fails.
  function enable(obj, key) {
    var d = gopd(obj, key);
    if (!d || !("value" in d) || !d.configurable) return;
    var value = d.value;
    defProp(obj, key, {
      get: function () { return value; },
      set: function (v) {
        if (this === obj) throw new TypeErr("Cannot assign to read only property '" + Str(key) + "' of a built-in");
        if (hasOwn(this, key)) this[key] = v;
        else defProp(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable, configurable: false,
    });
  }
  var objKeys = ["constructor", "toString", "valueOf", "toLocaleString", "hasOwnProperty", "isPrototypeOf", "propertyIsEnumerable"];
  var objProto = Object.prototype, fnProto = Function.prototype, arrProto = Array.prototype, promiseProto = Promise.prototype;
  return function lockdown(names) {
    var seen = new WS(), todo = [], t = 0;
    wsAdd(seen, G);
    for (var i = 0; i < names.length; i++) {
      var d = gopd(G, names[i]);
      if (d) { todo[t++] = d.value; todo[t++] = d.get; todo[t++] = d.set; }
    }
    for (var j = 0; j < hidden.length; j++) todo[t++] = hidden[j];
    for (var a = 0; a < objKeys.length; a++) enable(objProto, objKeys[a]);
    for (var b = 0; b < errs.length; b++) {
      var ep = errs[b].prototype;
      enable(ep, "name"); enable(ep, "message"); enable(ep, "constructor"); enable(ep, "toString");
    }
    enable(fnProto, "constructor"); enable(fnProto, "toString");
    enable(arrProto, "constructor"); enable(arrProto, "toString");
    enable(promiseProto, "constructor");
    while (t > 0) {
      var o = todo[--t];
      todo[t] = undefined;
      if ((typeof o !== "object" && typeof o !== "function") || o === null || wsHas(seen, o)) continue;
      wsAdd(seen, o);
      freeze(o);
      todo[t++] = getProto(o);
      var keys = ownKeys(o);
      for (var k = 0; k < keys.length; k++) {
        var pd = gopd(o, keys[k]);
        if (pd) { todo[t++] = pd.value; todo[t++] = pd.get; todo[t++] = pd.set; }
      }
    }
  };
})()`;

/** (decoded batch of one, expectedJson) → whether bjson decoding gave exactly [JSON.parse(expectedJson)]. */
export const bjsonCheckSource = String.raw`(function (batch, expected) {
  if (!Array.isArray(batch) || batch.length !== 1) return false;
  var x = batch[0], own = Object.getOwnPropertyDescriptor(x, "__proto__");
  return JSON.stringify(x) === expected && x[0] === "index key" && x["7"].type === "predefined atom name" &&
    Object.getPrototypeOf(x) === Object.prototype && own !== undefined && own.value.own === true && x.w.length === 11;
})`;

/**
 * (ArrayBuffer, hostTick) → the runner's tick: increments the first Int32 of the buffer (read by the host
 * straight from WASM memory) and calls the host only for a run's first event or when 5 ms passed since
 * it last did, so slow events are reported as they start while fast ones cost no host call. Evaluated before user code (pristine Date.now).
 */
export const cellTickFactorySource = String.raw`(function () {
  var now = Date.now, Int32 = Int32Array;
  return function (ab, hostTick) {
    var cell = new Int32(ab), last = -Infinity;
    return function tick() {
      var c = ++cell[0], t = now(); // the host resets the count before each run
      if (c === 1 || t - last >= 5) { last = t; hostTick(); }
    };
  };
})()`;
