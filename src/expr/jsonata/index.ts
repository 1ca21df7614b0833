/**
 * Public API: compile a JSONata expression into a synchronous evaluator.
 *
 * The expression is parsed by jsonata's own parser, then compiled to JavaScript (compile.ts). When
 * the tree contains a construct the compiler does not cover, the whole expression runs in the
 * synchronous copy of jsonata's interpreter instead, so results are always jsonata's.
 *
 * Every evaluation has a time limit (deadline.ts), on both paths: past it, it throws
 * ExpressionTimeoutError (code D1012).
 */
import { compileAst, type CompiledSource } from "./compile.ts";
import { enter, expressionTimeLimit, leave, tick } from "./deadline.ts";
import {
  ExpressionTimeoutError,
  JsonataCompileError,
  JsonataEvaluationError,
  toCompileError,
  toEvaluationError,
} from "./errors.ts";
import { evalHook } from "./functions.ts";
import { Unsupported } from "./gen.ts";
import { jsonataSync, type JsonataNode, type SyncJsonataInstance } from "./interpreter.ts";
import * as calls from "./calls.ts";
import * as runtime from "./runtime.ts";
import * as runtimeOperators from "./runtime-operators.ts";
import * as runtimePaths from "./runtime-paths.ts";
import * as runtimeTuples from "./runtime-tuples.ts";

export { ExpressionTimeoutError, JsonataCompileError, JsonataEvaluationError };
export {
  expressionTimeLimit,
  setExpressionTimeLimit,
  tick,
  walkResult,
  withTimeLimit,
  DEFAULT_TIME_LIMIT_MS,
} from "./deadline.ts";

export interface CompiledJsonata {
  readonly source: string;
  /** true when the whole expression runs as generated code, false when it falls back to the interpreter */
  readonly compiled: boolean;
  /**
   * Synchronous. Returns undefined for "no match" like jsonata. Throws JsonataEvaluationError (with
   * .code) on runtime errors, ExpressionTimeoutError (a JsonataEvaluationError, code D1012) past the
   * time limit.
   */
  evaluate(input: unknown, bindings?: Record<string, unknown>): unknown;
}

export interface CompileJsonataOptions {
  /** This expression's time limit; by default the process-wide one (setExpressionTimeLimit). */
  timeLimitMs?: number;
  /**
   * jsonata's test-suite timebox: evaluation fails with code U1001 past this evaluation depth or
   * past `timeLimitMs`. Such expressions run in the interpreter, whose depth is what is counted.
   */
  maxDepth?: number;
}

type Evaluator = (input: unknown, bindings: Record<string, unknown> | undefined) => unknown;

/* eslint-disable @typescript-eslint/no-explicit-any */
/** What generated code calls as `R.name`. */
const R: Record<string, unknown> = {
  ...runtime,
  ...runtimePaths,
  ...runtimeOperators,
  ...runtimeTuples,
  ...calls,
  evalCall,
  scopeBindings,
};

function build(ast: JsonataNode, assumeBuiltins: boolean): { evaluate: Evaluator; compiled: CompiledSource } {
  const compiled = compileAst(ast, { assumeBuiltins });
  // T: the deadline's step, a closure parameter so the generated loops call it directly
  const factory = new Function("R", "K", "T", compiled.source) as (
    r: unknown,
    k: unknown[],
    t: () => void,
  ) => Evaluator;
  return { evaluate: factory(R, compiled.constants, tick), compiled };
}

class Expression implements CompiledJsonata {
  readonly compiled: boolean;
  /** why the expression runs in the interpreter (diagnostics) */
  readonly fallbackReason?: string;
  /** the generated JavaScript (diagnostics) */
  readonly generated?: string;
  private readonly fast?: Evaluator;
  private slow?: Evaluator;
  private readonly builtinRefs: string[] = [];
  /** undefined: the process-wide limit at the time of each evaluation */
  private readonly timeLimitMs?: number;

  constructor(
    readonly source: string,
    private readonly ast: JsonataNode,
    private readonly interpreter: SyncJsonataInstance,
    options: CompileJsonataOptions | undefined,
  ) {
    let reason: string | undefined;
    this.timeLimitMs = options?.timeLimitMs;
    if (options?.maxDepth !== undefined) {
      reason = "evaluation guard requested";
      installGuard(interpreter, options.timeLimitMs ?? Infinity, options.maxDepth);
      // the timebox reports its own timeout (U1001) as jsonata's runner does; the deadline stays
      // behind it for the library loops its hooks do not see
      if (options.timeLimitMs !== undefined) this.timeLimitMs = options.timeLimitMs * 2;
    } else {
      try {
        const b = build(ast, true);
        this.fast = b.evaluate;
        this.builtinRefs = b.compiled.builtinRefs;
        this.generated = b.compiled.source;
      } catch (err) {
        // anything the generator cannot handle runs in the interpreter; a generator bug must not
        // make an expression unusable either
        reason = err instanceof Unsupported ? err.message : `compiler error: ${(err as Error).message ?? String(err)}`;
      }
    }
    this.compiled = this.fast !== undefined;
    this.fallbackReason = reason;
  }

  /** Evaluation that lets jsonata-style error objects through (for $eval). */
  run(input: unknown, bindings: Record<string, unknown> | undefined): unknown {
    if (this.fast === undefined) return this.interpreter.evaluate(input, bindings);
    if (bindings !== undefined && this.builtinRefs.length > 0 && this.shadowsBuiltin(bindings)) {
      this.slow ??= build(this.ast, false).evaluate;
      return this.slow(input, bindings);
    }
    return this.fast(input, bindings);
  }

  evaluate(input: unknown, bindings?: Record<string, unknown>): unknown {
    const saved = runtime.clock.ts;
    runtime.clock.ts = undefined;
    const owner = enter(this.timeLimitMs ?? expressionTimeLimit());
    try {
      return this.run(input, bindings);
    } catch (err) {
      throw toEvaluationError(err);
    } finally {
      runtime.clock.ts = saved;
      leave(owner);
    }
  }

  private shadowsBuiltin(bindings: Record<string, unknown>): boolean {
    for (const name of this.builtinRefs) if (runtime.hasBinding(bindings, name)) return true;
    return false;
  }
}

/** The runaway guard of jsonata's test runner (`timeboxExpression`), on the interpreter's hooks. */
function installGuard(instance: SyncJsonataInstance, timeLimitMs: number, maxDepth: number): void {
  let depth = 0;
  let started = 0;
  const check = (): void => {
    if (maxDepth > 0 && depth > maxDepth) {
      throw {
        code: "U1001",
        message:
          "Stack overflow error: Check for non-terminating recursive function.  Consider rewriting as tail-recursive.",
      };
    }
    if (Date.now() - started > timeLimitMs) {
      throw { code: "U1001", message: "Expression evaluation timeout: Check for infinite loop" };
    }
  };
  const evaluate = instance.evaluate.bind(instance);
  instance.evaluate = (input, bindings) => {
    depth = 0;
    started = Date.now();
    return evaluate(input, bindings);
  };
  instance.assign(Symbol.for("jsonata.__evaluate_entry"), (_e: unknown, _i: unknown, env: any) => {
    if (env.isParallelCall) return;
    depth++;
    check();
  });
  instance.assign(Symbol.for("jsonata.__evaluate_exit"), (_e: unknown, _i: unknown, env: any) => {
    if (env.isParallelCall) return;
    depth--;
    check();
  });
}

export function compileJsonata(expr: string, options?: CompileJsonataOptions): CompiledJsonata {
  let instance: SyncJsonataInstance;
  try {
    instance = jsonataSync(expr);
  } catch (err) {
    throw toCompileError(err);
  }
  return new Expression(expr, instance.ast(), instance, options);
}

// ---- $eval: expressions compiled at run time, in the caller's variables ----

const evalCache = new Map<string, Expression>();

function compileForEval(expr: string): Expression {
  let e = evalCache.get(expr);
  if (e === undefined) {
    e = compileJsonata(expr) as Expression;
    if (evalCache.size > 1000) evalCache.clear();
    evalCache.set(expr, e);
  }
  return e;
}

function runEval(
  expr: unknown,
  focus: unknown,
  input: unknown,
  bindings: Record<string, unknown> | undefined,
  argc: number,
): unknown {
  if (expr === undefined) return undefined;
  let ctx = input;
  if (argc > 1 && focus !== undefined) {
    ctx = focus;
    if (Array.isArray(ctx) && (ctx as runtime.Seq).sequence !== true) ctx = runtime.outer(ctx);
  }
  let e: Expression;
  try {
    e = compileForEval(String(expr));
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw runtime.jerr("D3120", undefined, { value: message, error: err });
  }
  try {
    return e.run(ctx, bindings);
  } catch (err) {
    // the outer evaluation's time is up, not this expression's fault: not a D3121
    if (err instanceof ExpressionTimeoutError) throw err;
    const message = toEvaluationError(err).message;
    throw runtime.jerr("D3121", undefined, { value: message, error: err });
  }
}
evalHook.run = runEval;

const evalSignature = jsonataSync.internals.parseSignature("<sx?:x>");

/** `$eval(expr, focus?)` called directly from generated code. */
function evalCall(
  args: unknown[],
  input: unknown,
  bindings: Record<string, unknown>,
  position: number | undefined,
): unknown {
  try {
    const [expr, focus] = evalSignature.validate(args, input);
    return runEval(expr, focus, input, bindings, args.length);
  } catch (err) {
    throw calls.nativeErr(err, position, "eval");
  }
}

/** The caller's variables, as bindings for an expression evaluated by $eval. */
function scopeBindings(
  bindings: Record<string, unknown> | undefined,
  names: string[],
  values: unknown[],
): Record<string, unknown> | undefined {
  if (names.length === 0) return bindings;
  const out: Record<string, unknown> = { ...(bindings ?? {}) };
  for (let i = 0; i < names.length; i++) out[names[i]!] = values[i];
  return out;
}
