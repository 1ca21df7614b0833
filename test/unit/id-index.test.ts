import { describe, expect, test } from "bun:test";
import { IdIndex, hashId } from "../../src/bus/id-index.ts";

describe("IdIndex", () => {
  test("finds every id added, with its sequence, and not others", () => {
    const index = new IdIndex(3600_000);
    for (let i = 0; i < 50_000; i++) index.add(`id-${i}`, i + 1);
    for (let i = 0; i < 50_000; i += 997) expect(index.lookup(`id-${i}`)).toBe(i + 1);
    let misses = 0;
    for (let i = 50_000; i < 60_000; i++) if (index.lookup(`id-${i}`) === undefined) misses++;
    expect(misses).toBe(10_000);
    expect(index.size).toBe(50_000);
    // Compact: well under 64 bytes per id (a Map of strings takes ~250).
    expect(index.bytes / index.size).toBeLessThan(64);
  });

  test("remembers ids for at least the window, and forgets them within a quarter more", () => {
    let now = 0;
    const window = 1000;
    const index = new IdIndex(window, () => now);
    index.add("early", 1);
    for (now = 0; now <= window; now += 50) {
      index.add(`t${now}`, 2);
      expect(index.lookup("early")).toBe(1);
    }
    for (; now <= window * 1.5; now += 50) index.add(`t${now}`, 3);
    expect(index.lookup("early")).toBeUndefined();
    expect(index.lookup(`t${now - 50}`)).toBe(3);
  });

  test("the two 32-bit halves of the hash differ and spread", () => {
    const [a, b] = hashId("message-1");
    expect(a).not.toBe(b);
    const seen = new Set<string>();
    for (let i = 0; i < 100_000; i++) seen.add(hashId(`m${i}`).join(":"));
    expect(seen.size).toBe(100_000);
  });
});
