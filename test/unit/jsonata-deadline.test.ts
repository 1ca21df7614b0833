import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  compileJsonata,
  DEFAULT_TIME_LIMIT_MS,
  ExpressionTimeoutError,
  JsonataEvaluationError,
  setExpressionTimeLimit,
  withTimeLimit,
  compileExpression,
  compileFilter,
} from "../../src/expr/index.ts";
import { jsonataTransform, mappingTransform } from "../../src/pipeline/transform/expressions.ts";
import { optionsFromEnv } from "../../src/config/env.ts";

/**
 * The expression time limit (issue 15, item 4): runaway expressions of every shape fail with
 * ExpressionTimeoutError (code D1012) instead of holding the thread. What is asserted is the typed
 * failure - without the limit these either never end or run for minutes - not how fast it came.
 */

const LIMIT_MS = 100;
beforeAll(() => setExpressionTimeLimit(LIMIT_MS));
afterAll(() => setExpressionTimeLimit(DEFAULT_TIME_LIMIT_MS));

// Shared sub-trees: forty steps build values with 2^40 leaves.
const OBJ_DAG = `$reduce([1..40], function($a, $i){ {"a": $a, "b": $a} }, 1)`;
const ARR_DAG = `$reduce([1..40], function($a, $i){ [[$a], [$a]] }, [])`;

const RUNAWAYS: [string, string][] = [
  [
    "infinite recursion through tail calls (the issue's filter)",
    `event = "attack" ? ($f := function($x){ $f($x + 1) }; $f(0)) : true`,
  ],
  ["mutual tail calls", `($a := function($x){ $b($x + 1) }; $b := function($x){ $a($x + 1) }; $a(0))`],
  [
    "a tail-recursive loop with an accumulator",
    `($loop := function($n, $acc){ $loop($n + 1, $acc & "") }; $loop(0, ""))`,
  ],
  ["$map over ten million generated items", `$map([1..10000000], function($v){ $v * 2 })`],
  ["$reduce over ten million generated items", `$reduce([1..10000000], function($a, $v){ $a + $v }, 0)`],
  ["$filter over ten million generated items", `$filter([1..10000000], function($v){ $v % 7 = 0 })`],
  [
    "$sort with a costly comparator",
    `$sort($map([1..3000], function($v){ -$v }), function($a, $b){ $count([1..2000]) > 0 and $a > $b })`,
  ],
  ["$sort of a large array (merge copies)", `$sort([1..20000])`],
  ["nested path loops", `[1..10000].([1..10000])`],
  ["a predicate over a huge range", `[1..10000000][$ % 3 = 0 and $ % 5 = 0]`],
  ["$string of a shared-tree object", `$string(${OBJ_DAG})`],
  ["deep equality of shared trees", `${OBJ_DAG} = ${OBJ_DAG}`],
  ["descendants of a shared tree", `${OBJ_DAG}.**`],
  ["$boolean of shared nested arrays", `$boolean(${ARR_DAG}) ? 1 : 2`],
  ["$keys of shared nested arrays", `$keys(${ARR_DAG})`],
  ["$spread of shared nested arrays", `$spread(${ARR_DAG})`],
  ["wildcard flattening of shared nested arrays", `{"x": ${ARR_DAG}}.*`],
  ["quadratic $distinct", `$distinct([1..100000])`],
  ["quadratic grouping", `[1..100000]{"k": $}`],
  ["many regex matches", `$map([1..10000000], function($v){ $contains("x" & $v, /x9+$/) })`],
  ["$pad of a huge width (refused before it starts)", `$length($pad("", 500000000))`],
  ["runaway inside $eval (not turned into D3121)", `$eval('($f := function($x){ $f($x + 1) }; $f(0))')`],
];

function expectTimeout(run: () => unknown, limitMs = LIMIT_MS): ExpressionTimeoutError {
  let caught: unknown;
  try {
    run();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ExpressionTimeoutError);
  expect(caught).toBeInstanceOf(JsonataEvaluationError);
  const e = caught as ExpressionTimeoutError;
  expect(e.code).toBe("D1012");
  expect(e.limitMs).toBe(limitMs);
  expect(e.message).toContain("timeout");
  return e;
}

const FAST = `$sum($map([1..100], function($v){ $v }))`;

describe("compiled closures", () => {
  for (const [name, src] of RUNAWAYS) {
    test(`${name}: fails with D1012`, () => {
      const e = compileJsonata(src);
      expect(e.compiled).toBe(true);
      expectTimeout(() => e.evaluate({ event: "attack" }));
      // the budget is per evaluation: the next one starts afresh
      expect(compileJsonata(FAST).evaluate({})).toBe(5050);
    });
  }

  test("a normal expression works, and so does the same expression right after one that timed out", () => {
    const filter = compileJsonata(RUNAWAYS[0]![1]);
    expect(filter.evaluate({ event: "normal" })).toBe(true);
    expectTimeout(() => filter.evaluate({ event: "attack" }));
    expect(filter.evaluate({ event: "normal" })).toBe(true);
    const loop = compileJsonata(
      "($loop := function($n, $acc) { $n = 0 ? $acc : $loop($n - 1, $acc + 1) }; $loop(1000, 0))",
    );
    expect(loop.evaluate({})).toBe(1000);
  });

  test("an expression's own limit, and the process-wide one read at each evaluation", () => {
    expectTimeout(() => compileJsonata(RUNAWAYS[1]![1], { timeLimitMs: 30 }).evaluate({}), 30);
    const e = compileJsonata(RUNAWAYS[1]![1]);
    setExpressionTimeLimit(40);
    try {
      expectTimeout(() => e.evaluate({}), 40);
    } finally {
      setExpressionTimeLimit(LIMIT_MS);
    }
    expect(() => setExpressionTimeLimit(0)).toThrow();
  });

  test("a regular expression that backtracks for long: bounded by the engine, reported as a timeout", () => {
    // JavaScriptCore gives up on one match after about a second and answers "no match"; the clock
    // read after the match turns that silent wrong answer into the timeout it was.
    const e = compileJsonata(`$match("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", /(a+)+$/)`);
    expectTimeout(() => e.evaluate({}));
  });
});

describe("interpreter fallback", () => {
  // maxDepth without timeLimitMs: the interpreter, with only the deadline for time
  const interpreted = (src: string) => compileJsonata(src, { maxDepth: 1e9 });
  for (const [name, src] of RUNAWAYS) {
    test(`${name}: fails with D1012`, () => {
      const e = interpreted(src);
      expect(e.compiled).toBe(false);
      expectTimeout(() => e.evaluate({ event: "attack" }));
      expect(interpreted(FAST).evaluate({})).toBe(5050);
    });
  }

  test("jsonata's test-suite timebox still reports its own code", () => {
    const e = compileJsonata("($inf := function(){ $inf() }; $inf())", { maxDepth: 500, timeLimitMs: 200 });
    let code: unknown;
    try {
      e.evaluate({});
    } catch (err) {
      code = (err as { code?: string }).code;
    }
    expect(code).toBe("U1001");
  });
});

describe("the pipeline's front door", () => {
  test("a filter: the runaway event fails, the others decide as before", () => {
    const f = compileFilter(RUNAWAYS[0]![1]);
    expect(f.test({ event: "normal" })).toBe(true);
    expectTimeout(() => f.test({ event: "attack" }));
    expect(f.test({ event: "other" })).toBe(true);
  });

  test("a filter whose result is a shared tree of empty arrays: deciding it is inside the limit", () => {
    expectTimeout(() => compileFilter(ARR_DAG).test({}));
  });

  test("an expression whose result would be enormous to serialise fails inside the limit, not in the caller's JSON.stringify", () => {
    expectTimeout(() => compileExpression(OBJ_DAG).evaluate({}));
    expect(compileExpression(`{"a": [1, 2, {"b": "c"}]}`).evaluate({})).toEqual({ a: [1, 2, { b: "c" }] });
  });

  test("jsonata and mapping transforms: only the runaway event fails, the rest of the batch is transformed", async () => {
    const events = [
      { event: "a", n: 1 },
      { event: "attack", n: 2 },
      { event: "b", n: 3 },
    ];
    const t = jsonataTransform(`event = "attack" ? ($f := function($x){ $f($x + 1) }; $f(0)) : {"n": n}`);
    const r = await t.transformBatch(events);
    expect(r[0]).toEqual({ ok: true, value: { n: 1 } });
    expect(r[1]!.ok).toBe(false);
    expect((r[1] as { error: string }).error).toStartWith("D1012: ");
    expect(r[2]).toEqual({ ok: true, value: { n: 3 } });

    const m = mappingTransform({
      n: "n",
      loop: `event = "attack" ? ($f := function($x){ $f($x + 1) }; $f(0)) : "fine"`,
    });
    const rm = await m.transformBatch(events);
    expect(rm[0]).toEqual({ ok: true, value: { n: 1, loop: "fine" } });
    expect((rm[1] as { error: string }).error).toStartWith(`mapping of "loop": D1012: `);
    expect(rm[2]).toEqual({ ok: true, value: { n: 3, loop: "fine" } });
  });

  test("a mapping's properties share one budget per event", async () => {
    // each property alone stays under the limit; together they do not
    const slow = `$count($filter([1..2000000], function($v){ $v % 2 = 0 }))`;
    const single = withTimeLimit(() => {
      const t = performance.now();
      compileJsonata(slow).evaluate({});
      return performance.now() - t;
    }, 60_000);
    const count = Math.ceil((LIMIT_MS * 3) / Math.max(single, 1)) + 1;
    const mapping = Object.fromEntries(Array.from({ length: count }, (_, i) => [`p${i}`, slow]));
    const [r] = await mappingTransform(mapping).transformBatch([{}]);
    expect(r!.ok).toBe(false);
    expect((r as { error: string }).error).toContain("D1012");
  });
});

describe("TRIBUTARY_EXPRESSION_TIMEOUT_MS", () => {
  test("defaults to 100 ms, takes a positive number, refuses anything else", () => {
    expect(optionsFromEnv({}).expressionTimeoutMs).toBe(100);
    expect(optionsFromEnv({ TRIBUTARY_EXPRESSION_TIMEOUT_MS: "250" }).expressionTimeoutMs).toBe(250);
    for (const bad of ["0", "-5", "soon"])
      expect(() => optionsFromEnv({ TRIBUTARY_EXPRESSION_TIMEOUT_MS: bad })).toThrow();
  });
});
