import { afterEach, beforeEach, expect, test } from "bun:test";
import { RefusalLog } from "../../src/ingest/refusal-log.ts";

/** Refusal warn lines are rate-limited: a hostile sender cannot flood the log, and nothing is lost silently. */

let lines: Record<string, unknown>[] = [];
const write = process.stderr.write.bind(process.stderr);
beforeEach(() => {
  lines = [];
  process.stderr.write = ((chunk: string | Uint8Array) => {
    const text = typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
    for (const l of text.split("\n")) if (l.startsWith("{")) lines.push(JSON.parse(l));
    return true;
  }) as typeof process.stderr.write;
});
afterEach(() => {
  process.stderr.write = write;
});

test("one line per subject per window; the next line counts what was held back", () => {
  let now = 1_000_000;
  const r = new RefusalLog({ windowMs: 60_000 }, () => now);
  expect(r.warn("a", "refused", { origin: "https://a.example" })).toBe(true);
  for (let i = 0; i < 500; i++) r.warn("a", "refused", { origin: "https://a.example" });
  expect(r.warn("b", "refused", { origin: "https://b.example" })).toBe(true);
  expect(lines.map((l) => l.origin)).toEqual(["https://a.example", "https://b.example"]);
  now += 59_999;
  expect(r.warn("a", "refused", { origin: "https://a.example" })).toBe(false);
  now += 1;
  expect(r.warn("a", "refused", { origin: "https://a.example" })).toBe(true);
  expect(lines[2]).toMatchObject({ level: "warn", msg: "refused", origin: "https://a.example", suppressed: 501 });
});

test("a sender varying its subject (Origin) gets at most maxLinesPerWindow lines a window, and the rest is counted", () => {
  let now = 0;
  const r = new RefusalLog({ windowMs: 60_000, maxLinesPerWindow: 10 }, () => now);
  for (let i = 0; i < 1000; i++) r.warn(`o${i}`, "refused", { origin: `https://${i}.example` });
  expect(lines.length).toBe(10);
  now += 60_000;
  r.warn("late", "refused", { origin: "https://late.example" });
  expect(lines.at(-1)).toMatchObject({ origin: "https://late.example", suppressedOtherRefusals: 990 });
});

test("past maxSubjects the oldest subjects are forgotten (bounded memory) and lines keep coming; long values are clipped", () => {
  let now = 0;
  const r = new RefusalLog({ windowMs: 1, maxLinesPerWindow: 1e9, maxSubjects: 100 }, () => now);
  for (let i = 0; i < 10_000; i++) {
    now++;
    r.warn(`s${i}`, "refused", { origin: "x".repeat(10_000) });
  }
  expect(lines.length).toBe(10_000);
  expect(String(lines[0]!.origin).length).toBeLessThan(300);
});
