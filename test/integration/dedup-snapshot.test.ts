import { afterAll, beforeAll, expect, test } from "bun:test";
import { DeliverPolicy } from "@nats-io/jetstream";
import { busOptionsOf, connectBus, type Bus } from "../../src/bus/connection.ts";
import { SNAPSHOT_STREAM } from "../../src/bus/dedup-snapshots.ts";
import { IDS_HEADER, ShardWriter } from "../../src/bus/shard-writer.ts";
import { STREAM, shardSubject } from "../../src/bus/subjects.ts";
import { defaults } from "../../src/config/env.ts";
import { startNats } from "../harness/services.ts";

/**
 * The dedup index at the shard writer: exact with fingerprints that always collide, and started
 * from a snapshot plus the stream's tail, or (snapshot damaged, of another window) from the
 * whole window as before.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
let bus: Bus;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(busOptionsOf({ ...defaults, natsUrl: nats.url }, "dedup-snapshot-test"));
});
afterAll(async () => {
  await bus?.close();
  await nats?.cleanup();
});

const writer = (subject: string, extra: { fingerprintBits?: number; dedupWindowMs?: number } = {}) =>
  new ShardWriter(bus, subject, { dedupWindowMs: 3600_000, maxPayloadBytes: 512 * 1024, timeoutMs: 5000, ...extra });
const entry = (id: string) => ({ id, json: JSON.stringify({ type: "track", event: "E", messageId: id }) });
const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

/** How many times each id is in a Tributary-Ids header of `subject` (every raw message, not only events). */
async function idCounts(subject: string): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  const last = (await bus.jsm.streams.getMessage(STREAM, { last_by_subj: subject }))?.seq ?? 0;
  if (last === 0) return counts;
  const consumer = await bus.js.consumers.get(STREAM, {
    filter_subjects: subject,
    deliver_policy: DeliverPolicy.All,
    headers_only: true,
  });
  const messages = await consumer.consume();
  for await (const m of messages) {
    for (const id of JSON.parse(m.headers!.get(IDS_HEADER)) as string[]) counts.set(id, (counts.get(id) ?? 0) + 1);
    if (m.seq >= last) break;
  }
  messages.stop();
  return counts;
}

function expectOnce(counts: Map<string, number>, expected: string[]) {
  expect(counts.size).toBe(new Set(expected).size);
  for (const id of expected) expect(counts.get(id)).toBe(1);
}

test("fingerprints of 1 bit (every lookup a collision): nothing new is dropped, nothing retried is stored twice", async () => {
  const subject = shardSubject("dedup-collide", 0);
  const a = writer(subject, { fingerprintBits: 1 });
  const b = writer(subject, { fingerprintBits: 1 });
  const all = ids("c", 600);
  // Batches of 50, each sent to both writers at once and again (retries), interleaved.
  for (let i = 0; i < all.length; i += 50) {
    const batch = all.slice(i, i + 50).map(entry);
    const half = all.slice(i, i + 25).map(entry);
    // (Each answer may count as stored an event the other writer stored in the same race.)
    const results = await Promise.all([a.append(batch), b.append(batch), a.append(half), b.append(batch)]);
    for (const r of results) expect(r.stored + r.duplicates).toBeGreaterThan(0);
  }
  // A retry of everything, as one request: all duplicates.
  expect(await b.append(all.map(entry))).toEqual({ stored: 0, duplicates: 600 });
  expectOnce(await idCounts(subject), all);
});

test("a writer started from another's snapshot reads only the tail, and still knows every id", async () => {
  const subject = shardSubject("dedup-snap", 1);
  const a = writer(subject);
  const before = ids("s", 3000);
  for (let i = 0; i < before.length; i += 100) await a.append(before.slice(i, i + 100).map(entry));
  expect(await a.snapshot()).toBe(true);
  expect(await a.snapshot()).toBe(false); // nothing new since
  const tail = ids("t", 200);
  for (let i = 0; i < tail.length; i += 10) await a.append(tail.slice(i, i + 10).map(entry));

  const b = writer(subject);
  await b.warm();
  expect(b.loadedSnapshot?.covered).toBeGreaterThan(0);
  expect(await b.append([...before, ...tail].map(entry))).toEqual({ stored: 0, duplicates: 3200 });
  expect(await b.append(ids("new", 5).map(entry))).toEqual({ stored: 5, duplicates: 0 });
  expectOnce(await idCounts(subject), [...before, ...tail, ...ids("new", 5)]);
});

test("a damaged snapshot, or one of another window, is not used: the whole window is read instead", async () => {
  const subject = shardSubject("dedup-bad", 2);
  const a = writer(subject);
  const all = ids("d", 500);
  for (let i = 0; i < all.length; i += 50) await a.append(all.slice(i, i + 50).map(entry));
  expect(await a.snapshot()).toBe(true);

  // Another window: ignored.
  const other = writer(subject, { dedupWindowMs: 7200_000 });
  await other.warm();
  expect(other.loadedSnapshot).toBeUndefined();
  expect(await other.append(all.map(entry))).toEqual({ stored: 0, duplicates: 500 });

  // The message it says it covers up to is not that one (a server that lost writes reused the sequence).
  const m0 = (await bus.jsm.streams.getMessage(SNAPSHOT_STREAM, { last_by_subj: "tributary.dedup.dedup-bad.2.m" }))!;
  await bus.js.publish(
    "tributary.dedup.dedup-bad.2.m",
    JSON.stringify({ ...m0.json<object>(), coveredTime: "2020-01-01T00:00:00Z" }),
  );
  const moved = writer(subject);
  await moved.warm();
  expect(moved.loadedSnapshot).toBeUndefined();
  await bus.js.publish("tributary.dedup.dedup-bad.2.m", m0.data);
  const back = writer(subject);
  await back.warm();
  expect(back.loadedSnapshot).toBeDefined();

  // A table's bytes overwritten: its hash no longer matches.
  const manifest = (await bus.jsm.streams.getMessage(SNAPSHOT_STREAM, {
    last_by_subj: "tributary.dedup.dedup-bad.2.m",
  }))!;
  const table = (manifest.json() as { tables: { subject: string; bytes: number }[] }).tables[0]!;
  await bus.jsm.streams.purge(SNAPSHOT_STREAM, { filter: table.subject });
  await bus.js.publish(table.subject, new Uint8Array(table.bytes).fill(7));
  const c = writer(subject);
  await c.warm();
  expect(c.loadedSnapshot).toBeUndefined();
  expect(await c.append([...all, "fresh"].map(entry))).toEqual({ stored: 1, duplicates: 500 });
  expectOnce(await idCounts(subject), [...all, "fresh"]);
});
