import { expect, test } from "bun:test";
import { FingerprintIndex } from "../../src/bus/fingerprint-index.ts";
import { decodeSegment, encodeSegment, SnapshotFormatError } from "../../src/bus/index-snapshot.ts";

const holds = (index: FingerprintIndex, id: string, seq: number) =>
  (index.lookup(id) ?? []).some((r) => r.minSeq <= seq && seq <= r.maxSeq);

test("a table written and read back answers every lookup as before", () => {
  let now = 0;
  const index = new FingerprintIndex(4000, { now: () => now, minSlots: 256 });
  for (let i = 0; i < 20_000; i++) {
    now = i / 10;
    index.add(`x-${i}`, i + 1);
  }
  const copy = new FingerprintIndex(4000, { now: () => now });
  copy.restore(index.segments.map((s) => decodeSegment(s.id, encodeSegment(s))));
  expect(copy.size).toBe(index.size);
  expect(copy.bytes).toBe(index.bytes);
  for (let i = 0; i < 20_000; i++) if (!holds(copy, `x-${i}`, i + 1)) throw new Error(`lost x-${i}`);
  for (let i = 0; i < 2000; i++) expect(copy.lookup(`y-${i}`)?.length).toBe(index.lookup(`y-${i}`)?.length);
});

test("a truncated, lengthened or foreign blob is refused with its code", () => {
  const index = new FingerprintIndex(4000);
  for (let i = 0; i < 100; i++) index.add(`z-${i}`, i + 1);
  const blob = encodeSegment(index.segments[0]!);
  const refused = (b: Uint8Array) => {
    try {
      decodeSegment("t", b);
    } catch (e) {
      return e instanceof SnapshotFormatError && e.code === "DEDUP_SNAPSHOT_INVALID";
    }
    return false;
  };
  expect(refused(blob.subarray(0, blob.byteLength - 1))).toBe(true);
  expect(refused(new Uint8Array([...blob, 0]))).toBe(true);
  expect(refused(new Uint8Array(blob.byteLength).fill(1))).toBe(true);
  expect(refused(blob)).toBe(false);
});
