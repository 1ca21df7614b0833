/**
 * Runtime of location paths: field lookup, steps, predicates, wildcards, order-by and grouping
 * (`evaluatePath`, `evaluateStep`, `evaluateFilter`, `evaluateWildcard`, `evaluateDescendants`,
 * `evaluateSortExpression`, `evaluateGroupExpression`).
 */
import { tick } from "./deadline.ts";
import { jsonataSync } from "./interpreter.ts";
import { FOCUS, isFunction, isSequence, jerr, norm, seq, seq1, type Seq } from "./runtime.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
const { fn, utils } = jsonataSync.internals;
const hasOwn = Object.prototype.hasOwnProperty;

/** `fn.lookup` */
export function lookup(input: any, key: string): any {
  if (Array.isArray(input)) {
    // nested arrays recurse: exponential on shared sub-arrays
    tick();
    const result = seq();
    for (let i = 0; i < input.length; i++) {
      const res = lookup(input[i], key);
      if (res !== undefined) {
        if (Array.isArray(res)) for (let j = 0; j < res.length; j++) result.push(res[j]);
        else result.push(res);
      }
    }
    return result;
  }
  if (
    input !== null &&
    typeof input === "object" &&
    hasOwn.call(input, key) &&
    input._jsonata_function !== true &&
    input._jsonata_lambda !== true
  ) {
    return input[key];
  }
  return undefined;
}

/** The end of `evaluateStep`: a lone array at the last step is the result, otherwise flatten one level. */
export function stepFinish(r: Seq, last: boolean): Seq {
  if (last && r.length === 1 && Array.isArray(r[0]) && !isSequence(r[0])) return r[0];
  let i = 0;
  for (; i < r.length; i++) {
    const x = r[i];
    if (Array.isArray(x) && !(x as Seq).cons) break;
  }
  if (i === r.length) return r;
  const out = seq();
  for (let j = 0; j < r.length; j++) {
    const x = r[j];
    if (!Array.isArray(x) || (x as Seq).cons) out.push(x);
    else for (let k = 0; k < x.length; k++) out.push(x[k]);
  }
  return out;
}

/** A path of plain field names (`a.b.c`), as `evaluatePath` + `evaluate` would return it. */
export function pathNames(input: any, names: readonly string[]): any {
  if (Array.isArray(input)) return pathNamesFrom(input, names, 0);
  let cur = input;
  const last = names.length - 1;
  for (let i = 0; i <= last; i++) {
    const key = names[i]!;
    if (
      cur === null ||
      typeof cur !== "object" ||
      !hasOwn.call(cur, key) ||
      cur._jsonata_function === true ||
      cur._jsonata_lambda === true
    ) {
      return undefined;
    }
    const v = cur[key];
    if (v === undefined) return undefined;
    if (Array.isArray(v)) {
      if (i === last && (v as Seq).sequence !== true) return v;
      return norm(pathNamesFrom(seq1(cur), names, i));
    }
    cur = v;
  }
  return cur;
}

function pathNamesFrom(input: Seq, names: readonly string[], from: number): any {
  let inSeq: Seq = input;
  let res: Seq | undefined;
  const last = names.length - 1;
  for (let i = from; i <= last; i++) {
    const r = seq();
    for (let j = 0; j < inSeq.length; j++) {
      const v = norm(lookup(inSeq[j], names[i]!));
      if (v !== undefined) r.push(v);
    }
    res = stepFinish(r, i === last);
    if (res.length === 0) break;
    inSeq = res;
  }
  return from === 0 ? norm(res) : res;
}

/** The start of `evaluatePath`: the sequence the first step runs over. */
export function pathInput(input: any): Seq {
  return Array.isArray(input) ? input : seq1(input);
}

/** `keepSingletonArray` handling at the end of `evaluatePath`. */
export function keepSingletonPath(res: any): any {
  if (Array.isArray(res) && (res as Seq).cons && !(res as Seq).sequence) {
    res = seq1(res);
  }
  res.keepSingleton = true;
  return res;
}

/** `evaluateFilter` with a literal number predicate. */
export function filterIndex(input: any, value: number): Seq {
  let results: Seq = seq();
  if (input && input.tupleStream) results.tupleStream = true;
  if (!Array.isArray(input)) input = seq1(input);
  let index = Math.floor(value);
  if (index < 0) index = input.length + index;
  const item = input[index];
  if (item !== undefined) {
    if (Array.isArray(item)) results = item;
    else results.push(item);
  }
  return results;
}

/** The per-item test of `evaluateFilter` for a predicate result that is not a plain boolean. */
export function filterPush(out: Seq, res: any, item: unknown, index: number, length: number): void {
  if (utils.isNumeric(res)) res = [res];
  if (utils.isArrayOfNumbers(res)) {
    for (let k = 0; k < res.length; k++) {
      let ii = Math.floor(res[k]);
      if (ii < 0) ii = length + ii;
      if (ii === index) out.push(item);
    }
  } else if (fn.boolean(res)) {
    out.push(item);
  }
}

/** The input of a non-index `evaluateFilter`. */
export function filterInput(input: any): Seq {
  return Array.isArray(input) ? input : seq1(input);
}

export function filterOutput(input: any): Seq {
  const out = seq();
  if (input && input.tupleStream) out.tupleStream = true;
  return out;
}

/** The data an object constructor evaluates its values on, when every key is a literal. */
export function groupData(input: any[]): any {
  if (input.length === 0) {
    // jsonata adds an undefined entry so literal objects are produced from empty input
    input.push(undefined);
    return undefined;
  }
  let data = input[0];
  for (let i = 1; i < input.length; i++) data = fn.append.call(FOCUS, data, input[i]);
  return data;
}

/** `evaluateWildcard` */
export function wildcard(input: any): Seq {
  let results = seq();
  if (Array.isArray(input) && (input as Seq).outerWrapper && input.length > 0) input = input[0];
  if (input !== null && typeof input === "object" && !isFunction(input)) {
    for (const key of Object.keys(input)) {
      const value = input[key];
      if (Array.isArray(value)) results = fn.append.call(FOCUS, results, flatten(value, []));
      else results.push(value);
    }
  }
  return results;
}

function flatten(arg: any, flattened: any[]): any[] {
  tick();
  if (Array.isArray(arg)) for (const item of arg) flatten(item, flattened);
  else flattened.push(arg);
  return flattened;
}

/** `evaluateDescendants` */
export function descendants(input: any): any {
  if (input === undefined) return undefined;
  const results = seq();
  recurseDescendants(input, results);
  return results.length === 1 ? results[0] : results;
}

function recurseDescendants(input: any, results: Seq): void {
  tick();
  if (!Array.isArray(input)) results.push(input);
  if (Array.isArray(input)) {
    for (const member of input) recurseDescendants(member, results);
  } else if (input !== null && typeof input === "object" && !isFunction(input)) {
    for (const key of Object.keys(input)) recurseDescendants(input[key], results);
  }
}

/** A one-name path (`type`): `pathNames` without the loop. */
export function path1(input: any, key: string): any {
  if (input !== null && typeof input === "object" && !Array.isArray(input)) {
    if (!hasOwn.call(input, key) || input._jsonata_function === true || input._jsonata_lambda === true)
      return undefined;
    const v = input[key];
    if (Array.isArray(v) && (v as Seq).sequence === true) return pathNames(input, [key]);
    return v;
  }
  if (Array.isArray(input)) return pathNames(input, [key]);
  return undefined;
}

export interface SortTerm {
  f: (item: any) => any;
  descending: boolean;
}

/** `evaluateSortExpression` (non-tuple): jsonata's own merge sort with its comparator. */
export function sort(input: Seq, terms: SortTerm[], position: number | undefined): any {
  const comparator = (a: any, b: any): boolean => {
    tick();
    let comp = 0;
    for (let index = 0; comp === 0 && index < terms.length; index++) {
      const term = terms[index]!;
      const aa = term.f(a);
      const bb = term.f(b);
      const atype = typeof aa;
      const btype = typeof bb;
      if (atype === "undefined") {
        comp = btype === "undefined" ? 0 : 1;
        continue;
      }
      if (btype === "undefined") {
        comp = -1;
        continue;
      }
      if (!(atype === "string" || atype === "number") || !(btype === "string" || btype === "number")) {
        throw jerr("T2008", position, { value: !(atype === "string" || atype === "number") ? aa : bb });
      }
      if (atype !== btype) throw jerr("T2007", position, { value: aa, value2: bb });
      if (aa === bb) continue;
      comp = aa < bb ? -1 : 1;
      if (term.descending) comp = -comp;
    }
    return comp === 1;
  };
  return fn.sort.call(FOCUS, input, comparator);
}

/** `evaluateGroupExpression` (non-tuple) with key/value closures. */
export function group(
  input: any,
  pairs: [(x: any) => any, (x: any) => any][],
  position: number | undefined,
): Record<string, unknown> {
  const result: Record<string, unknown> = Object.create(null);
  const groups: Record<string, { data: any; exprIndex: number }> = Object.create(null);
  if (input && input.tupleStream) throw new Error("jsonata compiler: tuple stream reached a non-tuple group");
  if (!Array.isArray(input)) input = seq1(input);
  if (input.length === 0) input.push(undefined);
  for (let itemIndex = 0; itemIndex < input.length; itemIndex++) {
    tick();
    const item = input[itemIndex];
    for (let pairIndex = 0; pairIndex < pairs.length; pairIndex++) {
      const key = pairs[pairIndex]![0](item);
      if (typeof key !== "string" && key !== undefined) throw jerr("T1003", position, { value: key });
      if (key === undefined) continue;
      if (key === "_jsonata_lambda" || key === "_jsonata_function") throw jerr("D1013", position, { value: key });
      const existing = groups[key];
      if (existing !== undefined) {
        if (existing.exprIndex !== pairIndex) throw jerr("D1009", position, { value: key });
        existing.data = fn.append.call(FOCUS, existing.data, item);
      } else {
        groups[key] = { data: item, exprIndex: pairIndex };
      }
    }
  }
  for (const key of Object.keys(groups)) {
    const entry = groups[key]!;
    const value = pairs[entry.exprIndex]![1](entry.data);
    if (value !== undefined) result[key] = value;
  }
  return result;
}
