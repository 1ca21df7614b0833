import { afterAll, beforeAll, expect, test } from "bun:test";
import type { ClickHouseClient } from "@clickhouse/client";
import type { ConsumerMessages, JsMsg } from "@nats-io/jetstream";
import { type Bus, connectBus } from "../../src/bus/connection.ts";
import { ensureDlqStream, publishDeadLetters, readDeadLetters } from "../../src/bus/dead-letters.ts";
import { EventLog } from "../../src/bus/event-log.ts";
import { STREAM } from "../../src/bus/subjects.ts";
import { selectionOf } from "../../src/event/selection.ts";
import { eventsStage } from "../../src/pipeline/events-stage.ts";
import { Runner, type RunnerOptions } from "../../src/pipeline/runner.ts";
import type { Stage } from "../../src/pipeline/stage.ts";
import { PipelineStats } from "../../src/pipeline/stats.ts";
import { createTransform } from "../../src/pipeline/transform/index.ts";
import { ProfileStore } from "../../src/pipeline/users/profiles.ts";
import { UsersStage } from "../../src/pipeline/users/users-stage.ts";
import { migrateUsersTable } from "../../src/pipeline/users/users-table.ts";
import { durableName } from "../../src/pipeline/worker.ts";
import { ensurePipelineConsumer } from "../../src/pipeline/consumers.ts";
import { migrateEventsTable } from "../../src/sink/clickhouse/events-table.ts";
import { type Warehouse, connectWarehouse } from "../../src/sink/clickhouse/server.ts";
import {
  type ClickHouseBatchOptions,
  type ClickHouseSink,
  type ClickHouseSinkOptions,
  clickHouseSink,
} from "../../src/sink/clickhouse/sink.ts";
import { startClickHouse, startNats } from "../harness/services.ts";
import { chClient, rows } from "../harness/warehouse.ts";

/**
 * The Runner (consume → select → stage → sink → ack) and the ClickHouse sink on a real nats-server
 * and clickhouse-server: the sink's batches close by rows and by age, messages are acknowledged only once the
 * sink stored their rows, an event the stage fails is dead-lettered alone, and a row ClickHouse
 * refuses among many is isolated by bisection and dead-lettered with ClickHouse's reason.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let bus: Bus;
let w: Warehouse;
let db: ClickHouseClient;
let log: EventLog;

beforeAll(async () => {
  [nats, ch] = await Promise.all([startNats(), startClickHouse()]);
  bus = await connectBus({
    url: nats.url,
    streamMaxAgeHours: 24,
    streamReplicas: 1,
    dedupWindowHours: 1,
    timeoutMs: 5000,
  });
  await ensureDlqStream(bus.jsm, 1);
  w = await connectWarehouse({ url: ch.url, username: "default", password: "", database: "tributary" });
  await migrateEventsTable(w);
  db = chClient(ch.url);
  log = new EventLog(bus, { dedupWindowMs: 3600_000, timeoutMs: 5000 });
});
afterAll(async () => {
  await bus?.close();
  await w?.close();
  await db?.close();
  await Promise.all([nats?.cleanup(), ch?.cleanup()]);
});

const event = (id: string, extra: Record<string, unknown> = {}) => ({
  id,
  json: JSON.stringify({
    type: "track",
    event: "E",
    userId: "u",
    messageId: id,
    receivedAt: new Date().toISOString(),
    timestamp: new Date().toISOString(),
    ...extra,
  }),
});
/** One stream message per event (each append waits for its publish). */
async function publish(connection: string, ids: string[], extra: (id: string) => Record<string, unknown> = () => ({})) {
  for (const id of ids) await log.append(connection, [event(id, extra(id))]);
}

const batchOf = (o: Partial<ClickHouseBatchOptions> = {}): ClickHouseBatchOptions => ({
  maxRows: 1000,
  maxBytes: 8 * 1024 * 1024,
  maxAgeMs: 60_000,
  ...o,
});
const runnerOptions = (batch: ClickHouseBatchOptions): RunnerOptions => ({
  stageBatch: batch,
  heartbeatMs: 1000,
  ack: (m: JsMsg) => m.ack(),
});

/** Each insert of the sinks below: how many rows, and when. */
let flushes: { kept: number; at: number }[] = [];
const sinkOf = (table: string, batch: ClickHouseBatchOptions, o: ClickHouseSinkOptions = {}) =>
  clickHouseSink(w, table, { ...o, batch, onInsert: (rows) => flushes.push({ kept: rows, at: Date.now() }) });

/** A runner on a fresh durable consumer of `connection`, consuming until `stop`. */
async function start(connection: string, stage: Stage, sink: ClickHouseSink, options: RunnerOptions) {
  await ensurePipelineConsumer(bus, connection, "p", 3000, 0);
  const consumer = await bus.js.consumers.get(STREAM, durableName(connection, "p"));
  const messages: ConsumerMessages = await consumer.consume({ max_bytes: 1024 * 1024, expires: 2000 });
  const stats = new PipelineStats();
  const runner = new Runner(stage, sink, selectionOf({ import: "events" }), stats, options);
  flushes = [];
  const loop = runner.run(messages);
  return {
    runner,
    stats,
    flushes,
    info: () => bus.jsm.consumers.info(STREAM, durableName(connection, "p")),
    async stop() {
      await messages.close();
      await runner.stop(2000, loop);
    },
  };
}

const until = async (check: () => boolean | Promise<boolean>, ms = 20_000) => {
  const deadline = Date.now() + ms;
  while (!(await check()) && Date.now() < deadline) await Bun.sleep(25);
  return check();
};
const loaded = async (connection: string) =>
  (
    await rows<{ message_id: string }>(
      db,
      `SELECT message_id FROM tributary.events FINAL WHERE connection = '${connection}' ORDER BY message_id`,
    )
  ).map((r) => r.message_id);

test("a batch closes at maxRows kept events: full batches land at once, the rest waits for its age", async () => {
  const batch = batchOf({ maxRows: 3 });
  const r = await start(
    "byrows",
    eventsStage("byrows", "p", w.features),
    sinkOf("events", batch),
    runnerOptions(batch),
  );
  try {
    await publish("byrows", ["r1", "r2", "r3", "r4", "r5", "r6", "r7"]);
    expect(await until(() => flushes.length >= 2)).toBe(true);
    expect(flushes.map((f) => f.kept)).toEqual([3, 3]);
    expect(await loaded("byrows")).toEqual(["r1", "r2", "r3", "r4", "r5", "r6"]);
    // The seventh is held (its batch is neither full nor old) and unacknowledged.
    await Bun.sleep(300);
    expect(flushes).toHaveLength(2);
    expect((await r.info()).num_ack_pending).toBe(1);
  } finally {
    await r.stop(); // stopping stores what is held
  }
  expect(await loaded("byrows")).toEqual(["r1", "r2", "r3", "r4", "r5", "r6", "r7"]);
  expect((await r.info()).num_ack_pending).toBe(0);
});

test("a batch that never fills closes at maxAgeMs after its first message", async () => {
  const batch = batchOf({ maxAgeMs: 600 });
  const r = await start("byage", eventsStage("byage", "p", w.features), sinkOf("events", batch), runnerOptions(batch));
  try {
    const sent = Date.now();
    await publish("byage", ["a1", "a2"]);
    expect(await until(() => flushes.length >= 1)).toBe(true);
    expect(flushes[0]!.kept).toBe(2);
    expect(flushes[0]!.at - sent).toBeGreaterThanOrEqual(550);
    expect(await loaded("byage")).toEqual(["a1", "a2"]);
  } finally {
    await r.stop();
  }
});

test("messages are acknowledged only after the sink stored their rows", async () => {
  await db.command({ query: "DROP TABLE IF EXISTS tributary.late" });
  // The table is not there yet: ClickHouse answers UNKNOWN_TABLE, a server error the sink retries.
  const batch = batchOf({ maxAgeMs: 50 });
  const sink = sinkOf("late", batch, { inserter: { initialBackoffMs: 50, maxBackoffMs: 200 } });
  const r = await start("acks", eventsStage("acks", "p", w.features), sink, runnerOptions(batch));
  try {
    await publish("acks", ["k1", "k2"]);
    expect(await until(async () => (await r.info()).num_ack_pending === 2)).toBe(true);
    await Bun.sleep(4000); // several retries, and past the 3 s ack wait: heartbeats hold them
    const held = await r.info();
    expect(held.num_ack_pending).toBe(2);
    expect(held.num_redelivered).toBe(0); // heartbeats kept them from coming back meanwhile
    expect(r.stats.loaded).toBe(0);
    await db.command({ query: "CREATE TABLE tributary.late AS tributary.events" });
    expect(await until(async () => (await r.info()).num_ack_pending === 0)).toBe(true);
    const landed = await rows<{ c: string }>(db, "SELECT count() AS c FROM tributary.late");
    expect(landed[0]!.c).toBe("2");
    expect(r.stats.loaded).toBe(2);
  } finally {
    await r.stop();
  }
});

test("an event the stage fails is dead-lettered alone; the rest of its batch lands", async () => {
  await migrateUsersTable(w, { plan: "string" }, false);
  const stage = new UsersStage(
    "p",
    await createTransform({ mapping: { plan: "traits.plan" } }),
    { plan: "string" },
    await ProfileStore.open(bus.js, 1),
    w,
    "people",
    (letters) => publishDeadLetters(bus, letters),
  );
  const batch = batchOf({ maxAgeMs: 100 });
  const r = await start("people", stage, sinkOf("users", batch), runnerOptions(batch));
  try {
    await publish("people", ["p1", "p2", "p3"], (id) => ({
      type: "identify",
      traits: { plan: `plan-${id}` },
      // p2 names nobody: the users stage refuses it.
      userId: id === "p2" ? undefined : `user-${id}`,
    }));
    expect(await until(() => r.stats.deadLettered === 1 && r.stats.loaded === 2)).toBe(true);
    const users = await rows<{ user_id: string; plan: string }>(
      db,
      "SELECT user_id, plan FROM tributary.users FINAL ORDER BY user_id",
    );
    expect(users).toEqual([
      { user_id: "user-p1", plan: "plan-p1" },
      { user_id: "user-p3", plan: "plan-p3" },
    ]);
    const letters = await readDeadLetters(bus, "people", "p");
    expect(letters).toHaveLength(1);
    expect(letters[0]).toMatchObject({ messageId: "p2", table: "users", reason: expect.stringContaining("neither") });
    expect(await until(async () => (await r.info()).num_ack_pending === 0)).toBe(true);
  } finally {
    await r.stop();
  }
});

test("sink: one row ClickHouse refuses among many is isolated by bisection and dead-lettered with ClickHouse's reason", async () => {
  await db.command({
    query: "CREATE TABLE tributary.strict (message_id String, n UInt8) ENGINE = MergeTree ORDER BY message_id",
  });
  const sink = clickHouseSink(w, "strict", { deadLetters: { bus, connection: "sinkconn", pipeline: "p" } });
  const batch = Array.from({ length: 40 }, (_, i) => ({ message_id: `s${String(i).padStart(2, "0")}`, n: i }));
  batch[23] = { message_id: "bad", n: "not a number" } as never;
  const outcome = await sink.write(batch);
  expect(outcome.written).toBe(39);
  expect(outcome.refused.map((x) => x.row.message_id)).toEqual(["bad"]);
  expect(outcome.refused[0]!.reason).toMatch(/Code: \d+/);
  const stored = await rows<{ c: string }>(db, "SELECT count() AS c FROM tributary.strict WHERE message_id != 'bad'");
  expect(stored[0]!.c).toBe("39");
  // Stored as a dead letter before write resolved.
  const letters = await readDeadLetters(bus, "sinkconn", "p");
  expect(letters).toHaveLength(1);
  expect(letters[0]).toMatchObject({
    connection: "sinkconn",
    pipeline: "p",
    table: "strict",
    messageId: "bad",
    reason: outcome.refused[0]!.reason,
    event: { message_id: "bad", n: "not a number" },
  });

  // Without a dead-letter destination (a redrive: they are letters already) refused rows are only returned.
  const quiet = clickHouseSink(w, "strict");
  const again = await quiet.write([{ message_id: "bad2", n: "x" }]);
  expect(again.refused).toHaveLength(1);
  expect(await readDeadLetters(bus, "sinkconn", "p")).toHaveLength(1);
});
