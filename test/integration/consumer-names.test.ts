import { expect, test } from "bun:test";
import { join } from "node:path";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import { startClickHouse, startNats, startTestNode, pipelinesDir, webhookConnection } from "../harness/services.ts";
import { chClient, eventually, rows } from "../harness/warehouse.ts";
import { connectBus } from "../../src/bus/connection.ts";
import { EventLog } from "../../src/bus/event-log.ts";
import { STREAM, connectionSubjects, legacyConsumerName } from "../../src/bus/subjects.ts";
import {
  DLQ_STREAM,
  ensureDlqStream,
  legacyDlqSubject,
  publishDeadLetters,
  readDeadLetters,
} from "../../src/bus/dead-letters.ts";
import { durableName } from "../../src/pipeline/worker.ts";
import { nameCollisions } from "../../src/pipeline/manager.ts";
import { loadConfig } from "../../src/config/loader.ts";
import { useStack } from "../harness/stack.ts";

/**
 * Issue 16 #3: consumer names (and dead-letter subjects) are injective. `shop_eu`/`all` and
 * `shop`/`eu_all`, or `orders v2` and `orders_v2`, used to share one durable consumer: they split
 * one connection's events between them and the other connection's were never loaded.
 */

const files = {
  "shop_eu.yaml": webhookConnection("shop_eu", ["key-shop-eu-0001"], "pipelines:\n  - name: all\n    import: events\n"),
  "shop.yaml": webhookConnection("shop", ["key-shop-0001"], "pipelines:\n  - name: eu_all\n    import: events\n"),
  "orders.yaml": webhookConnection(
    "orders",
    ["key-orders-0001"],
    `pipelines:\n  - name: "orders v2"\n    import: events\n  - name: orders_v2\n    import: events\n`,
  ),
};
const stack = useStack(files);

const post = (key: string, events: unknown[]) =>
  fetch(`${stack.node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}` },
    body: JSON.stringify({ batch: events }),
  }).then((r) => r.status);
const tracks = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => ({ type: "track", event: "E", userId: "u", messageId: `${prefix}-${i}` }));

test("pipelines whose old consumer names collided each load all of their own connection's events, labelled with it", async () => {
  for (let i = 0; i < 4; i++) {
    expect(await post("key-shop-eu-0001", tracks(`eu${i}`, 5))).toBe(200);
    expect(await post("key-shop-0001", tracks(`shop${i}`, 5))).toBe(200);
    expect(await post("key-orders-0001", tracks(`ord${i}`, 5))).toBe(200);
  }
  const q = `SELECT pipeline, connection, count() AS c FROM tributary.events FINAL GROUP BY pipeline, connection ORDER BY pipeline, connection`;
  const want = [
    { pipeline: "all", connection: "shop_eu", c: "20" },
    { pipeline: "eu_all", connection: "shop", c: "20" },
    { pipeline: "orders v2", connection: "orders", c: "20" },
    { pipeline: "orders_v2", connection: "orders", c: "20" },
  ];
  const got = await eventually<any>(stack.db, q, (r) => JSON.stringify(r) === JSON.stringify(want), 30_000).catch(
    async () => rows<any>(stack.db, q),
  );
  expect(got).toEqual(want);
  // Four pipelines, four consumers, each reading its own connection.
  const names = new Set(
    Object.entries({ shop_eu: "all", shop: "eu_all", orders: "orders v2", orders_v2: "orders_v2" }).map(([c, p]) =>
      durableName(c === "orders_v2" ? "orders" : c, p),
    ),
  );
  expect(names.size).toBe(4);
  for (const [c, p] of [
    ["shop_eu", "all"],
    ["shop", "eu_all"],
    ["orders", "orders v2"],
    ["orders", "orders_v2"],
  ] as const) {
    const info = await stack.node.bus.jsm.consumers.info(STREAM, durableName(c, p));
    expect(info.config.filter_subject).toBe(connectionSubjects(c));
  }
});

test("dead letters of `orders v2` and `orders_v2` go to subjects of their own; letters on the old shared subject are read by their pipeline field", async () => {
  const bus = stack.node.bus;
  await ensureDlqStream(bus.jsm, 1);
  const letter = (pipeline: string, messageId: string) => ({
    connection: "orders",
    pipeline,
    table: "events",
    messageId,
    reason: "test",
    at: new Date().toISOString(),
    event: {},
  });
  await publishDeadLetters(bus, [letter("orders v2", "a"), letter("orders_v2", "b")]);
  // One an earlier version wrote for "orders v2" to the subject both names shared.
  await bus.js.publish(legacyDlqSubject("orders", "orders v2"), JSON.stringify(letter("orders v2", "old")));
  expect((await readDeadLetters(bus, "orders", "orders v2")).map((l) => l.messageId)).toEqual(["a", "old"]);
  expect((await readDeadLetters(bus, "orders", "orders_v2")).map((l) => l.messageId)).toEqual(["b"]);
  const subjects =
    (await bus.jsm.streams.info(DLQ_STREAM, { subjects_filter: "tributary.dlq.orders.>" })).state.subjects ?? {};
  expect(Object.keys(subjects).sort()).toEqual(["tributary.dlq.orders.orders%20v2", "tributary.dlq.orders.orders_v2"]);
  await bus.jsm.streams.purge(DLQ_STREAM, { filter: "tributary.dlq.orders.>" });
});

async function check(dir: string) {
  const p = Bun.spawn([process.execPath, join(import.meta.dir, "../../scripts/check.ts"), dir], {
    env: { ...process.env, NATS_URL: "" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code: await p.exited, out, err };
}

test("bun run check accepts the pairs that used to collide and refuses a collision, naming both files", async () => {
  const ok = pipelinesDir(files);
  const good = await check(ok);
  expect(good.err).toBe("");
  expect(good.code).toBe(0);
  // With today's names a collision takes one pipeline name used twice in a connection.
  const dup = pipelinesDir({
    ...files,
    "orders.yaml": webhookConnection(
      "orders",
      ["key-orders-0001"],
      `pipelines:\n  - name: orders_v2\n    import: events\n  - name: orders_v2\n    import: events\n    filter: type = "track"\n`,
    ),
  });
  const bad = await check(dup);
  expect(bad.code).toBe(1);
  expect(bad.err).toMatch(
    /orders\.yaml:\d+: pipeline "orders_v2" of connection "orders" would share the consumer tributary-orders--orders_v2 with pipeline "orders_v2" of connection "orders" in .*orders\.yaml:\d+/,
  );
  // The guard itself, fed the names of earlier versions, names both files of each collision.
  const old = nameCollisions(loadConfig(ok), {
    consumer: legacyConsumerName,
    deadLetters: (c, p) => legacyDlqSubject(c, p),
  });
  expect(old.map((x) => [x.a.file.split("/").pop(), x.b.file.split("/").pop(), x.what]).sort()).toEqual([
    ["orders.yaml", "orders.yaml", "consumer"],
    ["orders.yaml", "orders.yaml", "dead-letter subject"],
    ["shop.yaml", "shop_eu.yaml", "consumer"],
  ]);
});

test("a node started against old-named consumers carries their positions over to the new names, then deletes them", async () => {
  const [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  const db = chClient(ch.url);
  try {
    // What an earlier version left: a stream, and `tributary_legacy_all` that loaded the first 6 messages.
    const bus = await connectBus({
      url: nats.url,
      streamMaxAgeHours: 24,
      streamReplicas: 1,
      dedupWindowHours: 1,
      timeoutMs: 5000,
    });
    const log = new EventLog(bus, { dedupWindowMs: 3600_000, timeoutMs: 5000 });
    const event = (id: string) => ({
      id,
      json: JSON.stringify({
        type: "track",
        event: "E",
        userId: "u",
        messageId: id,
        receivedAt: new Date().toISOString(),
        timestamp: new Date().toISOString(),
      }),
    });
    for (let i = 0; i < 6; i++) await log.append("legacy", [event(`done-${i}`)]);
    const old = legacyConsumerName("legacy", "all");
    await bus.jsm.consumers.add(STREAM, {
      durable_name: old,
      filter_subject: connectionSubjects("legacy"),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
    });
    const c = await bus.js.consumers.get(STREAM, old);
    for (let i = 0; i < 6; i++) {
      const m = await c.next({ expires: 5000 });
      expect(m).not.toBeNull();
      await m!.ackAck();
    }
    for (let i = 0; i < 4; i++) await log.append("legacy", [event(`todo-${i}`)]);
    // Another old consumer, created from new events and never delivered anything: it started at 10.
    const idle = legacyConsumerName("legacy", "idle one");
    await bus.jsm.consumers.add(STREAM, {
      durable_name: idle,
      filter_subject: connectionSubjects("legacy"),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.New,
    });
    await log.append("legacy", [event("after-idle")]);
    await bus.close();

    const node = await startTestNode(
      nats.url,
      {
        "legacy.yaml": webhookConnection(
          "legacy",
          ["key-legacy-0001"],
          `pipelines:\n  - name: all\n    import: events\n  - name: idle one\n    import: events\n`,
        ),
      },
      { clickhouseUrl: ch.url, batchMaxAgeMs: 100 },
    );
    try {
      await node.pipelinesReady;
      const r = await fetch(`${node.url}/v1/batch`, {
        method: "POST",
        headers: { Authorization: "Bearer key-legacy-0001" },
        body: JSON.stringify({ batch: [{ type: "track", event: "E", userId: "u", messageId: "new-0" }] }),
      });
      expect(r.status).toBe(200);
      const q = (p: string) =>
        `SELECT message_id FROM tributary.events FINAL WHERE pipeline = '${p}' ORDER BY message_id`;
      await eventually<any>(db, q("all"), (x) => x.length >= 6, 30_000);
      await eventually<any>(db, q("idle one"), (x) => x.length >= 2, 30_000);
      await Bun.sleep(1000);
      // What the old consumer had loaded is not loaded again; what it had not is.
      expect((await rows<any>(db, q("all"))).map((x) => x.message_id)).toEqual([
        "after-idle",
        "new-0",
        "todo-0",
        "todo-1",
        "todo-2",
        "todo-3",
      ]);
      expect((await rows<any>(db, q("idle one"))).map((x) => x.message_id)).toEqual(["after-idle", "new-0"]);
      const names: string[] = [];
      for await (const i of node.bus.jsm.consumers.list(STREAM)) if (i.config.durable_name) names.push(i.name);
      expect(names.sort()).toEqual(["tributary-legacy--all", "tributary-legacy--idle-20one"]);
    } finally {
      await node.stop();
    }
  } finally {
    await db.close();
    await Promise.all([nats.cleanup(), ch.cleanup()]);
  }
});
