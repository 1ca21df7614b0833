/**
 * Function values and function application for the generated code.
 *
 * A JSONata lambda compiles to a plain JS function taking its parameters positionally (it has
 * `arity`, the optional `signature` validator and the `_cl` mark). Built-ins are jsonata's own
 * `{_jsonata_function, implementation, signature}` definitions, and bindings may hold plain JS
 * functions: `applyInner` handles the three like jsonata's `applyInner`. Tail calls inside lambda
 * bodies return a `Thunk` which `apply` resolves in a loop, as jsonata's trampoline does, so
 * tail-recursive expressions run in constant stack.
 */
import { tick } from "./deadline.ts";
import { jsonataSync, type SignatureValidator } from "./interpreter.ts";
import { FOCUS, isFunction, jerr, norm } from "./runtime.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
const { utils, parseSignature } = jsonataSync.internals;

export interface CompiledLambda {
  (...args: any[]): any;
  arity: number;
  signature?: SignatureValidator;
  _cl: true;
  /** the body taking validated arguments positionally; may return a Thunk */
  _raw: (...args: any[]) => any;
}

/**
 * A function value for a lambda. Called through `apply` the body runs directly; called as a plain
 * JS function (by library code, or by the caller of an expression) it validates its signature and
 * resolves tail calls itself, as jsonata's lambda objects do.
 */
export function lambda(
  raw: (...args: any[]) => any,
  arity: number,
  signature?: SignatureValidator,
  tailCalls = false,
): CompiledLambda {
  let l: CompiledLambda;
  if (signature !== undefined || tailCalls) {
    l = ((...args: any[]) => apply(l, args, undefined)) as CompiledLambda;
  } else {
    l = raw as CompiledLambda;
  }
  l.arity = arity;
  if (signature !== undefined) l.signature = signature;
  l._cl = true;
  l._raw = raw;
  return l;
}

/** A pending tail call: evaluated procedure and arguments, resolved by `apply`. */
export class Thunk {
  constructor(
    readonly proc: any,
    readonly args: any[],
    readonly position: number | undefined,
    readonly token: unknown,
  ) {}
}

/** Object-like procedures get jsonata's decoration of errors raised inside them. */
function isProcObject(proc: any): boolean {
  return proc !== null && proc !== undefined && (typeof proc === "object" || proc._cl === true);
}

export function applyInner(proc: any, args: any[], input: any): any {
  // every application is a deadline step: the trampoline and library callbacks come through here
  tick();
  let validated = args;
  if (proc && proc.signature !== undefined) validated = proc.signature.validate(args, input);
  if (typeof proc === "function") {
    if (proc._cl === true) return proc._raw.apply(undefined, validated);
    return proc.apply(input, validated);
  }
  if (proc && proc._jsonata_function === true) {
    let result = proc.implementation.apply(FOCUS, validated);
    if (utils.isIterable(result)) result = result.next().value;
    return result;
  }
  if (proc && proc._jsonata_lambda === true && typeof proc.apply === "function") {
    // a lambda made by the jsonata interpreter (only reachable through user bindings)
    return proc.apply(undefined, validated);
  }
  throw jerr("T1006");
}

/** `apply`: application plus the tail-call trampoline. */
export function apply(proc: any, args: any[], input: any): any {
  return trampoline(applyInner(proc, args, input), input);
}

/** Runs pending tail calls until a value comes out; errors are attributed to the tail call. */
function trampoline(result: any, input: any): any {
  while (result instanceof Thunk) {
    const t = result;
    try {
      result = applyInner(t.proc, t.args, input);
    } catch (err) {
      throw decorateInner(err, t.proc, t.position, t.token);
    }
  }
  return result;
}

function decorateInner(err: any, proc: any, position: number | undefined, token: unknown): any {
  if (err !== null && typeof err === "object" && isProcObject(proc)) {
    if (err.token === undefined && token !== undefined) err.token = token;
    err.position = position || err.position;
  }
  return err;
}

/** evaluateFunction's application: errors get the call's position and the function's name. */
export function decorateCall(err: any, proc: any, position: number | undefined, name: unknown): any {
  if (err !== null && typeof err === "object") {
    decorateInner(err, proc, position, name);
    if (!err.position) err.position = position;
    if (!err.token) err.token = name;
  }
  return err;
}

export function call(proc: any, args: any[], input: any, position: number | undefined, name: unknown): any {
  let result: any;
  try {
    result = applyInner(proc, args, input);
  } catch (err) {
    throw decorateCall(err, proc, position, name);
  }
  if (result instanceof Thunk) {
    try {
      result = trampoline(result, input);
    } catch (err) {
      // the tail calls already attributed the error; only fill in what is missing
      throw decorateCall(err, undefined, position, name);
    }
  }
  return result;
}

/** A built-in's error, raised on the fast path that skipped `apply`. */
export function nativeErr(err: any, position: number | undefined, name: string): any {
  if (err !== null && typeof err === "object") {
    if (err.token === undefined) err.token = name;
    err.position = position || err.position;
    if (!err.position) err.position = position;
  }
  return err;
}

/** evaluateFunction hands function-valued arguments over wrapped in a closure of the same arity. */
export function wrapArg(v: any): any {
  if (!isFunction(v)) return v;
  const closure = (...params: any[]) => apply(v, params, null);
  (closure as any).arity = utils.getFunctionArity(v);
  return closure;
}

/** Marker for `?` in a partial application. */
export const PLACEHOLDER: unique symbol = Symbol("jsonata.placeholder");

function nativeParamCount(f: (...a: any[]) => any): number {
  const m = /\(([^)]*)\)/.exec(f.toString());
  return m ? m[1]!.split(",").length : 0;
}

/** `evaluatePartialApplication`, after the arguments and the procedure are evaluated. */
export function partial(
  proc: any,
  args: any[],
  position: number | undefined,
  name: unknown,
  forgotDollar: boolean,
): any {
  if (proc !== undefined && proc !== null && proc._cl === true) {
    const raw = proc._raw;
    return partialOf(proc.arity, (full) => raw.apply(undefined, full), args);
  }
  if (proc && proc._jsonata_function === true) {
    const impl = proc.implementation;
    return partialOf(nativeParamCount(impl), (full) => impl.apply(FOCUS, full), args);
  }
  if (typeof proc === "function") {
    return partialOf(nativeParamCount(proc), (full) => proc.apply(FOCUS, full), args);
  }
  if (proc === undefined && forgotDollar) throw jerr("T1007", position, { token: name });
  throw jerr("T1008", position, { token: name });
}

function partialOf(paramCount: number, invoke: (full: any[]) => any, args: any[]): any {
  let unbound = 0;
  for (let i = 0; i < paramCount; i++) if (args[i] === PLACEHOLDER) unbound++;
  const f = (...rest: any[]) => {
    const full: any[] = new Array(paramCount);
    let next = 0;
    for (let i = 0; i < paramCount; i++) full[i] = args[i] === PLACEHOLDER ? rest[next++] : args[i];
    return invoke(full);
  };
  return lambda(f, unbound, undefined, true);
}

/** `f ~> g` for two functions: λ($x){ $g($f($x)) }. */
export function compose(f: any, g: any): any {
  return lambda(
    (x: any) => new Thunk(g, [norm(call(f, [wrapArg(x)], null, undefined, "f"))], undefined, "g"),
    1,
    undefined,
    true,
  );
}

/** The signature of a transform (`|pattern|update|`) function. */
const transformSignature = parseSignature("<(oa):o>");

export interface TransformParts {
  clone: () => any;
  pattern: (obj: any) => any;
  update: (match: any) => any;
  remove?: (match: any) => any;
  position?: number;
  updatePosition?: number;
  deletePosition?: number;
}

/** `evaluateTransformExpression` */
export function transform(parts: TransformParts): any {
  const transformer = (obj: any): any => {
    if (obj === undefined) return undefined;
    const cloneFunction = parts.clone();
    if (!isFunction(cloneFunction)) throw jerr("T2013", parts.position);
    const result = apply(cloneFunction, [obj], null);
    let matches = parts.pattern(result);
    if (matches !== undefined) {
      if (!Array.isArray(matches)) matches = [matches];
      for (let ii = 0; ii < matches.length; ii++) {
        const match = matches[ii];
        const update = parts.update(match);
        if (update !== undefined) {
          if (typeof update !== "object" || update === null || Array.isArray(update)) {
            throw jerr("T2011", parts.updatePosition, { value: update });
          }
          for (const prop of Object.keys(update)) match[prop] = update[prop];
        }
        if (parts.remove !== undefined) {
          let deletions = parts.remove(match);
          if (deletions !== undefined) {
            const val = deletions;
            if (!Array.isArray(deletions)) deletions = [deletions];
            if (!utils.isArrayOfStrings(deletions)) throw jerr("T2012", parts.deletePosition, { value: val });
            for (let jj = 0; jj < deletions.length; jj++) {
              if (typeof match === "object" && match !== null) delete match[deletions[jj]];
            }
          }
        }
      }
    }
    return result;
  };
  return { _jsonata_function: true, implementation: transformer, signature: transformSignature };
}

/** `lhs ~> f` where `f` is not written as a call. */
export function applyTo(lhs: any, f: any, position: number | undefined): any {
  if (!isFunction(f)) throw jerr("T2006", position, { value: f });
  if (isFunction(lhs)) return compose(lhs, f);
  return apply(f, [lhs], null);
}
