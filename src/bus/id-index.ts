/**
 * The messageIds stored on one shard subject within the dedup window, compactly: each id is
 * kept as a 64-bit hash and the stream sequence of the message that holds it (16 bytes in a
 * typed array, rather than ~250 bytes for a string in a Map). A hash hit is only a suspicion: the
 * caller confirms it against the message at that sequence, so a hash collision can cause a
 * redundant read, never a dropped event.
 *
 * Expiry is by generation: ids go into the newest table, a new table starts every quarter of
 * the window, and a table is dropped once everything in it is older than the window. So an id
 * is remembered for at least the window and at most a quarter more.
 */

// The last hash computed, in two halves: lookups and adds run per event, and returning a pair
// would allocate one array each time.
let hashA = 0;
let hashB = 0;

function hashInto(id: string): void {
  let a = 0x811c9dc5; // FNV-1a
  let b = 0x9747b28c; // murmur-style mix, independent of a
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  b = Math.imul(b ^ (b >>> 13), 0x5bd1e995);
  b ^= b >>> 15;
  hashA = a >>> 0;
  hashB = b >>> 0;
}

/** The hash of the last {@link hashIntoState} call, for other indexes over the same hash. */
export const hashState = { a: 0, b: 0 };

export function hashIntoState(id: string): void {
  hashInto(id);
  hashState.a = hashA;
  hashState.b = hashB;
}

export function hashId(id: string): [number, number] {
  hashInto(id);
  return [hashA, hashB];
}

class HashTable {
  keys: Uint32Array;
  seqs: Float64Array;
  size = 0;

  constructor(capacity = 1024) {
    this.keys = new Uint32Array(capacity * 2);
    this.seqs = new Float64Array(capacity);
  }

  get(a: number, b: number): number | undefined {
    const mask = this.seqs.length - 1;
    for (let slot = b & mask; ; slot = (slot + 1) & mask) {
      const seq = this.seqs[slot]!;
      if (seq === 0) return undefined;
      if (this.keys[slot * 2] === a && this.keys[slot * 2 + 1] === b) return seq;
    }
  }

  set(a: number, b: number, seq: number): void {
    if ((this.size + 1) * 4 > this.seqs.length * 3) this.#grow();
    const mask = this.seqs.length - 1;
    for (let slot = b & mask; ; slot = (slot + 1) & mask) {
      if (this.seqs[slot] === 0) {
        this.keys[slot * 2] = a;
        this.keys[slot * 2 + 1] = b;
        this.seqs[slot] = seq;
        this.size++;
        return;
      }
      if (this.keys[slot * 2] === a && this.keys[slot * 2 + 1] === b) {
        this.seqs[slot] = seq;
        return;
      }
    }
  }

  #grow(): void {
    const { keys, seqs } = this;
    this.keys = new Uint32Array(keys.length * 2);
    this.seqs = new Float64Array(seqs.length * 2);
    this.size = 0;
    for (let i = 0; i < seqs.length; i++) if (seqs[i] !== 0) this.set(keys[i * 2]!, keys[i * 2 + 1]!, seqs[i]!);
  }

  get bytes(): number {
    return this.keys.byteLength + this.seqs.byteLength;
  }
}

export class IdIndex {
  #generations: { start: number; table: HashTable }[] = [];

  constructor(
    readonly windowMs: number,
    readonly now: () => number = Date.now,
  ) {}

  /** The sequence of the message that may hold this id, if any. */
  lookup(id: string): number | undefined {
    hashInto(id);
    for (let i = this.#generations.length - 1; i >= 0; i--) {
      const seq = this.#generations[i]!.table.get(hashA, hashB);
      if (seq !== undefined) return seq;
    }
    return undefined;
  }

  add(id: string, seq: number): void {
    const table = this.#current();
    hashInto(id);
    table.set(hashA, hashB, seq);
  }

  /** Adds to the current generation without reading the clock again: for the ids of one call. */
  writer(): (id: string, seq: number) => void {
    const table = this.#current();
    return (id, seq) => {
      hashInto(id);
      table.set(hashA, hashB, seq);
    };
  }

  /** Every id of one message: the clock is read once, not once per id. */
  addAll(ids: readonly string[], seq: number): void {
    const table = this.#current();
    for (const id of ids) {
      hashInto(id);
      table.set(hashA, hashB, seq);
    }
  }

  #current(): HashTable {
    const now = this.now();
    const last = this.#generations[this.#generations.length - 1];
    if (last && now - last.start < this.windowMs / 4) return last.table;
    // Generation i holds ids added in [start_i, start_{i+1}): drop it once start_{i+1} is past the window.
    while (this.#generations.length > 1 && this.#generations[1]!.start < now - this.windowMs) this.#generations.shift();
    const table = new HashTable(last ? Math.max(1024, 2 ** Math.ceil(Math.log2(last.table.size + 1))) : 1024);
    this.#generations.push({ start: now, table });
    return table;
  }

  get size(): number {
    return this.#generations.reduce((n, g) => n + g.table.size, 0);
  }

  get bytes(): number {
    return this.#generations.reduce((n, g) => n + g.table.bytes, 0);
  }
}
