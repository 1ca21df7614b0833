import { afterAll, beforeAll, expect, test } from "bun:test";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startTestNode } from "../harness/services.ts";
import { chClient, expectExactlyOnce } from "../harness/warehouse.ts";
import { Load } from "../harness/load.ts";
import { NatsCluster, storedIds } from "../harness/nats-cluster.ts";
import type { RunningNode } from "../../src/node.ts";
import { STREAM } from "../../src/bus/subjects.ts";
import { durableName } from "../../src/pipeline/worker.ts";

/**
 * The bus as a JetStream cluster: three `nats-server` processes on loopback (routes, a store
 * each), the events stream on 3 replicas. Ground truth is the set of messageIds that got a 2xx;
 * the checks are the stream read back from the surviving servers and `tributary.events FINAL`.
 */

let cluster: NatsCluster;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;

const connection = (name: string, key: string) => `connection: ${name}
source: webhook
writeKeys: ["${key}"]
pipelines:
  - name: all
    import: events
`;

beforeAll(async () => {
  [cluster, ch] = await Promise.all([NatsCluster.start(3), startClickHouse()]);
  db = chClient(ch.url);
}, 90_000);
afterAll(async () => {
  await db?.close();
  await Promise.all([cluster?.cleanup(), ch?.cleanup()]);
});

/** Every accepted id is in the stream, once. */
async function expectInStream(conn: string, accepted: string[]): Promise<Map<string, number>> {
  const { nc } = await cluster.admin();
  const stored = await storedIds(nc, conn);
  const missing = accepted.filter((id) => !stored.has(id));
  const twice = [...stored].filter(([, n]) => n > 1).map(([id]) => id);
  expect({ missing: missing.length, sample: missing.slice(0, 5), twice: twice.slice(0, 5) }).toEqual({
    missing: 0,
    sample: [],
    twice: [],
  });
  return stored;
}

async function post(node: RunningNode, key: string, ids: string[]): Promise<number> {
  const body = JSON.stringify(ids.map((id) => ({ type: "track", event: "Scale", userId: "u", messageId: id })));
  const r = await fetch(`${node.url}/v1/events`, { method: "POST", headers: { Authorization: `Bearer ${key}` }, body });
  await r.arrayBuffer();
  return r.status;
}

const serverOf = (node: RunningNode) => node.bus.nc.info?.server_name;

test("the events stream goes from 1 to 3 replicas at a node's start, keeping every message", async () => {
  const files = { "s.yaml": connection("scale", "key-scale-000001") };
  const one = await startTestNode(cluster.url, files, { streamReplicas: 1 });
  const ids = Array.from({ length: 2000 }, (_, i) => `scale-${i}`);
  try {
    for (let i = 0; i < ids.length; i += 200)
      expect(await post(one, "key-scale-000001", ids.slice(i, i + 200))).toBe(200);
    expect((await cluster.streamInfo()).config.num_replicas).toBe(1);
  } finally {
    await one.stop();
  }
  const three = await startTestNode(cluster.url, files, { streamReplicas: 3 });
  try {
    const info = await cluster.replicasCurrent();
    expect(info.config.num_replicas).toBe(3);
    expect(info.cluster!.replicas!.length).toBe(2);
    await expectInStream("scale", ids);
    // Still deduplicating against what was stored before the scale.
    expect(await post(three, "key-scale-000001", ids.slice(0, 100))).toBe(200);
    expect((await storedIds((await cluster.admin()).nc, "scale")).size).toBe(ids.length);
  } finally {
    await three.stop();
  }
}, 60_000);

test("kill -9 the stream leader mid-load, restart it later: every 2xx was on a quorum and lands once", async () => {
  const key = "key-leaderkill-01";
  const files = { "l.yaml": connection("leaderkill", key) };
  const opts = {
    clickhouseUrl: ch.url,
    streamReplicas: 3,
    batchMaxAgeMs: 200,
    publishTimeoutMs: 2000,
    ackWaitMs: 5000,
  };
  // A knows every server; B only the two A is not on: two nodes on different servers.
  const a = await startTestNode(cluster.url, files, opts);
  const sa = serverOf(a)!;
  const b = await startTestNode(
    cluster.servers
      .filter((s) => s.serverName !== sa)
      .map((s) => s.url)
      .join(","),
    files,
    opts,
  );
  expect(serverOf(b)).not.toBe(sa);
  const t0 = Date.now();
  const phase = (what: string) => console.log(`[leader kill] +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  try {
    await Promise.all([a.pipelinesReady, b.pipelinesReady]);
    // The server node A talks to leads the stream: its death takes A's connection and the leader.
    await cluster.makeLeader(sa);
    let i = 0;
    const load = new Load({
      url: () => (i++ % 2 ? a.url : b.url),
      writeKey: key,
      clients: 4,
      pauseMs: 10,
      prefix: "lk",
    });
    // The longest stretch without a new 2xx: how long writes stopped.
    let lastGrowth = Date.now();
    let lastCount = 0;
    let longestGapMs = 0;
    const watch = setInterval(() => {
      const now = Date.now();
      if (load.accepted.length > lastCount) {
        lastCount = load.accepted.length;
        lastGrowth = now;
      }
      longestGapMs = Math.max(longestGapMs, now - lastGrowth);
    }, 50);
    let quorumChecked = 0;
    /** The probes' messageIds: answered 2xx, and not (they may still have landed). */
    const probes: string[] = [];
    const probesRefused: string[] = [];
    try {
      await Bun.sleep(2500);
      const beforeKill = load.accepted.length;
      const consumerLeader = (
        await (await cluster.admin()).jsm.consumers.info(STREAM, durableName("leaderkill", "all"))
      ).cluster?.leader;
      await cluster.server(sa).kill();
      phase(
        `killed ${sa}, the stream leader, after ${beforeKill} events accepted (the pipeline's consumer was led by ${consumerLeader})`,
      );
      const newLeader = await cluster.streamLeader();
      expect(newLeader).not.toBe(sa);
      phase(`new leader ${newLeader}`);
      // Both nodes accept again, A through a surviving server of its list. Writes stop while a
      // leader is elected (6–8 s in the README): wait for them to resume, with a generous deadline,
      // rather than counting what a fixed 5 s let through.
      const acceptsAgain = async (node: RunningNode) => {
        for (const deadline = Date.now() + 60_000; Date.now() < deadline; await Bun.sleep(200)) {
          const messageId = `probe-${probes.length}-${Date.now()}`;
          const r = await fetch(`${node.url}/v1/events`, {
            method: "POST",
            headers: { Authorization: `Bearer ${key}` },
            body: JSON.stringify({ type: "track", event: "Probe", userId: "u", messageId }),
          }).catch(() => undefined);
          if (r?.status === 200) return probes.push(messageId) > 0;
          probesRefused.push(messageId);
        }
        return false;
      };
      expect(await acceptsAgain(a)).toBe(true);
      expect(await acceptsAgain(b)).toBe(true);
      phase("both nodes accept again");
      expect(serverOf(a)).not.toBe(sa);
      // ...and the load goes on through the new leader.
      for (const deadline = Date.now() + 60_000; load.accepted.length - beforeKill <= 500 && Date.now() < deadline; )
        await Bun.sleep(100);
      expect(load.accepted.length - beforeKill).toBeGreaterThan(500);
      // Quorum: with the old leader still dead, the two survivors hold every event answered 2xx.
      const snapshot = load.accepted.slice();
      await expectInStream("leaderkill", snapshot);
      quorumChecked = snapshot.length;
      phase(`all ${snapshot.length} accepted events read back from the two survivors; restarting ${sa}`);
    } finally {
      clearInterval(watch);
      // The load stops before the killed server comes back. nats-server 2.9.10 re-appends its last
      // entries when restarted after a kill -9 and numbers its copy apart from the others (README,
      // "Use a current nats-server for a cluster"): in one fresh-clone run, 10 of 37,040 events
      // written while it rejoined were never delivered to the pipeline. Writes during a rejoin are
      // that server version's caveat, not what this test can hold it to.
      await load.stop();
      await cluster.server(sa).start();
    }
    phase(
      `load stopped: ${JSON.stringify(Object.fromEntries(load.statuses))} requests, ${load.accepted.length} events accepted; no 2xx for ${longestGapMs} ms at most; A on ${serverOf(a)}, B on ${serverOf(b)}`,
    );
    expect(quorumChecked).toBeGreaterThan(0);
    // The restarted server caught up. (Its copy is not compared: nats-server 2.9 re-appends the
    // last entries it had after a kill -9, so it may hold a few messages twice; see README.)
    await cluster.replicasCurrent();
    phase(`${sa} caught up`);
    // The pipeline whose consumer was led by the killed server resumes on its client's timer (see below).
    const loaded = await expectExactlyOnce(db, "leaderkill", [...load.accepted, ...probes], 90_000);
    // Events answered 503 may have landed (their outcome was unknown): allowed, never missing or twice.
    const acceptedSet = new Set([...load.accepted, ...probes]);
    const extra = [...loaded].filter((id) => !acceptedSet.has(id)).length;
    phase(`every accepted event in tributary.events once (${loaded.size} rows; ${extra} answered non-2xx but stored)`);
  } finally {
    await Promise.all([a.stop(), b.stop()]);
  }
}, 300_000);

test("a node added and removed under load: the shared consumers rebalance, nothing lost, nothing twice", async () => {
  const key = "key-addremove-01";
  const files = { "r.yaml": connection("addremove", key) };
  // ack_wait short: what A had pulled but not yet taken when it left comes back to B after it.
  const opts = { clickhouseUrl: ch.url, streamReplicas: 3, batchMaxAgeMs: 200, ackWaitMs: 5000 };
  const t0 = Date.now();
  const phase = (what: string) => console.log(`[add/remove] +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  const a = await startTestNode(cluster.url, files, opts);
  let b: RunningNode | undefined;
  let aStopped = false;
  try {
    const ma = await a.pipelinesReady;
    let up: RunningNode[] = [a];
    let i = 0;
    const load = new Load({ url: () => up[i++ % up.length]!.url, writeKey: key, clients: 4, pauseMs: 5, prefix: "ar" });
    let loadedA = 0;
    try {
      await Bun.sleep(1000);
      b = await startTestNode(cluster.url, files, opts);
      await b.pipelinesReady;
      up = [a, b];
      phase(`B added (${load.accepted.length} accepted so far)`);
      await Bun.sleep(2000);
      // A leaves: traffic moves to B first, then A finishes its requests and flushes its batch.
      up = [b];
      await a.stop();
      aStopped = true;
      phase(`A removed (${load.accepted.length} accepted so far)`);
      // Its final counts, the last batch it flushed on the way out included.
      loadedA = (await ma.snapshots())[0]!.loaded;
      await Bun.sleep(2000);
    } finally {
      await load.stop();
    }
    phase(`load stopped: ${JSON.stringify(Object.fromEntries(load.statuses))}`);
    // After A leaves, B's pipeline may hold no pull request for a while (its client renews them on
    // a 30 s timer): up to about 40 s on nats-server 2.9 before the rest arrives.
    await expectExactlyOnce(db, "addremove", load.accepted, 90_000);
    phase("every accepted event in tributary.events once");
    const loadedB = (await (await b.pipelinesReady).snapshots())[0]!.loaded;
    phase(`accepted ${load.accepted.length}; loaded by A ${loadedA}, by B ${loadedB}`);
    expect(loadedA).toBeGreaterThan(0);
    expect(loadedB).toBeGreaterThan(0);
    // Handed over, not repeated: together they loaded each event once.
    expect(loadedA + loadedB).toBe(load.accepted.length);
  } finally {
    await Promise.all([aStopped || a.stop(), b?.stop()]);
  }
}, 300_000);
