/**
 * Runs jsonata's language-neutral test suite through the compiler's public API.
 *
 *   npm run jsonata:conformance            (suite at ../shared/jsonata-test-suite, or $JSONATA_SUITE)
 *   JSONATA_GROUPS=paths,joins npm run …   (only some groups)
 *   JSONATA_VERBOSE=1 npm run …            (list every failure and every fallback reason)
 *
 * Each case must give the expected result (compared after JSON normalisation, like jsonata's own
 * runner compares with chai's deep equality) or throw the expected error code. The report gives
 * the share of cases that ran fully compiled, failures per group, and ends with `N passed, M failed`.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { type CompiledJsonata, compileJsonata } from "../src/expr/index.ts";
import { parseCommand } from "./cli.ts";

const USAGE = `usage: npm run jsonata:conformance

Runs the jsonata project's own test suite through Tributary's JSONata compiler: the share of
cases that ran fully compiled, the failures per group, and "N passed, M failed" (exit 1 if any).

  -h, --help   this help

Environment: JSONATA_SUITE (the suite's directory; default ../shared/jsonata-test-suite),
JSONATA_GROUPS (comma-separated groups only), JSONATA_VERBOSE=1 (every failure and fallback).`;

export interface TestCase {
  group: string;
  file: string;
  expr: string;
  data?: unknown;
  dataset?: string | null;
  bindings?: Record<string, unknown>;
  result?: unknown;
  undefinedResult?: boolean;
  code?: string;
  token?: string;
  error?: Record<string, unknown>;
  timelimit?: number;
  depth?: number;
}

export interface CaseOutcome {
  testCase: TestCase;
  passed: boolean;
  compiled: boolean;
  detail?: string;
  fallbackReason?: string;
}

export interface SuiteReport {
  outcomes: CaseOutcome[];
  passed: number;
  failed: number;
  compiled: number;
}

export function defaultSuiteDir(): string {
  return process.env.JSONATA_SUITE ?? path.resolve(import.meta.dir, "../../shared/jsonata-test-suite");
}

export function loadSuite(dir: string, groups?: string[]): { cases: TestCase[]; datasets: Map<string, unknown> } {
  const datasets = new Map<string, unknown>();
  for (const name of readdirSync(path.join(dir, "datasets"))) {
    if (name.endsWith(".json"))
      datasets.set(name.slice(0, -5), JSON.parse(readFileSync(path.join(dir, "datasets", name), "utf8")));
  }
  const cases: TestCase[] = [];
  const groupDir = path.join(dir, "groups");
  for (const group of readdirSync(groupDir).sort()) {
    if (groups && !groups.includes(group)) continue;
    const gdir = path.join(groupDir, group);
    for (const file of readdirSync(gdir)
      .filter((n) => n.endsWith(".json"))
      .sort()) {
      const spec = JSON.parse(readFileSync(path.join(gdir, file), "utf8"));
      for (const c of Array.isArray(spec) ? spec : [spec]) {
        const expr = c["expr-file"] ? readFileSync(path.join(gdir, c["expr-file"]), "utf8") : c.expr;
        cases.push({ ...c, expr, group, file });
      }
    }
  }
  return { cases, datasets };
}

/** JSON-like normalisation: what the result looks like once serialised (functions, sequences' flags and undefined vanish). */
function normalise(v: unknown): unknown {
  if (v === undefined) return undefined;
  const s = JSON.stringify(v, (_k, x) => (typeof x === "function" ? undefined : x));
  return s === undefined ? undefined : JSON.parse(s);
}

function inputOf(c: TestCase, datasets: Map<string, unknown>): unknown {
  if ("data" in c) return c.data;
  if (c.dataset === null || c.dataset === undefined) return undefined;
  if (!datasets.has(c.dataset)) throw new Error(`unknown dataset ${c.dataset}`);
  // a fresh copy: expressions may mutate their input (e.g. the empty-input object constructor)
  return structuredClone(datasets.get(c.dataset));
}

function show(v: unknown): string {
  const s = v === undefined ? "undefined" : JSON.stringify(v);
  return s.length > 200 ? s.slice(0, 200) + "…" : s;
}

export function runCase(c: TestCase, datasets: Map<string, unknown>): CaseOutcome {
  const expectsError = c.code !== undefined || c.error !== undefined;
  const expected: Record<string, unknown> = c.error ?? { code: c.code };
  if (c.token !== undefined && c.error === undefined) expected.token = c.token;
  let expr: CompiledJsonata;
  try {
    expr = compileJsonata(
      c.expr,
      c.timelimit !== undefined || c.depth !== undefined ? { timeLimitMs: c.timelimit, maxDepth: c.depth } : undefined,
    );
  } catch (err) {
    const e = err as Record<string, unknown>;
    if (expectsError && e.code === expected.code && (expected.token === undefined || e.token === expected.token)) {
      return { testCase: c, passed: true, compiled: true };
    }
    return {
      testCase: c,
      passed: false,
      compiled: false,
      detail: `compile error ${String(e.code)}: ${String(e.message)}`,
    };
  }
  const compiled = expr.compiled;
  const fallbackReason = (expr as { fallbackReason?: string }).fallbackReason;
  const base = { testCase: c, compiled, fallbackReason };
  let result: unknown;
  try {
    result = expr.evaluate(inputOf(c, datasets), c.bindings);
  } catch (err) {
    const e = err as Record<string, unknown>;
    if (expectsError) {
      const mismatch = Object.entries(expected).find(([k, v]) => e[k] !== v);
      if (mismatch === undefined) return { ...base, passed: true };
      return {
        ...base,
        passed: false,
        detail: `expected error ${show(expected)}, got ${String(e.code)} (${mismatch[0]}=${show(e[mismatch[0]])})`,
      };
    }
    return { ...base, passed: false, detail: `unexpected error ${String(e.code)}: ${String(e.message)}` };
  }
  if (expectsError) return { ...base, passed: false, detail: `expected error ${show(expected)}, got ${show(result)}` };
  if (c.undefinedResult) {
    return result === undefined
      ? { ...base, passed: true }
      : { ...base, passed: false, detail: `expected undefined, got ${show(result)}` };
  }
  if (!("result" in c)) return { ...base, passed: false, detail: "nothing to check in this case" };
  const actual = normalise(result);
  if (Bun.deepEquals(actual, c.result, true)) return { ...base, passed: true };
  return { ...base, passed: false, detail: `expected ${show(c.result)}, got ${show(actual)}` };
}

export function runSuite(dir = defaultSuiteDir(), groups?: string[]): SuiteReport {
  const { cases, datasets } = loadSuite(dir, groups);
  const outcomes = cases.map((c) => runCase(c, datasets));
  return {
    outcomes,
    passed: outcomes.filter((o) => o.passed).length,
    failed: outcomes.filter((o) => !o.passed).length,
    compiled: outcomes.filter((o) => o.compiled).length,
  };
}

function main(): void {
  parseCommand({ name: "jsonata:conformance", usage: USAGE, options: {} });
  const dir = defaultSuiteDir();
  if (!existsSync(dir)) {
    // A clone carries only a few groups of the suite (test/fixtures/jsonata-suite): say so rather than run them as if they were all.
    console.error(
      `jsonata test suite not found at ${dir}: set JSONATA_SUITE to a clone of https://github.com/jsonata-js/jsonata's test/test-suite, or JSONATA_SUITE=test/fixtures/jsonata-suite for the few groups this repository carries`,
    );
    process.exit(2);
  }
  const groups = process.env.JSONATA_GROUPS?.split(",").filter(Boolean);
  const verbose = process.env.JSONATA_VERBOSE === "1";
  const started = performance.now();
  const report = runSuite(dir, groups);
  const total = report.outcomes.length;
  const share = total === 0 ? 0 : (100 * report.compiled) / total;
  console.log(
    `jsonata conformance: ${total} cases from ${dir} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  console.log(`compiled without fallback: ${report.compiled}/${total} (${share.toFixed(1)}%)`);

  const reasons = new Map<string, number>();
  for (const o of report.outcomes)
    if (!o.compiled && o.fallbackReason) reasons.set(o.fallbackReason, (reasons.get(o.fallbackReason) ?? 0) + 1);
  if (reasons.size > 0) {
    console.log("fallback reasons:");
    for (const [r, n] of [...reasons].sort((a, b) => b[1] - a[1])) console.log(`  ${String(n).padStart(4)}  ${r}`);
  }
  if (verbose) {
    for (const o of report.outcomes) {
      if (!o.compiled)
        console.log(
          `  fallback ${o.testCase.group}/${o.testCase.file}: ${o.fallbackReason ?? "?"} :: ${o.testCase.expr.slice(0, 100)}`,
        );
    }
  }
  const failedByGroup = new Map<string, CaseOutcome[]>();
  for (const o of report.outcomes) {
    if (o.passed) continue;
    const list = failedByGroup.get(o.testCase.group) ?? [];
    list.push(o);
    failedByGroup.set(o.testCase.group, list);
  }
  if (failedByGroup.size > 0) {
    console.log("failures by group:");
    for (const [group, list] of failedByGroup) {
      console.log(`  ${group}: ${list.length}`);
      for (const o of list.slice(0, verbose ? list.length : 5)) {
        console.log(
          `    ${o.testCase.file} ${o.compiled ? "[compiled]" : "[interpreted]"} ${o.testCase.expr.replace(/\s+/g, " ").slice(0, 120)}`,
        );
        console.log(`      ${o.detail}`);
      }
    }
  }
  console.log(`${report.passed} passed, ${report.failed} failed`);
  process.exit(report.failed > 0 ? 1 : 0);
}

if (import.meta.main) main();
