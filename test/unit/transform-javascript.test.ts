import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fixture from "../fixtures/segment-identify.json" with { type: "json" };
import { createJavaScriptTransform } from "../../src/pipeline/transform/javascript.ts";
import {
  TransformLoadError,
  type SandboxedTransform,
  type TransformResult,
} from "../../src/pipeline/transform/types.ts";

/**
 * A small memory limit so allocation cases stay fast; a time limit a good event never comes near,
 * even on a loaded machine (a GC pause, a busy core), so only the runaway cases meet it.
 */
const limits = { timeoutMs: 500, memoryBytes: 16 * 1024 * 1024 };

const errorOf = (r: TransformResult | undefined) => (r && !r.ok ? r.error : `not a failure: ${JSON.stringify(r)}`);

/** One transformation that does something different per `event.kind`; most tests share one sandbox of it. */
const byKind = `
class MyError extends Error { constructor(m) { super(m); this.name = "MyError"; } }
function transform(event) {
  switch (event.kind) {
    case "throw": throw new Error("boom " + event.n);
    case "custom": throw new MyError("custom");
    case "loop": while (true) {}
    case "alloc": { let a = []; while (true) a.push(new Array(1e6)); }
    case "buffers": { const a = []; while (true) a.push(new ArrayBuffer(1 << 20)); }
    case "recurse": { const f = (n) => f(n + 1) + 1; return f(0); }
    case "stall": while (true) "x".repeat(1e6);
    case "number": return 42;
    case "string": return "str";
    case "array": return [1, 2];
    case "promise": return Promise.resolve({});
    case "async": return (async () => ({ a: 1 }))();
    case "date": return new Date(0);
    case "none": return undefined;
    case "null": return null;
    case "echo": return { json: JSON.stringify(event.data), proto: Object.getPrototypeOf(event) === Object.prototype };
    case "globals": return {
      process: typeof process, require: typeof require, fetch: typeof fetch, Bun: typeof Bun,
      globalProcess: typeof globalThis.process, globalRequire: typeof globalThis.require,
      setTimeout: typeof setTimeout, XMLHttpRequest: typeof XMLHttpRequest, WebAssembly: typeof WebAssembly,
      viaFunction: typeof Function("return this")().process, console: typeof console.log,
    };
    case "escape-constructor": return { p: this.constructor.constructor("return process")().pid };
    case "escape-function": return { p: Function("return process")().env };
    case "escape-require": return { fs: require("fs") };
    case "escape-globalRequire": return { fs: globalThis.require("fs") };
    case "escape-import": return import("fs");
    case "escape-fetch": return { r: fetch("http://127.0.0.1/") };
    case "escape-Bun": return { f: Bun.file("/etc/passwd") };
    case "pollute":
      Object.prototype.polluted = "yes";
      Array.prototype.push = function () { return -1 };
      JSON.stringify = () => "{}";
      return { tried: true };
    case "pristine": { const a = []; a.push(1); return { polluted: ({}).polluted ?? "no", push: a.length, json: JSON.stringify({ x: 1 }) }; }
  }
  return { n: event.n, email: event.traits.email.toLowerCase() };
}`;

const good = (n: number) => ({ ...fixture, kind: "good", n });
const okGood = (n: number): TransformResult => ({ ok: true, value: { n, email: "emily.johnson@example.com" } });
const bad = (kind: string, n = 0) => ({ ...fixture, kind, n });

let shared: SandboxedTransform;
beforeAll(async () => {
  shared = await createJavaScriptTransform(byKind, limits);
});
afterAll(() => shared.dispose());

describe("JavaScript transform", () => {
  test("maps the fixture identify event's traits", async () => {
    const t = await createJavaScriptTransform(`function transform(event) {
      const t = event.traits;
      return { email: t.email.toLowerCase(), plan: t.plan, company: t.company, job_title: t.jobTitle, country: t.country, user_id: event.userId };
    }`);
    try {
      expect(await t.transformBatch([fixture])).toEqual([
        {
          ok: true,
          value: {
            email: "emily.johnson@example.com",
            plan: "Enterprise",
            company: "Acme Corp",
            job_title: "Product Manager",
            country: "United States",
            user_id: "703991475",
          },
        },
      ]);
    } finally {
      t.dispose();
    }
  });

  test("the event arrives exactly as JSON would carry it", async () => {
    const data = {
      ...fixture,
      z: -0,
      big: 2 ** 40,
      f: 1.5,
      wide: "€ 😀",
      latin: "é",
      when: new Date(0),
      skip: undefined,
      arr: [undefined, 1],
      "0": "key",
    };
    expect(await shared.transformBatch([{ kind: "echo", data }])).toEqual([
      { ok: true, value: { json: JSON.stringify(data), proto: true } },
    ]);
  });

  test("undefined or null means no change", async () => {
    expect(await shared.transformBatch([bad("none"), bad("null")])).toEqual([
      { ok: true, value: undefined },
      { ok: true, value: undefined },
    ]);
  });

  test("in a mixed batch only the bad events fail", async () => {
    const kinds = [
      "throw",
      "custom",
      "loop",
      "alloc",
      "buffers",
      "recurse",
      "number",
      "string",
      "array",
      "promise",
      "async",
      "date",
    ];
    const events = [good(0), ...kinds.flatMap((k, i) => [bad(k, i + 1), good(100 + i)])];
    const results = await shared.transformBatch(events);
    expect(results).toHaveLength(events.length);
    results.forEach((r, i) => {
      const e = events[i]!;
      if (e.kind === "good") expect(r).toEqual(okGood(e.n));
      else expect(r?.ok).toBe(false);
    });
    const error = (kind: string) => errorOf(results[events.findIndex((e) => e.kind === kind)]);
    expect(error("throw")).toBe("Error: boom 1");
    expect(error("custom")).toBe("MyError: custom");
    expect(error("loop")).toBe("transform exceeded the time limit of 500 ms");
    expect(error("alloc")).toMatch(/exceeded the (time|memory) limit/);
    expect(error("buffers")).toBe("transform exceeded the memory limit of 16 MiB");
    expect(error("recurse")).toContain("stack overflow");
    expect(error("number")).toBe("transform must return an object (or undefined/null for no change), got a number");
    expect(error("string")).toContain("got a string");
    expect(error("array")).toContain("got an array");
    expect(error("promise")).toContain("async transforms are not supported");
    expect(error("async")).toContain("async transforms are not supported");
    expect(error("date")).toContain("instance of Date");
  });

  test("the sandbox keeps working after a timeout or running out of memory", async () => {
    expect(errorOf((await shared.transformBatch([bad("loop")]))[0])).toContain("time limit");
    expect(await shared.transformBatch([good(1)])).toEqual([okGood(1)]);
    expect(errorOf((await shared.transformBatch([bad("buffers")]))[0])).toContain("memory limit");
    expect(await shared.transformBatch([good(2), good(3)])).toEqual([okGood(2), okGood(3)]);
  });

  test("a loop of slow built-in calls (never reaching the interrupt check) is stopped and fails only its event", async () => {
    // QuickJS polls its interrupt handler every ~10k branches: ~10 s here. The watchdog stops the worker.
    // The answer itself shows the watchdog stopped it (no wall-clock bound: a loaded machine is slow).
    const results = await shared.transformBatch([good(1), bad("stall"), good(3)]);
    expect(results).toEqual([
      okGood(1),
      { ok: false, error: "transform exceeded the time limit of 500 ms (sandbox stopped after 1250 ms)" },
      okGood(3),
    ]);
    expect(await shared.transformBatch([good(4)])).toEqual([okGood(4)]);
  });

  test("a large batch keeps its order across messages and chunks", async () => {
    const events = Array.from({ length: 1300 }, (_, i) => (i === 700 ? bad("throw", i) : good(i)));
    const results = await shared.transformBatch(events);
    expect(results).toHaveLength(1300);
    results.forEach((r, i) => expect(r).toEqual(i === 700 ? { ok: false, error: "Error: boom 700" } : okGood(i)));
  });

  test("an event that cannot be serialized fails alone", async () => {
    const cyclic: Record<string, unknown> = { ...good(2) };
    cyclic.self = cyclic;
    const results = await shared.transformBatch([good(1), cyclic, { ...good(3), big: 1n }, good(4)]);
    expect(results[0]).toEqual(okGood(1));
    expect(errorOf(results[1])).toContain("not JSON-serializable");
    expect(errorOf(results[2])).toContain("not JSON-serializable");
    expect(results[3]).toEqual(okGood(4));
  });

  test("concurrent batches are served in turn", async () => {
    const [a, b] = await Promise.all([shared.transformBatch([good(1), good(2)]), shared.transformBatch([good(3)])]);
    expect(a).toEqual([okGood(1), okGood(2)]);
    expect(b).toEqual([okGood(3)]);
  });
});

describe("JavaScript transform sandbox", () => {
  test("no host objects: process, require, fetch, Bun, timers, WebAssembly", async () => {
    expect(await shared.transformBatch([bad("globals")])).toEqual([
      {
        ok: true,
        value: {
          process: "undefined",
          require: "undefined",
          fetch: "undefined",
          Bun: "undefined",
          globalProcess: "undefined",
          globalRequire: "undefined",
          setTimeout: "undefined",
          XMLHttpRequest: "undefined",
          WebAssembly: "undefined",
          viaFunction: "undefined",
          console: "function",
        },
      },
    ]);
  });

  test("escape attempts fail only their own event", async () => {
    const hows = ["constructor", "function", "require", "globalRequire", "import", "fetch", "Bun"];
    const results = await shared.transformBatch([good(0), ...hows.map((h) => bad(`escape-${h}`)), good(1)]);
    expect(results[0]).toEqual(okGood(0));
    expect(results.at(-1)).toEqual(okGood(1));
    const error = (h: string) => errorOf(results[1 + hows.indexOf(h)]);
    expect(error("constructor")).toBe("ReferenceError: 'process' is not defined");
    expect(error("function")).toBe("ReferenceError: 'process' is not defined");
    expect(error("require")).toBe("ReferenceError: 'require' is not defined");
    expect(error("globalRequire")).toContain("TypeError");
    expect(error("import")).toContain("got a Promise");
    expect(error("fetch")).toBe("ReferenceError: 'fetch' is not defined");
    expect(error("Bun")).toBe("ReferenceError: 'Bun' is not defined");
  });

  test("polluting built-in prototypes neither persists between events nor reaches the host", async () => {
    expect(await shared.transformBatch([bad("pollute"), bad("pristine")])).toEqual([
      { ok: true, value: { tried: true } },
      { ok: true, value: { polluted: "no", push: 1, json: '{"x":1}' } },
    ]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  test("code that does not load is a TransformLoadError", async () => {
    const attempts = await Promise.allSettled([
      createJavaScriptTransform("function transform(event) {\n  return { a: 1 +; }\n}"),
      createJavaScriptTransform("function map(event) { return {} }"),
      createJavaScriptTransform("var transform = 42;"),
      createJavaScriptTransform("throw new Error('at load')"),
      createJavaScriptTransform("while (true) {}", { timeoutMs: 50 }),
    ]);
    const messages = attempts.map((a) => {
      if (a.status === "fulfilled") {
        a.value.dispose();
        return "loaded";
      }
      expect(a.reason).toBeInstanceOf(TransformLoadError);
      return (a.reason as Error).message;
    });
    expect(messages[0]).toMatch(/^JavaScript transform does not load: SyntaxError: .*\(line 2, column \d+\)$/);
    expect(messages[1]).toBe("JavaScript transform does not define a function `transform(event)`");
    expect(messages[2]).toBe("JavaScript transform does not define a function `transform(event)`");
    expect(messages[3]).toMatch(/Error: at load/);
    expect(messages[4]).toContain("top-level code ran longer than 1000 ms");
  });

  test("transform may be an arrow function in a const; disposed transforms fail events instead of throwing", async () => {
    const t = await createJavaScriptTransform(`const transform = (e) => ({ n: e.n });`);
    expect(await t.transformBatch([{ n: 1 }])).toEqual([{ ok: true, value: { n: 1 } }]);
    t.dispose();
    expect(await t.transformBatch([{ n: 2 }])).toEqual([{ ok: false, error: "transform disposed" }]);
  });
});
