import { describe, expect, test } from "bun:test";
import { normaliseEvent, NormaliseError, type RequestFacts } from "../../src/ingest/normalise.ts";
import { validateEvent } from "../../src/ingest/event-schema.ts";
import { normaliseBrowserName, normaliseOsName, parseUserAgent } from "../../src/ingest/user-agent.ts";
import { consentGranted } from "../../src/event/consent.ts";
import { RateLimiter, TokenBucket } from "../../src/ingest/rate-limit.ts";

// Inputs from Krenalis's collector tests (krenalis/krenalis core/internal/collector/decoder_test.go:
// Test_Decoder, Test_parseUserAgent, Test_normalizeContextBrowser, Test_normalizeContextOS).

const receivedAt = Date.parse("2025-10-20T16:15:30.000Z");
const facts = (extra: Partial<RequestFacts> = {}): RequestFacts => ({ receivedAt, ip: "192.168.1.1", ...extra });
const norm = (event: Record<string, unknown>, extra: Partial<RequestFacts> = {}) => {
  expect(validateEvent(event)).toBeUndefined();
  return normaliseEvent(event as any, facts(extra)) as Record<string, any>;
};
const problem = (event: Record<string, unknown>, extra: Partial<RequestFacts> = {}) => {
  try {
    norm(event, extra);
  } catch (e) {
    expect(e).toBeInstanceOf(NormaliseError);
    return (e as Error).message;
  }
  throw new Error("expected the event to be rejected");
};

const CHROME_WINDOWS =
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/117.0.0.0 Safari/537.36";
const FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0";

describe("user agent → context.browser / context.os", () => {
  test("Chrome on Windows (Krenalis's decoder test)", () => {
    const e = norm({
      type: "track",
      anonymousId: "82281550-c0fc-4d69-bcf9-db1e43f9a76a",
      event: "Product View",
      context: { userAgent: CHROME_WINDOWS },
    });
    expect(e.context).toEqual({
      browser: { name: "Chrome", version: "117.0.0" },
      ip: "192.168.1.1",
      os: { name: "Windows", version: "10.0.0" },
      userAgent: CHROME_WINDOWS,
    });
  });

  test("only the missing one is filled; sent names are normalised and versions kept as sent", () => {
    const a = norm({
      type: "track",
      event: "click",
      anonymousId: "a",
      context: { browser: { name: "Chrome", version: "138.0" }, userAgent: FIREFOX_LINUX },
    });
    expect(a.context.browser).toEqual({ name: "Chrome", version: "138.0" });
    expect(a.context.os).toEqual({ name: "Linux" });
    const b = norm({
      type: "track",
      event: "click",
      anonymousId: "a",
      context: { os: { name: "darwin", version: "15" }, userAgent: FIREFOX_LINUX },
    });
    expect(b.context.browser).toEqual({ name: "Firefox", version: "132.0.0" });
    expect(b.context.os).toEqual({ name: "macOS", version: "15" });
    const c = norm({
      type: "track",
      event: "click",
      anonymousId: "a",
      context: { browser: { name: "chrome" }, os: { name: "macos" } },
    });
    expect(c.context.browser).toEqual({ name: "Chrome" });
    expect(c.context.os).toEqual({ name: "macOS" });
  });

  test.each([
    [
      "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:15.0) Gecko/20100101 Firefox/15.0.1",
      { name: "Firefox", version: "15.0.1" },
      { name: "Linux" },
    ],
    [
      "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/91.0.4472 Safari/537.36",
      { name: "Chrome", version: "91.0.4472" },
      { name: "Windows", version: "10.0.0" },
    ],
    [
      "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/15.1 Safari/605.1.15",
      { name: "Safari", version: "15.1.0" },
      { name: "macOS", version: "10.15.7" },
    ],
    [
      "Mozilla/5.0 (iPhone; CPU iPhone OS 14_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/14.0 Mobile/15E148 Safari/604.1",
      { name: "Safari", version: "14.0.0" },
      { name: "iOS", version: "14.6.0" },
    ],
    [
      "Mozilla/5.0 (Linux; Android 11; Pixel 5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/94.0.4606.71 Mobile Safari/537.36",
      { name: "Chrome", version: "94.0.4606" },
      { name: "Android", version: "11.0.0" },
    ],
    [
      "Mozilla/5.0 (Linux; Android 1234123412341234123.0.864; Pixel 5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/94.0.4606.71 Mobile Safari/537.36",
      { name: "Chrome", version: "94.0.4606" },
      { name: "Android", version: "1234123412341234123.0.864" },
    ],
    [
      "Mozilla/5.0 (Linux; Android 12341234123412341231.0.864; Pixel 5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/94.0.4606.71 Mobile Safari/537.36",
      { name: "Chrome", version: "94.0.4606" },
      { name: "Android" },
    ],
    [
      "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Edg/91.0.864",
      { name: "Edge", version: "91.0.864" },
      { name: "Windows", version: "10.0.0" },
    ],
    [
      "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Edg/1234123412341234123.0.864",
      { name: "Edge", version: "1234123412341234123.0.864" },
      { name: "Windows", version: "10.0.0" },
    ],
    [
      "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Edg/123412341234123412341.0.864",
      { name: "Edge" },
      { name: "Windows", version: "10.0.0" },
    ],
    [
      "Mozilla/5.0 (X11; CrOS x86_64 16181.61.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/134.0.6998.198 Safari/537.36",
      { name: "Chrome", version: "134.0.6998" },
      { name: "Chrome OS", version: "16181.61.0" },
    ],
    [
      "Mozilla/5.0 (Linux; Android 13; SM-S908B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
      { name: "Samsung Internet", version: "23.0.0" },
      { name: "Android", version: "13.0.0" },
    ],
  ])("%s", (ua, browser, os) => {
    expect(parseUserAgent(ua)).toEqual({ browser, os });
  });

  test("an unrecognised user agent adds nothing", () => {
    expect(parseUserAgent("SomeUnknownAgent/1.0")).toEqual({});
    const e = norm({ type: "track", event: "e", userId: "u", context: { userAgent: "SomeUnknownAgent/1.0" } });
    expect(e.context.browser).toBeUndefined();
    expect(e.context.os).toBeUndefined();
  });

  test.each([
    ["Chrome", "Chrome"],
    ["chrome", "Chrome"],
    ["samsung internet", "Samsung Internet"],
    ["My Strange Browser", "My Strange Browser"],
    ["CHROME FIREFOX", "CHROME FIREFOX"],
  ])("browser name %j → %j", (name, expected) => expect(normaliseBrowserName(name)).toBe(expected));

  test.each([
    ["Android", "Android"],
    ["android", "Android"],
    ["chrome os", "Chrome OS"],
    ["macos", "macOS"],
    ["darwin", "macOS"],
    ["My Strange OS", "My Strange OS"],
    ["LINUX BAD Android", "LINUX BAD Android"],
  ])("os name %j → %j", (name, expected) => expect(normaliseOsName(name)).toBe(expected));
});

describe("context.traits", () => {
  test("for other types it is kept and copied to traits (Krenalis's screen with context.traits)", () => {
    const e = norm({
      type: "screen",
      name: "login",
      userId: "bob",
      context: { screen: { width: 2600, height: 1550, density: 1.3636363636363635 }, traits: { name: "Bob" } },
    });
    expect(e.traits).toEqual({ name: "Bob" });
    expect(e.context.traits).toEqual({ name: "Bob" });
    expect(e.context.screen).toEqual({ width: 2600, height: 1550, density: 1.36 });
  });

  test("top-level traits win; identify and group keep theirs only", () => {
    expect(
      norm({ type: "track", event: "e", userId: "u", traits: { a: 1 }, context: { traits: { b: 2 } } }).traits,
    ).toEqual({ a: 1 });
    expect(norm({ type: "identify", userId: "u", context: { traits: { b: 2 } } }).traits).toBeUndefined();
    expect(norm({ type: "group", userId: "u", groupId: "g", context: { traits: { b: 2 } } }).traits).toBeUndefined();
    for (const type of ["page", "alias"])
      expect(norm({ type, userId: "u", previousId: "p", context: { traits: { b: 2 } } }).traits).toEqual({ b: 2 });
  });

  test("the input is never modified", () => {
    const input = {
      type: "track",
      event: "e",
      userId: "u",
      context: { traits: { b: 2 }, screen: { density: 1.234 }, sessionId: 5, browser: { name: "chrome" } },
    };
    const copy = structuredClone(input);
    norm(input, { context: { consents: { analytics: true } } });
    expect(input).toEqual(copy);
  });
});

describe("context.screen and session", () => {
  test.each([
    [1.3636363636363635, 1.36],
    [2, 2],
    [1.005, 1.01],
    [2.625, 2.63],
    [1.5, 1.5],
    [0.001, undefined],
  ])("density %d → %d", (density, expected) => {
    expect(
      norm({ type: "screen", userId: "u", context: { screen: { width: 390, height: 844, density } } }).context.screen
        .density,
    ).toBe(expected);
  });

  test("out-of-range values are an error naming the field; zero is read as absent", () => {
    const screen = (s: unknown) => ({ type: "page", userId: "u", context: { screen: s } });
    expect(problem(screen({ width: 32768, height: 10 }))).toBe(
      '"context.screen.width" is 32768, outside the range 1 to 32767',
    );
    expect(problem(screen({ width: 10, height: -1 }))).toBe(
      '"context.screen.height" is -1, outside the range 1 to 32767',
    );
    expect(problem(screen({ width: 10.5 }))).toBe('"context.screen.width" must be an integer from 1 to 32767');
    expect(problem(screen({ height: "800" }))).toBe('"context.screen.height" must be an integer from 1 to 32767');
    expect(problem(screen({ density: -2 }))).toBe('"context.screen.density" is -2; it must be a positive number');
    expect(problem(screen({ density: "2" }))).toBe('"context.screen.density" must be a positive number');
    expect(problem(screen(3))).toBe('"context.screen" must be an object');
    expect(norm(screen({ width: 1, height: 32767, density: 0 })).context.screen).toEqual({ width: 1, height: 32767 });
    expect(norm(screen({ width: 0, height: 0 })).context.screen).toEqual({});
  });

  test("sessionId → context.session.id, sessionStart → session.start (Krenalis's decoder test)", () => {
    const a = norm({
      type: "track",
      event: "click",
      anonymousId: "a",
      context: { sessionId: 1730384955277, sessionStart: true },
    });
    expect(a.context.session).toEqual({ id: 1730384955277, start: true });
    expect(a.context.sessionId).toBeUndefined();
    expect(a.context.sessionStart).toBeUndefined();
    const b = norm({
      type: "track",
      event: "click",
      anonymousId: "a",
      context: { sessionId: 1730384955277, sessionStart: false },
    });
    expect(b.context.session).toEqual({ id: 1730384955277 });
    expect(
      norm({ type: "track", event: "click", anonymousId: "a", context: { session: { id: "kept" }, sessionId: 7 } })
        .context.session,
    ).toEqual({ id: "kept" });
    expect(problem({ type: "track", event: "click", anonymousId: "a", context: { sessionId: "abc" } })).toBe(
      '"context.sessionId" must be an integer',
    );
    expect(problem({ type: "track", event: "click", anonymousId: "a", context: { sessionStart: 1 } })).toBe(
      '"context.sessionStart" must be true or false',
    );
  });
});

describe("context.ip", () => {
  const ev = (ip?: unknown) => ({
    type: "track",
    event: "click",
    anonymousId: "anon-1",
    ...(ip !== undefined && { context: { ip } }),
  });
  const remote = "198.51.100.23";
  test.each([
    [undefined, remote],
    ["198.18.0.1", "198.18.0.1"],
    ["0.0.0.0", undefined],
    ["255.255.255.255", remote],
    ["255.255.255.0", "198.51.100.0"],
    ["255.255.0.0", "198.51.0.0"],
    ["::ffff:10.1.2.3", "10.1.2.3"],
    ["", remote],
  ])("sent %j → %j", (sent, expected) => {
    expect(norm(ev(sent), { ip: remote }).context?.ip).toBe(expected);
  });

  test("IPv6 request address: masks to /48 and /32", () => {
    const v6 = "2001:db8:85a3:1234:8a2e:370:7334:1";
    expect(norm(ev("255.255.255.0"), { ip: v6 }).context.ip).toBe("2001:db8:85a3::");
    expect(norm(ev("255.255.0.0"), { ip: v6 }).context.ip).toBe("2001:db8::");
  });

  test("malformed, zoned and multicast addresses are an error for that event", () => {
    expect(problem(ev("1.2.3"))).toBe('"context.ip" is not a valid IP address: "1.2.3"');
    expect(problem(ev("fe80::1%eth0"))).toBe('"context.ip" is a zoned address: "fe80::1%eth0"');
    expect(problem(ev("224.0.0.1"))).toBe('"context.ip" is a multicast address: "224.0.0.1"');
    expect(problem(ev(42))).toBe('"context.ip" must be a string');
  });

  test("the connection's setting applies after the special values", () => {
    expect(norm(ev("203.0.113.77"), { ipPolicy: "mask24" }).context.ip).toBe("203.0.113.0");
    expect(norm(ev(), { ip: "2001:db8:85a3:1234::1", ipPolicy: "mask24" }).context.ip).toBe("2001:db8:85a3::");
    expect(norm(ev("255.255.255.255"), { ip: remote, ipPolicy: "drop" }).context).toEqual({});
    expect(norm(ev(), { ip: remote, ipPolicy: "drop" }).context).toBeUndefined();
  });
});

describe("consents", () => {
  test("purpose → boolean; anything else is an error naming the purpose", () => {
    expect(
      norm({ type: "track", event: "e", userId: "u", context: { consents: { analytics: true, ads: false } } }).context
        .consents,
    ).toEqual({ analytics: true, ads: false });
    expect(problem({ type: "track", event: "e", userId: "u", context: { consents: { analytics: "yes" } } })).toBe(
      '"context.consents.analytics" must be true or false',
    );
    expect(problem({ type: "track", event: "e", userId: "u", context: { consents: ["analytics"] } })).toBe(
      '"context.consents" must be an object of purpose → true or false',
    );
  });

  test("batch-level consents fill in the purposes the event lacks", () => {
    const batch = {
      context: { consents: { analytics: true, ads: true, email: false }, library: { name: "lib", version: "1" } },
    };
    const e = norm(
      { type: "track", event: "e", userId: "u", context: { consents: { ads: false }, library: { name: "mine" } } },
      batch,
    );
    expect(e.context.consents).toEqual({ analytics: true, ads: false, email: false });
    expect(e.context.library).toEqual({ name: "mine", version: "1" });
    expect(norm({ type: "track", event: "e", userId: "u" }, batch).context.consents).toEqual({
      analytics: true,
      ads: true,
      email: false,
    });
    // An invalid batch-level purpose is an error of each event it reaches.
    expect(problem({ type: "track", event: "e", userId: "u" }, { context: { consents: { ads: 1 } } })).toBe(
      '"context.consents.ads" must be true or false',
    );
    // ...unless the event's own value replaces it.
    expect(
      norm(
        { type: "track", event: "e", userId: "u", context: { consents: { ads: true } } },
        { context: { consents: { ads: 1 } } },
      ).context.consents,
    ).toEqual({ ads: true });
  });

  test("consentGranted: every required purpose must be true", () => {
    const ev = (consents?: unknown) => ({ type: "track", context: consents === undefined ? {} : { consents } });
    expect(consentGranted(ev(), undefined)).toBe(true);
    expect(consentGranted(ev(), [])).toBe(true);
    expect(consentGranted(ev({ analytics: true }), ["analytics"])).toBe(true);
    expect(consentGranted(ev({ analytics: true, ads: true }), ["analytics", "ads"])).toBe(true);
    expect(consentGranted(ev({ analytics: true, ads: false }), ["analytics", "ads"])).toBe(false);
    expect(consentGranted(ev({ analytics: "true" }), ["analytics"])).toBe(false);
    expect(consentGranted(ev(), ["analytics"])).toBe(false);
    expect(consentGranted({ type: "track" }, ["analytics"])).toBe(false);
    expect(consentGranted({ type: "track", context: { consents: null } }, ["analytics"])).toBe(false);
  });
});

describe("rate limit token bucket", () => {
  test("burst, continuous refill and Retry-After rounded up", () => {
    // 60 events per minute = 1 per second; burst 10.
    const b = new TokenBucket(60, 10, 0);
    expect(b.take(10, 0)).toEqual({ ok: true });
    expect(b.take(1, 0)).toMatchObject({ ok: false, retryAfterSeconds: 1 });
    expect(b.take(5, 0)).toMatchObject({ ok: false, retryAfterSeconds: 5 });
    expect(b.take(5, 2_500)).toMatchObject({ ok: false, retryAfterSeconds: 3 }); // 2.5 tokens: 2.5 s more
    expect(b.take(5, 5_000)).toEqual({ ok: true });
    expect(b.tokens(1_000_000)).toBe(10); // never above the burst
  });

  test("a request larger than the burst can never fit: 429 without Retry-After", () => {
    const b = new TokenBucket(600, 100, 0);
    const r = b.take(101, 0);
    expect(r.ok).toBe(false);
    expect(r).not.toHaveProperty("retryAfterSeconds");
    expect(!r.ok && r.error).toContain("more than the connection's rate-limit burst of 100");
  });

  test("per connection; the burst defaults to a minute's worth; a changed limit keeps what was left", () => {
    let now = 0;
    const l = new RateLimiter(() => now);
    expect(l.take("a", undefined, 1_000_000)).toEqual({ ok: true });
    expect(l.take("a", { eventsPerMinute: 120 }, 120)).toEqual({ ok: true });
    expect(l.take("a", { eventsPerMinute: 120 }, 1)).toMatchObject({ ok: false, retryAfterSeconds: 1 });
    expect(l.take("b", { eventsPerMinute: 120 }, 120)).toEqual({ ok: true });
    now = 10_000; // 20 tokens back
    expect(l.take("a", { eventsPerMinute: 120, burst: 500 }, 20)).toEqual({ ok: true });
    expect(l.take("a", { eventsPerMinute: 120, burst: 500 }, 1)).toMatchObject({ ok: false });
    l.refund("a", 5);
    expect(l.take("a", { eventsPerMinute: 120, burst: 500 }, 5)).toEqual({ ok: true });
  });
});
