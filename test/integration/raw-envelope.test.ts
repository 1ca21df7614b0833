import { expect, test } from "bun:test";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { useStack } from "../harness/stack.ts";
import { eventually, rows } from "../harness/warehouse.ts";
import { webhookConnection } from "../harness/services.ts";
import { shardOf, shardSubject } from "../../src/bus/subjects.ts";
import { IDS_HEADER } from "../../src/bus/shard-writer.ts";

/**
 * Issue 16 #4: raw webhook deliveries are told apart by the record envelope (the message's
 * Tributary-Kind header), never by a field a sender controls; an event with a top-level `raw` field
 * is an event like any other. #5: delivery ids longer than 80 characters are hashed, not cut.
 */

const files = {
  "model.yaml": "customerModel:\n  plan: string\n",
  "site.yaml": webhookConnection(
    "site",
    ["key-site-0001"],
    `pipelines:
  - name: all
    import: events
  - name: people
    import: users
    transform:
      mapping:
        plan: traits.plan
`,
  ),
  "hooks.yaml": `connection: hooks
source: raw
insecure: true
dedup: {header: X-Delivery}
events: '{"type": "track", "event": "Hook", "userId": "h1", "raw": $}'
pipelines:
  - name: derived
    import: events
`,
  "ids.yaml": `connection: ids
source: raw
insecure: true
dedup: {jsonata: id}
`,
};
const stack = useStack(files);
const RAW = { receivedAt: "2025-01-01T00:00:00.000Z", headers: {}, rows: ["forged"] };

test("an event with a top-level `raw` field is loaded and counted by events and users pipelines", async () => {
  const r = await fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: "Bearer key-site-0001" },
    body: JSON.stringify({
      batch: [
        { type: "track", event: "Raw Field", userId: "r1", messageId: "raw-t", raw: RAW },
        { type: "identify", userId: "r2", messageId: "raw-i", raw: "anything", traits: { plan: "raw" } },
        { type: "track", event: "Plain", userId: "r1", messageId: "plain-t" },
      ],
    }),
  });
  expect(r.status).toBe(200);
  const loaded = await eventually<any>(
    stack.db,
    `SELECT message_id FROM tributary.events FINAL WHERE pipeline = 'all' ORDER BY message_id`,
    (x) => x.length >= 3,
    30_000,
  );
  expect(loaded.map((x) => x.message_id)).toEqual(["plain-t", "raw-i", "raw-t"]);
  expect(
    await eventually<any>(
      stack.db,
      `SELECT user_id, plan FROM tributary.users FINAL WHERE user_id = 'r2'`,
      (x) => x.length === 1,
      30_000,
    ),
  ).toEqual([{ user_id: "r2", plan: "raw" }]);
  const m = await stack.node.pipelinesReady;
  expect((await m.snapshot("site/all"))!.received).toBe(3);
  // No raw table loader exists for a webhook connection, and nothing here was one.
  expect(await m.snapshot("site/(raw table)")).toBeUndefined();
});

test("a raw connection loads its deliveries into its table and its derived events (with a `raw` field) into events; old messages still load", async () => {
  const r = await fetch(`${stack.node.url}/v1/webhooks/hooks`, {
    method: "POST",
    headers: { "X-Delivery": "d-1" },
    body: JSON.stringify({ id: 1, raw: RAW }),
  });
  expect(r.status).toBe(200);
  expect(await r.json()).toMatchObject({ accepted: 1, events: { accepted: 1 } });
  // A delivery as an earlier version stored it: no record envelope, `{messageId, raw}` in the array.
  const h = natsHeaders();
  h.set(IDS_HEADER, JSON.stringify(["legacy-1"]));
  await stack.node.bus.js.publish(
    shardSubject("hooks", shardOf("legacy-1")),
    JSON.stringify([
      { messageId: "legacy-1", raw: { receivedAt: new Date().toISOString(), headers: {}, rows: ['{"old":true}'] } },
    ]),
    { headers: h },
  );
  const table = await eventually<any>(
    stack.db,
    `SELECT delivery_id, body FROM tributary.hooks FINAL ORDER BY delivery_id`,
    (x) => x.length >= 2,
    30_000,
  );
  expect(table).toEqual([
    { delivery_id: "d-1", body: JSON.stringify({ id: 1, raw: RAW }) },
    { delivery_id: "legacy-1", body: '{"old":true}' },
  ]);
  const derived = await eventually<any>(
    stack.db,
    `SELECT message_id, event FROM tributary.events FINAL WHERE connection = 'hooks'`,
    (x) => x.length >= 1,
    30_000,
  );
  expect(derived).toEqual([{ message_id: "d-1:0:0", event: "Hook" }]);
  await Bun.sleep(500);
  expect((await rows<any>(stack.db, `SELECT count() AS c FROM tributary.hooks FINAL`))[0].c).toBe("2");
});

test("raw delivery ids that differ after character 80 are both stored; a redelivery of either is a duplicate", async () => {
  const long = "x".repeat(80);
  const hook = (connection: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${stack.node.url}/v1/webhooks/${connection}`, { method: "POST", headers, body: JSON.stringify(body) }).then(
      async (r) => ({ status: r.status, body: await r.json() }),
    );
  // By header
  expect(await hook("hooks", { n: 1 }, { "X-Delivery": `${long}-a` })).toMatchObject({
    status: 200,
    body: { accepted: 1 },
  });
  expect(await hook("hooks", { n: 2 }, { "X-Delivery": `${long}-b` })).toMatchObject({
    status: 200,
    body: { accepted: 1 },
  });
  expect((await hook("hooks", { n: 1 }, { "X-Delivery": `${long}-a` })).body).toMatchObject({
    accepted: 0,
    duplicate: true,
  });
  // By JSONata
  expect(await hook("ids", { id: `${long}-a` })).toMatchObject({ status: 200, body: { accepted: 1 } });
  expect(await hook("ids", { id: `${long}-b` })).toMatchObject({ status: 200, body: { accepted: 1 } });
  expect((await hook("ids", { id: `${long}-b` })).body).toMatchObject({ accepted: 0, duplicate: true });
  const q = (t: string) =>
    `SELECT delivery_id, body FROM tributary.${t} FINAL WHERE delivery_id LIKE 'id-sha256:%' ORDER BY body`;
  for (const t of ["hooks", "ids"]) {
    const got = await eventually<any>(stack.db, q(t), (x) => x.length >= 2, 30_000);
    expect(got.length).toBe(2);
    expect(new Set(got.map((x) => x.delivery_id)).size).toBe(2);
    for (const x of got) expect(x.delivery_id).toMatch(/^id-sha256:[0-9a-f]{64}$/);
  }
});
