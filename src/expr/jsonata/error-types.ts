/**
 * The error classes of the public API. They live apart from errors.ts, which needs the interpreter,
 * so that the deadline (which the interpreter's own code calls) can throw one without an import cycle.
 */
export class JsonataCompileError extends Error {
  readonly code?: string;
  readonly position?: number;
  readonly token?: unknown;

  constructor(message: string, code?: string, position?: number, token?: unknown) {
    super(message);
    this.name = "JsonataCompileError";
    this.code = code;
    this.position = position;
    this.token = token;
  }
}

export class JsonataEvaluationError extends Error {
  readonly code?: string;
  readonly position?: number;
  readonly token?: unknown;
  readonly value?: unknown;

  constructor(message: string, code?: string, position?: number, token?: unknown, value?: unknown) {
    super(message);
    this.name = "JsonataEvaluationError";
    this.code = code;
    this.position = position;
    this.token = token;
    this.value = value;
  }
}

/**
 * An evaluation that ran past its time limit (deadline.ts). Code and message are jsonata's own for
 * its `timeout` option (the interpreter rewrites messages from its catalogue on the way out, so any
 * other text would differ between the compiled and the interpreted path).
 */
export class ExpressionTimeoutError extends JsonataEvaluationError {
  constructor(readonly limitMs: number) {
    super(
      `Evaluation timeout after ${limitMs} milliseconds. Check for infinite loop`,
      "D1012",
      undefined,
      undefined,
      limitMs,
    );
    this.name = "ExpressionTimeoutError";
  }
}
