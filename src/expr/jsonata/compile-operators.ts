/**
 * Binary operators (`evaluateBinary`). The common cases - numbers on both sides of arithmetic,
 * comparison with a literal, concatenation of strings, `in` over a literal list - compile to plain
 * JS operators behind a type test; every other combination calls the runtime helper that mirrors
 * jsonata, including its errors (T2001, T2009, ...) with the operator's position and token.
 */
import type { Compiler } from "./compile.ts";
import { A, ANY, B, L, N, O, Q, S, U, literal, type Node, type Val } from "./gen.ts";

const ARITH = new Set(["+", "-", "*", "/", "%"]);
const COMPARE = new Set(["<", "<=", ">", ">="]);

/** A literal operand: a string, number, true/false/null with nothing applied to it. */
function isPlainLiteral(n: Node): boolean {
  return (n.type === "string" || n.type === "number" || n.type === "value") && !n.predicate && !n.group && !n.keepArray;
}

/** Whether evaluating `n` can throw (conservative: true unless obviously safe). */
export function mayThrow(n: Node): boolean {
  if (n.predicate || n.group) return true;
  switch (n.type) {
    case "string":
    case "number":
    case "value":
    case "variable":
      return false;
    case "path":
      return (
        !!n.keepSingletonArray ||
        (n.steps as Node[]).some((s) => s.type !== "name" || s.predicate || s.stages || s.group || s.tuple)
      );
    case "binary":
      return !(n.value === "=" || n.value === "!=" || n.value === "in") || mayThrow(n.lhs) || mayThrow(n.rhs);
    case "unary":
      return n.value !== "[" || (n.expressions as Node[]).some(mayThrow);
    case "function":
      return !(
        n.procedure.type === "variable" &&
        n.procedure.value === "exists" &&
        n.arguments.length === 1 &&
        !mayThrow(n.arguments[0])
      );
    default:
      return true;
  }
}

/** `boolize`: the boolean an operand of and/or counts as. */
function boolize(v: Val): string {
  if ((v.m & ~B) === 0) return v.c;
  if ((v.m & ~(B | U)) === 0) return `(${v.c} === true)`;
  return `R.boolize(${v.c})`;
}

const boolizeMayThrow = (v: Val): boolean => (v.m & (N | A | Q | O)) !== 0;

/** The result types of `n` where they follow from its kind alone. */
function staticMask(n: Node): number {
  if (n.predicate || n.group) return ANY;
  if (n.type === "binary" && ["=", "!=", "<", "<=", ">", ">=", "and", "or", "in"].includes(n.value)) return B | U;
  if (n.type === "value") return n.value === null ? L : B;
  if (n.type === "string") return S;
  if (n.type === "function" && n.procedure.type === "variable" && n.procedure.value === "exists") return B | U;
  return ANY;
}

function logical(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const op = node.value as "and" | "or";
  const l = c.ev(node.lhs, inp);
  const t = o.let(op === "and" ? "false" : "true");
  // jsonata attributes errors from the right side (and from boolize) to the operator
  const guarded = mayThrow(node.rhs) || boolizeMayThrow(l) || boolizeMayThrow({ c: "", m: staticMask(node.rhs) });
  if (guarded) o.open("try {");
  o.open(op === "and" ? `if (${boolize(l)}) {` : `if (!${boolize(l)}) {`);
  const r = c.ev(node.rhs, inp);
  o.line(`${t} = ${boolize(r)};`);
  o.close();
  if (guarded) o.close(`} catch (e) { throw R.decorate(e, ${literal(node.position)}, ${literal(op)}); }`);
  return { c: t, m: B };
}

export function compileBinary(c: Compiler, node: Node, inp: string): Val {
  const op = node.value as string;
  if (op === "and" || op === "or") return logical(c, node, inp);
  const o = c.out;
  const pos = literal(node.position);
  if (
    op === "in" &&
    node.rhs.type === "unary" &&
    node.rhs.value === "[" &&
    !node.rhs.predicate &&
    !node.rhs.group &&
    (node.rhs.expressions as Node[]).length > 0 &&
    (node.rhs.expressions as Node[]).every(isPlainLiteral)
  ) {
    const l = c.ev(node.lhs, inp);
    const tests = (node.rhs.expressions as Node[]).map((e) => `${l.c} === ${literal(e.value)}`);
    return { c: o.let(`(${tests.join(" || ")})`), m: B };
  }
  const l = c.ev(node.lhs, inp);
  const r = c.ev(node.rhs, inp);
  if (ARITH.has(op)) {
    const checks: string[] = [];
    if (node.lhs.type !== "number" || !isPlainLiteral(node.lhs))
      checks.push(`typeof ${l.c} === "number" && ${l.c} - ${l.c} === 0`);
    if (node.rhs.type !== "number" || !isPlainLiteral(node.rhs))
      checks.push(`typeof ${r.c} === "number" && ${r.c} - ${r.c} === 0`);
    const fast = `${l.c} ${op} ${r.c}`;
    if (checks.length === 0) return { c: o.let(fast), m: N };
    return {
      c: o.let(`(${checks.join(" && ")}) ? ${fast} : R.arith(${l.c}, ${r.c}, ${literal(op)}, ${pos})`),
      m: N | U,
    };
  }
  if (op === "=" || op === "!=") {
    const lit = isPlainLiteral(node.rhs) ? r : isPlainLiteral(node.lhs) ? l : undefined;
    const other = lit === r ? l : r;
    if (lit !== undefined) {
      if (op === "=") return { c: o.let(`${other.c} === ${lit.c}`), m: B };
      return { c: o.let(`(${other.c} !== undefined && ${other.c} !== ${lit.c})`), m: B };
    }
    return { c: o.let(`${op === "=" ? "R.eq" : "R.neq"}(${l.c}, ${r.c})`), m: B };
  }
  if (COMPARE.has(op)) {
    let test: string;
    if (isPlainLiteral(node.rhs) && (r.m === N || r.m === S))
      test = `typeof ${l.c} === ${r.m === N ? '"number"' : '"string"'}`;
    else if (isPlainLiteral(node.lhs) && (l.m === N || l.m === S))
      test = `typeof ${r.c} === ${l.m === N ? '"number"' : '"string"'}`;
    else test = `typeof ${l.c} === typeof ${r.c} && (typeof ${l.c} === "number" || typeof ${l.c} === "string")`;
    return { c: o.let(`(${test}) ? ${l.c} ${op} ${r.c} : R.cmp(${l.c}, ${r.c}, ${literal(op)}, ${pos})`), m: B | U };
  }
  if (op === "&") {
    const asStr = (v: Val): string | undefined =>
      (v.m & ~S) === 0 ? v.c : (v.m & ~(S | U)) === 0 ? `(${v.c} === undefined ? "" : ${v.c})` : undefined;
    const ls = asStr(l);
    const rs = asStr(r);
    if (ls !== undefined && rs !== undefined) return { c: o.let(`${ls} + ${rs}`), m: S };
    const tests = [l, r].filter((v) => (v.m & ~S) !== 0).map((v) => `typeof ${v.c} === "string"`);
    return { c: o.let(`(${tests.join(" && ")}) ? ${l.c} + ${r.c} : R.concat(${l.c}, ${r.c}, ${pos})`), m: S };
  }
  if (op === "..") return { c: o.let(`R.range(${l.c}, ${r.c}, ${pos})`), m: Q | U };
  if (op === "in") return { c: o.let(`R.includes(${l.c}, ${r.c})`), m: B };
  throw new Error(`jsonata compiler: unknown operator ${op}`);
}
