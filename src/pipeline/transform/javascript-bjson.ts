/**
 * Writes JSON-compatible values in QuickJS's binary object format ("bjson", JS_WriteObject version 5),
 * so the sandbox gets its events with `decodeBinaryJSON` (JS_ReadObject: no text parsing, keys resolved
 * once per batch) instead of JSON.parse, which costs several times more inside QuickJS.
 *
 * Only the JSON subset is written, with JSON.stringify's semantics (toJSON, undefined/function/symbol
 * properties skipped, non-finite numbers as null, cycles and BigInt rejected), so the guest sees exactly
 * `JSON.parse(JSON.stringify(event))`. The format is QuickJS-internal: the worker checks at start that
 * its QuickJS reads what this writes (`bjsonSelfTest`) and otherwise the events go as JSON text.
 *
 * Layout: version byte, LEB128 atom count, atoms (strings), then the value. Values: 1 null, 3 false,
 * 4 true, 5 int32 (zigzag LEB128), 6 float64 LE, 7 string (LEB128 len<<1|wide, Latin-1 or UTF-16LE),
 * 8 object (LEB128 count, then atom ref ((index+1)<<1) and value), 9 array (LEB128 length, values).
 */

export const bjsonVersion = 5;

const TAG_NULL = 1;
const TAG_FALSE = 3;
const TAG_TRUE = 4;
const TAG_INT32 = 5;
const TAG_FLOAT64 = 6;
const TAG_STRING = 7;
const TAG_OBJECT = 8;
const TAG_ARRAY = 9;

const nonAscii = /[^\x00-\x7f]/;
const utf8 = new TextEncoder();

/**
 * A batch of events in bjson, ready to post to a worker (`bytes` can be transferred): the header
 * (version + the batch's atoms) ends at `headerEnd`; event k's value ends at `ends[k]` and starts
 * where the previous one ends.
 */
export interface BjsonBatch {
  bytes: Uint8Array;
  headerEnd: number;
  ends: number[];
}

/** Writes one batch: a shared atom table, each event's value bytes separately (so any subset forms a document). */
export class BjsonWriter {
  private buf = new Uint8Array(64 * 1024);
  private view = new DataView(this.buf.buffer);
  private pos = 0;
  private readonly atoms = new Map<string, number>();
  private readonly atomList: string[] = [];
  private readonly stack: object[] = [];

  /**
   * Encode events: the batch of those that could be encoded (in order) and, for each input event,
   * undefined or why it could not be (cycle, BigInt: what JSON.stringify rejects).
   */
  static encodeBatch(events: unknown[]): { batch: BjsonBatch; errors: (string | undefined)[] } {
    const w = new BjsonWriter();
    const bodyEnds: number[] = [];
    const errors: (string | undefined)[] = new Array(events.length);
    for (let i = 0; i < events.length; i++) {
      const start = w.pos;
      try {
        w.stack.length = 0;
        if (!w.value(events[i], "")) w.byte(TAG_NULL); // JSON.stringify(undefined) is not JSON; the event becomes null
        bodyEnds.push(w.pos);
      } catch (e) {
        w.pos = start;
        errors[i] = (e as Error).message;
      }
    }
    const header = w.header();
    const bytes = new Uint8Array(header.length + w.pos);
    bytes.set(header, 0);
    bytes.set(w.buf.subarray(0, w.pos), header.length);
    return { batch: { bytes, headerEnd: header.length, ends: bodyEnds.map((e) => e + header.length) }, errors };
  }

  /** The events of a batch as views: [header, event 0, event 1, ...]. */
  static slices(b: BjsonBatch): { header: Uint8Array; events: Uint8Array[] } {
    const events: Uint8Array[] = new Array(b.ends.length);
    let start = b.headerEnd;
    for (let k = 0; k < b.ends.length; k++) {
      events[k] = b.bytes.subarray(start, b.ends[k]);
      start = b.ends[k]!;
    }
    return { header: b.bytes.subarray(0, b.headerEnd), events };
  }

  /** A document holding the array of the given events; its buffer is exactly the document. */
  static document(header: Uint8Array, events: Uint8Array[]): Uint8Array {
    let n = events.length;
    let lebLength = 1;
    for (let x = n; x >= 0x80; x >>>= 7) lebLength++;
    let size = header.length + 1 + lebLength;
    for (const e of events) size += e.length;
    const out = new Uint8Array(size);
    out.set(header, 0);
    let p = header.length;
    out[p++] = TAG_ARRAY;
    while (n >= 0x80) {
      out[p++] = (n & 0x7f) | 0x80;
      n >>>= 7;
    }
    out[p++] = n;
    for (const e of events) {
      out.set(e, p);
      p += e.length;
    }
    return out;
  }

  private header(): Uint8Array {
    const h = new BjsonWriter();
    h.byte(bjsonVersion);
    h.leb(this.atomList.length);
    for (const a of this.atomList) h.string(a);
    return h.buf.slice(0, h.pos);
  }

  private ensure(n: number) {
    if (this.pos + n <= this.buf.length) return;
    const b = new Uint8Array(Math.max(this.buf.length * 2, this.pos + n + 1024));
    b.set(this.buf.subarray(0, this.pos));
    this.buf = b;
    this.view = new DataView(b.buffer);
  }

  private byte(b: number) {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  private leb(v: number) {
    this.ensure(5);
    const b = this.buf;
    let p = this.pos;
    while (v >= 0x80) {
      b[p++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    b[p++] = v;
    this.pos = p;
  }

  private string(s: string) {
    const n = s.length;
    if (n >= 1 << 30) throw new RangeError("string too long");
    if (!nonAscii.test(s)) {
      this.leb(n << 1);
      this.ensure(n);
      if (n < 16) {
        const b = this.buf;
        let p = this.pos;
        for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
        this.pos = p;
      } else this.pos += utf8.encodeInto(s, this.buf.subarray(this.pos)).written;
      return;
    }
    let wide = false;
    for (let i = 0; i < n; i++) {
      if (s.charCodeAt(i) > 0xff) {
        wide = true;
        break;
      }
    }
    this.leb((n << 1) | (wide ? 1 : 0));
    this.ensure(wide ? 2 * n : n);
    const b = this.buf;
    let p = this.pos;
    if (wide) {
      for (let i = 0; i < n; i++) {
        const c = s.charCodeAt(i);
        b[p++] = c & 0xff;
        b[p++] = c >> 8;
      }
    } else for (let i = 0; i < n; i++) b[p++] = s.charCodeAt(i);
    this.pos = p;
  }

  private atom(k: string) {
    let i = this.atoms.get(k);
    if (i === undefined) {
      i = this.atomList.length;
      this.atoms.set(k, i);
      this.atomList.push(k);
    }
    this.leb((i + 1) << 1);
  }

  /** Write `v` as JSON.stringify would see it; false if it is skipped (undefined, function, symbol). */
  private value(v: unknown, key: string): boolean {
    if (
      v !== null &&
      (typeof v === "object" || typeof v === "bigint") &&
      typeof (v as { toJSON?: unknown }).toJSON === "function"
    ) {
      v = (v as { toJSON(k: string): unknown }).toJSON(key);
    }
    switch (typeof v) {
      case "string":
        this.byte(TAG_STRING);
        this.string(v);
        return true;
      case "number":
        if ((v | 0) === v) {
          // (-0 too: JSON turns it into 0)
          this.byte(TAG_INT32);
          this.leb(((v << 1) ^ (v >> 31)) >>> 0);
        } else if (Number.isFinite(v)) {
          this.ensure(9);
          this.buf[this.pos++] = TAG_FLOAT64;
          this.view.setFloat64(this.pos, v, true);
          this.pos += 8;
        } else this.byte(TAG_NULL);
        return true;
      case "boolean":
        this.byte(v ? TAG_TRUE : TAG_FALSE);
        return true;
      case "bigint":
        throw new TypeError("BigInt value can't be serialized in JSON");
      case "object": {
        if (v === null) {
          this.byte(TAG_NULL);
          return true;
        }
        if (v instanceof Number || v instanceof String || v instanceof Boolean) return this.value(v.valueOf(), key);
        // Cycles: checked only once deep (JSON-carried events are shallow), like JSON.stringify's error.
        if (this.stack.length >= 32 && this.stack.includes(v))
          throw new TypeError("cyclic structure can't be serialized in JSON");
        this.stack.push(v);
        if (Array.isArray(v)) {
          this.byte(TAG_ARRAY);
          this.leb(v.length);
          for (let i = 0; i < v.length; i++) if (!this.value(v[i], String(i))) this.byte(TAG_NULL);
        } else {
          const o = v as Record<string, unknown>;
          const keys = Object.keys(o);
          this.byte(TAG_OBJECT);
          // The count comes first: reserve 5 bytes, write the properties, then the count as a padded
          // (5-byte) LEB128, which QuickJS reads like any other.
          this.ensure(5);
          const countAt = this.pos;
          this.pos += 5;
          let n = 0;
          for (const k of keys) {
            const before = this.pos;
            this.atom(k);
            if (this.value(o[k], k)) n++;
            else this.pos = before;
          }
          this.patchCount(countAt, n);
        }
        this.stack.pop();
        return true;
      }
      default:
        return false; // undefined, function, symbol
    }
  }

  /** Write `n` into the 5 bytes reserved at `at` as a padded LEB128 (continuation bits on the first four). */
  private patchCount(at: number, n: number) {
    const b = this.buf;
    b[at] = (n & 0x7f) | 0x80;
    b[at + 1] = ((n >>> 7) & 0x7f) | 0x80;
    b[at + 2] = ((n >>> 14) & 0x7f) | 0x80;
    b[at + 3] = ((n >>> 21) & 0x7f) | 0x80;
    b[at + 4] = (n >>> 28) & 0x0f;
  }
}

/** A value covering every bjson tag the writer uses, for the sandbox's compatibility check. */
export const bjsonSelfTestJson = JSON.stringify({
  s: "ascii",
  l: "Latin-1 é",
  w: "wide € 😀 \ud800",
  long: "x".repeat(40) + '\u0000\u0001\n"',
  i: [0, 1, -1, 2147483647, -2147483648, 300, 2147483648],
  f: [1.5, 2 ** 40, 1e-7, -1e300],
  b: [true, false, null],
  "0": "index key",
  "7": { "": "empty key", type: "predefined atom name", length: 3 },
  nested: { a: [{ b: {} }, []] },
}).replace('"nested"', '"__proto__":{"own":true},"nested"');
