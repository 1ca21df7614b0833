/**
 * The built-in function table the compiler calls into.
 *
 * Implementations are jsonata's own (from the synchronous copy), so every built-in behaves exactly
 * as in jsonata. What the compiler adds is a cheap guard per call site: when every argument already
 * has the type its signature asks for, jsonata's signature validation would return the arguments
 * unchanged, so the generated code calls the implementation directly; anything else (missing
 * arguments taken from the context, values to wrap into arrays, type errors) goes through the full
 * validator.
 */
import { jsonataSync } from "./interpreter.ts";
import { now } from "./runtime.ts";
import { A, ANY, B, N, Q, S, U } from "./gen.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
const { staticFrame, defineFunction, datetime } = jsonataSync.internals;

export interface ParamSpec {
  /** accepted type letters (s n b l o a f j x) */
  types: string;
  /** item type of an `a<..>` parameter */
  subtype?: string;
  optional: boolean;
  /** `-`: taken from the context when missing */
  context: boolean;
  /** `+`: one or more */
  variadic: boolean;
}

export interface Builtin {
  name: string;
  def: {
    _jsonata_function: true;
    implementation: (...args: any[]) => any;
    signature: { definition: string; validate(args: unknown[], ctx: unknown): unknown[] };
  };
  params: ParamSpec[];
  /** type mask of the result */
  returns: number;
  /** may throw even with arguments that pass the guard */
  throws: boolean;
}

export function parseParams(signature: string): { params: ParamSpec[]; returns: string } {
  const params: ParamSpec[] = [];
  let i = 1;
  const skip = (open: string, close: string): number => {
    let depth = 1;
    let j = i + 1;
    for (; j < signature.length && depth > 0; j++) {
      if (signature[j] === open) depth++;
      else if (signature[j] === close) depth--;
    }
    return j - 1;
  };
  for (; i < signature.length; i++) {
    const ch = signature[i]!;
    if (ch === ":" || ch === ">") break;
    const prev = params[params.length - 1];
    if ("snbloafjx".includes(ch)) {
      params.push({ types: ch, optional: false, context: false, variadic: false });
    } else if (ch === "(") {
      const end = skip("(", ")");
      params.push({ types: signature.slice(i + 1, end), optional: false, context: false, variadic: false });
      i = end;
    } else if (ch === "<") {
      const end = skip("<", ">");
      if (prev) prev.subtype = signature.slice(i + 1, end);
      i = end;
    } else if (prev && ch === "?") prev.optional = true;
    else if (prev && ch === "-") prev.context = true;
    else if (prev && ch === "+") prev.variadic = true;
  }
  const colon = signature.indexOf(":");
  return { params, returns: colon >= 0 ? signature.charAt(colon + 1) : "" };
}

/** Built-ins whose implementation cannot throw once the arguments passed the guard. */
const NO_THROW = new Set([
  "lowercase",
  "uppercase",
  "length",
  "trim",
  "exists",
  "count",
  "keys",
  "lookup",
  "append",
  "reverse",
  "substringBefore",
  "substringAfter",
  "merge",
  "spread",
  "distinct",
  "sum",
  "max",
  "min",
  "average",
  "millis",
  "base64encode",
]);

const NAMES = [
  "sum",
  "count",
  "max",
  "min",
  "average",
  "string",
  "substring",
  "substringBefore",
  "substringAfter",
  "lowercase",
  "uppercase",
  "length",
  "trim",
  "pad",
  "match",
  "contains",
  "replace",
  "split",
  "join",
  "formatNumber",
  "formatBase",
  "formatInteger",
  "parseInteger",
  "number",
  "floor",
  "ceil",
  "round",
  "abs",
  "sqrt",
  "power",
  "random",
  "boolean",
  "not",
  "map",
  "zip",
  "filter",
  "single",
  "reduce",
  "sift",
  "keys",
  "lookup",
  "append",
  "exists",
  "spread",
  "merge",
  "reverse",
  "each",
  "error",
  "assert",
  "type",
  "sort",
  "shuffle",
  "distinct",
  "base64encode",
  "base64decode",
  "encodeUrlComponent",
  "encodeUrl",
  "decodeUrlComponent",
  "decodeUrl",
  "toMillis",
  "fromMillis",
  "clone",
];

function returnMask(letter: string): number {
  switch (letter) {
    case "s":
      return S | U;
    case "n":
      return N | U;
    case "b":
      return B | U;
    default:
      return ANY;
  }
}

function entry(name: string, def: any): Builtin {
  const { params, returns } = parseParams(def.signature.definition);
  return { name, def, params, returns: returnMask(returns), throws: !NO_THROW.has(name) };
}

export const BUILTINS = new Map<string, Builtin>();
for (const name of NAMES) BUILTINS.set(name, entry(name, staticFrame.lookup(name)));

// $now and $millis live one frame above the bindings in jsonata, bound per evaluation
BUILTINS.set(
  "now",
  entry(
    "now",
    defineFunction(
      (picture?: string, timezone?: string) => datetime.fromMillis(now().getTime(), picture, timezone),
      "<s?s?:s>",
    ),
  ),
);
BUILTINS.set(
  "millis",
  entry(
    "millis",
    defineFunction(() => now().getTime(), "<:n>"),
  ),
);

/**
 * Faster equivalents of a few hot built-ins, used on the fast path only (the guard has checked the
 * argument types). Each falls back to jsonata's implementation outside the cases it handles.
 */
const stringImpl = BUILTINS.get("string")!.def.implementation;
const substringImpl = BUILTINS.get("substring")!.def.implementation;
const SURROGATE = /[\uD800-\uDFFF]/;
export const FAST_IMPL = new Map<string, (...args: any[]) => any>([
  [
    // jsonata slices an array of code points; without surrogate pairs that is String#slice
    // (both convert and clamp the indexes the same way)
    "substring",
    function (this: unknown, str: string | undefined, start: number, length?: number) {
      if (str === undefined || SURROGATE.test(str)) return substringImpl.call(this, str, start, length);
      if (str.length + start < 0) start = 0;
      if (length === undefined) return str.slice(start);
      if (length <= 0) return "";
      return str.slice(start, start >= 0 ? start + length : str.length + start + length);
    },
  ],
  [
    // a number, boolean or null comes out as jsonata's JSON.stringify-with-replacer writes it
    "string",
    function (this: unknown, arg: unknown, prettify?: boolean) {
      if (typeof arg === "number" && Number.isFinite(arg))
        return String(Number.isInteger(arg) ? arg : Number(arg.toPrecision(15)));
      if (typeof arg === "boolean" || arg === null) return String(arg);
      return stringImpl.call(this, arg, prettify);
    },
  ],
]);

/** `$eval` needs the compiler itself; index.ts installs the implementation. */
const evalDef = defineFunction(function (this: any, expr: unknown, focus: unknown) {
  return evalHook.run(expr, focus, this?.input, undefined, arguments.length);
}, "<sx?:x>");
BUILTINS.set("eval", { ...entry("eval", evalDef), throws: true });

export const evalHook: {
  run: (
    expr: unknown,
    focus: unknown,
    input: unknown,
    bindings: Record<string, unknown> | undefined,
    argc: number,
  ) => unknown;
} = {
  run: () => {
    throw new Error("jsonata $eval: compiler not installed");
  },
};

/** A JS condition testing that `arg` already matches `param`, given its static type mask. */
export function guard(param: ParamSpec, arg: string, mask: number): string {
  const parts: string[] = [];
  let allowed = 0;
  let allowsMissing = true;
  for (const t of param.types) {
    switch (t) {
      case "x":
        return "true";
      case "s":
        parts.push(`typeof ${arg} === "string"`);
        allowed |= S;
        break;
      case "n":
        parts.push(`typeof ${arg} === "number"`);
        allowed |= N;
        break;
      case "b":
        parts.push(`typeof ${arg} === "boolean"`);
        allowed |= B;
        break;
      case "l":
        parts.push(`${arg} === null`);
        break;
      case "o":
        parts.push(`R.isObject(${arg})`);
        break;
      case "a":
        if (param.subtype) parts.push(`R.isArrayOf(${arg}, ${JSON.stringify(param.subtype.charAt(0))})`);
        else {
          parts.push(`Array.isArray(${arg})`);
          allowed |= A | Q;
        }
        break;
      case "f":
        parts.push(`R.isFunction(${arg})`);
        if (param.types.length === 1) allowsMissing = false;
        break;
      case "j":
        parts.push(`(${arg} !== undefined && !R.isFunction(${arg}))`);
        allowsMissing = false;
        break;
      default:
        return "false";
    }
  }
  if (allowsMissing) allowed |= U;
  if (allowed !== 0 && (mask & ~allowed) === 0) return "true";
  if (allowsMissing) parts.push(`${arg} === undefined`);
  return parts.length === 1 ? parts[0]! : `(${parts.join(" || ")})`;
}

export interface CallPlan {
  /** conditions under which validation would return the arguments unchanged */
  conds: string[];
  /** `a` parameters: validation wraps a single value into an array, the fast path does it too */
  arrays: { index: number; subtype?: string }[];
}

/**
 * How a call can skip jsonata's validator, or undefined when it must always go through it
 * (variadic signature, too many arguments, or a missing argument to take from the context).
 * With every argument matching its parameter in place, the validator's greedy regex match assigns
 * them positionally, which is what makes the guard exact.
 */
export function callPlan(b: Builtin, args: { c: string; m: number }[]): CallPlan | undefined {
  if (b.params.some((p) => p.variadic)) return undefined;
  if (args.length > b.params.length) return undefined;
  const plan: CallPlan = { conds: [], arrays: [] };
  for (let i = 0; i < b.params.length; i++) {
    const p = b.params[i]!;
    const a = args[i];
    if (a === undefined) {
      if (p.context || !p.optional) return undefined;
      continue;
    }
    if (p.types === "a") {
      plan.arrays.push({ index: i, subtype: p.subtype });
      continue;
    }
    const g = guard(p, a.c, a.m);
    if (g === "false") return undefined;
    if (g !== "true") plan.conds.push(g);
  }
  return plan;
}

/** Whether parameter `i` of the built-in may receive a function (so the argument must be wrapped). */
export function takesFunction(b: Builtin, i: number): boolean {
  const p = b.params[Math.min(i, b.params.length - 1)];
  if (p === undefined) return true;
  // a typed array (`a<n>`) never accepts functions; a plain `a` wraps any value
  return /[fx]/.test(p.types) || (p.types.includes("a") && p.subtype === undefined);
}
