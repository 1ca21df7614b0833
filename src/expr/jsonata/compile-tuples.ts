/**
 * Paths that carry tuple streams: focus (`@$v`), index (`#$i`) and parent (`%`) bindings
 * (`evaluateTupleStep`, tuple-mode `evaluateFilter` / `evaluateSortExpression` /
 * `evaluateGroupExpression`).
 *
 * In jsonata each tuple becomes a frame binding the tuple's keys. Here the code for a step runs
 * in a loop over the tuples with a tuple scope: lookups of the names that can be tuple keys (all
 * focus/index variables and ancestor labels of the expression) check the current tuple first.
 */
import type { Compiler } from "./compile.ts";
import { collectBinds } from "./compile.ts";
import { compileFilter, compileGroup } from "./compile-paths.ts";
import { ANY, O, Q, Scope, Unsupported, literal, type Node, type Val } from "./gen.ts";

/** Every name a tuple of this expression can carry. */
export function tupleNames(ast: Node): Set<string> {
  const out = new Set<string>();
  const walk = (v: unknown): void => {
    if (Array.isArray(v)) {
      for (const x of v) walk(x);
      return;
    }
    if (v === null || typeof v !== "object" || v instanceof RegExp) return;
    const n = v as Node;
    if (typeof n.focus === "string") out.add(n.focus);
    if (typeof n.index === "string") out.add(n.index);
    if (n.ancestor && typeof n.ancestor.label === "string") out.add(n.ancestor.label);
    if (n.type === "parent" && n.slot) out.add(n.slot.label);
    if (n.type === "index" && typeof n.value === "string") out.add(n.value);
    for (const [key, child] of Object.entries(n)) {
      if (key !== "nud" && key !== "led" && key !== "signature") walk(child);
    }
  };
  walk(ast);
  return out;
}

/** Generates `body` inside a tuple frame for tuple variable `tu`, binding what `nodes` bind. */
export function inTupleFrame<R>(c: Compiler, tu: string, nodes: Node[], body: () => R): R {
  const scope = new Scope(c.scope, tu);
  return c.withScope(scope, () => {
    c.declareFrame(collectBinds(nodes));
    return body();
  });
}

export function compileTuplePath(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const steps = node.steps as Node[];
  let seqIn = o.let(steps[0]!.type === "variable" ? `R.seq1(${inp})` : `R.pathInput(${inp})`);
  const res = o.let("undefined");
  // the tuple stream, declared outside the labelled block the steps are generated in
  const stream = o.let("undefined");
  let tb: string | undefined;
  let tupleMode = false;
  const label = o.tmp("P");
  o.open(`${label}: {`);
  steps.forEach((step, i) => {
    const last = i === steps.length - 1;
    if (step.tuple) tupleMode = true;
    if (i === 0 && step.consarray) {
      o.line(`${res} = ${c.ev(step, seqIn).c};`);
    } else if (tupleMode) {
      o.line(`${stream} = ${tupleStep(c, step, seqIn, tb)};`);
      tb = stream;
    } else {
      if (step.type === "sort") throw new Unsupported("order-by before a tuple step");
      const r = o.let("R.seq()");
      const j = o.tmp("j");
      const it = o.tmp("it");
      o.open(`for (let ${j} = 0; ${j} < ${seqIn}.length; ${j}++) {`);
      o.line(`T(); const ${it} = ${seqIn}[${j}];`);
      let v = c.ev(step, it);
      for (const stage of (step.stages ?? []) as Node[]) v = compileFilter(c, stage.expr, v);
      o.line(`if (${v.c} !== undefined) ${r}.push(${v.c});`);
      o.close();
      o.line(`${res} = R.stepFinish(${r}, ${last});`);
    }
    if (!tupleMode && !last) o.line(`if (${res} === undefined || ${res}.length === 0) break ${label};`);
    if (step.focus === undefined && !last) {
      const next = o.tmp("s");
      o.line(`const ${next} = ${res};`);
      seqIn = next;
    }
  });
  o.close();
  // the stream exists only if evaluation reached a tuple step (a path can end before)
  if (tb !== undefined)
    o.line(`if (${stream} !== undefined) ${res} = ${node.tuple ? stream : `R.tupleValues(${stream})`};`);
  if (node.keepSingletonArray) o.line(`${res} = R.keepSingletonPath(${res});`);
  if (node.group) {
    if (tb === undefined) return compileGroup(c, node.group, { c: res, m: ANY });
    const r = o.let("undefined");
    o.open(`if (${stream} !== undefined) {`);
    o.line(`${r} = ${tupleGroup(c, node.group, stream).c};`);
    o.mid("} else {");
    o.line(`${r} = ${compileGroup(c, node.group, { c: res, m: ANY }).c};`);
    o.close();
    return { c: r, m: O };
  }
  return { c: res, m: node.tuple ? Q : ANY };
}

/** One step over a tuple stream; returns the variable holding the new stream. */
function tupleStep(c: Compiler, step: Node, seqIn: string, tb: string | undefined): string {
  const o = c.out;
  let result: string;
  if (step.type === "sort") {
    if (tb !== undefined) {
      result = o.let(`R.sort(${tb}, ${sortTerms(c, step, true)}, ${literal(step.position)})`);
    } else {
      const sorted = o.let(`R.sort(${seqIn}, ${sortTerms(c, step, false)}, ${literal(step.position)})`);
      result = o.let(`R.tuplesFromSorted(${sorted}, ${literal(step.index)})`);
    }
  } else {
    result = o.let("R.tupleSeq()");
    const tuples = tb ?? o.let(`R.tuplesOf(${seqIn})`);
    const e = o.tmp("e");
    const tu = o.tmp("tu");
    o.open(`for (let ${e} = 0; ${e} < ${tuples}.length; ${e}++) {`);
    o.line(`T(); const ${tu} = ${tuples}[${e}];`);
    const ctx = o.let(`${tu}["@"]`);
    const v = inTupleFrame(c, tu, [step], () => c.ev(step, ctx));
    const ancestor = step.ancestor ? literal(step.ancestor.label) : "undefined";
    o.line(`R.tuplePush(${result}, ${tu}, ${v.c}, ${literal(step.focus)}, ${literal(step.index)}, ${ancestor});`);
    o.close();
  }
  for (const stage of (step.stages ?? []) as Node[]) {
    if (stage.type === "index") o.line(`R.tupleIndex(${result}, ${literal(stage.value)});`);
    else o.line(`${result} = ${tupleFilter(c, stage.expr, result)};`);
  }
  return result;
}

/** `evaluateFilter` over a tuple stream: each predicate runs in its tuple's frame. */
export function tupleFilter(c: Compiler, pred: Node, stream: string): string {
  const o = c.out;
  if (pred.type === "number") return o.let(`R.filterIndex(${stream}, ${literal(pred.value)})`);
  const out = o.let(`R.filterOutput(${stream})`);
  const i = o.tmp("i");
  const tu = o.tmp("tu");
  o.open(`for (let ${i} = 0; ${i} < ${stream}.length; ${i}++) {`);
  o.line(`T(); const ${tu} = ${stream}[${i}];`);
  const ctx = o.let(`${tu}["@"]`);
  const p = inTupleFrame(c, tu, [pred], () => c.ev(pred, ctx));
  o.line(`R.filterPush(${out}, ${p.c}, ${tu}, ${i}, ${stream}.length);`);
  o.close();
  return out;
}

/** Order-by terms as closures; over tuples each term runs in the tuple's frame. */
function sortTerms(c: Compiler, step: Node, overTuples: boolean): string {
  const o = c.out;
  const terms = (step.terms as Node[]).map((t) => {
    const f = o.tmp("f");
    const param = o.tmp("c");
    o.open(`const ${f} = (${param}) => {`);
    let v: Val;
    if (overTuples) {
      const ctx = o.let(`${param}["@"]`);
      v = inTupleFrame(c, param, [t.expression], () => c.ev(t.expression, ctx));
    } else {
      v = c.ev(t.expression, param);
    }
    o.line(`return ${v.c};`);
    o.close("};");
    return `{ f: ${f}, descending: ${t.descending === true} }`;
  });
  return `[${terms.join(", ")}]`;
}

/** `evaluateGroupExpression` in reduce mode: keys per tuple, values per merged group tuple. */
function tupleGroup(c: Compiler, group: Node, stream: string): Val {
  const o = c.out;
  const pairs = (group.lhs as Node[][]).map(([k, v]) => {
    const kf = o.tmp("f");
    const kp = o.tmp("c");
    o.open(`const ${kf} = (${kp}) => {`);
    const kctx = o.let(`${kp}["@"]`);
    const kv = inTupleFrame(c, kp, [k!], () => c.ev(k!, kctx));
    o.line(`return ${kv.c};`);
    o.close("};");
    const vf = o.tmp("f");
    const vt = o.tmp("c");
    const vctx = o.tmp("c");
    o.open(`const ${vf} = (${vt}, ${vctx}) => {`);
    const vv = inTupleFrame(c, vt, [v!], () => c.ev(v!, vctx));
    o.line(`return ${vv.c};`);
    o.close("};");
    return `[${kf}, ${vf}]`;
  });
  return { c: o.let(`R.groupTuples(${stream}, [${pairs.join(", ")}], ${literal(group.position)})`), m: O };
}
