import { afterAll, beforeAll, expect, test } from "bun:test";
import { headers as natsHeaders } from "@nats-io/nats-core";
import { type Bus, connectBus } from "../../src/bus/connection.ts";
import { ensureDlqStream } from "../../src/bus/dead-letters.ts";
import { shardOf, shardSubject } from "../../src/bus/subjects.ts";
import { resolveDestination } from "../../src/config/destination.ts";
import { KIND_HEADER } from "../../src/event/envelope.ts";
import { ExportStage } from "../../src/pipeline/export/stage.ts";
import { ExportWorker } from "../../src/pipeline/export/worker.ts";
import { batchDefaults } from "../../src/pipeline/worker.ts";
import { startNats } from "../harness/services.ts";

// Two "nodes" (two bus connections) run the same export pipeline against a real nats-server and a
// real HTTP receiver: one sends, the other waits; when the sender dies with messages in flight,
// the standby takes over and the receiver still gets each user's events in stream order.

let nats: Awaited<ReturnType<typeof startNats>>;
const buses: Bus[] = [];
const received: { userId: string; n: number; messageId: string }[] = [];
let answer: () => Promise<Response> = async () => new Response("ok");
let server: ReturnType<typeof Bun.serve>;

const connect = async (name: string) => {
  const bus = await connectBus({
    url: nats.url,
    streamMaxAgeHours: 1,
    streamReplicas: 1,
    dedupWindowHours: 1,
    timeoutMs: 5000,
    name,
  });
  buses.push(bus);
  return bus;
};

beforeAll(async () => {
  nats = await startNats();
  server = Bun.serve({
    port: 0,
    async fetch(req) {
      const events = (await req.json()) as { userId: string; n: number; messageId: string }[];
      const r = await answer();
      if (r.status === 200) received.push(...events);
      return r;
    },
  });
});
afterAll(async () => {
  server?.stop(true);
  for (const b of buses) await b.close().catch(() => {});
  await nats?.cleanup();
});

const destination = () =>
  resolveDestination({
    type: "webhook",
    url: `http://127.0.0.1:${server.port}/in`,
    batch: { maxEvents: 5, maxAgeMs: 20 },
    maxInFlight: 4,
    retry: { initialBackoffMs: 20, maxBackoffMs: 100 },
  });

const worker = (bus: Bus) => {
  const d = destination();
  const w = new ExportWorker(
    bus,
    "shop",
    "out",
    undefined,
    new ExportStage("shop", "out", d, "webhook:test"),
    d,
    { ...batchDefaults, ackWaitMs: 4000 },
    { ttlMs: 3000, renewMs: 500 },
  );
  w.startAfterSeq = 0;
  return w;
};

const USERS = ["u0", "u1", "u2", "u3"];
const next = new Map(USERS.map((u) => [u, 0]));
/** One stream message per call, each user's events numbered in publish order. */
async function publish(bus: Bus, perUser = 3): Promise<void> {
  const events = [];
  for (let i = 0; i < perUser; i++)
    for (const u of USERS) {
      const n = next.get(u)!;
      next.set(u, n + 1);
      events.push({
        type: "track",
        event: "e",
        userId: u,
        n,
        messageId: `${u}-${n}`,
        receivedAt: "2026-01-01T00:00:00Z",
      });
    }
  const h = natsHeaders();
  h.set(KIND_HEADER, "events");
  await bus.js.publish(shardSubject("shop", shardOf(events[0]!.messageId)), JSON.stringify(events), { headers: h });
}

/** Each user's events as received, duplicates (same messageId, at least once) after the first dropped. */
function orderByUser(): Map<string, number[]> {
  const seen = new Set<string>();
  const out = new Map<string, number[]>();
  for (const e of received) {
    if (seen.has(e.messageId)) continue;
    seen.add(e.messageId);
    out.set(e.userId, [...(out.get(e.userId) ?? []), e.n]);
  }
  return out;
}

const until = async (f: () => boolean, what: string, ms = 30_000) => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(25);
  }
};

test("one sender per pipeline; a take-over re-sends what the dead sender left, before anything newer", async () => {
  const busA = await connect("node-a");
  const busB = await connect("node-b");
  await ensureDlqStream(busA.jsm, 1);
  const a = worker(busA);
  await a.start();
  await until(() => a.active, "node a to hold the lease");
  const b = worker(busB);
  await b.start();
  for (let m = 0; m < 10; m++) await publish(busA);
  await until(() => received.length >= 120, "the first 120 events");
  expect(a.active).toBe(true);
  expect(b.active).toBe(false);

  // The receiver fails everything: node a holds unacknowledged messages when it dies.
  answer = async () => new Response("down", { status: 503 });
  for (let m = 0; m < 5; m++) await publish(busA);
  await until(() => a.exportStats.failed > 3, "node a retrying");
  // kill -9 of node a: its connection goes, nothing is released or acknowledged.
  await busA.nc.close();
  await a.stop(0);
  // Newer events arrive before the standby takes over: JetStream would give them to it first.
  for (let m = 0; m < 5; m++) await publish(busB);
  answer = async () => new Response("ok");
  await until(() => b.active, "node b to take over", 20_000);
  const total = 20 * 3 * USERS.length;
  await until(() => new Set(received.map((e) => e.messageId)).size >= total, `${total} distinct events`, 30_000);
  for (const [, ns] of orderByUser()) expect(ns).toEqual([...Array(60).keys()]);
  // Every message acknowledged by b in the end: nothing left for anyone.
  await until(() => b.exportStats.queued === 0, "b's queue to drain");
  await Bun.sleep(4500); // past ack_wait: a message b forgot to acknowledge would come back now
  const info = await busB.jsm.consumers.info("TRIBUTARY_EVENTS", b.durable);
  expect(info.num_ack_pending).toBe(0);
  expect(info.num_pending).toBe(0);
  await b.stop();
}, 90_000);
