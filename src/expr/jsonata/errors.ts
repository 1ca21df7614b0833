/**
 * The conversion from jsonata's thrown plain objects (`{code, position, token, value, ...}`) into
 * the error classes of the public API (error-types.ts).
 *
 * Internally both the generated code and the reused jsonata function library throw jsonata-style
 * plain objects, so that the decorations jsonata applies while an error unwinds (position and token
 * of the operator or function call) work the same on both; conversion happens once, at the API edge.
 */
import { jsonataSync } from "./interpreter.ts";
import { ExpressionTimeoutError, JsonataCompileError, JsonataEvaluationError } from "./error-types.ts";

export { ExpressionTimeoutError, JsonataCompileError, JsonataEvaluationError };

/** Fields jsonata puts on the objects it throws. */
export interface JsonataErrorObject {
  code?: string;
  position?: number;
  token?: unknown;
  value?: unknown;
  message?: string;
  [key: string]: unknown;
}

function describe(err: JsonataErrorObject): string {
  // jsonata fills `message` from its catalogue; errors without a catalogue entry keep their own
  const copy: JsonataErrorObject = { ...err };
  if (copy.code !== undefined) jsonataSync.internals.populateMessage(copy);
  return typeof copy.message === "string" && copy.message !== "" ? copy.message : String(copy.code ?? "JSONata error");
}

/** The engine's own stack overflow surfaces as jsonata's "stack overflow" code. */
function isStackOverflow(err: unknown): boolean {
  return err instanceof RangeError && /call stack|stack size|recursion/i.test(err.message);
}

export function toEvaluationError(err: unknown): Error {
  if (err instanceof JsonataEvaluationError || err instanceof JsonataCompileError) return err;
  if (isStackOverflow(err)) {
    return new JsonataEvaluationError(
      "Stack overflow. Check for non-terminating recursive function.  Consider rewriting as tail-recursive",
      "D1011",
    );
  }
  if (err instanceof Error) return err;
  if (err !== null && typeof err === "object") {
    const e = err as JsonataErrorObject;
    const out = new JsonataEvaluationError(describe(e), e.code, e.position, e.token, e.value);
    // keep the other details jsonata attaches (index, value2, functionName, ...)
    for (const key of Object.keys(e)) {
      if (!(key in out) && key !== "stack") (out as unknown as Record<string, unknown>)[key] = e[key];
    }
    return out;
  }
  return new JsonataEvaluationError(String(err));
}

export function toCompileError(err: unknown): JsonataCompileError {
  if (err instanceof JsonataCompileError) return err;
  if (err !== null && typeof err === "object") {
    const e = err as JsonataErrorObject;
    return new JsonataCompileError(describe(e), e.code, e.position, e.token);
  }
  return new JsonataCompileError(String(err));
}
