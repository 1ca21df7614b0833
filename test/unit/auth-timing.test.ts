import { describe, expect, test } from "bun:test";
import { createHash, randomBytes } from "node:crypto";
import fc from "fast-check";
import { params } from "../harness/fuzz.ts";
import { WriteKeyIndex } from "../../src/ingest/auth.ts";
import { adminGuard } from "../../src/ops/admin-auth.ts";
import type { Config } from "../../src/config/loader.ts";

/**
 * Key comparison must not tell an attacker how much of a key they guessed (issue 7, security).
 *
 * What is measurable: with 32-character keys, the few nanoseconds a naive comparison spends per
 * matching character drown in timer noise, so a test at that size could never fail. With 16 KiB
 * keys the same leak costs microseconds: a character-by-character comparison takes many times
 * longer for a guess that differs in its last character than for one that differs in its first
 * (JavaScript's `===` on such strings is just as visible, in the other direction, in Bun 1.4). So the test uses 16 KiB keys, compares medians of
 * many interleaved rounds with a generous tolerance, and first proves on a naive comparison that
 * pays the real code's cost too (a SHA-256 of the key) that this measurement does detect such a
 * leak by more than that tolerance — so it can fail if WriteKeyIndex is ever replaced by one. (A Map keyed by the raw key would not fail it: the lookup hashes the whole key whatever it
 * holds and compares only on a hash match, which is also why it leaks nothing measurable.)
 */

const LEN = 16 * 1024;
const real = randomBytes(LEN).toString("base64url").slice(0, LEN).replace(/^./, "a").replace(/.$/, "a");
const differsFirst = "b" + real.slice(1);
const differsLast = real.slice(0, -1) + "b";

/** Median time of `fn(differsLast)` over median time of `fn(differsFirst)`, interleaved rounds. */
function lastOverFirst(fn: (guess: string) => unknown, reps: number, rounds = 31): number {
  const t: Record<string, number[]> = { first: [], last: [] };
  for (let r = 0; r < rounds; r++) {
    for (const which of r % 2 ? (["first", "last"] as const) : (["last", "first"] as const)) {
      const guess = which === "first" ? differsFirst : differsLast;
      const t0 = performance.now();
      for (let i = 0; i < reps; i++) fn(guess);
      t[which]!.push(performance.now() - t0);
    }
  }
  const median = (x: number[]) => x.sort((a, b) => a - b)[x.length >> 1]!;
  return median(t.last!) / median(t.first!);
}

/** How far from 1 a ratio may be and still count as "the same time". */
const TOLERANCE = 1.5;

/** Passes when any of `attempts` measurements is within [1/tolerance, tolerance]: noise only ever widens the ratio. */
function indistinguishable(
  fn: (guess: string) => unknown,
  reps: number,
  tolerance = TOLERANCE,
  attempts = 3,
): number[] {
  const seen: number[] = [];
  for (let a = 0; a < attempts; a++) {
    const r = lastOverFirst(fn, reps);
    seen.push(r);
    if (r <= tolerance && r >= 1 / tolerance) break;
  }
  return seen;
}
const within = (ratios: number[], tolerance = TOLERANCE) => ratios.some((r) => r <= tolerance && r >= 1 / tolerance);

describe("timing of key comparison", () => {
  const config = {
    connections: new Map([["c", { connection: "c", source: "webhook", writeKeys: [real], file: "c.yaml" }]]),
  } as unknown as Config;
  const index = new WriteKeyIndex(config);

  test("the measurement detects a leaky comparison at the real cost (SHA-256 of the key, then character by character)", () => {
    // The real lookup hashes every key it is given (16 KiB: as long as the comparison itself), so
    // the calibration pays the same: a leak must still show through that constant cost, by more
    // than the tolerance the tests below allow.
    const stored = real;
    const leaky = (guess: string) => {
      createHash("sha256").update(guess).digest("base64");
      if (guess.length !== stored.length) return undefined;
      for (let i = 0; i < guess.length; i++) if (guess.charCodeAt(i) !== stored.charCodeAt(i)) return undefined;
      return "c";
    };
    lastOverFirst(leaky, 20, 5); // warm-up
    // A leak shows as a ratio well outside [1/TOLERANCE, TOLERANCE] twice in a row. On a machine
    // other jobs share, a pair may be drowned in their noise: up to five pairs are measured, and a
    // measurement that could not see the leak would never show it twice.
    const seen: number[][] = [];
    for (let i = 0; i < 5; i++) {
      const ratios = [lastOverFirst(leaky, 60), lastOverFirst(leaky, 60)];
      seen.push(ratios);
      if (ratios.every((r) => r > TOLERANCE * 1.25)) break;
    }
    expect(
      seen.at(-1)!.every((r) => r > TOLERANCE * 1.25),
      `ratios ${seen.map((p) => p.map((r) => r.toFixed(2)).join(", ")).join(" | ")}`,
    ).toBe(true);
  }, 30_000);

  test("WriteKeyIndex.lookup takes the same time whether a wrong key differs from a real one in its first or its last byte", () => {
    expect(index.lookup(real)?.connection).toBe("c");
    expect(index.lookup(differsFirst)).toBeUndefined();
    expect(index.lookup(differsLast)).toBeUndefined();
    lastOverFirst((g) => index.lookup(g), 20, 5); // warm-up
    const ratios = indistinguishable((g) => index.lookup(g), 60);
    expect(within(ratios), `ratios ${ratios.map((r) => r.toFixed(2)).join(", ")}`).toBe(true);
  }, 30_000);

  test("the admin guard takes the same time whether a wrong token differs from the real one in its first or its last byte", () => {
    const guard = adminGuard({ token: real, devLoopback: false });
    const requests = new Map(
      [differsFirst, differsLast, real].map((t) => [
        t,
        new Request("http://node/v1/pipelines", { headers: { Authorization: `Bearer ${t}` } }),
      ]),
    );
    expect(guard(requests.get(real)!, "203.0.113.1")).toBeUndefined();
    expect(guard(requests.get(differsLast)!, "203.0.113.1")?.status).toBe(401);
    lastOverFirst((g) => guard(requests.get(g)!, undefined), 20, 5);
    const ratios = indistinguishable((g) => guard(requests.get(g)!, undefined), 60);
    expect(within(ratios), `ratios ${ratios.map((r) => r.toFixed(2)).join(", ")}`).toBe(true);
  }, 30_000);
});

describe("property: write-key lookup", () => {
  test("property: a key finds its connection, and only that exact key does (rotated keys included)", () => {
    const key = fc.string({ unit: "binary", minLength: 8, maxLength: 40 });
    fc.assert(
      fc.property(fc.uniqueArray(key, { minLength: 1, maxLength: 4 }), key, fc.nat(), (keys, other, pick) => {
        const config = {
          connections: new Map([
            ["c", { connection: "c", source: "webhook", writeKeys: keys, file: "c.yaml" }],
            ["r", { connection: "r", source: "raw", writeKeys: [other], file: "r.yaml" }],
          ]),
        } as unknown as Config;
        const index = new WriteKeyIndex(config);
        const k = keys[pick % keys.length]!;
        expect(index.lookup(k)?.connection).toBe("c");
        // A raw connection's "key" never authenticates ingestion.
        if (!keys.includes(other)) expect(index.lookup(other)).toBeUndefined();
        for (const near of [
          k.slice(0, -1),
          k + "x",
          k.slice(1),
          k.toUpperCase() === k ? k.toLowerCase() : k.toUpperCase(),
          "",
        ]) {
          if (!keys.includes(near)) expect(index.lookup(near)).toBeUndefined();
        }
      }),
      params(300),
    );
  });
});
