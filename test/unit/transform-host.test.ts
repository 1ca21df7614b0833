import { afterAll, describe, expect, test } from "bun:test";
import { cut, WorkerHost } from "../../src/pipeline/transform/host.ts";
import { createJavaScriptTransform } from "../../src/pipeline/transform/javascript.ts";
import { createPythonTransform } from "../../src/pipeline/transform/python.ts";
import type { SandboxedTransform, TransformResult } from "../../src/pipeline/transform/types.ts";

/**
 * The shared transform host (host.ts): both guests run on it, so a guest stopped in the middle of a
 * chunk is handled by the same code for both. Each guest below stalls on the event marked "stall" in a
 * way its own in-sandbox deadline cannot stop (JavaScript: a slow built-in in a loop, so QuickJS never
 * polls its interrupt handler; Python: a loop that swallows KeyboardInterrupt): only the host's
 * watchdog ends it, by stopping the worker.
 */
const guests = {
  javascript: () =>
    createJavaScriptTransform(
      `function transform(e) {
        if (e.kind === "stall") while (true) "x".repeat(1e6);
        return { n: e.n };
      }`,
      { timeoutMs: 200 },
    ),
  python: () =>
    createPythonTransform(
      `def transform(e):
    if e["kind"] == "stall":
        while True:
            try:
                while True:
                    pass
            except KeyboardInterrupt:
                pass
    return {"n": e["n"]}
`,
      { timeoutMs: 200 },
    ),
};

const opened: SandboxedTransform[] = [];
afterAll(() => {
  for (const t of opened) t.dispose();
});

/** 300 events: over two JavaScript messages (128 each) and, in Python, in one chunk of 500. */
const batch = (stallAt: number) =>
  Array.from({ length: 300 }, (_, n) => (n === stallAt ? { kind: "stall", n } : { kind: "ok", n }));

describe("the shared transform host", () => {
  test("chunks: solo events go one per chunk, the rest by count and bytes", () => {
    const sizes = [10, 10, 10, 10, 10, 10];
    expect(cut([0, 1, 2, 3, 4, 5], { maxEvents: 4 })).toEqual([
      [0, 1, 2, 3],
      [4, 5],
    ]);
    expect(cut([0, 1, 2, 3, 4, 5], { maxEvents: 4, solo: new Set([1, 2]) })).toEqual([[0], [1], [2], [3, 4, 5]]);
    // 10 bytes each plus a separator: three fit in 32, a fourth does not.
    expect(cut([0, 1, 2, 3, 4, 5], { maxEvents: 100, maxBytes: 32, sizeOf: (i) => sizes[i]! })).toEqual([
      [0, 1, 2],
      [3, 4, 5],
    ]);
    // One event larger than the limit still goes, alone.
    expect(cut([0, 1], { maxEvents: 100, maxBytes: 5, sizeOf: (i) => sizes[i]! })).toEqual([[0], [1]]);
  });

  for (const [language, create] of Object.entries(guests)) {
    test(`${language}: a chunk whose guest is stopped mid-way is replayed in a new worker, and only the culprit fails`, async () => {
      const t = await create();
      opened.push(t);
      expect(t).toBeInstanceOf(WorkerHost);
      const host = t as unknown as WorkerHost<unknown, unknown>;
      const results = await t.transformBatch(batch(60));
      expect(results).toHaveLength(300);
      results.forEach((r: TransformResult, n) => {
        if (n === 60) {
          expect(r.ok).toBe(false);
          expect((r as { error: string }).error).toContain("time limit");
        } else expect(r).toEqual({ ok: true, value: { n } });
      });
      expect(host.restarts).toBeGreaterThanOrEqual(1);
      // The new worker serves the next batch.
      expect(await t.transformBatch([{ kind: "ok", n: 1 }])).toEqual([{ ok: true, value: { n: 1 } }]);
    }, 60_000);

    test(`${language}: disposing during a stall fails what is left, it never throws`, async () => {
      const t = await create();
      opened.push(t);
      const running = t.transformBatch(batch(1));
      await Bun.sleep(100);
      t.dispose();
      const results = await running;
      // Neither guest had reported a result yet (the stalled chunk holds them all).
      expect(results).toEqual(results.map(() => ({ ok: false, error: "transform disposed" })));
      expect(await t.transformBatch([{ kind: "ok", n: 1 }])).toEqual([{ ok: false, error: "transform disposed" }]);
    }, 60_000);
  }
});
