/**
 * Runtime of operators (`evaluateBinary`, `evaluateUnary`, `evaluateRegex`) for the operand types
 * the generated code does not handle inline; errors carry the operator's position and token.
 */
import { checkNow, tick, tickWork } from "./deadline.ts";
import { jsonataSync } from "./interpreter.ts";
import { jerr, type Seq } from "./runtime.ts";

/* eslint-disable @typescript-eslint/no-explicit-any */
const { fn, utils } = jsonataSync.internals;

/** `fn.boolean` */
export function bool(v: any): boolean | undefined {
  return fn.boolean(v);
}

/** `boolize` in evaluateBinary: and/or operands. */
export function boolize(v: any): boolean {
  if (typeof v === "boolean") return v;
  const b = fn.boolean(v);
  return b === undefined ? false : b;
}

/** `fn.string` for the `&` operator: undefined is the empty string. */
export function str(v: any): string {
  if (typeof v === "string") return v;
  if (v === undefined) return "";
  return fn.string(v);
}

/** `evaluateNumericExpression`, when either side is not a finite number. */
export function arith(lhs: any, rhs: any, op: string, position: number | undefined): number | undefined {
  try {
    if (lhs !== undefined && !utils.isNumeric(lhs)) throw jerr("T2001", undefined, { value: lhs });
    if (rhs !== undefined && !utils.isNumeric(rhs)) throw jerr("T2002", undefined, { value: rhs });
  } catch (err) {
    throw decorate(err, position, op);
  }
  if (lhs === undefined || rhs === undefined) return undefined;
  switch (op) {
    case "+":
      return lhs + rhs;
    case "-":
      return lhs - rhs;
    case "*":
      return lhs * rhs;
    case "/":
      return lhs / rhs;
    default:
      return lhs % rhs;
  }
}

/** evaluateBinary's catch: the operator's position and token always win. */
export function decorate(err: any, position: number | undefined, token: unknown): any {
  if (err !== null && typeof err === "object") {
    err.position = position;
    err.token = token;
  }
  return err;
}

/** `evaluateEqualityExpression` for `=` */
export function eq(lhs: any, rhs: any): boolean {
  if (lhs === undefined || rhs === undefined) return false;
  return lhs === rhs || utils.isDeepEqual(lhs, rhs);
}

/** `evaluateComparisonExpression` */
export function cmp(lhs: any, rhs: any, op: string, position: number | undefined): boolean | undefined {
  const lt = typeof lhs;
  const rt = typeof rhs;
  const lok = lt === "undefined" || lt === "string" || lt === "number";
  const rok = rt === "undefined" || rt === "string" || rt === "number";
  if (!lok || !rok) {
    throw decorate(
      jerr("T2010", undefined, { value: !(lt === "string" || lt === "number") ? lhs : rhs }),
      position,
      op,
    );
  }
  if (lt === "undefined" || rt === "undefined") return undefined;
  if (lt !== rt) throw decorate(jerr("T2009", undefined, { value: lhs, value2: rhs }), position, op);
  switch (op) {
    case "<":
      return lhs < rhs;
    case "<=":
      return lhs <= rhs;
    case ">":
      return lhs > rhs;
    default:
      return lhs >= rhs;
  }
}

/** `evaluateIncludesExpression` */
export function includes(lhs: any, rhs: any): boolean {
  if (lhs === undefined || rhs === undefined) return false;
  if (!Array.isArray(rhs)) return rhs === lhs;
  for (let i = 0; i < rhs.length; i++) if (rhs[i] === lhs) return true;
  return false;
}

/** `evaluateRangeExpression` */
export function range(lhs: any, rhs: any, position: number | undefined): Seq | undefined {
  try {
    if (lhs !== undefined && !Number.isInteger(lhs)) throw jerr("T2003", undefined, { value: lhs });
    if (rhs !== undefined && !Number.isInteger(rhs)) throw jerr("T2004", undefined, { value: rhs });
    if (lhs === undefined || rhs === undefined || lhs > rhs) return undefined;
    const size = rhs - lhs + 1;
    if (size > 1e7) throw jerr("D2014", undefined, { value: size });
    tick();
    const result: Seq = new Array(size);
    // filling ten million items takes a few hundred ms on a busy machine: count it as it goes
    for (let item = lhs, index = 0; item <= rhs; item++, index++) {
      result[index] = item;
      if ((index & 65535) === 65535) tickWork(65536);
    }
    result.sequence = true;
    return result;
  } catch (err) {
    throw decorate(err, position, "..");
  }
}

/** Unary minus. */
export function neg(v: any, position: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (utils.isNumeric(v)) return -v;
  throw jerr("D1002", position, { token: "-", value: v });
}

/** `evaluateRegex`: a matcher closure over a fresh copy of the regex literal. */
export function regex(literal: RegExp, position: number | undefined): (str: string, fromIndex?: number) => unknown {
  const re = new RegExp(literal);
  const closure = (s: string, fromIndex?: number): unknown => {
    re.lastIndex = fromIndex || 0;
    // one backtracking match can take a second (JavaScriptCore's own cap): the clock, not the countdown
    checkNow();
    const match = re.exec(s);
    checkNow();
    if (match === null) return undefined;
    const result: Record<string, unknown> = {
      match: match[0],
      start: match.index,
      end: match.index + match[0].length,
      groups: match.slice(1),
    };
    result.next = () => {
      if (re.lastIndex >= s.length) return undefined;
      const next = closure(s, re.lastIndex) as { match?: string } | undefined;
      if (next && next.match === "") throw jerr("D1004", position, { value: literal.source });
      return next;
    };
    return result;
  };
  return closure;
}

export function neq(lhs: any, rhs: any): boolean {
  if (lhs === undefined || rhs === undefined) return false;
  return !(lhs === rhs || utils.isDeepEqual(lhs, rhs));
}

/** `&` when a side is not a string. */
export function concat(lhs: any, rhs: any, position: number | undefined): string {
  try {
    return str(lhs) + str(rhs);
  } catch (err) {
    throw decorate(err, position, "&");
  }
}
