import fc from "fast-check";

/**
 * Shared settings and arbitraries for the property-based tests (fast-check). CI runs them with a
 * fixed seed (42) and a few hundred runs each; `bun run fuzz` (scripts/fuzz.ts) runs the same tests
 * with FUZZ_SEED=<random> and FUZZ_RUNS=<many>, and prints the seed so a failure can be replayed:
 *
 *   FUZZ_SEED=123 FUZZ_RUNS=5000 bun test -t property test/unit/fuzz-ingest.test.ts
 */
export const FUZZ_SEED = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : 42;
const ASKED = Number(process.env.FUZZ_RUNS);

/** Runs for one property: `ciRuns` by default, FUZZ_RUNS when set. */
export function runs(ciRuns: number): number {
  return Number.isFinite(ASKED) && ASKED > 0 ? Math.round(ASKED) : ciRuns;
}

/** Per-test timeout for property tests: generous in CI, none to speak of for a long fuzzing run. */
export const fuzzTimeout = Number.isFinite(ASKED) && ASKED > 0 ? 24 * 3600_000 : 60_000;

/** fast-check parameters for one property. */
export const params = (ciRuns: number): fc.Parameters<unknown> => ({
  seed: FUZZ_SEED,
  numRuns: runs(ciRuns),
  endOnFailure: false,
});

/** One UTF-16 unit or code point, biased to what breaks parsers: ASCII, controls, BMP, astral, lone surrogates. */
export const hostileChar: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)) },
  { weight: 2, arbitrary: fc.string({ unit: "binary", minLength: 1, maxLength: 1 }) },
  { weight: 1, arbitrary: fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c)) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "\u0000",
      "\u2028",
      "\ufeff",
      "\uffff",
      "é",
      "😀",
      '"',
      "\\",
      "{",
      "}",
      "[",
      "]",
      ":",
      ",",
    ),
  },
);

/** Strings made of {@link hostileChar}. */
export const hostileString = (maxLength = 24): fc.Arbitrary<string> => fc.string({ unit: hostileChar, maxLength });

/** Values of any JSON-ish kind, including the ones JSON.parse can produce that surprise code: huge numbers, -0. */
export const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
  { weight: 2, arbitrary: hostileString() },
  {
    weight: 1,
    // biome-ignore lint/correctness/noPrecisionLoss: a number past 2^53 is the point of the case
    arbitrary: fc.constantFrom(Infinity, -Infinity, 1e308, -0, 2 ** 53 + 2, 1e21, 12345678901234567890, 0.1, -1),
  },
  {
    weight: 1,
    arbitrary: fc.dictionary(
      fc.constantFrom("__proto__", "constructor", "prototype", "toString", "a"),
      fc.jsonValue({ maxDepth: 2 }),
    ),
  },
);

/** ISO-8601-looking strings, valid and not: out-of-range years, impossible dates, offsets, garbage. */
export const timestampish: fc.Arbitrary<unknown> = fc.oneof(
  fc
    .date({ min: new Date("0000-01-01T00:00:00Z"), max: new Date("9999-12-31T23:59:59Z"), noInvalidDate: true })
    .map((d) => d.toISOString()),
  fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
  fc
    .tuple(
      fc.integer({ min: 0, max: 10000 }),
      fc.integer({ min: 0, max: 14 }),
      fc.integer({ min: 0, max: 33 }),
      fc.integer({ min: 0, max: 25 }),
      fc.integer({ min: 0, max: 61 }),
      fc.constantFrom("Z", "+00:00", "-23:59", "+14:00", "+99:99", "", ".123Z", ".123456789+01:00"),
    )
    .map(
      ([y, mo, d, h, mi, z]) =>
        `${String(y).padStart(4, "0")}-${String(mo).padStart(2, "0")}-${String(d).padStart(2, "0")}T${String(h).padStart(2, "0")}:${String(mi).padStart(2, "0")}:00${z}`,
    ),
  fc.constantFrom(
    "2025-02-29T00:00:00Z",
    "2024-02-29T00:00:00Z",
    "2025-13-45T99:99:99Z",
    "99999-01-01T00:00:00Z",
    "-0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-05:00",
    "2025-01-01",
    "now",
  ),
  anyValue,
);

const opt = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: undefined, freq: 2 });
const nonEmpty = (max = 12) => fc.string({ unit: hostileChar, minLength: 1, maxLength: max });
const validId = fc.oneof(
  { weight: 4, arbitrary: nonEmpty() },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
);
const validTime = fc.oneof(
  fc
    .date({ min: new Date("1900-01-01T00:00:00Z"), max: new Date("2200-01-01T00:00:00Z"), noInvalidDate: true })
    .map((d) => d.toISOString()),
  fc
    .date({ min: new Date("2000-01-02T00:00:00Z"), max: new Date("2100-01-01T00:00:00Z"), noInvalidDate: true })
    .map((d) => d.toISOString().replace(/\.\d{3}Z$/, "+02:00")),
);
const dict = (maxKeys: number) => fc.dictionary(hostileString(8), anyValue, { maxKeys });

/** Segment events whose every field is of the right type (strings and values still hostile). */
const tameEvent: fc.Arbitrary<Record<string, unknown>> = fc.record(
  {
    type: fc.constantFrom("track", "identify", "page", "screen", "group", "alias"),
    event: nonEmpty(20),
    userId: validId,
    anonymousId: opt(validId),
    groupId: validId,
    previousId: validId,
    name: opt(hostileString()),
    timestamp: opt(validTime),
    originalTimestamp: opt(validTime),
    sentAt: opt(validTime),
    properties: opt(dict(6)),
    traits: opt(dict(4)),
    integrations: opt(fc.dictionary(hostileString(8), fc.boolean(), { maxKeys: 3 })),
    context: opt(
      fc.record(
        {
          ip: opt(
            fc.oneof(
              fc.ipV4(),
              fc.ipV6(),
              fc.constantFrom(
                "0.0.0.0",
                "255.255.255.255",
                "255.255.255.0",
                "255.255.0.0",
                "::ffff:1.2.3.4",
                "[2001:db8::1]:443",
                "1.2.3.4:80",
              ),
            ),
          ),
          userAgent: opt(
            fc.oneof(
              fc.constantFrom(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2.1 Safari/605.1.15",
                "Mozilla/5.0 (Linux; Android 14) Chrome/120.0.0.0 Mobile",
              ),
              hostileString(60),
            ),
          ),
          consents: opt(fc.dictionary(hostileString(6), fc.boolean(), { maxKeys: 3 })),
          screen: opt(
            fc.record(
              {
                width: fc.integer({ min: 0, max: 32767 }),
                height: fc.integer({ min: 0, max: 32767 }),
                density: fc.double({ min: 0, max: 8, noNaN: true }),
              },
              { requiredKeys: [] },
            ),
          ),
          sessionId: opt(fc.maxSafeInteger()),
          sessionStart: opt(fc.boolean()),
          traits: opt(dict(3)),
          browser: opt(fc.record({ name: hostileString(), version: hostileString() }, { requiredKeys: [] })),
          os: opt(
            fc.record(
              { name: fc.constantFrom("darwin", "Mac OS", "windows", "iOS", "Other"), version: hostileString() },
              { requiredKeys: [] },
            ),
          ),
          library: opt(fc.record({ name: hostileString(), version: hostileString() })),
          locale: opt(hostileString()),
        },
        { requiredKeys: [] },
      ),
    ),
    messageId: opt(fc.string({ unit: hostileChar, minLength: 1, maxLength: 40 })),
    writeKey: opt(hostileString()),
    extra: opt(anyValue),
  },
  { requiredKeys: ["type", "event", "userId", "groupId", "previousId"] },
);

/** Field paths a hostile override may replace, and what may go there: anything, or a near-miss. */
const OVERRIDABLE = [
  "type",
  "event",
  "userId",
  "anonymousId",
  "groupId",
  "previousId",
  "name",
  "timestamp",
  "originalTimestamp",
  "sentAt",
  "properties",
  "traits",
  "integrations",
  "context",
  "messageId",
  "writeKey",
  "context.ip",
  "context.userAgent",
  "context.consents",
  "context.screen",
  "context.sessionId",
  "context.sessionStart",
  "context.traits",
  "context.browser",
  "__proto__",
  "constructor",
] as const;
const wildValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 3, arbitrary: anyValue },
  { weight: 2, arbitrary: timestampish },
  {
    weight: 1,
    arbitrary: fc.constantFrom(undefined, null, "", 0, -1, 2 ** 53 + 2, 1e21, [], {}, "x".repeat(101), {
      __proto__: 1,
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record(
      { width: anyValue, height: fc.integer({ min: -5, max: 40000 }), density: fc.oneof(fc.double(), anyValue) },
      { requiredKeys: [] },
    ),
  },
);

/**
 * Objects shaped like Segment events: a well-typed event with zero to three fields replaced by
 * hostile values (wrong types, out-of-range timestamps, huge numbers, pollution keys), so both
 * the refusals and the deep paths of normalisation get exercised.
 */
export const eventish: fc.Arbitrary<Record<string, unknown>> = fc
  .tuple(tameEvent, fc.array(fc.tuple(fc.constantFrom(...OVERRIDABLE), wildValue), { maxLength: 3 }))
  .map(([event, overrides]) => {
    const e: Record<string, unknown> = Object.fromEntries(Object.entries(event).filter(([, v]) => v !== undefined));
    for (const [path, value] of overrides) {
      const [head, tail] = path.split(".") as [string, string | undefined];
      const put = (o: Record<string, unknown>, k: string, v: unknown) =>
        Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
      if (!tail) put(e, head, value);
      else {
        const c = e[head] && typeof e[head] === "object" && !Array.isArray(e[head]) ? { ...(e[head] as object) } : {};
        put(c as Record<string, unknown>, tail, value);
        e[head] = c;
      }
    }
    return e;
  });

/** A body for an ingestion endpoint: mostly arrays of event-like objects, sometimes anything at all. */
export const bodyish: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 5, arbitrary: fc.array(eventish, { minLength: 0, maxLength: 8 }) },
  { weight: 2, arbitrary: eventish },
  {
    weight: 2,
    arbitrary: fc.record(
      {
        batch: fc.oneof(fc.array(eventish, { maxLength: 6 }), anyValue),
        context: opt(anyValue),
        integrations: opt(anyValue),
        sentAt: opt(timestampish),
      },
      { requiredKeys: ["batch"] },
    ),
  },
  { weight: 1, arbitrary: anyValue },
);

const INF = "\u0000+Infinity\u0000";
const NEG_INF = "\u0000-Infinity\u0000";
/**
 * JSON text for a generated value, as a hostile sender could write it: ±Infinity as `1e400` /
 * `-1e400` (which JSON.parse turns back into ±Infinity), NaN as null (JSON has no way to say it).
 */
export function hostileJson(value: unknown): string {
  const text =
    JSON.stringify(value, (_k, v) =>
      typeof v === "number" && !Number.isFinite(v) ? (Number.isNaN(v) ? null : v > 0 ? INF : NEG_INF) : v,
    ) ?? "null";
  return text.replaceAll(JSON.stringify(INF), "1e400").replaceAll(JSON.stringify(NEG_INF), "-1e400");
}
