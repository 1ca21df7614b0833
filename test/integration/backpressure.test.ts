import { afterAll, beforeAll, expect, test } from "bun:test";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, expectExactlyOnce } from "../harness/warehouse.ts";
import { Load } from "../harness/load.ts";
import { STREAM } from "../../src/bus/subjects.ts";
import { capacityDefaults } from "../../src/config/env.ts";
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
    {
      "bp.yaml": `connection: bp\nsource: webhook\nwriteKeys: ["key-bp-00000001"]\npipelines:\n  - name: all\n    import: events\n`,
    },
    {
      clickhouseUrl: ch.url,
      streamMaxBytes: MAX,
      batchMaxAgeMs: 200,
      capacity: { intervalMs: 100 },
      inserter: { initialBackoffMs: 100, maxBackoffMs: 500 },
    },
  );
  try {
    await node.pipelinesReady;
    await ch.kill();
    const load = new Load({
      url: () => node.url,
      writeKey: "key-bp-00000001",
      clients: 4,
      eventsPerRequest: 50,
      prefix: "bp",
    });
    // Wait for the first 503 (a condition, with a generous deadline), and read the stream at once:
    // once the guard refuses, nothing more is written but the requests already in flight.
    const deadline = Date.now() + 60_000;
    while (!load.firstAnswer.has(503) && Date.now() < deadline) await Bun.sleep(20);
    const atFirst503 = await node.bus.jsm.streams.info(STREAM);
    await load.stop();
    // The 503 is the guard's own (its text and Retry-After: 30), not JetStream refusing a full
    // stream (DiscardPolicy.New), which answers 503 too but with the publish error's text.
    expect(load.firstAnswer.get(503)).toEqual({
      body: JSON.stringify({
        error: "the event stream is nearly full of events not yet loaded into ClickHouse; retry later",
      }),
      retryAfter: "30",
    });
    // ...and it came early: the stream held well under its limit (the guard trips at
    // capacityDefaults.refuseRatio of it; a 503 from JetStream itself comes only when it is full).
    expect(atFirst503.state.bytes).toBeLessThan(MAX * ((capacityDefaults.refuseRatio + 1) / 2));
    // Nothing the stream held was discarded while ClickHouse was away.
    const info = await node.bus.jsm.streams.info(STREAM);
    expect(info.state.first_seq).toBe(1);
    expect(info.state.bytes).toBeLessThanOrEqual(MAX);
    const accepted = load.accepted.length;
    expect(accepted).toBeGreaterThan(1000);

    await ch.start();
    await expectExactlyOnce(db, "bp", load.accepted, 120_000);
    // Room again: accepted (the guard resumes below capacityDefaults.resumeRatio once the backlog drained).
    let status = 0;
    for (const until = Date.now() + 30_000; status !== 200 && Date.now() < until; ) {
      await Bun.sleep(100);
      status = (
        await fetch(`${node.url}/v1/events`, {
          method: "POST",
          headers: { Authorization: "Bearer key-bp-00000001" },
          body: JSON.stringify({ type: "track", event: "E", userId: "u" }),
        })
      ).status;
    }
    expect(status).toBe(200);
  } finally {
    await node.stop();
  }
}, 300_000);
