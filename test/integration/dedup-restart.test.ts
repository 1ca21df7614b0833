import { afterAll, beforeAll, expect, test } from "bun:test";
import { DeliverPolicy } from "@nats-io/jetstream";
import { SNAPSHOT_STREAM } from "../../src/bus/dedup-snapshots.ts";
import { IDS_HEADER } from "../../src/bus/shard-writer.ts";
import { STREAM, connectionSubjects, DEDUP_SHARDS } from "../../src/bus/subjects.ts";
import type { RunningNode } from "../../src/node.ts";
import { startNats, startTestNode, webhookConnection } from "../harness/services.ts";

/**
 * A node restarted in the middle of a retry storm: several clients re-send the same batches
 * continuously (and new ones keep coming) while the node stops and a new one starts from the
 * dedup snapshots plus the stream's tail. Every messageId is in the stream once: counted in the
 * raw messages' id headers, not only in what a `FINAL` would collapse.
 */

let nats: Awaited<ReturnType<typeof startNats>>;
const nodes: RunningNode[] = [];
const KEY = "key-dedup-restart-1";
const files = { "r.yaml": webhookConnection("restart", [KEY]) };

beforeAll(async () => {
  process.env.TRIBUTARY_DEDUP_SNAPSHOT_SECONDS = "0.3";
  nats = await startNats();
});
afterAll(async () => {
  delete process.env.TRIBUTARY_DEDUP_SNAPSHOT_SECONDS;
  for (const n of nodes) await n.stop().catch(() => {});
  await nats?.cleanup();
});

const start = async () => {
  const node = await startTestNode(nats.url, files, { ingestWorkers: 1 });
  nodes.push(node);
  return node;
};

/** How many times each id is in a Tributary-Ids header of the connection's messages. */
async function idCounts(node: RunningNode): Promise<Map<string, number>> {
  const bus = node.bus;
  const subject = connectionSubjects("restart");
  const info = await bus.jsm.streams.info(STREAM, { subjects_filter: subject });
  const total = Object.values(info.state.subjects ?? {}).reduce((a, n) => a + (n as number), 0);
  const counts = new Map<string, number>();
  const consumer = await bus.js.consumers.get(STREAM, {
    filter_subjects: subject,
    deliver_policy: DeliverPolicy.All,
    headers_only: true,
  });
  const messages = await consumer.consume();
  let seen = 0;
  for await (const m of messages) {
    for (const id of JSON.parse(m.headers!.get(IDS_HEADER)) as string[]) counts.set(id, (counts.get(id) ?? 0) + 1);
    if (++seen >= total) break;
  }
  messages.stop();
  return counts;
}

/** Snapshots of all the connection's shards are there, covering at least `seq` each. */
async function snapshotsCover(node: RunningNode, atLeast: number): Promise<boolean> {
  for (let s = 0; s < DEDUP_SHARDS; s++) {
    const m = await node.bus.jsm.streams
      .getMessage(SNAPSHOT_STREAM, { last_by_subj: `tributary.dedup.restart.${s}.m` })
      .catch(() => null);
    if (!m || (m.json() as { covered: number }).covered < atLeast) return false;
  }
  return true;
}

test("restart from the snapshot in a retry storm: every messageId stored once, the new node started from snapshots", async () => {
  let node = await start();
  const batches: string[][] = [];
  const batch = (k: number) => (batches[k] ??= Array.from({ length: 10 }, (_, i) => `b${k}-${i}`));
  let live = 1; // batches 0..live-1 are being sent (and re-sent)
  let running = true;
  let ok = 0;
  const send = async (ids: string[]) => {
    const body = JSON.stringify(ids.map((id) => ({ type: "track", event: "Storm", userId: "u", messageId: id })));
    try {
      const r = await fetch(`${node.url}/v1/events`, {
        method: "POST",
        headers: { Authorization: `Bearer ${KEY}` },
        body,
      });
      await r.arrayBuffer();
      if (r.status === 200) ok++;
      return r.status;
    } catch {
      return 0; // the node is down: retried like the rest
    }
  };
  const client = async (c: number) => {
    for (let n = c; running; n++) {
      await send(batch(n % live));
      if (n % 7 === c) await Bun.sleep(5);
    }
  };
  const grow = (async () => {
    while (running) {
      live++;
      await Bun.sleep(20);
    }
  })();
  const clients = Array.from({ length: 4 }, (_, c) => client(c));

  await Bun.sleep(1000);
  // Wait for snapshots of every shard covering something, then let more traffic land after them: a tail.
  const deadline = Date.now() + 20_000;
  while (!(await snapshotsCover(node, 1)) && Date.now() < deadline) await Bun.sleep(100);
  expect(await snapshotsCover(node, 1)).toBe(true);
  await Bun.sleep(200);
  await node.stop();
  nodes.splice(nodes.indexOf(node), 1);
  await Bun.sleep(300); // clients keep retrying into a closed port
  node = await start();
  await Bun.sleep(1500);
  running = false;
  await Promise.all([...clients, grow]);

  // Every batch ever sent, once more: all answered 200 (stored or duplicates).
  for (let k = 0; k < live; k++) expect(await send(batch(k))).toBe(200);
  expect(ok).toBeGreaterThan(live);

  const loaded = node.eventLog.loadedSnapshots;
  expect(loaded.size).toBe(DEDUP_SHARDS);
  for (const l of loaded.values()) expect(l.covered).toBeGreaterThan(0);
  const counts = await idCounts(node);
  const expected = batches.flat();
  expect(counts.size).toBe(expected.length);
  const twice = [...counts].filter(([, n]) => n !== 1);
  expect(twice).toEqual([]);
});
