/**
 * Function calls, lambdas, partial application, `~>` and transforms (`evaluateFunction`,
 * `evaluateLambda`, `evaluatePartialApplication`, `evaluateApplyExpression`,
 * `evaluateTransformExpression`).
 *
 * A call to a built-in that no binding shadows goes straight to jsonata's implementation behind a
 * type guard on the arguments (see functions.ts); other calls go through `R.call`, which applies
 * any function value the way jsonata does. A lambda becomes a JS function over the enclosing
 * scope; its tail calls return thunks for the trampoline in `apply`.
 */
import type { Compiler } from "./compile.ts";
import { collectBinds } from "./compile.ts";
import { closure } from "./compile-paths.ts";
import { BUILTINS, FAST_IMPL, callPlan, takesFunction, type Builtin } from "./functions.ts";
import { ANY, F, Scope, T, literal, type Node, type Val } from "./gen.ts";

function procName(proc: Node): string | undefined {
  return proc.type === "path" ? proc.steps[0].value : proc.value;
}

/** `$name(...)` where `name` is a built-in and nothing in the expression binds it. */
function directBuiltin(c: Compiler, proc: Node): Builtin | undefined {
  if (proc.type !== "variable" || proc.predicate || proc.group || proc.keepArray || !c.options.assumeBuiltins)
    return undefined;
  if (!c.isFree(proc.value)) return undefined;
  const b = BUILTINS.get(proc.value);
  if (b !== undefined) c.builtinRefs.add(proc.value);
  return b;
}

export function compileCall(c: Compiler, node: Node, inp: string, applyTo?: Val): Val {
  const o = c.out;
  const proc = node.procedure as Node;
  const name = procName(proc);
  const pos = literal(node.position);
  const builtin = directBuiltin(c, proc);
  if (builtin !== undefined) return builtinCall(c, builtin, node, inp, applyTo);
  const p = c.ev(proc, inp);
  if (proc.type === "path") {
    // `uppercase(x)`: help the user who forgot the `$`
    o.line(
      `if (${p.c} === undefined && ${c.varRef(name!)}) throw R.jerr("T1005", ${pos}, { token: ${literal(name)} });`,
    );
  }
  const args = applyTo ? [applyTo.c] : [];
  for (const a of node.arguments as Node[]) {
    const v = c.ev(a, inp);
    args.push(v.m & F ? o.let(`R.wrapArg(${v.c})`) : v.c);
  }
  return { c: o.let(`R.call(${p.c}, [${args.join(", ")}], ${inp}, ${pos}, ${literal(name)})`), m: ANY };
}

function builtinCall(c: Compiler, b: Builtin, node: Node, inp: string, applyTo?: Val): Val {
  const o = c.out;
  const pos = literal(node.position);
  const name = literal(b.name);
  const args: Val[] = applyTo ? [applyTo] : [];
  for (const a of node.arguments as Node[]) {
    const v = c.ev(a, inp);
    args.push(v.m & F && takesFunction(b, args.length) ? { c: o.let(`R.wrapArg(${v.c})`), m: v.m } : v);
  }
  const list = args.map((a) => a.c).join(", ");
  if (b.name === "eval") {
    const scopeVars = c.visibleVariables();
    const names = literal(scopeVars.map(([n]) => n));
    const values = `[${scopeVars.map(([, expr]) => expr).join(", ")}]`;
    return {
      c: o.let(`R.evalCall([${list}], ${inp}, R.scopeBindings(B, ${names}, ${values}), ${pos})`),
      m: ANY,
    };
  }
  const plan = callPlan(b, args);
  const generic = `R.call(${o.constant(b.def)}, [${list}], ${inp}, ${pos}, ${name})`;
  if (plan === undefined) return { c: o.let(generic), m: b.returns };
  const fastArgs = args.map((a) => a.c);
  const conds = [...plan.conds];
  for (const { index, subtype } of plan.arrays) {
    const t = o.let(`R.arrayArg(${fastArgs[index]}, ${literal(subtype)})`);
    fastArgs[index] = t;
    conds.push(`${t} !== R.BAD_ARG`);
  }
  const impl = FAST_IMPL.get(b.name) ?? b.def.implementation;
  const fast = `${o.constant(impl)}.call(R.FOCUS${fastArgs.length ? ", " + fastArgs.join(", ") : ""})`;
  const r = o.let("undefined");
  if (conds.length > 0) o.open(`if (${conds.join(" && ")}) {`);
  if (b.throws) {
    o.line(`try { ${r} = ${fast}; } catch (e) { throw R.nativeErr(e, ${pos}, ${name}); }`);
  } else {
    o.line(`${r} = ${fast};`);
  }
  if (conds.length > 0) {
    o.mid("} else {");
    o.line(`${r} = ${generic};`);
    o.close();
  }
  return { c: r, m: b.returns };
}

export function compileLambda(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  if (node.thunk) return tailCall(c, node.body, inp);
  const params = (node.arguments as Node[]).map((a) => a.value as string);
  const ids = params.map(() => o.tmp("p"));
  const f = o.tmp("L");
  o.open(`const ${f} = R.lambda(function (${ids.join(", ")}) {`);
  // a step of the deadline: recursion and tail-call loops go through here
  o.line("T();");
  const scope = new Scope(c.scope);
  params.forEach((p, i) => scope.vars.set(p, { id: ids[i]!, definite: true }));
  c.withScope(scope, () => {
    c.declareFrame(collectBinds([node.body]));
    const v = c.ev(node.body, inp);
    o.line(`return ${v.c};`);
  });
  const sig = node.signature ? o.constant(node.signature) : "undefined";
  o.close(`}, ${params.length}, ${sig}, ${hasTailCall(node.body)});`);
  return { c: f, m: F };
}

/** Whether the parser turned a call in tail position of this body into a thunk. */
function hasTailCall(n: Node | undefined): boolean {
  if (n === undefined) return false;
  if (n.type === "lambda") return n.thunk === true;
  if (n.type === "condition") return hasTailCall(n.then) || hasTailCall(n.else);
  if (n.type === "block") return hasTailCall((n.expressions as Node[])[n.expressions.length - 1]);
  return false;
}

/** A call in tail position of a lambda body: evaluated procedure and arguments, applied by the trampoline. */
function tailCall(c: Compiler, call: Node, inp: string): Val {
  const o = c.out;
  const proc = call.procedure as Node;
  const p = c.ev(proc, inp);
  const args = (call.arguments as Node[]).map((a) => c.ev(a, inp).c);
  const token = proc.type === "variable" ? literal(proc.value) : "undefined";
  return { c: o.let(`new R.Thunk(${p.c}, [${args.join(", ")}], ${literal(proc.position)}, ${token})`), m: T };
}

export function compilePartial(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const args = (node.arguments as Node[]).map((a) =>
    a.type === "operator" && a.value === "?" ? "R.PLACEHOLDER" : c.ev(a, inp).c,
  );
  const proc = node.procedure as Node;
  const p = c.ev(proc, inp);
  const name = procName(proc);
  const forgot = proc.type === "path" ? `!!${c.varRef(name!)}` : "false";
  return {
    c: o.let(`R.partial(${p.c}, [${args.join(", ")}], ${literal(node.position)}, ${literal(name)}, ${forgot})`),
    m: F,
  };
}

export function compileApply(c: Compiler, node: Node, inp: string): Val {
  const o = c.out;
  const lhs = c.ev(node.lhs, inp);
  if (node.rhs.type === "function") return compileCall(c, node.rhs, inp, lhs);
  const f = c.ev(node.rhs, inp);
  return { c: o.let(`R.applyTo(${lhs.c}, ${f.c}, ${literal(node.position)})`), m: ANY };
}

export function compileTransform(c: Compiler, node: Node, _inp: string): Val {
  const o = c.out;
  const pattern = closure(c, node.pattern);
  const update = closure(c, node.update);
  const remove = node.delete !== undefined ? closure(c, node.delete) : "undefined";
  const clone = `() => ${c.varRef("clone")}`;
  const positions = `position: ${literal(node.position)}, updatePosition: ${literal(node.update.position)}, deletePosition: ${literal(node.delete?.position)}`;
  return {
    c: o.let(
      `R.transform({ clone: ${clone}, pattern: ${pattern}, update: ${update}, remove: ${remove}, ${positions} })`,
    ),
    m: F,
  };
}
