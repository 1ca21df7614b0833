import { afterAll, beforeAll, expect, test } from "bun:test";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, rows } from "../harness/warehouse.ts";
import { Load } from "../harness/load.ts";
import { STREAM } from "../../src/bus/subjects.ts";
import type { ClickHouseClient } from "@clickhouse/client";

/**
 * ClickHouse away longer than the stream can hold: the node must say 503 before the stream would
 * have to drop events no pipeline loaded, and accept again once the backlog drained.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  db = chClient(ch.url);
});
afterAll(async () => {
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
});

test("a full stream means 503 early, never a lost event; the backlog drains and acceptance resumes", async () => {
  const MAX = 2 * 1024 * 1024;
  const node = await startTestNode(
    nats.url,
    { "bp.yaml": `connection: bp\nsource: webhook\nwriteKeys: ["key-bp-00000001"]\npipelines:\n  - name: all\n    import: events\n` },
    { clickhouseUrl: ch.url, streamMaxBytes: MAX, batchMaxAgeMs: 200, capacity: { intervalMs: 100 }, inserter: { initialBackoffMs: 100, maxBackoffMs: 500 } },
  );
  try {
    await node.pipelinesReady;
    await ch.kill();
    const load = new Load({ url: () => node.url, writeKey: "key-bp-00000001", clients: 4, eventsPerRequest: 50, prefix: "bp" });
    const deadline = Date.now() + 30_000;
    while (!load.statuses.get(503) && Date.now() < deadline) await Bun.sleep(100);
    await load.stop();
    expect(load.statuses.get(503)).toBeGreaterThan(0);
    // Nothing the stream held was discarded while ClickHouse was away.
    const info = await node.bus.jsm.streams.info(STREAM);
    expect(info.state.first_seq).toBe(1);
    expect(info.state.bytes).toBeLessThanOrEqual(MAX);
    const accepted = load.accepted.length;
    expect(accepted).toBeGreaterThan(1000);

    await ch.start();
    let loaded = 0;
    for (let i = 0; i < 300 && loaded < accepted; i++) {
      await Bun.sleep(200);
      loaded = Number((await rows<any>(db, `SELECT count() AS c FROM tributary.events FINAL WHERE connection = 'bp'`).catch(() => [{ c: 0 }]))[0].c);
    }
    expect(loaded).toBe(accepted);
    const have = new Set((await rows<any>(db, `SELECT message_id AS m FROM tributary.events FINAL WHERE connection = 'bp'`)).map((r) => r.m));
    expect(load.accepted.filter((id) => !have.has(id))).toEqual([]);
    // Room again: accepted.
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      await Bun.sleep(100);
      status = (await fetch(`${node.url}/v1/events`, { method: "POST", headers: { Authorization: "Bearer key-bp-00000001" }, body: JSON.stringify({ type: "track", event: "E", userId: "u" }) })).status;
    }
    expect(status).toBe(200);
  } finally {
    await node.stop();
  }
}, 120_000);
