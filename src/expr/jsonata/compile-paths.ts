/**
 * Location paths, predicates, order-by and object construction (`evaluatePath`, `evaluateStep`,
 * `evaluateFilter`, `evaluateSortExpression`, `evaluateGroupExpression`).
 *
 * A path of plain field names - the overwhelmingly common case - is one runtime call that walks
 * single objects without building sequences and switches to the general algorithm at the first
 * array. Other paths become nested loops over the step sequences, with each step's expression
 * generated inline for the loop item.
 */
import type { Compiler } from "./compile.ts";
import { compileTuplePath } from "./compile-tuples.ts";
import { ANY, O, Q, U, Unsupported, literal, type Node, type Val } from "./gen.ts";

function isPlainName(step: Node): boolean {
  return (
    step.type === "name" &&
    !step.predicate &&
    !step.stages &&
    !step.group &&
    !step.keepArray &&
    !step.focus &&
    !step.index &&
    !step.tuple &&
    !step.ancestor
  );
}

function hasTuples(node: Node): boolean {
  return !!node.tuple || (node.steps as Node[]).some((s) => s.tuple || s.focus || s.index || s.ancestor);
}

/** Code of a closure `(param) => evaluate(node, param)` over the current scope. */
export function closure(c: Compiler, node: Node): string {
  const o = c.out;
  const f = o.tmp("f");
  const param = o.tmp("c");
  o.open(`const ${f} = (${param}) => {`);
  const v = c.ev(node, param);
  o.line(`return ${v.c};`);
  o.close("};");
  return f;
}

export function compilePath(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const steps = node.steps as Node[];
  if (hasTuples(node)) return compileTuplePath(c, node, inp);
  if (!node.group && !node.keepSingletonArray && !node.keepArray && steps.every(isPlainName)) {
    const names = steps.map((s) => s.value as string);
    const call =
      names.length === 1 ? `R.path1(${inp}, ${literal(names[0])})` : `R.pathNames(${inp}, ${o.constant(names)})`;
    // already normalised: a second normalisation would be a no-op
    return { c: o.let(call), m: ANY & ~Q };
  }
  let seqIn = o.let(steps[0]!.type === "variable" ? `R.seq1(${inp})` : `R.pathInput(${inp})`);
  const res = o.let("undefined");
  const label = o.tmp("P");
  o.open(`${label}: {`);
  steps.forEach((step, i) => {
    const last = i === steps.length - 1;
    if (i === 0 && step.consarray) {
      o.line(`${res} = ${c.ev(step, seqIn).c};`);
    } else if (step.type === "sort") {
      o.line(`${res} = ${sortStep(c, step, seqIn)};`);
      for (const stage of (step.stages ?? []) as Node[]) {
        if (stage.type !== "filter") throw new Unsupported("index stage");
        o.line(`${res} = ${compileFilter(c, stage.expr, { c: res, m: ANY }).c};`);
      }
    } else {
      const r = o.let("R.seq()");
      const j = o.tmp("j");
      const it = o.tmp("it");
      o.open(`for (let ${j} = 0; ${j} < ${seqIn}.length; ${j}++) {`);
      o.line(`T(); const ${it} = ${seqIn}[${j}];`);
      let v = c.ev(step, it);
      for (const stage of (step.stages ?? []) as Node[]) {
        if (stage.type !== "filter") throw new Unsupported("index stage");
        v = compileFilter(c, stage.expr, v);
      }
      if (v.m & U) o.line(`if (${v.c} !== undefined) ${r}.push(${v.c});`);
      else o.line(`${r}.push(${v.c});`);
      o.close();
      o.line(`${res} = R.stepFinish(${r}, ${last});`);
    }
    if (!last) {
      o.line(`if (${res} === undefined || ${res}.length === 0) break ${label};`);
      const next = o.tmp("s");
      o.line(`const ${next} = ${res};`);
      seqIn = next;
    }
  });
  o.close();
  if (node.keepSingletonArray) o.line(`${res} = R.keepSingletonPath(${res});`);
  if (node.group) return compileGroup(c, node.group, { c: res, m: ANY });
  return { c: res, m: ANY };
}

/** `evaluateFilter(predicate, value)` */
export function compileFilter(c: Compiler, pred: Node, v: Val): Val {
  const o = c.out;
  if (pred.type === "number") {
    return { c: o.let(`R.filterIndex(${v.c}, ${literal(pred.value)})`), m: Q | ANY };
  }
  const items = o.let(`R.filterInput(${v.c})`);
  const out = o.let(`R.filterOutput(${v.c})`);
  const i = o.tmp("i");
  const it = o.tmp("it");
  o.open(`for (let ${i} = 0; ${i} < ${items}.length; ${i}++) {`);
  o.line(`T(); const ${it} = ${items}[${i}];`);
  const p = c.ev(pred, it);
  if ((p.m & ~(4 | U)) === 0) o.line(`if (${p.c}) ${out}.push(${it});`);
  else o.line(`R.filterPush(${out}, ${p.c}, ${it}, ${i}, ${items}.length);`);
  o.close();
  return { c: out, m: Q };
}

function sortStep(c: Compiler, step: Node, seqIn: string): string {
  const o = c.out;
  const terms = (step.terms as Node[]).map(
    (t) => `{ f: ${closure(c, t.expression)}, descending: ${t.descending === true} }`,
  );
  return o.let(`R.sort(${seqIn}, [${terms.join(", ")}], ${literal(step.position)})`);
}

/** `evaluateGroupExpression` for `value{key: value, ...}` and computed-key object constructors. */
export function compileGroup(c: Compiler, group: Node, v: Val): Val {
  const o = c.out;
  const pairs = (group.lhs as Node[][]).map(([k, val]) => `[${closure(c, k!)}, ${closure(c, val!)}]`);
  return { c: o.let(`R.group(${v.c}, [${pairs.join(", ")}], ${literal(group.position)})`), m: O };
}

/** The order JS enumerates an object's keys in (integer-like keys first), which jsonata inherits. */
function enumerationOrder(keys: string[]): string[] {
  const probe: Record<string, true> = Object.create(null);
  for (const k of keys) probe[k] = true;
  return Object.keys(probe);
}

/** Object constructor `{...}`. With literal keys the grouping is static and the values inline. */
export function compileObject(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const pairs = node.lhs as Node[][];
  const literalKeys = pairs.every(([k]) => k!.type === "string" && !k!.predicate && !k!.group && !k!.keepArray);
  if (!literalKeys) return compileGroup(c, { lhs: pairs, position: node.position, type: "group" }, { c: inp, m: ANY });
  // key checks happen in order before any value is evaluated
  const seen = new Map<string, number>();
  for (let i = 0; i < pairs.length; i++) {
    const key = pairs[i]![0]!.value as string;
    if (key === "_jsonata_lambda" || key === "_jsonata_function") {
      return raise(c, "D1013", node.position, key);
    }
    if (seen.has(key)) return raise(c, "D1009", node.position, key);
    seen.set(key, i);
  }
  const data = o.let(`Array.isArray(${inp}) ? R.groupData(${inp}) : ${inp}`);
  const r = o.let("R.obj()");
  for (const key of enumerationOrder([...seen.keys()])) {
    const v = c.ev(pairs[seen.get(key)!]![1]!, data);
    if (v.m & U) o.line(`if (${v.c} !== undefined) ${r}[${literal(key)}] = ${v.c};`);
    else o.line(`${r}[${literal(key)}] = ${v.c};`);
  }
  return { c: r, m: O };
}

function raise(c: Compiler, code: string, position: number | undefined, value: string): Val {
  c.out.line(`throw R.jerr(${literal(code)}, ${literal(position)}, { value: ${literal(value)} });`);
  return { c: "undefined", m: U };
}
