/**
 * A synchronous copy of the installed `jsonata` interpreter.
 *
 * jsonata 2.x is written with `async`/`await` throughout (so that user functions may return
 * Promises), which makes every `evaluate` asynchronous even though none of the built-in paths ever
 * waits for anything. We load the installed package's source text, strip the `async`/`await`
 * keywords (and the two `Promise.all` fan-outs, which become plain arrays), and evaluate the result.
 * The result is the very same interpreter - same parser, same evaluator, same function library -
 * only synchronous. It also exposes a few internals (function library, signature parser, utils)
 * that the compiler's runtime reuses so that rarely used built-ins behave exactly like jsonata.
 *
 * The transform is validated when this module loads: if the source no longer has the expected
 * shape (a future jsonata release), loading throws a clear error instead of silently misbehaving.
 *
 * The same transform splices the deadline's step counter (deadline.ts) into the places where
 * jsonata's own code can run without bound, so the interpreter and the library functions the
 * compiled code reuses stop at the time limit too.
 *
 * Limitation: a user-supplied binding that is an async JS function returns a Promise and that
 * Promise is not awaited (the interpreter is synchronous). Built-ins never do that.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { checkNow, nativeStep, tick, tickWork } from "./deadline.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */

export interface SyncJsonataInstance {
  evaluate(input: unknown, bindings?: Record<string, unknown>): unknown;
  assign(name: string | symbol, value: unknown): void;
  registerFunction(name: string, implementation: (...args: any[]) => unknown, signature?: string): void;
  ast(): JsonataNode;
  errors(): unknown;
}

/** A node of the tree `jsonata(expr).ast()` returns (post-processed by jsonata's parser). */
export interface JsonataNode {
  type: string;
  value?: any;
  position?: number;
  [key: string]: any;
}

export interface SignatureValidator {
  definition: string;
  validate(args: unknown[], context: unknown): unknown[];
}

type AnyFunction = (...args: any[]) => any;

export interface JsonataInternals {
  /** jsonata's function library (functions.js), by implementation name */
  fn: Record<"boolean" | "string" | "append" | "lookup" | "sort" | "exists", AnyFunction> & Record<string, AnyFunction>;
  datetime: Record<"fromMillis" | "toMillis" | "formatInteger" | "parseInteger", AnyFunction>;
  utils: Record<
    | "isNumeric"
    | "isArrayOfNumbers"
    | "isArrayOfStrings"
    | "isDeepEqual"
    | "isIterable"
    | "getFunctionArity"
    | "isSequence"
    | "isFunction"
    | "isLambda"
    | "keys",
    AnyFunction
  >;
  parseSignature(sig: string): SignatureValidator;
  staticFrame: { lookup(name: string): any };
  defineFunction(func: (...args: any[]) => unknown, signature?: string): any;
  populateMessage(err: any): void;
}

export interface SyncJsonata {
  (expr: string, options?: Record<string, unknown>): SyncJsonataInstance;
  internals: JsonataInternals;
}

function replaceExactly(src: string, from: string, to: string, expected?: number): string {
  const parts = src.split(from);
  if (parts.length === 1 || (expected !== undefined && parts.length - 1 !== expected)) {
    throw new Error(
      `jsonata sync transform: expected ${expected ?? "some"} occurrence(s) of ${JSON.stringify(from)}, found ${parts.length - 1}`,
    );
  }
  return parts.join(to);
}

/**
 * Where jsonata's source gets a deadline step: [text, replacement]. Each text must occur exactly
 * once in the synchronous source, so a jsonata release that moves one fails loudly at load.
 */
const DEADLINE_STEPS: [string, string][] = [
  // every node the interpreter evaluates, and every function application (trampoline included)
  ["function evaluate(expr, input, environment) {", "function evaluate(expr, input, environment) { __tick();"],
  [
    "function applyInner(proc, args, input, environment) {",
    "function applyInner(proc, args, input, environment) { __tick();",
  ],
  // recursive over nested values: exponential on shared sub-trees
  ["function isDeepEqual(lhs, rhs) {", "function isDeepEqual(lhs, rhs) { __tick();"],
  ["str = JSON.stringify(arg, function (key, val) {", "str = JSON.stringify(arg, function (key, val) { __tick();"],
  ["function flatten(arg, flattened) {", "function flatten(arg, flattened) { __tick();"],
  ["function recurseDescendants(input, results) {", "function recurseDescendants(input, results) { __tick();"],
  ["function lookup(input, key) {", "function lookup(input, key) { __tick();"],
  ["function boolean(arg) {", "function boolean(arg) { __tick();"],
  ["function spread(arg) {", "function spread(arg) { __tick();"],
  [
    "function keys(arg) {\n        var result = this.createSequence();",
    "function keys(arg) { __tick();\n        var result = this.createSequence();",
  ],
  // steps that copy their operands: quadratic when repeated (grouping, $spread, $sort's merge)
  ["const size = arg1.length + arg2.length;", "const size = arg1.length + arg2.length; __tickWork(size);"],
  [
    "var merge_iter = function (result, left, right) {",
    "var merge_iter = function (result, left, right) { __tickWork(left.length + right.length);",
  ],
  ["result = new Array(size);", "__tick(); result = new Array(size);"],
  ["result[index] = item;", "result[index] = item; if ((index & 65535) === 65535) __tickWork(65536);"],
  [
    "var padLength = Math.abs(width) - length(str);",
    "var padLength = Math.abs(width) - length(str); __nativeStep(padLength);",
  ],
  // $eval wraps what its expression throws as D3121: an expired deadline throws again first
  [
    "// error evaluating the expression passed to $eval",
    "__checkNow(); // error evaluating the expression passed to $eval",
  ],
  // one backtracking regex can run for a second: read the clock around each match
  ["var match = re.exec(str);", "__checkNow(); var match = re.exec(str); __checkNow();"],
];

/** Source-to-source transform: async jsonata -> synchronous jsonata (+ internals export). */
export function makeSyncSource(src: string): string {
  let out = src;
  // the two parallel fan-outs: `await Promise.all(xs.map(async (..) => [k, await v]))`
  out = replaceExactly(out, "await Promise.all(", "(", 2);
  out = out.replace(/\basync\s+function\b/g, "function");
  out = out.replace(/\basync\s*\(/g, "(");
  out = out.replace(/\bawait\s+/g, "");
  // expose internals for the compiler runtime
  out = replaceExactly(
    out,
    "jsonata.parser = parser;",
    "jsonata.parser = parser; jsonata.internals = { fn: fn, datetime: datetime, utils: utils, parseSignature: parseSignature, staticFrame: staticFrame, defineFunction: defineFunction, populateMessage: populateMessage };",
    1,
  );
  for (const [from, to] of DEADLINE_STEPS) out = replaceExactly(out, from, to, 1);
  // sanity: no async/await keyword may remain in code (comments are harmless but we check all)
  const leftovers = out.match(/\b(async\s+function|async\s*\(|await\s)/g);
  if (leftovers) throw new Error(`jsonata sync transform: leftover ${leftovers.join(", ")}`);
  return out;
}

function load(): SyncJsonata {
  const require = createRequire(import.meta.url);
  const path = require.resolve("jsonata");
  const src = readFileSync(path, "utf8");
  const syncSrc = makeSyncSource(src);
  const mod: { exports: any } = { exports: {} };
  // The bundle is a UMD/browserify wrapper: it assigns `module.exports` when both exist.
  const factory = new Function(
    "module",
    "exports",
    "require",
    "__tick",
    "__tickWork",
    "__checkNow",
    "__nativeStep",
    `${syncSrc}\n//# sourceURL=jsonata-sync.js`,
  );
  factory(mod, mod.exports, undefined, tick, tickWork, checkNow, nativeStep);
  const jsonata = mod.exports as SyncJsonata;
  if (typeof jsonata !== "function" || !jsonata.internals)
    throw new Error("jsonata sync transform: module did not load");
  // self-test: must evaluate synchronously and correctly
  const probe = jsonata(
    '$sum([1,2,3].($ * 2)) & "-" & $uppercase("ok") & ($map([1], function($v){$v}) = 1 ? "y" : "n")',
  ).evaluate({});
  if (probe !== "12-OKy") throw new Error(`jsonata sync transform: self-test failed (${String(probe)})`);
  return jsonata;
}

export const jsonataSync: SyncJsonata = load();
