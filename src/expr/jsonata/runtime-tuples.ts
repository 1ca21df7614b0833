/**
 * Runtime of tuple streams - the focus (`@`), index (`#`) and parent (`%`) bindings
 * (`evaluateTupleStep`, `reduceTupleStream`, tuple-mode `evaluateGroupExpression`).
 */
import { tick } from "./deadline.ts";
import { jsonataSync } from "./interpreter.ts";
import { FOCUS, jerr, seq, type Seq } from "./runtime.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
const { fn } = jsonataSync.internals;
const hasOwn = Object.prototype.hasOwnProperty;

export function hasOwnKey(o: object, key: string): boolean {
  return hasOwn.call(o, key);
}

export { hasOwnKey as hasOwn };

export function tupleSeq(): Seq {
  const s = seq();
  s.tupleStream = true;
  return s;
}

/** The first tuple step wraps each input item. */
export function tuplesOf(input: any[]): Record<string, unknown>[] {
  return input.map((item) => ({ "@": item }));
}

/** The per-result part of `evaluateTupleStep`: one output tuple per item of the step's value. */
export function tuplePush(
  result: Seq,
  tuple: Record<string, any>,
  res: any,
  focus: string | undefined,
  index: string | undefined,
  ancestor: string | undefined,
): void {
  if (res === undefined) return;
  if (!Array.isArray(res)) res = [res];
  for (let bb = 0; bb < res.length; bb++) {
    const t: Record<string, any> = Object.create(null);
    Object.assign(t, tuple);
    if ((res as Seq).tupleStream) {
      Object.assign(t, res[bb]);
    } else {
      if (focus) {
        t[focus] = res[bb];
        t["@"] = tuple["@"];
      } else {
        t["@"] = res[bb];
      }
      if (index) t[index] = bb;
      if (ancestor) t[ancestor] = tuple["@"];
    }
    result.push(t);
  }
}

/** A path's value from its tuple stream. */
export function tupleValues(stream: Record<string, unknown>[]): Seq {
  const s = seq();
  for (let i = 0; i < stream.length; i++) s.push(stream[i]!["@"]);
  return s;
}

/** An index stage (`#$i` after a predicate): the position in the stream so far. */
export function tupleIndex(stream: Record<string, unknown>[], name: string): void {
  for (let ee = 0; ee < stream.length; ee++) stream[ee]![name] = ee;
}

/** An order-by as the first tuple step: tuples of the sorted items. */
export function tuplesFromSorted(sorted: any[], index: string | undefined): Seq {
  const result = tupleSeq();
  for (let ss = 0; ss < sorted.length; ss++) {
    const tuple: Record<string, unknown> = { "@": sorted[ss] };
    tuple[String(index)] = ss;
    result.push(tuple);
  }
  return result;
}

/** `reduceTupleStream` */
function reduceTupleStream(stream: any): any {
  if (!Array.isArray(stream)) return stream;
  const result: Record<string, any> = Object.create(null);
  Object.assign(result, stream[0]);
  for (let ii = 1; ii < stream.length; ii++) {
    for (const prop of Object.keys(stream[ii])) result[prop] = fn.append.call(FOCUS, result[prop], stream[ii][prop]);
  }
  return result;
}

/** `evaluateGroupExpression` in reduce mode (grouping a tuple stream). */
export function groupTuples(
  input: any[],
  pairs: [(tuple: any) => any, (tuple: any, context: any) => any][],
  position: number | undefined,
): Record<string, unknown> {
  const result: Record<string, unknown> = Object.create(null);
  const groups: Record<string, { data: any; exprIndex: number }> = Object.create(null);
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
    const tuple = reduceTupleStream(entry.data);
    const context = tuple["@"];
    delete tuple["@"];
    const value = pairs[entry.exprIndex]![1](tuple, context);
    if (value !== undefined) result[key] = value;
  }
  return result;
}
