/**
 * The per-evaluation time limit of JSONata expressions.
 *
 * Expressions run synchronously on the node's main thread, so nothing outside an evaluation can stop
 * it: the evaluation has to notice that its time is up. Everything that can repeat without bound
 * counts: generated loops and lambda bodies, function application and the tail-call trampoline,
 * and - spliced into jsonata's own source by interpreter.ts - the interpreter's `evaluate`, deep
 * equality, `$string`'s serialiser, `$sort`'s merge, flattening, descendants, lookups and keys of
 * nested arrays, `$boolean` and `$spread`. Shared sub-trees make some of those exponential in the
 * size of the value (`{"a": $x, "b": $x}` forty times is small in memory and 2^40 leaves long), so
 * the count is of steps taken, not of data held.
 *
 * A step costs a decrement; the clock is read once the countdown runs out, and steps that copy or
 * scan n items (append, range, merge) take n/64 off it, so a few large steps read the clock as soon
 * as many small ones do. The clock is first read after FIRST_READ steps, which is when the deadline
 * starts: the usual filter or mapping takes fewer and never pays for the clock (a read costs about
 * as much as the whole evaluation), and the work before it is those few steps plus straight-line
 * code over the event.
 *
 * Once past the deadline every later step throws as well: a catch in library code cannot swallow
 * the timeout and carry on.
 */
import { ExpressionTimeoutError } from "./error-types.ts";

/**
 * For callers that never set a limit (tools, the compiler's own tests, whose 300,000-step loops take
 * a few hundred ms on a cold JIT). The node sets its own at start: TRIBUTARY_EXPRESSION_TIMEOUT_MS,
 * 100 ms by default (src/config/env.ts), since pipeline expressions take microseconds to a
 * millisecond and one hostile event should hold the main thread for no longer than that.
 */
export const DEFAULT_TIME_LIMIT_MS = 1000;

/** Steps between clock reads: reading costs ~50 ns in Bun, a step 5-50 ns. */
const STRIDE = 256;
const FIRST_READ = 64;

let defaultLimitMs = DEFAULT_TIME_LIMIT_MS;
let active = false;
let expired = false;
let limitMs = 0;
let countdown = STRIDE;
/** performance.now() past which the evaluation fails; 0 until the first step reads the clock */
let deadline = 0;

/** The limit of evaluations that do not set their own (TRIBUTARY_EXPRESSION_TIMEOUT_MS). */
export function setExpressionTimeLimit(ms: number): void {
  if (!(ms > 0)) throw new RangeError(`expression time limit must be a positive number of milliseconds, got ${ms}`);
  defaultLimitMs = ms;
}

export function expressionTimeLimit(): number {
  return defaultLimitMs;
}

/**
 * Starts the budget of an outermost evaluation and returns true; an evaluation started inside
 * another ($eval, an expression called from a binding) shares the outer budget and gets false.
 */
export function enter(ms: number): boolean {
  if (active) return false;
  active = true;
  expired = false;
  limitMs = ms;
  deadline = 0;
  countdown = FIRST_READ;
  return true;
}

export function leave(owner: boolean): void {
  if (owner) active = false;
}

/** Runs `fn` as one evaluation: everything it evaluates shares one budget of `ms`. */
export function withTimeLimit<T>(fn: () => T, ms = defaultLimitMs): T {
  const owner = enter(ms);
  try {
    return fn();
  } finally {
    leave(owner);
  }
}

/** One step of an evaluation. */
export function tick(): void {
  if (--countdown <= 0) readClock();
}

/** A step that copies or scans `n` items. */
export function tickWork(n: number): void {
  countdown -= 1 + (n >> 6);
  if (countdown <= 0) readClock();
}

/**
 * Native steps this large are refused before they start (jsonata's own cap on a range), as the
 * deadline could only notice them once they end: `$pad("", 5e8)` alone runs for minutes.
 */
export const MAX_NATIVE_STEP = 1e7;

/** A native step about to produce `n` items in one go. */
export function nativeStep(n: number): void {
  if (active && n > MAX_NATIVE_STEP) expire();
  tickWork(n);
}

/**
 * For steps that may each take long on their own (a regular expression can backtrack for about a
 * second before JavaScriptCore gives up): read the clock now, before and after the step.
 */
export function checkNow(): void {
  if (active) readClock();
}

function readClock(): void {
  countdown = STRIDE;
  if (!active) return;
  if (expired) expire();
  const now = performance.now();
  if (deadline === 0) deadline = now + limitMs;
  else if (now > deadline) expire();
}

function expire(): never {
  expired = true;
  countdown = 1;
  throw new ExpressionTimeoutError(limitMs);
}

/**
 * Walks a result the way a serialiser will, one step per array or object, so a result that is small
 * in memory but enormous written out (shared sub-trees) runs out of time here, inside the
 * evaluation's budget, instead of later in JSON.stringify with no limit at all.
 */
export function walkResult(v: unknown): void {
  if (v === null || typeof v !== "object") return;
  tick();
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) walkResult(v[i]);
  } else {
    for (const k of Object.keys(v)) walkResult((v as Record<string, unknown>)[k]);
  }
}
