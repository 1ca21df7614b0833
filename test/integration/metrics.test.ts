import { afterAll, beforeAll, expect, test } from "bun:test";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Every component's counters reach GET /metrics (issue 18): the ingest routes' IngestStats, the
 * in-flight limiter, the capacity guard, the dedup index. Counted from what the node answered.
 */

const ADMIN = "admin-token-metrics-0001";
const KEY = "key-metrics-site-0001";
let nats: Awaited<ReturnType<typeof startNats>>;
let node: RunningNode;

beforeAll(async () => {
  nats = await startNats();
  // One byte in flight: a request alone always fits, so only concurrent ones are refused.
  node = await startTestNode(
    nats.url,
    { "site.yaml": webhookConnection("site", [KEY]) },
    {
      adminToken: ADMIN,
      maxInFlightBytes: 1,
    },
  );
});
afterAll(async () => {
  await node?.stop();
  await nats?.cleanup();
});

const post = (events: unknown[]) =>
  fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ batch: events }),
  });

/**
 * The value of one series, or undefined when /metrics lacks it. Counters are the process's (other
 * test files in the same run count into them too), so tests compare differences.
 */
async function series(): Promise<(name: string) => number | undefined> {
  const r = await fetch(`${node.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN}` } });
  expect(r.status).toBe(200);
  const text = await r.text();
  return (name) => {
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line === undefined ? undefined : Number(line.slice(name.length + 1));
  };
}

test("IngestStats, the dedup index and the capacity guard are series of /metrics, and they count", async () => {
  const before = await series();
  const counters = [
    'tributary_ingest_events_total{outcome="accepted"}',
    'tributary_ingest_events_total{outcome="duplicate"}',
    'tributary_ingest_events_total{outcome="rejected"}',
    "tributary_stream_capacity_refused_requests_total",
    "tributary_jetstream_publish_conflicts_total",
    "tributary_ingest_overloaded_requests_total",
  ];
  for (const c of counters) expect([c, typeof before(c)]).toEqual([c, "number"]);

  const track = (messageId: string) => ({ type: "track", event: "Metric", userId: "u", messageId });
  expect((await post([track("m-1"), track("m-2")])).status).toBe(200);
  expect((await post([track("m-1")])).status).toBe(200); // a duplicate
  expect((await post([track("m-3"), { type: "track", userId: "u" }])).status).toBe(200); // one invalid (no event)

  const after = await series();
  const m = (name: string) => (counters.includes(name) ? after(name)! - before(name)! : after(name));
  expect(m('tributary_ingest_events_total{outcome="accepted"}')).toBe(3);
  expect(m('tributary_ingest_events_total{outcome="duplicate"}')).toBe(1);
  expect(m('tributary_ingest_events_total{outcome="rejected"}')).toBe(1);
  expect(m("tributary_dedup_index_ids")).toBeGreaterThanOrEqual(3);
  expect(m("tributary_ingest_in_flight_bytes")).toBe(0);
  expect(m("tributary_ingest_in_flight_requests")).toBe(0);
  expect(m("tributary_stream_backlog_bytes")).toBe(0);
  expect(m("tributary_stream_capacity_full")).toBe(0);
  expect(m("tributary_stream_capacity_refused_requests_total")).toBe(0);
  expect(m("tributary_jetstream_publish_conflicts_total")).toBe(0);
  expect(m("tributary_ingest_overloaded_requests_total")).toBe(0);
});

test("requests the in-flight limiter refuses with 429 are counted", async () => {
  const body = Array.from({ length: 200 }, (_, i) => ({
    type: "track",
    event: "Burst",
    userId: "u",
    properties: { i },
  }));
  const before = (await series())("tributary_ingest_overloaded_requests_total")!;
  let refused = 0;
  for (let round = 0; round < 20 && refused === 0; round++) {
    const answers = await Promise.all(Array.from({ length: 16 }, () => post(body)));
    refused += answers.filter((r) => r.status === 429).length;
    await Promise.all(answers.map((r) => r.body?.cancel()));
  }
  expect(refused).toBeGreaterThan(0);
  expect((await series())("tributary_ingest_overloaded_requests_total")).toBe(before + refused);
});
