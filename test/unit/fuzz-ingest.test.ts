import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { anyValue, bodyish, eventish, fuzzTimeout, hostileJson, params } from "../harness/fuzz.ts";
import { validateEvent, type Event } from "../../src/ingest/event-schema.ts";
import { normaliseEvent, NormaliseError } from "../../src/ingest/normalise.ts";
import { ingest, MAX_EVENT_DEPTH, unstorable, type Endpoint, type IngestStats } from "../../src/ingest/handler.ts";
import {
  BadEncodingError,
  BodyTimeoutError,
  decodeUtf8,
  PayloadTooLargeError,
  readBody,
  readBodyText,
} from "../../src/ingest/body.ts";
import type { EventLog } from "../../src/bus/event-log.ts";
import type { Entry } from "../../src/bus/shard-writer.ts";
import type { LoadedConnection } from "../../src/config/loader.ts";

/**
 * Property-based tests of the ingestion path below HTTP (issue 7): validation, normalisation and
 * `ingest()` over arbitrary event-like values, and body decoding over arbitrary bytes. Fixed seed
 * in CI; `bun run fuzz` runs them longer with a random seed (see test/harness/fuzz.ts).
 */

const CANONICAL = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const NAMES_A_FIELD = /"[^"]+"/;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });
/** What a sender's JSON text gives the node: JSON.parse of it (Infinity from 1e400, own __proto__ keys). */
const parsed = (v: unknown) => JSON.parse(hostileJson(v));
const facts = () => ({ receivedAt: Date.now(), ip: "203.0.113.7" });

function depth(v: unknown): number {
  if (typeof v !== "object" || v === null) return 0;
  let d = 0;
  for (const x of Object.values(v)) d = Math.max(d, depth(x));
  return d + 1;
}

describe("property: validation and normalisation", () => {
  test(
    "property: validateEvent never throws, and a refusal names a field or the event",
    () => {
      fc.assert(
        fc.property(fc.oneof(eventish, anyValue), (v) => {
          const problem = validateEvent(parsed(v));
          if (problem !== undefined) {
            expect(typeof problem).toBe("string");
            expect(problem).toMatch(/"[^"]+"|event/);
          }
        }),
        params(2000),
      );
    },
    fuzzTimeout,
  );

  test(
    "property: a valid event normalises to a storable event, or is refused with a NormaliseError naming a field; the input is left as it was",
    () => {
      fc.assert(
        fc.property(eventish, (v) => {
          const input = parsed(v);
          if (validateEvent(input) !== undefined) return;
          const before = JSON.stringify(input);
          let out: Event;
          try {
            out = normaliseEvent(input as Event, facts());
          } catch (e) {
            expect(e).toBeInstanceOf(NormaliseError);
            expect((e as Error).message).toMatch(NAMES_A_FIELD);
            return;
          } finally {
            expect(JSON.stringify(input)).toBe(before);
          }
          expect(typeof out.messageId).toBe("string");
          for (const f of ["receivedAt", "timestamp"] as const) expect(out[f]).toMatch(CANONICAL);
          for (const f of ["originalTimestamp", "sentAt"] as const)
            if (out[f] !== undefined) expect(out[f]).toMatch(CANONICAL);
          // Numeric ids become their decimal string, exactly (so only safe integers and plain decimals pass).
          for (const f of ["userId", "anonymousId", "groupId", "previousId"]) {
            if (typeof input[f] === "number") {
              expect(out[f]).toBe(String(input[f]));
              expect(Math.abs(input[f])).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
            }
          }
        }),
        params(2000),
      );
    },
    fuzzTimeout,
  );
});

/** An EventLog that keeps what it is given. */
function memoryLog() {
  const appended: Entry[] = [];
  const log = {
    append: async (_c: string, entries: Entry[]) => (
      appended.push(...entries), { stored: entries.length, duplicates: 0 }
    ),
  } as unknown as EventLog;
  return { log, appended };
}
const connection = {
  connection: "fuzz",
  source: "webhook",
  writeKeys: ["k"],
  file: "f.yaml",
} as unknown as LoadedConnection;
const LIMITS = { maxEventBytes: 2048, maxEventsPerRequest: 6, retryAfterSeconds: 1 };

describe("property: ingest()", () => {
  const endpoints: Endpoint[] = [
    { kind: "events" },
    { kind: "batch" },
    { kind: "single", type: "track" },
    { kind: "single", type: "alias" },
  ];

  test(
    "property: any body → 200, 400 or 413; every event is accepted or rejected by index with a short reason; what is stored is valid, strict-UTF-8 JSON within the limit, without writeKey",
    async () => {
      await fc.assert(
        fc.asyncProperty(bodyish, fc.constantFrom(...endpoints), async (v, endpoint) => {
          const body = parsed(v);
          const { log, appended } = memoryLog();
          const stats: IngestStats = { accepted: 0, duplicates: 0, rejected: 0 };
          const r = await ingest({ connection, endpoint, body, facts: facts(), eventLog: log, limits: LIMITS, stats });
          expect([200, 400, 413]).toContain(r.status);
          const b = r.body as {
            accepted?: number;
            rejected?: { index: number; messageId?: string; error: string }[];
            error?: string;
          };
          const events =
            endpoint.kind === "events"
              ? Array.isArray(body)
                ? body
                : [body]
              : endpoint.kind === "batch"
                ? (body?.batch ?? [])
                : [body];
          const rejected = b.rejected ?? [];
          if (r.status === 200) {
            expect(b.accepted).toBe(appended.length);
            expect(b.accepted! + rejected.length).toBe(events.length);
          } else {
            expect(typeof b.error).toBe("string");
            expect(appended).toHaveLength(0);
            if (rejected.length) expect(rejected).toHaveLength(events.length);
          }
          let last = -1;
          for (const x of rejected) {
            expect(x.index).toBeGreaterThan(last);
            expect(x.index).toBeLessThan(events.length);
            last = x.index;
            expect(x.error).toMatch(/"[^"]+"|event/);
            expect(x.error.length).toBeLessThanOrEqual(301);
            if (x.messageId !== undefined) expect(x.messageId).toBe(events[x.index].messageId);
          }
          for (const entry of appended) {
            expect(strictUtf8.decode(Buffer.from(entry.json))).toBe(entry.json);
            expect(Buffer.byteLength(entry.json)).toBeLessThanOrEqual(LIMITS.maxEventBytes);
            const stored = JSON.parse(entry.json);
            expect(stored.messageId).toBe(entry.id);
            expect("writeKey" in stored).toBe(false);
            expect(depth(stored)).toBeLessThanOrEqual(MAX_EVENT_DEPTH);
            expect(validateEvent(stored)).toBeUndefined();
          }
          expect(({} as Record<string, unknown>).polluted).toBeUndefined();
        }),
        params(1000),
      );
    },
    fuzzTimeout,
  );
});

describe("unstorable events", () => {
  const nest = (levels: number): unknown => (levels === 0 ? 1 : { a: nest(levels - 1) });
  test(
    "depth: the event is level 1; 100 levels are kept, 101 are not; the top-level field is named",
    () => {
      expect(unstorable({ type: "track", properties: nest(99) as Record<string, unknown> })).toBeUndefined();
      expect(unstorable({ type: "track", properties: nest(100) as Record<string, unknown> })).toBe(
        '"properties" nests deeper than 100 levels',
      );
      expect(unstorable({ type: "track", list: [[[[nest(97)]]]] })).toBe('"list" nests deeper than 100 levels');
    },
    fuzzTimeout,
  );
  test(
    "±Infinity anywhere is named by its path",
    () => {
      expect(unstorable({ properties: { a: [1, { b: Infinity }] } })).toBe(
        '"properties.a.1.b" is a number too large for JSON (it overflows to Infinity)',
      );
      expect(unstorable({ n: -Infinity })).toBe('"n" is a number too large for JSON (it overflows to Infinity)');
      expect(unstorable({ n: 1e308, m: -0, s: "Infinity" })).toBeUndefined();
    },
    fuzzTimeout,
  );
});

describe("property: request bodies", () => {
  const request = (body: Uint8Array, headers: Record<string, string> = {}) =>
    new Request("http://node/v1/events", { method: "POST", body: body as unknown as BodyInit, headers });

  test(
    "property: any bytes decode to exactly their UTF-8 text, or fail with BadEncodingError — never a silent U+FFFD",
    () => {
      fc.assert(
        fc.property(
          fc.oneof(
            fc.uint8Array({ maxLength: 64 }),
            fc.string({ unit: "binary", maxLength: 32 }).map((s) => new Uint8Array(Buffer.from(s))),
          ),
          (bytes) => {
            let text: string;
            try {
              text = decodeUtf8(bytes);
            } catch (e) {
              expect(e).toBeInstanceOf(BadEncodingError);
              expect((e as Error).message).toBe("body is not valid UTF-8");
              return;
            }
            // A leading byte-order mark is dropped, as a JSON reader should; everything else round-trips.
            const bom = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
            expect(Buffer.from(text).equals(Buffer.from(bytes.subarray(bom)))).toBe(true);
          },
        ),
        params(2000),
      );
    },
    fuzzTimeout,
  );

  test(
    "property: any bytes under any Content-Encoding → the text, or PayloadTooLargeError / BadEncodingError; nothing else escapes",
    async () => {
      const { gzipSync, deflateSync } = await import("node:zlib");
      await fc.assert(
        fc.asyncProperty(
          fc.uint8Array({ maxLength: 300 }),
          fc.constantFrom("identity", "gzip", "deflate", "x-gzip", "br", " GZIP ", ""),
          fc.boolean(),
          async (raw, encoding, compress) => {
            const name = encoding.trim().toLowerCase();
            const plain = name === "identity" || name === "";
            const body =
              compress && name.includes("gzip")
                ? gzipSync(raw)
                : compress && name === "deflate"
                  ? deflateSync(raw)
                  : raw;
            // The body says what it is: plain, or compressed as its Content-Encoding claims.
            const truthful = plain || body !== raw;
            let want: string | undefined; // the sender's text: the raw bytes as strict UTF-8 (a BOM dropped)
            try {
              want = strictUtf8.decode(raw);
            } catch {}
            let text: string | undefined;
            let error: unknown;
            try {
              text = await readBodyText(request(new Uint8Array(body), { "Content-Encoding": encoding }), {
                limit: 200,
                timeoutMs: 60_000,
              });
            } catch (e) {
              error = e;
            }
            if (text !== undefined) {
              // Whatever came back is the sender's text, byte for byte — never a mangled or partial one.
              expect(text).toBe(want!);
              expect(name).not.toBe("br");
            } else {
              expect(error instanceof BadEncodingError || error instanceof PayloadTooLargeError).toBe(true);
              if (error instanceof PayloadTooLargeError) expect(Math.max(raw.length, body.length)).toBeGreaterThan(200);
              // A truthful body within the limit holding valid UTF-8 is read, not refused.
              if (truthful && want !== undefined && raw.length <= 200 && body.length <= 200)
                throw new Error(`refused a readable ${JSON.stringify(encoding)} body: ${error}`);
            }
          },
        ),
        params(500),
      );
    },
    fuzzTimeout,
  );

  test(
    "property: a body arriving in any chunks, with or without its length declared, is read back byte for byte",
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.uint8Array({ minLength: 1, maxLength: 70_000 }), { maxLength: 5 }),
          fc.constantFrom("exact", "none", "less", "more"),
          async (chunks, declare) => {
            const all = Buffer.concat(chunks);
            let i = 0;
            const stream = new ReadableStream<Uint8Array>({
              pull: (c) => (i < chunks.length ? c.enqueue(chunks[i++]!) : c.close()),
            });
            const length =
              declare === "exact"
                ? all.length
                : declare === "less"
                  ? Math.max(0, all.length - 1)
                  : declare === "more"
                    ? all.length + 10
                    : undefined;
            const headers: Record<string, string> = length === undefined ? {} : { "Content-Length": String(length) };
            const r = new Request("http://node/v1/events", {
              method: "POST",
              body: stream,
              headers,
              duplex: "half",
            } as RequestInit);
            const got = await readBody(r, { limit: 1024 * 1024 });
            expect(Buffer.from(got).equals(all)).toBe(true);
          },
        ),
        params(200),
      );
    },
    fuzzTimeout,
  );

  test(
    "the limit holds while inflating; the deadline holds for a body that never ends",
    async () => {
      const { gzipSync } = await import("node:zlib");
      const bomb = gzipSync(Buffer.alloc(8 * 1024 * 1024));
      await expect(
        readBody(request(new Uint8Array(bomb), { "Content-Encoding": "gzip" }), { limit: 1024 * 1024 }),
      ).rejects.toBeInstanceOf(PayloadTooLargeError);
      let sizes: number[] = [];
      const grow = (n: number) => (sizes.push(n), n < 512 * 1024);
      await expect(
        readBody(request(new Uint8Array(bomb), { "Content-Encoding": "gzip" }), { limit: 16 * 1024 * 1024, grow }),
      ).rejects.toThrow("node overloaded");
      expect(sizes.at(-1)!).toBeGreaterThanOrEqual(512 * 1024);
      const never = new Request("http://node/v1/events", {
        method: "POST",
        body: new ReadableStream({ pull: () => new Promise(() => {}) }),
        duplex: "half",
      } as RequestInit);
      const t0 = performance.now();
      await expect(readBodyText(never, { limit: 1024, timeoutMs: 100 })).rejects.toBeInstanceOf(BodyTimeoutError);
      // The deadline, not something else, ended it: at 100 ms, well before 10× that.
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(95);
      expect(took).toBeLessThan(100 * 10 * 3);
      sizes = [];
    },
    fuzzTimeout,
  );
});
