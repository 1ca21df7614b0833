import { compileJsonata } from "./jsonata/index.ts";

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
  if (Array.isArray(v)) return v.some(jsonataBoolean);
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
  evaluate(input: unknown): unknown;
}

/** Compiled to a synchronous JavaScript closure (src/pipeline/jsonata), so per-event cost is a function call. */
export function compileExpression(expr: string): Expression {
  try {
    return compileJsonata(expr);
  } catch (err) {
    const x = err as { message?: string; position?: number; code?: string };
    throw new FilterCompileError(`${x.code ? x.code + ": " : ""}${x.message ?? String(err)}`, x.position);
  }
}

export function compileFilter(expr: string | undefined): EventFilter {
  if (expr === undefined) return KEEP_ALL;
  const e = compileExpression(expr);
  return { source: expr, test: (event) => jsonataBoolean(e.evaluate(event)) };
}
