import { describe, expect, test } from "bun:test";
import { FingerprintIndex, Segment } from "../../src/bus/fingerprint-index.ts";

const holds = (index: FingerprintIndex, id: string, seq: number) =>
  (index.lookup(id) ?? []).some((r) => r.minSeq <= seq && seq <= r.maxSeq);

describe("FingerprintIndex", () => {
  test("every id added is found in a block whose range holds its message; few strangers match", () => {
    const index = new FingerprintIndex(3600_000);
    // 300k ids, 3 per message.
    for (let i = 0; i < 300_000; i++) index.add(`id-${i}`, Math.floor(i / 3) + 1);
    for (let i = 0; i < 300_000; i++)
      if (!holds(index, `id-${i}`, Math.floor(i / 3) + 1)) throw new Error(`lost id-${i}`);
    let matched = 0;
    for (let i = 0; i < 200_000; i++) if (index.lookup(`new-${i}`)) matched++;
    // 8 slots compared per table, 16-bit fingerprints and the tag bits no block needs: < 1.2e-4 per table probed.
    expect(matched / 200_000).toBeLessThan(1e-3);
    expect(index.size).toBe(300_000);
  });

  test("at most 4 bytes per id once tables are sized from the traffic", () => {
    let now = 0;
    const window = 4000;
    const index = new FingerprintIndex(window, { now: () => now });
    // Steady traffic: the same number of ids each quarter window, for two windows.
    for (let q = 0; q < 8; q++) {
      for (let i = 0; i < 200_000; i++) index.add(`q${q}-${i}`, q * 200_000 + i + 1);
      now += window / 4;
    }
    expect(index.bytes / index.size).toBeLessThanOrEqual(4);
  });

  test("fingerprints of 2 bits: everything matches, nothing added is ever missed", () => {
    // Tiny tables fill and spill into the stash and new tables: no id may be lost on the way.
    const index = new FingerprintIndex(3600_000, { fingerprintBits: 2, minSlots: 64 });
    for (let i = 0; i < 20_000; i++) index.add(`c-${i}`, i + 1);
    for (let i = 0; i < 20_000; i++) if (!holds(index, `c-${i}`, i + 1)) throw new Error(`lost c-${i}`);
    let matched = 0;
    for (let i = 0; i < 1000; i++) if (index.lookup(`other-${i}`)) matched++;
    expect(matched).toBe(1000);
  });

  test("an id queued in a batch is found at once, and in the message its batch was published in", () => {
    const index = new FingerprintIndex(3600_000);
    index.add("a", 5);
    const put = index.writer();
    put("q1", -7);
    put("q2", -7);
    expect(index.lookup("q1")).toBeDefined();
    expect(holds(index, "q1", 42)).toBe(false);
    index.published(7, 42);
    expect(holds(index, "q1", 42)).toBe(true);
    expect(holds(index, "q2", 42)).toBe(true);
    expect(holds(index, "a", 5)).toBe(true);
  });

  test("remembers ids for at least the window, and forgets them within a quarter more", () => {
    let now = 0;
    const window = 1000;
    const index = new FingerprintIndex(window, { now: () => now });
    index.add("early", 1);
    for (now = 0; now <= window; now += 50) {
      index.add(`t${now}`, 2);
      expect(holds(index, "early", 1)).toBe(true);
    }
    for (; now <= window * 1.5; now += 50) index.add(`t${now}`, 3);
    expect(holds(index, "early", 1)).toBe(false);
    expect(holds(index, `t${now - 50}`, 3)).toBe(true);
  });
});

test("reserve: a start reading the whole window gets one table sized for it, not tables 8 times larger each", () => {
  const index = new FingerprintIndex(3600_000);
  index.reserve(500_000);
  for (let i = 0; i < 500_000; i++) index.add(`r-${i}`, i + 1);
  expect(index.segments.length).toBe(1);
  expect(index.bytes / index.size).toBeLessThanOrEqual(4);
  for (let i = 0; i < 500_000; i += 101) expect(holds(index, `r-${i}`, i + 1)).toBe(true);
});

test("a table whose cuckoo walk fails keeps the entry it carried: a one-bucket table and a fifth entry", () => {
  const seg = new Segment("t", 0, 0, 4, undefined, false);
  for (let f = 1; f <= 5; f++) seg.insert(0, f, 0);
  expect(seg.full).toBe(true);
  expect(seg.stash.length).toBe(3);
  for (let f = 1; f <= 5; f++) expect(seg.find(0, f, 0)).toEqual([0]);
  expect(seg.find(0, 6, 0)).toBeUndefined();
});
