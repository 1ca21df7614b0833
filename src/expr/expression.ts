import { compileOnce } from "./cache.ts";
import { tick, walkResult, withTimeLimit, type CompiledJsonata } from "./jsonata/index.ts";

/** A filter expression that does not compile; names the position in the expression. */
export class FilterCompileError extends Error {
  constructor(
    message: string,
    readonly position?: number,
  ) {
    super(position !== undefined ? `${message} (at position ${position})` : message);
    this.name = "FilterCompileError";
  }
}

export interface EventFilter {
  readonly source?: string;
  /** Whether the event passes; throws when the expression fails at run time. */
  test(event: unknown): boolean;
}

/** JSONata's $boolean: how a filter's result decides. */
export function jsonataBoolean(v: unknown): boolean {
  if (v === undefined || v === null) return false;
  if (Array.isArray(v)) {
    // nested arrays can share sub-arrays: exponential without the deadline
    tick();
    return v.some(jsonataBoolean);
  }
  switch (typeof v) {
    case "boolean":
      return v;
    case "string":
      return v.length > 0;
    case "number":
      return v !== 0;
    case "function":
      return false;
    case "object":
      return Object.keys(v).length > 0;
    default:
      return false;
  }
}

const KEEP_ALL: EventFilter = { test: () => true };

/** A JSONata expression ready to run synchronously on events. */
export interface Expression {
  readonly source: string;
  /**
   * Throws ExpressionTimeoutError (code D1012) past the expression time limit
   * (TRIBUTARY_EXPRESSION_TIMEOUT_MS), which covers walking the result too: a result that shares
   * sub-trees can be small in memory and too large to serialise, and the callers serialise it.
   */
  evaluate(input: unknown): unknown;
}

/** Compiled to a synchronous JavaScript closure (src/expr/jsonata), so per-event cost is a function call. */
export function compileExpression(expr: string): Expression {
  const e = compile(expr);
  return {
    source: expr,
    evaluate: (input) =>
      withTimeLimit(() => {
        const v = e.evaluate(input);
        walkResult(v);
        return v;
      }),
  };
}

function compile(expr: string): CompiledJsonata {
  try {
    return compileOnce(expr);
  } catch (err) {
    const x = err as { message?: string; position?: number; code?: string };
    throw new FilterCompileError(`${x.code ? x.code + ": " : ""}${x.message ?? String(err)}`, x.position);
  }
}

export function compileFilter(expr: string | undefined): EventFilter {
  if (expr === undefined) return KEEP_ALL;
  const e = compile(expr);
  return { source: expr, test: (event) => withTimeLimit(() => jsonataBoolean(e.evaluate(event))) };
}
