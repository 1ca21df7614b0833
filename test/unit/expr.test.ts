import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import {
  compileExpression,
  compileFilter,
  ExpressionTimeoutError,
  expressionCompilations,
  expressionTimeLimit,
  FilterCompileError,
  setExpressionTimeLimit,
} from "../../src/expr/index.ts";

/** The expression front door (src/expr/index.ts): one compilation per source, one way in. */

const unique = (expr: string) => `${expr} /* ${crypto.randomUUID()} */`;

test("a source is compiled once, whether a filter or a value asks for it", () => {
  const source = unique(`type = "track"`);
  const before = expressionCompilations();
  const filter = compileFilter(source);
  const value = compileExpression(source);
  compileFilter(source);
  expect(expressionCompilations() - before).toBe(1);
  // each keeps its own meaning over the shared compilation
  expect(filter.test({ type: "track" })).toBe(true);
  expect(filter.test({ type: "identify" })).toBe(false);
  expect(value.evaluate({ type: "track" })).toBe(true);
  expect(filter.source).toBe(source);
  expect(value.source).toBe(source);
});

test("a broken expression is not kept: every caller hears its error", () => {
  const source = unique("type = (");
  const before = expressionCompilations();
  for (let i = 0; i < 2; i++) expect(() => compileFilter(source)).toThrow(FilterCompileError);
  expect(() => compileExpression(source)).toThrow(FilterCompileError);
  expect(expressionCompilations() - before).toBe(0);
});

test("a shared compilation runs within the time limit of each evaluation, not of its compilation", () => {
  const source = unique("$count([1..10000000])");
  const e = compileExpression(source);
  const saved = expressionTimeLimit();
  setExpressionTimeLimit(5);
  try {
    expect(() => compileExpression(source).evaluate({})).toThrow(ExpressionTimeoutError);
    expect(() => e.evaluate({})).toThrow(ExpressionTimeoutError);
  } finally {
    setExpressionTimeLimit(saved);
  }
});

const repo = resolve(import.meta.dir, "../..");
const tsFiles = (dir: string): string[] =>
  readdirSync(join(repo, dir), { withFileTypes: true, recursive: true })
    .filter((d) => d.isFile() && d.name.endsWith(".ts"))
    .map((d) => relative(repo, join(d.parentPath, d.name)));
const specifiers = (file: string) =>
  [...readFileSync(join(repo, file), "utf8").matchAll(/(?:from|import)\s*\(?\s*"([^"]+)"/g)].map((m) => m[1]!);

test("outside src/expr, only its front door is imported", () => {
  const wrong: string[] = [];
  for (const file of ["src", "scripts", "bench", "test"].flatMap(tsFiles)) {
    if (file.startsWith("src/expr/")) continue;
    for (const s of specifiers(file)) {
      const target = relative(repo, resolve(repo, file, "..", s));
      if (s.startsWith(".") && target.startsWith("src/expr/") && target !== "src/expr/index.ts")
        wrong.push(`${file}: ${s}`);
    }
  }
  expect(wrong).toEqual([]);
});

test("src/expr imports nothing from the layers that use it", () => {
  const wrong: string[] = [];
  for (const file of tsFiles("src/expr")) {
    for (const s of specifiers(file)) {
      const target = relative(repo, resolve(repo, file, "..", s));
      if (s.startsWith(".") && !target.startsWith("src/expr/") && !target.startsWith("src/util/"))
        wrong.push(`${file}: ${s}`);
    }
  }
  expect(wrong).toEqual([]);
});
