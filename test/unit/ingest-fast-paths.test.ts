import { describe, expect, test } from "bun:test";
import { canonicalTime, normaliseEvent, NormaliseError } from "../../src/ingest/normalise.ts";
import {
  normaliseBrowserName,
  normaliseOsName,
  parseUserAgent,
  UA_CACHE_SIZE,
  userAgentStats,
} from "../../src/ingest/user-agent.ts";
import { enrich } from "../../src/ingest/enrich.ts";
import { decodeUtf8 } from "../../src/ingest/body.ts";
import type { Event } from "../../src/ingest/event-schema.ts";

// What each per-event shortcut of the ingest path must keep: the answer the slow way gives.

describe("canonical timestamps are read by arithmetic, as Date.parse reads them", () => {
  test("random instants over the years 0000–9999, and the calendar's edges", () => {
    const min = Date.parse("0000-01-01T00:00:00.000Z");
    const max = Date.parse("9999-12-31T23:59:59.999Z");
    let seed = 7;
    const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed / 2 ** 31);
    const samples = Array.from({ length: 20_000 }, () =>
      new Date(min + Math.floor(random() * (max - min))).toISOString(),
    );
    samples.push(
      "0000-01-01T00:00:00.000Z",
      "0000-02-29T12:00:00.000Z",
      "1900-02-28T23:59:59.999Z",
      "1970-01-01T00:00:00.000Z",
      "1969-12-31T23:59:59.999Z",
      "2000-02-29T00:00:00.000Z",
      "2024-02-29T10:11:12.131Z",
      "2025-10-20T16:15:24.340Z",
      "9999-12-31T23:59:59.999Z",
    );
    for (const s of samples) expect([s, canonicalTime(s)]).toEqual([s, Date.parse(s)]);
  });

  test.each([
    "2025-02-29T00:00:00.000Z", // not a leap year
    "1900-02-29T00:00:00.000Z",
    "2025-04-31T00:00:00.000Z",
    "2025-13-01T00:00:00.000Z",
    "2025-00-10T00:00:00.000Z",
    "2025-01-00T00:00:00.000Z",
    "2025-01-01T24:00:00.000Z", // Date.parse reads it as the next midnight: left to it
    "2025-01-01T23:60:00.000Z",
    "2025-01-01T23:59:60.000Z",
    "2025-01-01T00:00:00Z",
    "2025-01-01T00:00:00.000+00:00",
    "2025-01-01 00:00:00.000Z",
    "2025-01-01T00:00:00.0a0Z",
    "+02025-01-01T00:00:00.000Z",
    "2025-1-01T00:00:00.000Z",
  ])("%s is left to Date.parse", (s) => {
    expect(canonicalTime(s)).toBeUndefined();
  });

  const facts = { receivedAt: Date.parse("2025-10-20T16:15:25.000Z") };
  const event = (e: Record<string, unknown>) => ({ type: "track", event: "e", userId: "u", ...e }) as Event;

  test("normalisation keeps canonical timestamps as sent and corrects clock skew exactly as before", () => {
    const out = normaliseEvent(
      event({ timestamp: "2025-10-20T16:15:24.010Z", sentAt: "2025-10-20T16:15:24.327Z" }),
      facts,
      () => "id",
    );
    // receivedAt − (sentAt − timestamp) = 25.000 − 0.317
    expect(out.timestamp).toBe("2025-10-20T16:15:24.683Z");
    expect(out.originalTimestamp).toBe("2025-10-20T16:15:24.010Z");
    expect(out.sentAt).toBe("2025-10-20T16:15:24.327Z");
    const both = normaliseEvent(
      event({ timestamp: "2025-10-20T16:15:24.010Z", originalTimestamp: "2025-10-20T16:15:23.992Z" }),
      facts,
      () => "id",
    );
    expect([both.timestamp, both.originalTimestamp]).toEqual(["2025-10-20T16:15:24.010Z", "2025-10-20T16:15:23.992Z"]);
  });

  test("a canonical-looking date the calendar lacks is still refused, naming the field", () => {
    expect(() => normaliseEvent(event({ timestamp: "2025-02-29T10:00:00.000Z" }), facts)).toThrow(
      new NormaliseError('"timestamp" is not a valid date: "2025-02-29T10:00:00.000Z"'),
    );
    expect(() =>
      normaliseEvent(event({ timestamp: "2025-10-20T16:15:24.010Z", sentAt: "2025-04-31T00:00:00.000Z" }), facts),
    ).toThrow(new NormaliseError('"sentAt" is not a valid date: "2025-04-31T00:00:00.000Z"'));
  });

  test("other forms still go through Date.parse and are written canonically", () => {
    const out = normaliseEvent(event({ timestamp: "2025-10-20T18:15:24+02:00" }), facts, () => "id");
    expect(out.timestamp).toBe("2025-10-20T16:15:24.000Z");
  });
});

describe("browser and OS names", () => {
  test("names already spelled as stored, and other spellings, are normalised as before", () => {
    expect(normaliseBrowserName("Safari")).toBe("Safari");
    expect(normaliseBrowserName("mobile safari")).toBe("Safari");
    expect(normaliseBrowserName("Mobile Chrome")).toBe("Chrome");
    expect(normaliseBrowserName("Samsung Internet")).toBe("Samsung Internet");
    expect(normaliseOsName("macOS")).toBe("macOS");
    expect(normaliseOsName("Mac OS X")).toBe("macOS");
    expect(normaliseOsName("iOS")).toBe("iOS");
    expect(normaliseOsName("Brew")).toBe("Brew");
  });

  test("a name that is also a property of plain objects is kept as sent", () => {
    for (const name of ["constructor", "__proto__", "toString", "hasOwnProperty", "valueOf"]) {
      expect(normaliseBrowserName(name)).toBe(name);
      expect(normaliseOsName(name)).toBe(name);
    }
    const context: Record<string, unknown> = { browser: { name: "constructor" }, os: { name: "__proto__" } };
    enrich({ type: "track" }, context, {});
    expect(JSON.stringify(context)).toBe('{"browser":{"name":"constructor"},"os":{"name":"__proto__"}}');
  });
});

describe("user-agent cache", () => {
  const ua = (i: number) => `Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/${i}.0.0.0`;

  test("a user agent is parsed once while it stays among the most recently used", () => {
    const first = userAgentStats.parsed;
    const a = parseUserAgent(ua(1_000_001));
    expect(a.browser).toEqual({ name: "Chrome", version: "1000001.0.0" });
    expect(parseUserAgent(ua(1_000_001))).toBe(a);
    expect(userAgentStats.parsed).toBe(first + 1);
  });

  test("bounded, least recently used goes first: a user agent in use survives a flood of others", () => {
    const kept = ua(2_000_000);
    const dropped = ua(2_000_001);
    parseUserAgent(kept);
    parseUserAgent(dropped);
    const flood = userAgentStats.parsed;
    for (let i = 0; i < UA_CACHE_SIZE * 2; i++) {
      parseUserAgent(ua(3_000_000 + i));
      if (i % 100 === 0) parseUserAgent(kept); // in use throughout
    }
    // Only the flood's own agents were parsed: the one in use never left the cache.
    expect(userAgentStats.parsed - flood).toBe(UA_CACHE_SIZE * 2);
    const before = userAgentStats.parsed;
    parseUserAgent(kept);
    expect(userAgentStats.parsed).toBe(before); // still cached
    parseUserAgent(dropped);
    expect(userAgentStats.parsed).toBe(before + 1); // evicted, parsed again
  });
});

describe("context.screen.density", () => {
  test("whole densities are kept; others rounded half away from zero at 2 decimals", () => {
    const density = (d: number) => {
      const context: Record<string, unknown> = { screen: { width: 10, height: 10, density: d } };
      enrich({ type: "track" }, context, {});
      return (context.screen as { density?: number }).density;
    };
    expect(density(2)).toBe(2);
    expect(density(3)).toBe(3);
    expect(density(1.005)).toBe(1.01);
    expect(density(2.675)).toBe(2.68);
    expect(density(0.001)).toBeUndefined();
  });
});

describe("strict UTF-8", () => {
  test("valid text as it is, a byte-order mark dropped, anything invalid refused", () => {
    const enc = new TextEncoder();
    expect(decodeUtf8(enc.encode('{"a":"é€😀"}'))).toBe('{"a":"é€😀"}');
    expect(decodeUtf8(new Uint8Array([0xef, 0xbb, 0xbf, 0x7b, 0x7d]))).toBe("{}");
    expect(decodeUtf8(new Uint8Array(0))).toBe("");
    for (const bad of [
      [0xc3], // truncated
      [0xc0, 0x80], // overlong
      [0xed, 0xa0, 0x80], // a surrogate
      [0xf4, 0x90, 0x80, 0x80], // past U+10FFFF
      [0x7b, 0xff, 0x7d],
    ])
      expect(() => decodeUtf8(new Uint8Array(bad))).toThrow("body is not valid UTF-8");
  });
});
