import { describe, expect, test } from "bun:test";
import { validateEvent } from "../../src/ingest/event-schema.ts";
import { normaliseEvent } from "../../src/ingest/normalise.ts";
import { writeKeyFromHeader } from "../../src/ingest/auth.ts";

describe("validity (PRODUCT.md §1)", () => {
  const ok = { userId: "u1" };
  test.each([
    [{ ...ok, type: "click" }, '"type" must be one of track, identify, page, screen, group, alias'],
    [{ ...ok }, '"type" must be one of track, identify, page, screen, group, alias'],
    [{ type: "identify" }, 'event needs a non-empty "userId" or "anonymousId"'],
    [{ type: "identify", userId: "" }, '"userId" must be a non-empty string'],
    [{ type: "identify", userId: true }, '"userId" must be a non-empty string'],
    [{ ...ok, type: "track" }, 'track event needs a non-empty "event"'],
    [{ ...ok, type: "track", event: "" }, 'track event needs a non-empty "event"'],
    [{ ...ok, type: "group" }, 'group event needs a non-empty "groupId"'],
    [{ ...ok, type: "alias" }, 'alias event needs a non-empty "previousId"'],
    [{ ...ok, type: "identify", traits: [] }, '"traits" must be an object'],
    [{ ...ok, type: "track", event: "e", properties: "x" }, '"properties" must be an object'],
    [{ ...ok, type: "identify", context: 1 }, '"context" must be an object'],
    [{ ...ok, type: "identify", integrations: null }, '"integrations" must be an object'],
    [{ ...ok, type: "identify", timestamp: "yesterday" }, '"timestamp" must be an ISO-8601 timestamp'],
    [{ ...ok, type: "identify", sentAt: 12 }, '"sentAt" must be an ISO-8601 timestamp'],
    [{ ...ok, type: "identify", messageId: "x".repeat(101) }, '"messageId" must be a string of 1 to 100 characters'],
    ["a string", "an event must be a JSON object"],
  ])("%j is rejected: %s", (event, message) => {
    expect(validateEvent(event)).toBe(message);
  });

  test.each([
    { type: "identify", userId: "u1" },
    { type: "identify", anonymousId: "a1", traits: { email: "x@y" } },
    { type: "identify", userId: 42 },
    { type: "track", anonymousId: "a", event: "Clicked", properties: {}, extra: [1, 2] },
    { type: "page", userId: "u", name: "Home" },
    { type: "screen", userId: "u" },
    { type: "group", userId: "u", groupId: 7 },
    { type: "alias", userId: "u", previousId: "p" },
    {
      type: "track",
      userId: "u",
      event: "e",
      timestamp: "2025-10-20T16:15:23.992Z",
      sentAt: "2025-10-20T16:15:24+02:00",
    },
  ])("%j is valid", (event) => {
    expect(validateEvent(event)).toBeUndefined();
  });
});

describe("normalisation", () => {
  const receivedAt = Date.parse("2025-10-20T16:15:30.000Z");

  test("timestamp corrects client clock skew when sentAt and the client's timestamp are known", () => {
    const e = normaliseEvent(
      {
        type: "track",
        event: "e",
        userId: "u",
        timestamp: "2025-10-20T10:00:00.000Z",
        sentAt: "2025-10-20T10:00:05.000Z",
      } as any,
      { receivedAt },
    );
    expect(e.originalTimestamp).toBe("2025-10-20T10:00:00.000Z");
    expect(e.sentAt).toBe("2025-10-20T10:00:05.000Z");
    expect(e.timestamp).toBe("2025-10-20T16:15:25.000Z");
    expect(e.receivedAt).toBe("2025-10-20T16:15:30.000Z");
  });

  test("originalTimestamp as RudderStack sends it is used for the correction", () => {
    const e = normaliseEvent(
      {
        type: "track",
        event: "e",
        userId: "u",
        originalTimestamp: "2025-10-20T10:00:00.000Z",
        sentAt: "2025-10-20T10:00:01.500Z",
      } as any,
      { receivedAt },
    );
    expect(e.timestamp).toBe("2025-10-20T16:15:28.500Z");
  });

  test("an event already normalised upstream (timestamp and originalTimestamp) keeps its timestamp", () => {
    const e = normaliseEvent(
      {
        type: "track",
        event: "e",
        userId: "u",
        originalTimestamp: "2025-10-20T16:15:23.992Z",
        sentAt: "2025-10-20T16:15:24.327Z",
        timestamp: "2025-10-20T16:15:24.010Z",
      } as any,
      { receivedAt },
    );
    expect(e.timestamp).toBe("2025-10-20T16:15:24.010Z");
    expect(e.originalTimestamp).toBe("2025-10-20T16:15:23.992Z");
  });

  test("without sentAt the sent timestamp is kept; without any, receivedAt", () => {
    expect(
      normaliseEvent({ type: "identify", userId: "u", timestamp: "2025-01-01T00:00:00Z" } as any, { receivedAt })
        .timestamp,
    ).toBe("2025-01-01T00:00:00.000Z");
    const bare = normaliseEvent({ type: "identify", userId: "u" } as any, { receivedAt });
    expect(bare.timestamp).toBe("2025-10-20T16:15:30.000Z");
    expect(bare.originalTimestamp).toBeUndefined();
  });

  test("messageId is kept or generated; numeric ids become strings", () => {
    expect(normaliseEvent({ type: "identify", userId: "u", messageId: "m1" } as any, { receivedAt }).messageId).toBe(
      "m1",
    );
    const e = normaliseEvent({ type: "group", userId: 5, groupId: 9 } as any, { receivedAt });
    expect(e.messageId).toMatch(/^[0-9a-f-]{36}$/);
    expect(e.userId).toBe("5");
    expect(e.groupId).toBe("9");
  });

  test("batch context/integrations merge under the event's own; batch sentAt fills in", () => {
    const e = normaliseEvent(
      {
        type: "identify",
        userId: "u",
        context: { locale: "fr", library: { name: "mine" } },
        integrations: { All: false },
      } as any,
      {
        receivedAt,
        ip: "10.1.2.3",
        context: { locale: "en", app: { name: "a" } },
        integrations: { All: true, X: true },
        sentAt: "2025-10-20T16:15:29Z",
      },
    );
    expect(e.context).toEqual({ locale: "fr", library: { name: "mine" }, app: { name: "a" }, ip: "10.1.2.3" });
    expect(e.integrations).toEqual({ All: false, X: true });
    expect(e.sentAt).toBe("2025-10-20T16:15:29.000Z");
  });

  test("context.ip from the event wins over the request's", () => {
    const e = normaliseEvent({ type: "identify", userId: "u", context: { ip: "1.2.3.4" } } as any, {
      receivedAt,
      ip: "127.0.0.1",
    });
    expect((e.context as any).ip).toBe("1.2.3.4");
  });
});

describe("write keys from Authorization", () => {
  test("Bearer and Basic (key as username, as Segment and RudderStack send)", () => {
    expect(writeKeyFromHeader("Bearer abc")).toBe("abc");
    expect(writeKeyFromHeader("Basic " + btoa("abc:"))).toBe("abc");
    expect(writeKeyFromHeader("basic " + btoa("abc"))).toBe("abc");
  });
  test("malformed headers give no key", () => {
    for (const h of [null, "", "Bearer", "Bearer ", "Token abc", "Basic " + btoa(":pw")])
      expect(writeKeyFromHeader(h)).toBeUndefined();
  });
});
