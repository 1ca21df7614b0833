/**
 * The expression front door: what config, ingest, pipelines and commands may use of JSONata.
 *
 * - compile: `compileExpression` (a value) and `compileFilter` (a yes/no over an event), each
 *   compiled once per source text (cache.ts); a broken expression throws FilterCompileError.
 * - evaluate with a limit: every evaluation runs within the process-wide time limit
 *   (`setExpressionTimeLimit`, TRIBUTARY_EXPRESSION_TIMEOUT_MS) and throws ExpressionTimeoutError
 *   (code D1012) past it; `withTimeLimit` gives several evaluations one budget.
 * - the compiler itself (`compileJsonata`, with jsonata's test-suite options) for the conformance
 *   runner and the benches.
 *
 * The compiler and its runtime (jsonata/) are internal: import this file, not theirs.
 */
export { expressionCompilations } from "./cache.ts";
export {
  compileExpression,
  compileFilter,
  type EventFilter,
  type Expression,
  FilterCompileError,
  jsonataBoolean,
} from "./expression.ts";
export {
  type CompiledJsonata,
  type CompileJsonataOptions,
  compileJsonata,
  DEFAULT_TIME_LIMIT_MS,
  ExpressionTimeoutError,
  expressionTimeLimit,
  JsonataCompileError,
  JsonataEvaluationError,
  setExpressionTimeLimit,
  withTimeLimit,
} from "./jsonata/index.ts";
