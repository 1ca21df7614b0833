import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startNats, startTestNode } from "../harness/services.ts";
import { chClient, expectExactlyOnce, rows } from "../harness/warehouse.ts";
import { Load } from "../harness/load.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Several threads answer HTTP on one port (TRIBUTARY_INGEST_WORKERS, SO_REUSEPORT): dedup stays
 * exact across them, /metrics and the admin API see all of them, a configuration change reaches
 * all of them, and a thread that dies is restarted without losing an acknowledged event.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;
let node: RunningNode;
const ADMIN = "admin-token-ingest-workers";

const connection = (name: string, key: string) => `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: all
    import: events
`;

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  db = chClient(ch.url);
  node = await startTestNode(
    nats.url,
    {
      "a.yaml": connection("threads", "key-threads-0001"),
      "limited.yaml": `connection: limited\nsource: webhook\nwriteKeys: ["key-limited-0001"]\nrateLimit: {eventsPerMinute: 1, burst: 30}\n`,
    },
    { clickhouseUrl: ch.url, batchMaxAgeMs: 200, ackWaitMs: 3000, ingestWorkers: 3, adminToken: ADMIN },
  );
  await node.pipelinesReady;
});
afterAll(async () => {
  await node?.stop();
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
});

/** One request on a connection of its own, so the kernel picks a thread for each. */
const post = async (key: string, events: unknown[]) => {
  const r = await fetch(`${node.url}/v1/batch`, {
    method: "POST",
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json", Connection: "close" },
    body: JSON.stringify({ batch: events }),
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
};

const metric = async (name: string) => {
  const text = await (
    await fetch(`${node.url}/metrics`, { headers: { Authorization: `Bearer ${ADMIN}`, Connection: "close" } })
  ).text();
  return Number(
    text
      .split("\n")
      .find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
      ?.split(" ")[1],
  );
};

test("a messageId retried on every thread is stored once; /metrics counts what every thread took", async () => {
  expect(node.threads).toBe(3);
  const acceptedBefore = await metric('tributary_ingest_events_total{outcome="accepted"}');
  const ids = Array.from({ length: 40 }, (_, i) => `retry-${i}`);
  const events = ids.map((messageId) => ({ type: "track", event: "Retried", userId: `u${messageId}`, messageId }));
  // Thirty connections each send all 40: whichever thread each lands on, each id is stored once.
  const answers = await Promise.all(Array.from({ length: 30 }, () => post("key-threads-0001", events)));
  expect(answers.map((a) => a.status)).toEqual(Array(30).fill(200));
  // The main thread took some of the connections, and so did the others.
  expect(node.ingest.stats.accepted + node.ingest.stats.duplicates).toBeLessThan(30 * 40);
  await expectExactlyOnce(db, "threads", ids);
  // Stored once, not merely collapsed by FINAL: the stream holds each id once.
  const raw = await rows<{ c: string }>(
    db,
    `SELECT count() AS c FROM tributary.events WHERE connection = 'threads' AND message_id LIKE 'retry-%'`,
  );
  expect(raw[0]!.c).toBe("40");
  expect((await metric('tributary_ingest_events_total{outcome="accepted"}')) - acceptedBefore).toBe(40);
  // Each shard has one writer in the node, so each id is held once in memory, not once per thread.
  expect(await metric("tributary_dedup_index_ids")).toBe(40);
});

test("a connection's rate limit holds per node, whichever threads its requests reach", async () => {
  // 30 tokens; 30 requests of 2 events on connections of their own: 15 fit, whatever the threads.
  const answers = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      post("key-limited-0001", [
        { type: "track", event: "Limited", userId: "u", messageId: `lim-${i}-a` },
        { type: "track", event: "Limited", userId: "u", messageId: `lim-${i}-b` },
      ]),
    ),
  );
  const count = (status: number) => answers.filter((a) => a.status === status).length;
  expect({ ok: count(200), limited: count(429) }).toEqual({ ok: 15, limited: 15 });
});

test("the admin API answers on every thread, and a configuration change reaches every thread", async () => {
  for (let i = 0; i < 12; i++) {
    const r = await fetch(`${node.url}/v1/pipelines`, {
      headers: { Authorization: `Bearer ${ADMIN}`, Connection: "close" },
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { pipelines: unknown[] }).pipelines.length).toBeGreaterThan(0);
    const denied = await fetch(`${node.url}/v1/pipelines`, { headers: { Connection: "close" } });
    expect(denied.status).toBe(401);
  }
  writeFileSync(join(node.config.options.dir, "late.yaml"), connection("latethreads", "key-latethreads-01"));
  // Every thread has loaded it once twelve separate connections in a row are accepted.
  let streak = 0;
  for (const deadline = Date.now() + 30_000; streak < 12 && Date.now() < deadline; ) {
    const r = await post("key-latethreads-01", [
      { type: "track", event: "Late", userId: "u", messageId: `late-${Date.now()}-${streak}` },
    ]);
    streak = r.status === 200 ? streak + 1 : 0;
    if (!streak) await Bun.sleep(50);
  }
  expect(streak).toBe(12);
});

test("an ingest thread that dies under load is restarted; every event answered 2xx lands once", async () => {
  const load = new Load({
    url: () => node.url,
    writeKey: "key-threads-0001",
    clients: 8,
    pauseMs: 5,
    prefix: "tk",
  });
  try {
    for (const deadline = Date.now() + 30_000; load.accepted.length < 2000 && Date.now() < deadline; )
      await Bun.sleep(50);
    node.ingestWorkers!.crash(1);
    await Bun.sleep(200);
    await node.ingestWorkers!.ready(1);
    expect(node.ingestWorkers!.restarts).toBe(1);
    const after = load.accepted.length;
    for (const deadline = Date.now() + 30_000; load.accepted.length < after + 2000 && Date.now() < deadline; )
      await Bun.sleep(50);
  } finally {
    await load.stop();
  }
  // Requests on the dead thread's connections got no answer (status 0), and those whose events it
  // owned while it was away got 503 (retry): neither was counted; nothing was refused otherwise.
  for (const status of load.statuses.keys()) expect([0, 200, 503]).toContain(status);
  expect(load.accepted.length).toBeGreaterThan(4000);
  await expectExactlyOnce(db, "threads", [...load.accepted, ...Array.from({ length: 40 }, (_, i) => `retry-${i}`)]);
}, 120_000);
