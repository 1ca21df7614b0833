import { RANGE, Segment } from "./fingerprint-index.ts";

/**
 * One table of a FingerprintIndex as bytes, and back. The header states the sizes the arrays
 * must have; a blob that does not match them, or whose hash differs from the one its manifest
 * recorded, is refused (the caller then reads the window from the stream instead).
 */
const MAGIC = 0x54445832; // "TDX2"
const HEADER = 10; // Float64 fields

export class SnapshotFormatError extends Error {
  readonly code = "DEDUP_SNAPSHOT_INVALID";
}

export function encodeSegment(seg: Segment): Uint8Array {
  const stash = Float64Array.from(seg.stash);
  const parts = [
    new Float64Array([
      MAGIC,
      seg.start,
      seg.genStart,
      seg.nb,
      seg.count,
      seg.placed,
      seg.full ? 1 : 0,
      stash.length,
      seg.version,
      seg.extraBits,
    ]),
    seg.ranges,
    stash,
    seg.fp,
    seg.lo,
    seg.hi,
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), at);
    at += p.byteLength;
  }
  return out;
}

export function decodeSegment(id: string, blob: Uint8Array): Segment {
  const take = (bytes: number) => {
    if (at + bytes > blob.byteLength) throw new SnapshotFormatError(`dedup snapshot table ${id} is truncated`);
    const b = blob.slice(at, at + bytes); // a copy: aligned, and independent of the chunk buffers
    at += bytes;
    return b.buffer;
  };
  let at = 0;
  const h = new Float64Array(take(HEADER * 8));
  const [magic, start, genStart, nb, count, placed, full, stashLen, version, extraBits] = h as unknown as number[];
  if (magic !== MAGIC || !(nb! >= 1 && Number.isInteger(nb)) || !(stashLen! >= 0) || stashLen! % 3 !== 0)
    throw new SnapshotFormatError(`dedup snapshot table ${id} has an unknown format`);
  const slots = nb! * 4;
  const ranges = new Float64Array(take(Segment.blocksOf(slots) * RANGE * 8));
  const stash = Array.from(new Float64Array(take(stashLen! * 8)));
  const fp = new Uint16Array(take(slots * 2));
  const lo = new Uint8Array(take(slots));
  const hi = new Uint8Array(take(slots / 2));
  if (at !== blob.byteLength) throw new SnapshotFormatError(`dedup snapshot table ${id} has trailing bytes`);
  const seg = new Segment(id, start!, genStart!, slots, { fp, lo, hi, ranges }, extraBits! > 0);
  if (seg.extraBits !== extraBits) throw new SnapshotFormatError(`dedup snapshot table ${id} has an unknown format`);
  seg.count = count!;
  seg.placed = placed!;
  seg.full = full === 1;
  seg.stash = stash;
  seg.version = version!;
  return seg;
}
