/**
 * Value semantics shared by the generated code: sequences and their normalisation, the values of
 * constructors, bindings. Paths, operators and tuple streams have their own runtime modules.
 *
 * Every helper mirrors one piece of jsonata's evaluator (named in its comment) on the same value
 * representation - arrays flagged `sequence`, `keepSingleton`, `cons`, `outerWrapper`,
 * `tupleStream` - so values flow between generated code and jsonata's own function library
 * unchanged, and results stay identical down to which arrays are sequences.
 */
import { jsonataSync } from "./interpreter.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
export type Seq = any[] & {
  sequence?: boolean;
  keepSingleton?: boolean;
  cons?: boolean;
  outerWrapper?: boolean;
  tupleStream?: boolean;
};

const { fn } = jsonataSync.internals;
const propIsEnum = Object.prototype.propertyIsEnumerable;

/** jsonata's error shape: a plain object with a code, decorated while it unwinds. */
export function jerr(code: string, position?: number, extra?: Record<string, unknown>): Record<string, unknown> {
  const e: Record<string, unknown> = { code, position };
  if (extra) Object.assign(e, extra);
  return e;
}

/** `createSequence()` */
export function seq(): Seq {
  const s: Seq = [];
  s.sequence = true;
  return s;
}

/** `createSequence(x)` */
export function seq1(x: unknown): Seq {
  const s: Seq = [x];
  s.sequence = true;
  return s;
}

/**
 * The evaluation timestamp behind $now(), $millis() and date parsing. jsonata fixes it once per
 * evaluate call; entry points save and restore it so nested evaluations do not disturb it.
 */
export const clock: { ts: Date | undefined } = { ts: undefined };

export function now(): Date {
  return (clock.ts ??= new Date());
}

/** The `this` jsonata passes to its library functions; `environment.timestamp` is read by date parsing. */
export const FOCUS = {
  createSequence: createSequence,
  options: undefined,
  environment: {
    get timestamp(): Date {
      return now();
    },
  },
  input: undefined as unknown,
};

function createSequence(...args: unknown[]): Seq {
  return args.length === 1 ? seq1(args[0]) : seq();
}

export function isFunction(v: any): boolean {
  return (v && (v._jsonata_function === true || v._jsonata_lambda === true)) || typeof v === "function";
}

export function isSequence(v: any): boolean {
  return v.sequence === true && Array.isArray(v);
}

/** The tail of `evaluate`: empty sequences vanish and singletons unwrap unless kept. */
export function norm(r: any): any {
  if (r && r.sequence === true && Array.isArray(r) && !(r as Seq).tupleStream) {
    if (r.length === 0) return undefined;
    if (r.length === 1) return (r as Seq).keepSingleton ? r : r[0];
  }
  return r;
}

/** `norm` for nodes flagged `keepArray` (a `[]` suffix). */
export function normK(r: any): any {
  if (r && r.sequence === true && Array.isArray(r) && !(r as Seq).tupleStream) {
    (r as Seq).keepSingleton = true;
    if (r.length === 0) return undefined;
    if (r.length === 1) return r;
  }
  return r;
}

/** `fn.append` (used by array constructors and grouping). */
export function append(a: any, b: any): any {
  return fn.append.call(FOCUS, a, b);
}

/** An array constructor item that is not itself an array constructor. */
export function arrayAdd(result: any[], value: any): any[] {
  if (value === undefined) return result;
  if (!Array.isArray(value)) {
    result.push(value);
    return result;
  }
  return fn.append.call(FOCUS, result, value);
}

/** Flags an array constructor's result as a constructed array (not to be flattened by paths). */
export function markCons(a: any[]): any[] {
  Object.defineProperty(a, "cons", { enumerable: false, configurable: false, value: true });
  return a;
}

/** `$` - the context value, with the top-level array wrapper removed. */
export function context(input: any): any {
  return input && input.outerWrapper ? input[0] : input;
}

/** Bindings passed to evaluate: an own enumerable property, like `utils.keys(bindings)` sees. */
export function hasBinding(bindings: Record<string, unknown> | undefined, name: string): boolean {
  return bindings !== undefined && bindings !== null && propIsEnum.call(bindings, name);
}

/** Objects built by constructors have no prototype, as in jsonata. */
export function obj(): Record<string, unknown> {
  return Object.create(null);
}

export function isObject(v: any): boolean {
  return (
    v !== null &&
    typeof v === "object" &&
    !Array.isArray(v) &&
    v._jsonata_function !== true &&
    v._jsonata_lambda !== true
  );
}

function symbolOf(v: any): string {
  if (isFunction(v)) return "f";
  switch (typeof v) {
    case "string":
      return "s";
    case "number":
      return "n";
    case "boolean":
      return "b";
    case "object":
      return v === null ? "l" : Array.isArray(v) ? "a" : "o";
    default:
      return "m";
  }
}

/** An array whose items all have the signature type `t` (what `a<t>` accepts unchanged). */
export function isArrayOf(v: any, t: string): boolean {
  if (!Array.isArray(v)) return false;
  if (v.length === 0) return true;
  if (symbolOf(v[0]) !== t) return false;
  for (let i = 1; i < v.length; i++) if (symbolOf(v[i]) !== t) return false;
  return true;
}

/** A variable bound by the evaluate() bindings (and nowhere in the expression). */
export function free(bindings: Record<string, unknown> | undefined, name: string): unknown {
  return hasBinding(bindings, name) ? bindings![name] : undefined;
}

/** The top-level input array, wrapped so that paths treat it as one value. */
export function outer(input: any[]): Seq {
  const s = seq1(input);
  s.outerWrapper = true;
  return s;
}

/** Sentinel of a frame variable that `:=` has not bound (yet). */
export const UNB: unique symbol = Symbol("jsonata.unbound");

/** What `arrayArg` returns when only the full validator can decide (it will throw). */
export const BAD_ARG: unique symbol = Symbol("jsonata.badArgument");

/**
 * An argument for an `a` / `a<t>` parameter, as the signature validator leaves it: arrays whose
 * items have the type as they are, a single value of the type wrapped into an array.
 */
export function arrayArg(v: any, subtype: string | undefined): any {
  if (v === undefined) return v;
  if (Array.isArray(v)) return subtype === undefined || isArrayOf(v, subtype.charAt(0)) ? v : BAD_ARG;
  if (subtype !== undefined && symbolOf(v) !== subtype) return BAD_ARG;
  return [v];
}
