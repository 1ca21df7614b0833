import { afterAll, beforeAll, expect, test } from "bun:test";
import { DeliverPolicy } from "@nats-io/jetstream";
import { busOptionsOf, connectBus, type Bus } from "../../src/bus/connection.ts";
import { IDS_HEADER, ShardWriter } from "../../src/bus/shard-writer.ts";
import { STREAM, shardSubject } from "../../src/bus/subjects.ts";
import { defaults } from "../../src/config/env.ts";
import { startNats } from "../harness/services.ts";

/**
 * ShardWriter's expected-sequence retry: two writers of one shard subject (two nodes, or a node
 * and its own earlier attempt) each publish expecting the subject's last sequence they know. The
 * one with a stale view is refused (JetStream API code 10071), re-reads what the other stored,
 * drops what is already there and publishes the rest: every event is stored once.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
let bus: Bus;
let conflicts = 0;

beforeAll(async () => {
  nats = await startNats();
  bus = await connectBus(busOptionsOf({ ...defaults, natsUrl: nats.url }, "shard-writer-test"));
  bus.observer = { published: () => {}, conflicted: () => void conflicts++ };
});
afterAll(async () => {
  await bus?.close();
  await nats?.cleanup();
});

const writer = (subject: string) =>
  new ShardWriter(bus, subject, { dedupWindowMs: 3600_000, maxPayloadBytes: 512 * 1024, timeoutMs: 5000 });
const entry = (id: string) => ({ id, json: JSON.stringify({ type: "track", event: "E", messageId: id }) });

/** The id lists of every message stored on `subject`, in order. */
async function stored(subject: string): Promise<string[][]> {
  const consumer = await bus.js.consumers.get(STREAM, {
    filter_subjects: subject,
    deliver_policy: DeliverPolicy.All,
    headers_only: true,
  });
  const out: string[][] = [];
  const last = (await bus.jsm.streams.getMessage(STREAM, { last_by_subj: subject }))?.seq ?? 0;
  if (last === 0) return out;
  const messages = await consumer.consume();
  for await (const m of messages) {
    out.push(JSON.parse(m.headers!.get(IDS_HEADER)) as string[]);
    if (m.seq >= last) break;
  }
  messages.stop();
  return out;
}

test("a writer whose view is stale is refused (wrong last sequence), re-reads, and stores each event once", async () => {
  const subject = shardSubject("sw", 0);
  const a = writer(subject);
  const b = writer(subject);
  // Both know the subject as empty; A writes first, so B's expectation (last sequence 0) is stale.
  await Promise.all([a.warm(), b.warm()]);
  expect(await a.append([entry("a-1")])).toEqual({ stored: 1, duplicates: 0 });
  const before = conflicts;
  expect(await b.append([entry("b-1")])).toEqual({ stored: 1, duplicates: 0 });
  expect(conflicts).toBe(before + 1);

  // B read A's message while catching up: A's event is a duplicate to it now.
  expect(await b.append([entry("a-1")])).toEqual({ stored: 0, duplicates: 1 });
  // A is stale in turn: its publish of B's event is refused, it catches up and finds it stored.
  await a.append([entry("b-1"), entry("a-2")]);
  expect(conflicts).toBe(before + 2);

  const lists = await stored(subject);
  expect(lists).toEqual([["a-1"], ["b-1"], ["a-2"]]);
});

test("two writers appending at once: every event stored once, whichever wins each race", async () => {
  const subject = shardSubject("sw", 1);
  const a = writer(subject);
  const b = writer(subject);
  await Promise.all([a.warm(), b.warm()]);
  const ids = Array.from({ length: 20 }, (_, i) => `r-${i}`);
  // Each writer gets every id, in its own order, in small appends racing the other's.
  await Promise.all([
    ...ids.map((id) => a.append([entry(id)])),
    ...[...ids].reverse().map((id) => b.append([entry(id)])),
  ]);
  const all = (await stored(subject)).flat();
  expect(all.sort()).toEqual([...ids].sort());
});
