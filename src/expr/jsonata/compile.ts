/**
 * JSONata AST -> JavaScript source.
 *
 * `ev(node, input)` generates the code of jsonata's `evaluate(node, input, environment)` for one
 * node: the node itself, then its predicates and grouping, then the sequence normalisation every
 * evaluation ends with. Scoping is resolved at compile time: each jsonata frame (root, block,
 * lambda) becomes a JS block or function whose `let` variables are the names bound in it, starting
 * as UNB (unbound) so that lookups fall through to enclosing frames exactly when jsonata's would.
 * Anything not handled raises `Unsupported`, and the caller falls back to the interpreter.
 * Generated loops and lambda bodies call `T()`, a step of the evaluation's deadline (deadline.ts).
 */
import { BUILTINS } from "./functions.ts";
import { A, ANY, B, Emitter, F, L, N, Q, S, Scope, U, Unsupported, literal, type Node, type Val } from "./gen.ts";
import { compileFilter, compileGroup, compileObject, compilePath } from "./compile-paths.ts";
import { compileApply, compileCall, compileLambda, compilePartial, compileTransform } from "./compile-functions.ts";
import { compileBinary } from "./compile-operators.ts";
import { tupleFilter, tupleNames } from "./compile-tuples.ts";

export interface CompileOptions {
  /** Built-in names are not shadowed by the evaluate() bindings, so calls may go straight to them. */
  assumeBuiltins: boolean;
}

export interface CompiledSource {
  source: string;
  constants: unknown[];
  /** built-in names the expression refers to without a local binding (bindings may shadow them) */
  builtinRefs: string[];
}

/** Children of a node that are evaluated in the node's own frame (lambda bodies and blocks open new ones). */
function* children(node: Node): Generator<Node> {
  for (const [key, value] of Object.entries(node)) {
    if (key === "slot" || key === "ancestor" || key === "signature" || key === "nud" || key === "led") continue;
    yield* nodesIn(value);
  }
}

function* nodesIn(value: unknown): Generator<Node> {
  if (Array.isArray(value)) {
    for (const v of value) yield* nodesIn(v);
  } else if (value !== null && typeof value === "object" && !(value instanceof RegExp)) {
    const n = value as Node;
    if (typeof n.type === "string") yield n;
    else yield* children(n);
  }
}

/** Names bound by `:=` in the frame that `nodes` are evaluated in. */
export function collectBinds(nodes: Iterable<Node>, out = new Set<string>()): Set<string> {
  for (const n of nodes) {
    if (n.type === "lambda" || n.type === "block") continue;
    if (n.type === "bind" && n.lhs?.value !== "") out.add(n.lhs.value);
    collectBinds(children(n), out);
  }
  return out;
}

export class Compiler {
  readonly out = new Emitter();
  scope: Scope = new Scope(null);
  readonly builtinRefs = new Set<string>();
  /** names that tuples of this expression can bind (focus, index, ancestor labels) */
  tupleNames = new Set<string>();

  constructor(readonly options: CompileOptions) {}

  compileRoot(ast: Node): CompiledSource {
    const o = this.out;
    this.tupleNames = tupleNames(ast);
    o.line(`if (Array.isArray(input) && input.sequence !== true) input = R.outer(input);`);
    this.scope.vars.set("$", { id: "root", definite: true });
    this.declareFrame(collectBinds([ast]));
    const v = this.ev(ast, "input");
    o.line(`return ${v.c};`);
    const source = [
      `"use strict";`,
      `const UNB = R.UNB;`,
      `return function evaluate(input, B) {`,
      `  let root = input;`,
      o.text(),
      `};`,
    ].join("\n");
    return { source, constants: o.constants(), builtinRefs: [...this.builtinRefs] };
  }

  /** Declares the variables bound by `:=` in the frame being entered. */
  declareFrame(names: Set<string>): void {
    for (const name of names) {
      if (this.scope.vars.has(name)) continue;
      const id = this.out.tmp("v");
      this.scope.vars.set(name, { id, definite: false });
      this.out.line(`let ${id} = UNB;`);
    }
  }

  withScope<R>(scope: Scope, body: () => R): R {
    const saved = this.scope;
    this.scope = scope;
    try {
      return body();
    } finally {
      this.scope = saved;
    }
  }

  /** `evaluate(node, input)`: the node, its predicates and grouping, then normalisation. */
  ev(node: Node, inp: string): Val {
    let v = this.core(node, inp);
    if (node.predicate && node.tuple && (node.type === "path" || node.type === "block")) {
      // the value may be a tuple stream (ancestry carried out of the node) or plain values
      for (const p of node.predicate as Node[]) v = this.filterEither(p.expr, v);
    } else if (node.predicate) {
      for (const p of node.predicate as Node[]) v = compileFilter(this, p.expr, v);
    }
    if (node.group && node.type !== "path") v = compileGroup(this, node.group, v);
    if (v.m & Q) {
      v = { c: this.out.let(`R.norm${node.keepArray ? "K" : ""}(${v.c})`), m: ANY };
    }
    return v;
  }

  core(node: Node, inp: string): Val {
    const o = this.out;
    switch (node.type) {
      case "string":
        return { c: literal(node.value), m: S };
      case "number":
        return { c: literal(node.value), m: N };
      case "value":
        return { c: literal(node.value), m: node.value === null ? L : B };
      case "path":
        return compilePath(this, node, inp);
      case "name":
        return { c: o.let(`R.lookup(${inp}, ${literal(node.value)})`), m: ANY };
      case "wildcard":
        return { c: o.let(`R.wildcard(${inp})`), m: Q };
      case "descendant":
        return { c: o.let(`R.descendants(${inp})`), m: ANY };
      case "condition":
        return this.condition(node, inp);
      case "block":
        return this.block(node, inp);
      case "bind":
        return this.bind(node, inp);
      case "regex":
        return { c: o.let(`R.regex(${o.constant(node.value)}, ${literal(node.position)})`), m: F };
      case "function":
        return compileCall(this, node, inp);
      case "parent":
        return { c: o.let(this.varRef(node.slot.label)), m: ANY };
      case "variable":
        if (node.value === "") return { c: o.let(`R.context(${inp})`), m: ANY };
        return { c: o.let(this.varRef(node.value)), m: ANY };
      case "lambda":
        return compileLambda(this, node, inp);
      case "partial":
        return compilePartial(this, node, inp);
      case "apply":
        return compileApply(this, node, inp);
      case "transform":
        return compileTransform(this, node, inp);
      case "unary":
        return this.unary(node, inp);
      case "binary":
        return compileBinary(this, node, inp);
      default:
        throw new Unsupported(node.type);
    }
  }

  private filterEither(pred: Node, v: Val): Val {
    const o = this.out;
    const r = o.let("undefined");
    o.open(`if (${v.c} && ${v.c}.tupleStream) {`);
    o.line(`${r} = ${tupleFilter(this, pred, v.c)};`);
    o.mid("} else {");
    o.line(`${r} = ${compileFilter(this, pred, v).c};`);
    o.close();
    return { c: r, m: Q };
  }

  /** The JS expression reading variable `name`, following jsonata's frame lookup. */
  varRef(name: string): string {
    // sources that may hold the name, innermost first: [condition, value]
    const pending: [string, string][] = [];
    let found: string | undefined;
    for (let s: Scope | null = this.scope; s !== null; s = s.parent) {
      const slot = s.vars.get(name);
      if (slot?.definite) {
        found = slot.id;
        break;
      }
      if (slot) pending.push([`${slot.id} !== UNB`, slot.id]);
      if (s.tuple !== undefined && this.tupleNames.has(name)) {
        pending.push([`R.hasOwn(${s.tuple}, ${literal(name)})`, `${s.tuple}[${literal(name)}]`]);
      }
    }
    let expr = found ?? this.freeRef(name);
    for (let i = pending.length - 1; i >= 0; i--) expr = `(${pending[i]![0]} ? ${pending[i]![1]} : ${expr})`;
    return expr;
  }

  /** Every variable the expression binds that is visible here, with the JS expression reading it. */
  visibleVariables(): [string, string][] {
    const seen = new Set<string>(["$"]);
    const out: [string, string][] = [];
    for (let s: Scope | null = this.scope; s !== null; s = s.parent) {
      for (const name of s.vars.keys()) {
        if (seen.has(name)) continue;
        seen.add(name);
        out.push([name, this.varRef(name)]);
      }
    }
    return out;
  }

  /** True when `name` has no binding in any enclosing frame of the expression. */
  isFree(name: string): boolean {
    for (let s: Scope | null = this.scope; s !== null; s = s.parent) if (s.vars.has(name)) return false;
    return true;
  }

  /** A name bound by the evaluate() bindings, or a built-in. */
  freeRef(name: string): string {
    const b = BUILTINS.get(name);
    if (b === undefined) return `R.free(B, ${literal(name)})`;
    this.builtinRefs.add(name);
    const def = this.out.constant(b.def);
    return this.options.assumeBuiltins ? def : `(R.hasBinding(B, ${literal(name)}) ? B[${literal(name)}] : ${def})`;
  }

  /** A JS condition with jsonata's truthiness (`fn.boolean`) of `v`. */
  truthy(v: Val): string {
    if ((v.m & ~(B | U)) === 0) return v.c;
    return `R.bool(${v.c})`;
  }

  private condition(node: Node, inp: string): Val {
    const o = this.out;
    const cond = this.ev(node.condition, inp);
    const r = o.let("undefined");
    o.open(`if (${this.truthy(cond)}) {`);
    const t = this.ev(node.then, inp);
    o.line(`${r} = ${t.c};`);
    let m = t.m;
    if (node.else !== undefined) {
      o.mid("} else {");
      const e = this.ev(node.else, inp);
      o.line(`${r} = ${e.c};`);
      m |= e.m;
    } else {
      m |= U;
    }
    o.close();
    return { c: r, m };
  }

  private block(node: Node, inp: string): Val {
    const o = this.out;
    const exprs = node.expressions as Node[];
    if (exprs.length === 0) return { c: "undefined", m: U };
    const binds = collectBinds(exprs);
    if (binds.size === 0 && exprs.length === 1) return this.ev(exprs[0]!, inp);
    const r = o.let("undefined");
    o.open("{");
    let m = U;
    this.withScope(new Scope(this.scope), () => {
      this.declareFrame(binds);
      let last: Val = { c: "undefined", m: U };
      for (const e of exprs) last = this.ev(e, inp);
      o.line(`${r} = ${last.c};`);
      m = last.m;
    });
    o.close();
    return { c: r, m };
  }

  private bind(node: Node, inp: string): Val {
    const v = this.ev(node.rhs, inp);
    const name = node.lhs.value as string;
    if (name === "") return v;
    const slot = this.scope.vars.get(name);
    if (!slot) throw new Unsupported(`binding of $${name} outside its frame`);
    this.out.line(`${slot.id} = ${v.c};`);
    return v;
  }

  private unary(node: Node, inp: string): Val {
    const o = this.out;
    switch (node.value) {
      case "-": {
        const v = this.ev(node.expression, inp);
        return {
          c: o.let(
            `(typeof ${v.c} === "number" && ${v.c} - ${v.c} === 0) ? -${v.c} : R.neg(${v.c}, ${literal(node.position)})`,
          ),
          m: N | U,
        };
      }
      case "[":
        return this.arrayConstructor(node, inp);
      case "{":
        return compileObject(this, node, inp);
      default:
        throw new Unsupported(`unary ${node.value}`);
    }
  }

  private arrayConstructor(node: Node, inp: string): Val {
    const o = this.out;
    const r = o.let("[]");
    for (const item of node.expressions as Node[]) {
      const v = this.ev(item, inp);
      if (item.value === "[" || (v.m & (A | Q)) === 0) {
        // kept whole: a nested array constructor, or a value that is never an array
        if (v.m & U) o.line(`if (${v.c} !== undefined) ${r}.push(${v.c});`);
        else o.line(`${r}.push(${v.c});`);
      } else {
        o.line(`${r} = R.arrayAdd(${r}, ${v.c});`);
      }
    }
    if (node.consarray) o.line(`R.markCons(${r});`);
    return { c: r, m: A };
  }
}

export function compileAst(ast: Node, options: CompileOptions): CompiledSource {
  return new Compiler(options).compileRoot(ast);
}
