import { expect, test } from "bun:test";
import { startTestNode } from "../harness/services.ts";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";

/**
 * A raw webhook's delivery and the events its `events:` expression derives are stored in the same
 * connection's stream. An `events:` expression that names its event after the delivery
 * (`"messageId": id`, natural for Stripe's `evt_…` ids, which are also the delivery's dedup id) must
 * not make the event a "duplicate" of its own delivery: the sender got 200 with the event accepted,
 * so the event must load. Records of different kinds never deduplicate each other; a redelivery still
 * deduplicates both.
 */
const files = {
  "hook.yaml": `connection: hook
source: raw
insecure: true
dedup: {jsonata: "id"}
events: '{"type": "track", "event": "Paid", "userId": who, "messageId": id}'
pipelines:
  - name: paid
    import: events
`,
};
const stack = useStack(files);

const deliver = (id: string, who: string) =>
  fetch(`${stack.node.url}/v1/webhooks/hook`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ id, who }),
  });

test("an event named after its delivery (messageId = the dedup id) loads beside the raw record; a redelivery doubles neither", async () => {
  const first = await deliver("evt_1", "u-1");
  expect(first.status).toBe(200);
  expect(await first.json()).toMatchObject({ events: { accepted: 1 } });
  const again = await deliver("evt_1", "u-1");
  expect(again.status).toBe(200);
  expect(await again.json()).toMatchObject({ duplicate: true });
  // A second delivery after the redelivery, so the wait below has something to wait for either way.
  expect((await deliver("evt_2", "u-2")).status).toBe(200);

  const loaded = await eventually(
    stack.db,
    "SELECT message_id, user_id FROM tributary.events FINAL WHERE connection = 'hook' ORDER BY message_id",
    (r: unknown[]) => r.length >= 2,
  );
  expect(loaded).toEqual([
    { message_id: "evt_1", user_id: "u-1" },
    { message_id: "evt_2", user_id: "u-2" },
  ]);
  const raw = await eventually(
    stack.db,
    "SELECT delivery_id FROM tributary.hook FINAL ORDER BY delivery_id",
    (r: unknown[]) => r.length >= 2,
  );
  expect(raw).toEqual([{ delivery_id: "evt_1" }, { delivery_id: "evt_2" }]);
  // Stored once each in the stream: the redelivery added nothing.
  const counts = await rows(stack.db, "SELECT count() AS n FROM tributary.events WHERE connection = 'hook'");
  expect(Number(counts[0]!.n)).toBe(2);
});

test("a node that rebuilt its dedup index from the stream still tells a delivery from its event: a redelivery is a duplicate and doubles neither", async () => {
  // A second node reads the window's ids from message headers, each under its message's kind.
  const other = await startTestNode(stack.nats.url, files, { clickhouseUrl: stack.ch.url, batchMaxAgeMs: 100 });
  try {
    const r = await fetch(`${other.url}/v1/webhooks/hook`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: "evt_1", who: "u-1" }),
    });
    expect(r.status).toBe(200);
    expect(await r.json()).toMatchObject({ duplicate: true });
    const fresh = await fetch(`${other.url}/v1/webhooks/hook`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: "evt_3", who: "u-3" }),
    });
    expect(await fresh.json()).toMatchObject({ events: { accepted: 1 } });
    await eventually(
      stack.db,
      "SELECT message_id FROM tributary.events FINAL WHERE connection = 'hook'",
      (x: unknown[]) => x.length >= 3,
    );
    const n = await rows(
      stack.db,
      "SELECT count() AS n FROM tributary.events WHERE connection = 'hook' AND message_id = 'evt_1'",
    );
    expect(Number(n[0]!.n)).toBe(1);
    await eventually(stack.db, "SELECT delivery_id FROM tributary.hook FINAL", (x: unknown[]) => x.length >= 3);
    const raw = await rows(stack.db, "SELECT count() AS n FROM tributary.hook WHERE delivery_id = 'evt_1'");
    expect(Number(raw[0]!.n)).toBe(1);
  } finally {
    await other.stop();
  }
});
