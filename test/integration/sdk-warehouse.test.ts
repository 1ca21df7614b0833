import { expect, test } from "bun:test";
import { Analytics as SegmentAnalytics } from "@segment/analytics-node";
import RudderAnalytics from "@rudderstack/rudder-sdk-node";
import { useStack } from "../harness/stack.ts";
import { storedEvents } from "../harness/stream.ts";
import { eventually } from "../harness/warehouse.ts";

/**
 * The SDKs users point at Tributary, all the way into ClickHouse: every column of every row is
 * checked against the normalised event JetStream holds (itself checked against the wire in
 * sdk.test.ts), with both pipelines of the connection getting their own, filtered, rows.
 */

type Json = Record<string, any>;

const connection = (name: string, key: string) => `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: all events
    import: events
  - name: identified
    import: events
    filter: $exists(userId) and type != "alias"
`;

const stack = useStack(
  {
    "seg.yaml": connection("wh-segment", "key-wh-segment-0001"),
    "rs.yaml": connection("wh-rudder", "key-wh-rudder-0001"),
  },
  { batchMaxAgeMs: 200 },
);

const msOrNull = (iso: unknown) => (typeof iso === "string" ? Date.parse(iso) : null);
const strOrNull = (v: unknown) => (v === undefined || v === null ? null : v);

/** What the events table must hold for a normalised event, written out field by field. */
function expectedRow(e: Json, connection: string, pipeline: string): Json {
  return {
    connection,
    pipeline,
    message_id: e.messageId,
    type: e.type,
    event: strOrNull(e.event),
    name: strOrNull(e.name),
    category: strOrNull(e.category),
    user_id: strOrNull(e.userId),
    anonymous_id: strOrNull(e.anonymousId),
    group_id: strOrNull(e.groupId),
    previous_id: strOrNull(e.previousId),
    timestamp_ms: msOrNull(e.timestamp),
    original_timestamp_ms: msOrNull(e.originalTimestamp),
    sent_at_ms: msOrNull(e.sentAt),
    received_at_ms: msOrNull(e.receivedAt),
    context: e.context ?? {},
    properties: e.properties ?? {},
    traits: e.traits ?? {},
    integrations: e.integrations ?? {},
    context_ip: strOrNull(e.context?.ip),
    context_library_name: strOrNull(e.context?.library?.name),
    context_library_version: strOrNull(e.context?.library?.version),
    context_page_url: strOrNull(e.context?.page?.url),
    context_page_path: strOrNull(e.context?.page?.path),
    context_user_agent: strOrNull(e.context?.userAgent),
    context_locale: strOrNull(e.context?.locale),
  };
}

/** Rows as stored, timestamps read back as epoch milliseconds whatever the server's column type. */
async function warehouseRows(connection: string, expected: number): Promise<Json[]> {
  // toUInt64 of a DateTime64(3) is seconds on current servers; of 18.16's UInt64 column it is the value.
  const ms = (c: string) =>
    `if(toTypeName(${c}) LIKE '%DateTime64%', toUInt64(toFloat64(${c}) * 1000), toUInt64(${c}))`;
  const rows = await eventually<Json>(
    stack.db,
    `SELECT *, ${ms("timestamp")} AS timestamp_ms, ${ms("received_at")} AS received_at_ms,
       if(isNull(original_timestamp), NULL, ${ms("assumeNotNull(original_timestamp)")}) AS original_timestamp_ms,
       if(isNull(sent_at), NULL, ${ms("assumeNotNull(sent_at)")}) AS sent_at_ms
     FROM tributary.events FINAL WHERE connection = '${connection}' ORDER BY pipeline, message_id`,
    (r) => r.length >= expected,
  );
  return rows.map((r) => {
    const out: Json = {};
    for (const [k, v] of Object.entries(r)) {
      if (["timestamp", "original_timestamp", "sent_at", "received_at"].includes(k)) continue;
      if (k.endsWith("_ms")) out[k] = v === null ? null : Number(v);
      else if (["context", "properties", "traits", "integrations"].includes(k)) out[k] = JSON.parse(v as string);
      else out[k] = v;
    }
    return out;
  });
}

async function expectWarehouseMatchesStream(connection: string) {
  const stored = await storedEvents(stack.node.bus, connection);
  expect(stored).toHaveLength(5);
  const identified = stored.filter((e) => e.userId !== undefined && e.type !== "alias");
  expect(identified.length).toBeGreaterThan(0);
  expect(identified.length).toBeLessThan(5);
  const want = [
    ...stored.map((e) => expectedRow(e, connection, "all events")),
    ...identified.map((e) => expectedRow(e, connection, "identified")),
  ].sort((a, b) => (a.pipeline + a.message_id < b.pipeline + b.message_id ? -1 : 1));
  const got = await warehouseRows(connection, want.length);
  expect(got).toEqual(want);
  // Skew correction reached the warehouse to the millisecond — checked on at least one row per
  // event: every event of these SDKs carries both originalTimestamp and sentAt.
  const skewed = got.filter((r) => r.original_timestamp_ms !== null && r.sent_at_ms !== null);
  expect(skewed.length).toBe(got.length);
  for (const r of skewed) expect(r.timestamp_ms).toBe(r.received_at_ms - (r.sent_at_ms - r.original_timestamp_ms));
}

test("@segment/analytics-node events reach tributary.events with every column right", async () => {
  const analytics = new SegmentAnalytics({
    writeKey: "key-wh-segment-0001",
    host: stack.node.url,
    path: "/v1/batch",
    flushInterval: 20,
    maxRetries: 0,
  });
  const errors: unknown[] = [];
  const cb = (err?: unknown) => void (err && errors.push(err));
  analytics.identify({ userId: "su1", anonymousId: "sa1", traits: { email: "s@example.com" } }, cb);
  analytics.track(
    {
      anonymousId: "sa1",
      event: "Order Completed",
      properties: { revenue: 42.5 },
      timestamp: new Date(Date.now() - 3600_000),
    },
    cb,
  );
  analytics.page(
    {
      userId: "su1",
      category: "Docs",
      name: "Pricing",
      properties: { url: "https://example.com/pricing", path: "/pricing" },
    },
    cb,
  );
  analytics.group({ userId: "su1", groupId: "sg1", traits: { name: "Acme" } }, cb);
  analytics.alias({ userId: "su1", previousId: "sa1" }, cb);
  await analytics.closeAndFlush({ timeout: 10_000 });
  expect(errors).toEqual([]);
  await expectWarehouseMatchesStream("wh-segment");
});

test("@rudderstack/rudder-sdk-node events reach tributary.events with every column right", async () => {
  const errors: unknown[] = [];
  const client = new RudderAnalytics("key-wh-rudder-0001", {
    dataPlaneUrl: stack.node.url,
    flushAt: 5,
    flushInterval: 50,
    retryCount: 0,
    logLevel: "error",
    errorHandler: (e) => void errors.push(e),
  });
  client.identify({
    userId: "ru1",
    anonymousId: "ra1",
    traits: { email: "r@example.com" },
    context: { locale: "it-IT", userAgent: "UA/2" },
  });
  client.track({ anonymousId: "ra1", event: "Product Viewed", properties: { sku: "S1" } });
  client.page({ userId: "ru1", category: "Docs", name: "Install", properties: { path: "/install" } });
  client.group({ userId: "ru1", groupId: "rg1", traits: { name: "Initech" } });
  client.alias({ userId: "ru1", previousId: "ra1" });
  await client.flush();
  expect(errors).toEqual([]);
  await expectWarehouseMatchesStream("wh-rudder");
});
