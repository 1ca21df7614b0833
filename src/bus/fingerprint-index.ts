/**
 * The messageIds stored on one shard subject within the dedup window, in at most 4 bytes per id.
 *
 * Layout. Each id is reduced to a 64-bit hash: 32 bits choose its bucket, 16 bits are kept as its
 * fingerprint. A table is a cuckoo table of buckets of 4 slots (an id lives in one of two
 * buckets, the second derived from the first and the fingerprint, so entries can move without
 * their id); a slot holds the fingerprint (Uint16) and a 12-bit tag (a Uint8 and a nibble): 3.5
 * bytes. The tag is the id's block number, in as many bits as the table has blocks; a small
 * table's spare tag bits hold more of the hash, so its matches are rarer. A table is never grown
 * (its entries have no id left to rehash): it is full at 95 % (or when a cuckoo walk fails, its
 * last entry kept in a small stash) and the next one starts, sized from the traffic — a new
 * generation's for as many ids as the last generation held, at 94 %. Each table also keeps 16
 * bytes per block (its sequence range), a block being max(128, slots / 4096) ids: at most 0.125
 * bytes per id, 0.004 once a table holds 16M ids.
 *
 * The bound: bytes per id = 3.5 / load + 16 / blockIds ≤ 3.5 / 0.94 + 0.125 = 3.85 for tables
 * sized from steady traffic (a full table: 3.5 / 0.95 + 0.125 = 3.81). A table sized for more than
 * came (traffic fell) costs more per id but less in all than the table before it. The current
 * generation's table is allocated for its whole quarter when it starts, so right after a new
 * generation the index holds five tables for four quarters of ids (≈ 4.8 bytes per id held), and
 * that falls back to ≤ 3.85 as the quarter fills. bench/dedup.ts measures both (the structure's
 * size and the heap's growth) against the 64-bit IdIndex (≈ 21–37 bytes per id held).
 *
 * Confirmation. 3.5 bytes leave no room for a sequence: a quarter window of one subject can hold
 * tens of millions of messages, and naming one of them takes ~24 bits on top of a fingerprint.
 * So the index says which *block* may hold an id — `blockIds` ids added one after another — and
 * the sequence range [minSeq, maxSeq] of the messages holding them. A hit is confirmed by reading
 * the subject's messages in that range (range-read.ts): one read when messages hold many ids, a
 * headers-only consumer over up to `blockIds` messages when each holds one. A fingerprint matches
 * a stranger's with probability 8 / 65535 per large table probed (two buckets of 4; fewer in
 * small tables), so at most about 0.06 % of new ids (5 tables) cost such a read. A collision
 * costs a read, never an event.
 *
 * Expiry is by generation as before: a generation starts every quarter window (its tables
 * hold the ids added in it) and a table is dropped once the next one started more than a
 * window ago. So an id is remembered for at least the window and at most a quarter more.
 */
import { hashIntoState as hashInto, hashState } from "./id-index.ts";

const SLOTS = 4;
/** Bits of a slot besides its 16-bit fingerprint: the block number, and in a small table more of the hash. */
const TAG_BITS = 12;
const MIN_BLOCK_IDS = 128;
const MAX_LOAD = 0.95;
const MAX_KICKS = 500;
/** Each block's [minSeq, maxSeq]; 0 = none yet. */
export const RANGE = 2;
/** A new generation's table is sized for as many ids as the last one held, at this load. */
const SIZING_LOAD = 0.94;

/** Where the index says an id may be: the messages of a block (0, 0 while its ids are only queued). */
export interface IndexRange {
  minSeq: number;
  maxSeq: number;
}

export interface FingerprintIndexOptions {
  now?: () => number;
  /** Bits of each fingerprint (1..16). Fewer only in tests, to force collisions. */
  fingerprintBits?: number;
  /** Slots of the first table (and the least of any). */
  minSlots?: number;
}

let rng = 0x9e3779b9;
const random = () => {
  rng ^= rng << 13;
  rng ^= rng >>> 17;
  rng ^= rng << 5;
  return rng >>> 0;
};

export class Segment {
  readonly nb: number;
  fp: Uint16Array;
  lo: Uint8Array;
  hi: Uint8Array;
  ranges: Float64Array;
  readonly blockIds: number;
  /** Bits of a slot's 12-bit tag naming its block; the others hold more of the id's hash (small tables need fewer blocks). */
  readonly blockBits: number;
  readonly extraBits: number;
  count = 0;
  /** Ids placed so far, in order: an id's block is the number placed before it / blockIds. */
  placed = 0;
  full = false;
  /** Entries no bucket could take when the table filled: [bucket, fingerprint, block] triples. */
  stash: number[] = [];
  /** Bumped on every change: a snapshot rewrites only tables that changed since it last wrote them. */
  version = 0;

  constructor(
    readonly id: string,
    readonly start: number,
    readonly genStart: number,
    slots: number,
    /** A table read back from a snapshot (see index-snapshot.ts), checked there. */
    data?: { fp: Uint16Array; lo: Uint8Array; hi: Uint8Array; ranges: Float64Array },
    /** Whether tag bits no block needs lengthen the fingerprint (not with the test-only narrow fingerprints). */
    extras = true,
  ) {
    this.nb = Math.max(1, Math.ceil(slots / SLOTS));
    const n = this.nb * SLOTS;
    this.blockBits = Segment.blockBitsOf(n);
    this.extraBits = extras ? TAG_BITS - this.blockBits : 0;
    this.blockIds = Math.max(MIN_BLOCK_IDS, Math.ceil(n / 2 ** this.blockBits));
    this.fp = data?.fp ?? new Uint16Array(n);
    this.lo = data?.lo ?? new Uint8Array(n);
    this.hi = data?.hi ?? new Uint8Array(n / 2);
    this.ranges = data?.ranges ?? new Float64Array(Segment.blocksOf(n) * RANGE);
  }

  static blockBitsOf(slots: number): number {
    return Math.min(TAG_BITS, Math.ceil(Math.log2(Math.max(1, Math.ceil(slots / MIN_BLOCK_IDS)))));
  }

  static blocksOf(slots: number): number {
    return Math.ceil(slots / Math.max(MIN_BLOCK_IDS, Math.ceil(slots / 2 ** Segment.blockBitsOf(slots))));
  }

  /** The tag of an id placed in `block` whose hash's first half is `h`. */
  tag(block: number, h: number): number {
    return ((h & ((1 << this.extraBits) - 1)) << this.blockBits) | block;
  }

  get slots(): number {
    return this.nb * SLOTS;
  }

  get bytes(): number {
    return (
      this.fp.byteLength + this.lo.byteLength + this.hi.byteLength + this.ranges.byteLength + this.stash.length * 8
    );
  }

  bucketOf(h: number): number {
    return Math.floor((h * this.nb) / 4294967296);
  }

  /** The other bucket of a fingerprint in bucket `i`: (m − i) mod nb is its own inverse, for any nb. */
  alt(i: number, f: number): number {
    const m = (Math.imul(f, 0x5bd1e995) >>> 0) % this.nb;
    return (m - i + this.nb) % this.nb;
  }

  blockAt(s: number): number {
    return this.lo[s]! | (((this.hi[s >> 1]! >> ((s & 1) << 2)) & 15) << 8);
  }

  #setBlock(s: number, b: number): void {
    this.lo[s] = b & 255;
    const sh = (s & 1) << 2;
    this.hi[s >> 1] = (this.hi[s >> 1]! & ~(15 << sh)) | ((b >> 8) << sh);
  }

  #put(i: number, f: number, b: number): boolean {
    for (let s = i * SLOTS, end = s + SLOTS; s < end; s++)
      if (this.fp[s] === 0) {
        this.fp[s] = f;
        this.#setBlock(s, b);
        this.count++;
        return true;
      }
    return false;
  }

  #has(i: number, f: number, b: number): boolean {
    for (let s = i * SLOTS, end = s + SLOTS; s < end; s++) if (this.fp[s] === f && this.blockAt(s) === b) return true;
    return false;
  }

  /** Places fingerprint `f` of block `b` whose first bucket is `i1`; marks the table full when it is. */
  insert(i1: number, f: number, b: number): void {
    const i2 = this.alt(i1, f);
    if (this.#has(i1, f, b) || this.#has(i2, f, b)) return;
    this.version++;
    if (this.#put(i1, f, b) || this.#put(i2, f, b)) {
      if (this.count >= this.slots * MAX_LOAD) this.full = true;
      return;
    }
    let i = random() & 1 ? i1 : i2;
    for (let n = 0; n < MAX_KICKS; n++) {
      const s = i * SLOTS + (random() & (SLOTS - 1));
      const vf = this.fp[s]!;
      const vb = this.blockAt(s);
      this.fp[s] = f;
      this.#setBlock(s, b);
      f = vf;
      b = vb;
      i = this.alt(i, f);
      if (this.#put(i, f, b)) return;
    }
    // Nothing lost: the last entry moved out waits in the stash, and the next id goes to a new table.
    this.stash.push(i, f, b);
    this.full = true;
  }

  /**
   * The blocks of the entries matching fingerprint `f` and the tag's extra bits of hash `h`, first
   * bucket `i1`, appended to `out` (made on the first).
   */
  find(i1: number, f: number, h: number, out?: number[]): number[] | undefined {
    const i2 = this.alt(i1, f);
    const extra = h & ((1 << this.extraBits) - 1);
    const bb = this.blockBits;
    const mask = (1 << bb) - 1;
    for (let s = i1 * SLOTS, end = s + SLOTS; s < end; s++)
      if (this.fp[s] === f) {
        const t = this.blockAt(s);
        if (t >>> bb === extra) (out ??= []).push(t & mask);
      }
    if (i2 !== i1)
      for (let s = i2 * SLOTS, end = s + SLOTS; s < end; s++)
        if (this.fp[s] === f) {
          const t = this.blockAt(s);
          if (t >>> bb === extra) (out ??= []).push(t & mask);
        }
    for (let k = 0; k < this.stash.length; k += 3)
      if (
        this.stash[k + 1] === f &&
        (this.stash[k] === i1 || this.stash[k] === i2) &&
        this.stash[k + 2]! >>> bb === extra
      )
        (out ??= []).push(this.stash[k + 2]! & mask);
    return out;
  }

  /** The block of the next id placed. */
  nextBlock(): number {
    return Math.min(Math.floor(this.placed++ / this.blockIds), this.ranges.length / RANGE - 1);
  }

  widen(block: number, seq: number): void {
    const r = this.ranges;
    const o = block * RANGE;
    if (r[o] === 0 || seq < r[o]!) r[o] = seq;
    if (seq > r[o + 1]!) r[o + 1] = seq;
    this.version++;
  }

  range(block: number): IndexRange {
    const o = block * RANGE;
    return { minSeq: this.ranges[o]!, maxSeq: this.ranges[o + 1]! };
  }
}

let segmentIds = 0;
const newSegmentId = () => `${Date.now().toString(36)}-${(++segmentIds).toString(36)}-${random().toString(36)}`;

export class FingerprintIndex {
  #segments: Segment[] = [];
  readonly now: () => number;
  readonly fingerprintBits: number;
  readonly minSlots: number;
  readonly #fpMax: number;
  readonly #extras: boolean;
  /** Blocks holding ids of each batch still being published, to give them its sequence. */
  #open = new Map<number, { seg: Segment; block: number }[]>();

  constructor(
    readonly windowMs: number,
    options: FingerprintIndexOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.fingerprintBits = options.fingerprintBits ?? 16;
    if (!(this.fingerprintBits >= 1 && this.fingerprintBits <= 16)) throw new RangeError("fingerprintBits: 1..16");
    this.minSlots = options.minSlots ?? 1024;
    this.#fpMax = 2 ** this.fingerprintBits - 1;
    this.#extras = this.fingerprintBits === 16;
  }

  /** Fingerprints are 1..fpMax: 0 marks an empty slot. */
  #fingerprint(): number {
    return (hashState.b % this.#fpMax) + 1;
  }

  /** The blocks that may hold this id (a fingerprint can match another id's), or undefined. */
  lookup(key: string): IndexRange[] | undefined {
    hashInto(key);
    const f = this.#fingerprint();
    const h = hashState.a;
    let out: IndexRange[] | undefined;
    for (let i = this.#segments.length - 1; i >= 0; i--) {
      const seg = this.#segments[i]!;
      const blocks = seg.find(seg.bucketOf(h), f, h);
      if (blocks) for (const b of blocks) (out ??= []).push(seg.range(b));
    }
    return out;
  }

  /** `ref` > 0: the stream sequence of the message holding the id; < 0: minus the writer's batch number. */
  add(key: string, ref: number): void {
    this.#place(this.#current(), key, ref);
  }

  /** Adds to the current table without reading the clock again: for the ids of one call. */
  writer(): (key: string, ref: number) => void {
    let seg = this.#current();
    return (key, ref) => {
      if (seg.full) seg = this.#current();
      this.#place(seg, key, ref);
    };
  }

  /** Every id of one message. */
  addAll(keys: readonly string[], seq: number): void {
    let seg = this.#current();
    for (const k of keys) {
      if (seg.full) seg = this.#current();
      this.#place(seg, k, seq);
    }
  }

  #place(seg: Segment, key: string, ref: number): void {
    hashInto(key);
    const block = seg.nextBlock();
    const h = hashState.a;
    seg.insert(seg.bucketOf(h), this.#fingerprint(), seg.tag(block, h));
    if (ref > 0) seg.widen(block, ref);
    else {
      const no = -ref;
      let list = this.#open.get(no);
      if (!list) this.#open.set(no, (list = []));
      const last = list[list.length - 1];
      if (!last || last.seg !== seg || last.block !== block) list.push({ seg, block });
    }
  }

  /** Batch `no` is stored at `seq`: its blocks' ranges now include that message. */
  published(no: number, seq: number): void {
    for (const { seg, block } of this.#open.get(no) ?? []) seg.widen(block, seq);
    this.#open.delete(no);
  }

  /** Batch `no` failed: its ids stay in the index (a hit then reads the block and finds them absent). */
  abandoned(no: number): void {
    this.#open.delete(no);
  }

  #current(): Segment {
    const now = this.now();
    const cur = this.#segments[this.#segments.length - 1];
    const quarter = this.windowMs / 4;
    if (cur && !cur.full && now - cur.genStart < quarter) return cur;
    // Table i holds ids added before table i+1 started: drop it once that is past the window.
    while (this.#segments.length > 1 && this.#segments[1]!.start < now - this.windowMs) this.#segments.shift();
    const newGeneration = !cur || now - cur.genStart >= quarter;
    let slots = this.minSlots;
    if (cur && newGeneration) {
      // The generation that ended: as many ids again.
      let n = 0;
      for (const s of this.#segments) if (s.genStart === cur.genStart) n += s.count;
      slots = Math.max(this.minSlots, Math.ceil(n / SIZING_LOAD));
    } else if (cur) {
      // Full before its quarter ended: the rest of the quarter at the rate seen, at most 8 times larger.
      const rate = cur.count / Math.max(1, now - cur.start);
      const rest = Math.max(0, quarter - (now - cur.genStart));
      slots = Math.min(cur.slots * 8, Math.max(this.minSlots, Math.ceil((rate * rest) / SIZING_LOAD)));
    }
    const seg = new Segment(newSegmentId(), now, newGeneration ? now : cur!.genStart, slots, undefined, this.#extras);
    this.#segments.push(seg);
    return seg;
  }

  /**
   * Makes room for about `n` more ids in one table (a start reading the whole window: it comes
   * in one burst, which the rate-based sizing would meet with tables 8 times larger each).
   */
  reserve(n: number): void {
    const cur = this.#current();
    if (cur.slots * MAX_LOAD - cur.count >= n) return;
    const seg = new Segment(
      newSegmentId(),
      this.now(),
      cur.genStart,
      Math.ceil(n / SIZING_LOAD),
      undefined,
      this.#extras,
    );
    if (cur.count === 0 && cur.stash.length === 0) this.#segments[this.#segments.length - 1] = seg;
    else this.#segments.push(seg);
  }

  get segments(): readonly Segment[] {
    return this.#segments;
  }

  /** Replaces the tables (a snapshot loaded); ids of batches still open are forgotten. */
  restore(segments: Segment[]): void {
    this.#segments = segments;
    this.#open.clear();
  }

  get size(): number {
    return this.#segments.reduce((n, s) => n + s.count + s.stash.length / 3, 0);
  }

  get bytes(): number {
    return this.#segments.reduce((n, s) => n + s.bytes, 0);
  }
}
