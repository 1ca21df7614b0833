import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { Analytics as SegmentAnalytics } from "@segment/analytics-node";
import RudderAnalytics from "@rudderstack/rudder-sdk-node";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import { storedEvents } from "../harness/stream.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * The real senders of PRODUCT.md §1 against a real node: Segment's and RudderStack's Node SDKs
 * posting to /v1/batch, and the shared fixtures posted as curl would. Every stored event is read
 * back from JetStream and checked field by field against what was actually sent on the wire.
 */

type Json = Record<string, any>;

// One connection (and write key) per scenario, so no assertion sees another scenario's events.
const C = {
  segment: { name: "sdk-segment", key: "key-sdk-segment-0001" },
  rudder: { name: "sdk-rudder", key: "key-sdk-rudder-0001" },
  rudderTs: { name: "sdk-rudder-ts", key: "key-sdk-rudder-ts-0001" },
  fxEvents: { name: "fx-events", key: "key-fx-events-0001" },
  fxTrack: { name: "fx-events-track", key: "key-fx-events-track-0001" },
  fxBatchIdentify: { name: "fx-batch-identify", key: "key-fx-batch-identify-0001" },
  fxBatchTrack: { name: "fx-batch-track", key: "key-fx-batch-track-0001" },
} as const;

// Copies of ../shared/fixtures, so a clone tests on its own.
const FIXTURES = new URL("../fixtures/", import.meta.url);
const fixture = (name: string): any => JSON.parse(readFileSync(new URL(name, FIXTURES), "utf8"));

const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const LOOPBACK = "127.0.0.1"; // the node listens on 127.0.0.1, so the socket reports IPv4 loopback
const ms = (iso: string) => Date.parse(iso);

let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;

beforeAll(async () => {
  nats = await startNats();
  node = await startTestNode(
    nats.url,
    Object.fromEntries(Object.values(C).map((c) => [`${c.name}.yaml`, webhookConnection(c.name, [c.key])])),
  );
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

/** Stored events of a connection by messageId, failing if any messageId is stored twice. */
async function storedById(connection: string): Promise<Map<string, Json>> {
  const all = await storedEvents(node.bus, connection);
  const byId = new Map<string, Json>();
  for (const e of all) {
    expect(typeof e.messageId).toBe("string");
    expect(byId.has(e.messageId)).toBe(false); // each event stored once
    byId.set(e.messageId, e);
  }
  return byId;
}

/** receivedAt is the node's clock, in the window the request was made, as ISO-8601 with ms. */
function expectReceivedBetween(e: Json, t0: number, t1: number) {
  expect(e.receivedAt).toMatch(ISO_MS);
  expect(ms(e.receivedAt)).toBeGreaterThanOrEqual(t0);
  expect(ms(e.receivedAt)).toBeLessThanOrEqual(t1);
}

/** timestamp = receivedAt − (sentAt − originalTimestamp), to the millisecond. */
function expectSkewCorrected(e: Json) {
  for (const f of ["timestamp", "originalTimestamp", "sentAt", "receivedAt"]) expect(e[f]).toMatch(ISO_MS);
  expect(ms(e.timestamp)).toBe(ms(e.receivedAt) - (ms(e.sentAt) - ms(e.originalTimestamp)));
}

describe("@segment/analytics-node pointed at the node", () => {
  test("identify, track, page, group and alias are stored once each, normalised", async () => {
    const requests: Json[] = [];
    const statuses: number[] = [];
    const deliveryErrors: unknown[] = [];
    const analytics = new SegmentAnalytics({
      writeKey: C.segment.key,
      host: node.url,
      path: "/v1/batch",
      maxEventsInBatch: 2, // 5 events → 3 requests
      flushInterval: 20,
      maxRetries: 0,
      httpRequestTimeout: 5000,
    });
    analytics.on("http_request", (r) => requests.push({ ...JSON.parse(r.body), _headers: r.headers }));
    analytics.on("http_response", (r) => statuses.push(r.status));
    const cb = (err?: unknown) => void (err && deliveryErrors.push(err));

    const anHourAgo = new Date(Date.now() - 3600_000);
    const t0 = Date.now();
    analytics.identify(
      {
        userId: "seg-user-1",
        anonymousId: "seg-anon-1",
        traits: { email: "a@example.com", plan: "pro" },
        messageId: "seg-msg-identify-1",
      },
      cb,
    );
    analytics.track(
      {
        anonymousId: "seg-anon-1",
        event: "Order Completed",
        properties: { revenue: 42.5, currency: "EUR" },
        timestamp: anHourAgo,
      },
      cb,
    );
    analytics.page(
      { userId: "seg-user-1", category: "Docs", name: "Pricing", properties: { url: "https://example.com/pricing" } },
      cb,
    );
    analytics.group({ userId: "seg-user-1", groupId: "seg-org-9", traits: { name: "Acme", employees: 12 } }, cb);
    analytics.alias({ userId: "seg-user-1", previousId: "seg-anon-1" }, cb);
    await analytics.closeAndFlush({ timeout: 10_000 });
    const t1 = Date.now();

    expect(deliveryErrors).toEqual([]);
    expect(requests.length).toBeGreaterThanOrEqual(3); // at most 2 events per request
    expect(statuses).toEqual(requests.map(() => 200));
    // What the SDK put on the wire: Basic auth with the write key, and the write key in the body too.
    for (const r of requests) {
      expect(r._headers.Authorization).toBe(`Basic ${btoa(`${C.segment.key}:`)}`);
      expect(r.writeKey).toBe(C.segment.key);
      expect(r.sentAt).toMatch(ISO_MS);
      expect(r.batch.length).toBeLessThanOrEqual(2);
    }
    const sent = requests.flatMap((r) =>
      (r.batch as Json[]).map((e) => ({ event: e, batchSentAt: r.sentAt as string })),
    );
    expect(sent.map((s) => s.event.type).sort()).toEqual(["alias", "group", "identify", "page", "track"]);

    const stored = await storedById(C.segment.name);
    expect(stored.size).toBe(5);
    for (const { event: s, batchSentAt } of sent) {
      const e = stored.get(s.messageId)!;
      expect(e).toBeDefined();
      expectReceivedBetween(e, t0, t1);
      // Segment events carry no sentAt of their own: the batch's applies.
      expect(s.sentAt).toBeUndefined();
      expect(e.sentAt).toBe(batchSentAt);
      // The SDK's `timestamp` is the client clock reading: kept as originalTimestamp, corrected for skew.
      expect(s.timestamp).toMatch(ISO_MS);
      expect(e.originalTimestamp).toBe(s.timestamp);
      expectSkewCorrected(e);
      expect(e.context.library).toEqual({ name: "@segment/analytics-node", version: s.context.library.version });
      expect(e.context.ip).toBe(LOOPBACK);
      expect(e).not.toHaveProperty("writeKey");
      // Everything else the SDK sent is kept as sent.
      expect(e).toEqual({
        ...s,
        context: { ...s.context, ip: LOOPBACK },
        originalTimestamp: s.timestamp,
        timestamp: e.timestamp,
        sentAt: batchSentAt,
        receivedAt: e.receivedAt,
      });
    }

    const byType = (t: string) => [...stored.values()].find((e) => e.type === t)!;
    const identify = byType("identify");
    expect(identify.messageId).toBe("seg-msg-identify-1");
    expect(identify.userId).toBe("seg-user-1");
    expect(identify.anonymousId).toBe("seg-anon-1");
    expect(identify.traits).toEqual({ email: "a@example.com", plan: "pro" });

    const track = byType("track");
    expect(track.event).toBe("Order Completed");
    expect(track.anonymousId).toBe("seg-anon-1");
    expect(track.userId).toBeUndefined();
    expect(track.properties).toEqual({ revenue: 42.5, currency: "EUR" });
    // An explicit timestamp an hour back stays an hour back after skew correction.
    expect(track.originalTimestamp).toBe(anHourAgo.toISOString());
    expect(Math.abs(ms(track.timestamp) - anHourAgo.getTime())).toBeLessThan(5000);

    const page = byType("page");
    expect(page.name).toBe("Pricing");
    expect(page.category).toBe("Docs");
    expect(page.properties).toEqual({ url: "https://example.com/pricing", category: "Docs" });

    const group = byType("group");
    expect(group.groupId).toBe("seg-org-9");
    expect(group.traits).toEqual({ name: "Acme", employees: 12 });

    const alias = byType("alias");
    expect(alias.userId).toBe("seg-user-1");
    expect(alias.previousId).toBe("seg-anon-1");

    // Events without an explicit timestamp were stamped by the SDK during this test.
    for (const e of [identify, page, group, alias]) {
      expect(ms(e.originalTimestamp)).toBeGreaterThanOrEqual(t0 - 5);
      expect(ms(e.originalTimestamp)).toBeLessThanOrEqual(t1);
      expect(Math.abs(ms(e.timestamp) - ms(e.receivedAt))).toBeLessThan(5000);
    }
  });
});

/** A RudderStack client whose per-event callbacks expose the gzip batch each event went out in. */
function rudderClient(key: string) {
  const errors: unknown[] = [];
  const client = new RudderAnalytics(key, {
    dataPlaneUrl: node.url, // the SDK appends /v1/batch
    flushAt: 2,
    flushInterval: 50,
    retryCount: 0, // surface a failure at once instead of backing off
    gzip: true, // the default; stated because it is what this test covers
    logLevel: "error",
    errorHandler: (e) => void errors.push(e),
  });
  const delivered: Promise<Json>[] = [];
  /** A callback for one event, resolving with the decoded batch payload it was delivered in. */
  const callback = () => {
    let done!: (err?: unknown, data?: unknown) => void;
    delivered.push(
      new Promise<Json>((resolve, reject) => {
        done = (err?: unknown, data?: unknown) => {
          if (err) return reject(err);
          // The SDK hands back the request body it posted: gzip-compressed JSON.
          resolve(JSON.parse(gunzipSync(data as Buffer).toString("utf8")));
        };
      }),
    );
    return done;
  };
  const settle = async () => {
    await client.flush();
    const timeout = new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error("RudderStack SDK did not deliver within 10 s")), 10_000),
    );
    return Promise.race([Promise.all(delivered), timeout]);
  };
  return { client, callback, settle, errors };
}

describe("@rudderstack/rudder-sdk-node pointed at the node", () => {
  test("identify, track, page, group and alias (gzip batches, Basic auth) are stored once each, normalised", async () => {
    const { client, callback, settle, errors } = rudderClient(C.rudder.key);
    const t0 = Date.now();
    client.identify(
      { userId: "rs-user-1", anonymousId: "rs-anon-1", traits: { email: "b@example.com", plan: "team" } },
      callback(),
    );
    client.track(
      { anonymousId: "rs-anon-1", event: "Product Viewed", properties: { sku: "SKU-1", price: 9.99 } },
      callback(),
    );
    client.page(
      { userId: "rs-user-1", category: "Docs", name: "Install", properties: { path: "/install" } },
      callback(),
    );
    client.group({ userId: "rs-user-1", groupId: "rs-org-7", traits: { name: "Initech" } }, callback());
    client.alias({ userId: "rs-user-1", previousId: "rs-anon-1" }, callback());
    const payloads = await settle();
    const t1 = Date.now();
    expect(errors).toEqual([]);

    // One payload per event: the batch it was posted in. Collect the distinct events sent.
    const sentById = new Map<string, Json>();
    for (const p of payloads) {
      expect(Array.isArray(p.batch)).toBe(true);
      for (const ev of p.batch as Json[]) sentById.set(ev.messageId, ev);
    }
    const sent = [...sentById.values()];
    expect(sent.map((s) => s.type).sort()).toEqual(["alias", "group", "identify", "page", "track"]);

    const stored = await storedById(C.rudder.name);
    expect(stored.size).toBe(5);
    for (const s of sent) {
      const e = stored.get(s.messageId)!;
      expect(e).toBeDefined();
      expectReceivedBetween(e, t0, t1);
      // RudderStack sends its clock reading as originalTimestamp and a per-event sentAt; no timestamp.
      expect(s.timestamp).toBeUndefined();
      expect(e.originalTimestamp).toBe(s.originalTimestamp);
      expect(e.sentAt).toBe(s.sentAt);
      expectSkewCorrected(e);
      expect(e.context.library.name).toBe("analytics-node"); // what RudderStack's Node SDK calls itself
      expect(e.context.library).toEqual(s.context.library);
      expect(e.context.ip).toBe(LOOPBACK);
      expect(e.channel).toBe("server");
      expect(e).not.toHaveProperty("writeKey");
      expect(e).toEqual({
        ...s,
        context: { ...s.context, ip: LOOPBACK },
        timestamp: e.timestamp,
        receivedAt: e.receivedAt,
      });
    }

    const byType = (t: string) => [...stored.values()].find((e) => e.type === t)!;
    const identify = byType("identify");
    expect(identify.userId).toBe("rs-user-1");
    expect(identify.anonymousId).toBe("rs-anon-1");
    expect(identify.traits).toEqual({ email: "b@example.com", plan: "team" });
    expect(identify.context.traits).toEqual({ email: "b@example.com", plan: "team" });
    const track = byType("track");
    expect(track.event).toBe("Product Viewed");
    expect(track.anonymousId).toBe("rs-anon-1");
    expect(track.properties).toEqual({ sku: "SKU-1", price: 9.99 });
    const page = byType("page");
    expect([page.name, page.category]).toEqual(["Install", "Docs"]);
    expect(byType("group").groupId).toBe("rs-org-7");
    expect(byType("alias").previousId).toBe("rs-anon-1");
    for (const e of stored.values()) {
      expect(ms(e.originalTimestamp)).toBeGreaterThanOrEqual(t0 - 5);
      expect(ms(e.originalTimestamp)).toBeLessThanOrEqual(t1);
      expect(Math.abs(ms(e.timestamp) - ms(e.receivedAt))).toBeLessThan(5000);
    }
  });

  // The SDK sends both `timestamp` (the caller's) and `originalTimestamp` (its clock at enqueue).
  test("an explicit timestamp (backfill) given to the RudderStack SDK is not lost", async () => {
    const { client, callback, settle, errors } = rudderClient(C.rudderTs.key);
    const when = new Date(Date.now() - 2 * 86400_000);
    client.track({ userId: "rs-user-2", event: "Backfilled", timestamp: when }, callback());
    await settle();
    expect(errors).toEqual([]);
    const [e] = [...(await storedById(C.rudderTs.name)).values()];
    expect(Math.abs(ms(e!.timestamp) - when.getTime())).toBeLessThan(5000);
  });
});

describe("shared fixtures sent as curl would", () => {
  const post = (path: string, key: string, body: string, auth: "Bearer" | "Basic" = "Bearer") =>
    fetch(`${node.url}${path}`, {
      method: "POST",
      headers: {
        Authorization: auth === "Bearer" ? `Bearer ${key}` : `Basic ${btoa(`${key}:`)}`,
        "Content-Type": "application/json",
      },
      body,
    });

  /** A Segment-format fixture as stored: only receivedAt and timestamp are the node's. */
  function expectFixtureStored(e: Json, f: Json, t0: number, t1: number) {
    expectReceivedBetween(e, t0, t1);
    expect(e.receivedAt).not.toBe(f.receivedAt); // the server's time, not the fixture's
    expect(e.messageId).toBe(f.messageId);
    expect(e.originalTimestamp).toBe(f.originalTimestamp);
    expect(e.sentAt).toBe(f.sentAt);
    // Normalised upstream already (timestamp and originalTimestamp): Segment's timestamp stands,
    // not one recomputed against our later receivedAt.
    expect(e.timestamp).toBe(new Date(ms(f.timestamp)).toISOString());
    expect(e.context.ip).toBe(f.context.ip); // the event's own address is kept
    expect(e).toEqual({ ...f, receivedAt: e.receivedAt, timestamp: e.timestamp });
  }

  test("segment-identify.json and segment-track.json on /v1/events (Bearer)", async () => {
    const identify = fixture("segment-identify.json");
    const track = fixture("segment-track.json");
    expect(identify.context.ip).toBe("172.91.24.57");

    const t0 = Date.now();
    const r1 = await post("/v1/events", C.fxEvents.key, JSON.stringify(identify));
    const r2 = await post("/v1/events", C.fxTrack.key, JSON.stringify(track));
    const t1 = Date.now();
    expect([r1.status, await r1.json()]).toEqual([200, { accepted: 1 }]);
    expect([r2.status, await r2.json()]).toEqual([200, { accepted: 1 }]);

    const si = [...(await storedById(C.fxEvents.name)).values()].filter((e) => e.messageId === identify.messageId);
    expect(si).toHaveLength(1);
    expectFixtureStored(si[0]!, identify, t0, t1);
    expect(si[0]!.type).toBe("identify");
    expect(si[0]!.userId).toBe("703991475");
    expect(si[0]!.anonymousId).toBe("b27c5d9f-92a7-4d30-b21a-4df21a6872c2");

    const st = await storedById(C.fxTrack.name);
    expect(st.size).toBe(1);
    const e = st.get(track.messageId)!;
    expectFixtureStored(e, track, t0, t1);
    expect(e.type).toBe("track");
    expect(e.event).toBe("Workout Completed");
  });

  test("webhook-curl-track.json on /v1/events, exactly as the README's curl", async () => {
    const events = fixture("webhook-curl-track.json");
    expect(Array.isArray(events)).toBe(true);
    const t0 = Date.now();
    // The fixture's bytes as they are on disk, as `curl -d @webhook-curl-track.json` sends them.
    const r = await post(
      "/v1/events",
      C.fxEvents.key,
      readFileSync(new URL("webhook-curl-track.json", FIXTURES), "utf8"),
    );
    const t1 = Date.now();
    expect([r.status, await r.json()]).toEqual([200, { accepted: 1 }]);

    const all = [...(await storedById(C.fxEvents.name)).values()].filter(
      (e) => e.anonymousId === events[0].anonymousId,
    );
    expect(all).toHaveLength(1);
    const e = all[0]!;
    expectReceivedBetween(e, t0, t1);
    expect(e.messageId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/); // generated
    // No client clock at all: timestamp is receivedAt, and nothing is invented.
    expect(e.timestamp).toBe(e.receivedAt);
    expect(e).not.toHaveProperty("originalTimestamp");
    expect(e).not.toHaveProperty("sentAt");
    expect(e).toEqual({
      ...events[0],
      messageId: e.messageId,
      context: { ip: LOOPBACK },
      timestamp: e.receivedAt,
      receivedAt: e.receivedAt,
    });
  });

  test("the Segment fixtures in a /v1/batch envelope (Basic auth, as the SDKs send)", async () => {
    const identify = fixture("segment-identify.json");
    const track = fixture("segment-track.json");
    // Envelope fields apply under each event's own: the events' sentAt and context.ip win.
    const envelope = (e: Json) =>
      JSON.stringify({
        batch: [e],
        sentAt: "2025-10-20T16:15:30.000Z",
        context: { ip: "10.9.8.7", app: { name: "replay" } },
      });
    const t0 = Date.now();
    const r1 = await post("/v1/batch", C.fxBatchIdentify.key, envelope(identify), "Basic");
    const r2 = await post("/v1/batch", C.fxBatchTrack.key, envelope(track), "Basic");
    const t1 = Date.now();
    expect([r1.status, await r1.json()]).toEqual([200, { accepted: 1 }]);
    expect([r2.status, await r2.json()]).toEqual([200, { accepted: 1 }]);

    for (const [connection, f] of [
      [C.fxBatchIdentify.name, identify],
      [C.fxBatchTrack.name, track],
    ] as const) {
      const stored = await storedById(connection);
      expect(stored.size).toBe(1);
      const e = stored.get(f.messageId)!;
      expect(e.context.app).toEqual({ name: "replay" });
      expectFixtureStored(e, { ...f, context: { ...f.context, app: { name: "replay" } } }, t0, t1);
    }
  });
});
