import { afterAll, beforeAll, expect, test } from "bun:test";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startTestNode, webhookConnection } from "../harness/services.ts";
import { chClient, expectExactlyOnce } from "../harness/warehouse.ts";
import { NatsCluster, storedIdsIn } from "../harness/nats-cluster.ts";
import type { RunningNode } from "../../src/node.ts";
import { SUBJECT_ROOT, consumerName, partitionStream, streamLayout } from "../../src/bus/subjects.ts";

/**
 * Issue 22 on a real JetStream cluster: three `nats-server`s on loopback, the events in three
 * partition streams at three replicas, two nodes under load, and the server leading one partition
 * killed with SIGKILL. The partition it led stops taking writes while its survivors elect a new
 * leader; the other two never do, so senders whose events all go to them keep getting 2xx; and
 * every event answered 2xx is in `tributary.events FINAL` exactly once (not once in the stream:
 * nats-server 2.9.10 re-appends a few messages on a restart after kill -9, see README).
 */

const PARTITIONS = 3;
/** The partition whose leader is killed; the test moves the leaders so that it is the only one that server leads. */
const VICTIM = 0;
const layout = streamLayout(PARTITIONS);
const SURVIVING = Array.from({ length: PARTITIONS }, (_, k) => k).filter((k) => k !== VICTIM);

/** The first name `<base><i>` whose connection's shards are on exactly these partitions (a hash of the name). */
function nameOn(base: string, partitions: number[]): string {
  for (let i = 0; i < 100_000; i++)
    if (layout.partitionsOf(`${base}${i}`).join() === partitions.join()) return `${base}${i}`;
  throw new Error(`no connection name ${base}<i> on partitions ${partitions}`);
}

/**
 * keep*: a connection wholly on each surviving partition; lost: one wholly on the victim's;
 * mixed: one with shards on all three, so nearly every request of it has events on the victim's.
 */
const KEEP = SURVIVING.map((k) => nameOn("keep", [k]));
const LOST = nameOn("lost", [VICTIM]);
const MIXED = nameOn("mixed", [0, 1, 2]);
const CONNECTIONS = [...KEEP, LOST, MIXED];
const keyOf = (c: string) => `key-${c}-0000001`;
const files = Object.fromEntries(
  CONNECTIONS.map((c) => [
    `${c}.yaml`,
    webhookConnection(c, [keyOf(c)], "pipelines:\n  - name: all\n    import: events\n"),
  ]),
);

let cluster: NatsCluster;
let ch: Awaited<ReturnType<typeof startClickHouse>>;
let db: ClickHouseClient;

beforeAll(async () => {
  [cluster, ch] = await Promise.all([NatsCluster.start(3), startClickHouse()]);
  db = chClient(ch.url);
}, 90_000);
afterAll(async () => {
  await db?.close();
  await Promise.all([cluster?.cleanup(), ch?.cleanup()]);
});

interface Answer {
  connection: string;
  via: "A" | "B";
  start: number;
  end: number;
  /** 0: no HTTP answer (the node was unreachable). */
  status: number;
  ids: string[];
}

/** One request of these events; 0 when the node did not answer. */
async function post(node: RunningNode, connection: string, ids: string[]): Promise<number> {
  const body = JSON.stringify(
    ids.map((id, i) => ({ type: "track", event: "Load", userId: `u${i % 5}`, messageId: id })),
  );
  try {
    const r = await fetch(`${node.url}/v1/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${keyOf(connection)}` },
      body,
    });
    await r.arrayBuffer();
    return r.status;
  } catch {
    return 0;
  }
}

/** Clients posting 20-event requests in a loop, each answer recorded with when it was asked and answered. */
class Traffic {
  readonly answers: Answer[] = [];
  #running = true;
  #clients: Promise<void>[] = [];
  #seq = 0;

  client(connection: string, via: "A" | "B", node: RunningNode): void {
    const nextId = () => `${connection}-${via}-${this.#seq++}`;
    this.#clients.push(
      (async () => {
        while (this.#running) {
          const ids = Array.from({ length: 20 }, nextId);
          const start = Date.now();
          const status = await post(node, connection, ids);
          if (status === 0) await Bun.sleep(50);
          this.answers.push({ connection, via, start, end: Date.now(), status, ids });
          // About 20 requests a second per client: hundreds in the election, little enough for a shared 2-core machine.
          await Bun.sleep(40);
        }
      })(),
    );
  }

  accepted(connection: string): string[] {
    return this.answers.filter((a) => a.connection === connection && a.status === 200).flatMap((a) => a.ids);
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#clients);
  }
}

/** Statuses of answers, as { status: count }. */
const tally = (answers: Answer[]) => {
  const out: Record<number, number> = {};
  for (const a of answers) out[a.status] = (out[a.status] ?? 0) + 1;
  return out;
};
const isKeep = (a: Answer) => KEEP.includes(a.connection);

test("kill -9 the leader of one partition mid-load: the other partitions keep answering 2xx, it recovers, every 2xx lands once", async () => {
  const t0 = Date.now();
  const phase = (what: string) => console.log(`[partition kill] +${((Date.now() - t0) / 1000).toFixed(1)} s ${what}`);
  const opts = {
    clickhouseUrl: ch.url,
    streamPartitions: PARTITIONS,
    streamReplicas: 3,
    batchMaxAgeMs: 200,
    publishTimeoutMs: 2000,
    ackWaitMs: 5000,
  };
  // A knows every server; B only the two A is not on. The killed server is A's: B's connection
  // survives, so what B answers shows the partitions alone; A also loses its server.
  const a = await startTestNode(cluster.url, files, opts);
  const victimServer = a.bus.nc.info!.server_name;
  const b = await startTestNode(
    cluster.servers
      .filter((s) => s.serverName !== victimServer)
      .map((s) => s.url)
      .join(","),
    files,
    opts,
  );
  const traffic = new Traffic();
  let killed = false;
  try {
    expect(b.bus.nc.info!.server_name).not.toBe(victimServer);
    await Promise.all([a.pipelinesReady, b.pipelinesReady]);
    const placed = await cluster.leaders(layout.streams);
    phase(`leaders as the nodes left them: ${JSON.stringify(placed)}`);
    // A node spreads the partitions' leaders at its start (src/bus/leaders.ts): nats-server 2.9
    // alone put all three on one server in 4 of 12 runs.
    expect(new Set(Object.values(placed)).size).toBe(3);
    // The victim's server leads its partition and no other one.
    await cluster.makeLeader(victimServer, partitionStream(VICTIM));
    for (const k of SURVIVING) await cluster.moveLeaderOff(victimServer, partitionStream(k));
    const leaders = await cluster.leaders(layout.streams);
    phase(
      `leaders before the kill: ${JSON.stringify(leaders)}; A on ${victimServer}, B on ${b.bus.nc.info!.server_name}`,
    );
    expect(leaders[partitionStream(VICTIM)]).toBe(victimServer);
    for (const k of SURVIVING) expect(leaders[partitionStream(k)]).not.toBe(victimServer);
    expect(new Set(Object.values(leaders)).size).toBeGreaterThan(1);
    const { nc, jsm } = await cluster.admin();
    const consumerLeaders: Record<string, string | undefined> = {};
    for (const c of CONNECTIONS)
      for (const k of layout.partitionsOf(c))
        consumerLeaders[`${c}/p${k}`] = (
          await jsm.consumers.info(partitionStream(k), consumerName(c, "all"))
        ).cluster?.leader;
    phase(`pipeline consumers' leaders: ${JSON.stringify(consumerLeaders)}`);

    for (const [via, node] of [
      ["A", a],
      ["B", b],
    ] as const) {
      for (const c of KEEP) traffic.client(c, via, node);
      traffic.client(LOST, via, node);
      traffic.client(MIXED, via, node);
    }
    await Bun.sleep(2000);
    const beforeKill = traffic.answers.length;
    const tKill = Date.now();
    await cluster.server(victimServer).kill();
    killed = true;
    phase(`killed ${victimServer} after ${beforeKill} requests`);
    // The victim's partition takes writes again once its survivors elected a leader: the first
    // 2xx for `lost` asked after the kill.
    const firstLostAfterKill = () =>
      traffic.answers.find((x) => x.connection === LOST && x.status === 200 && x.start > tKill);
    for (const deadline = Date.now() + 60_000; !firstLostAfterKill() && Date.now() < deadline; ) await Bun.sleep(100);
    const back = firstLostAfterKill();
    expect(back).toBeDefined();
    const tBack = back!.end;
    phase(
      `partition ${VICTIM} takes writes again (${tBack - tKill} ms after the kill); new leader ${await cluster.streamLeader(partitionStream(VICTIM))}`,
    );
    await Bun.sleep(1500);
    // A sender retries what was refused: through B, with the killed server still down. Those
    // events' first attempts may have been stored on some partitions and not others.
    const retried = new Map<string, string[]>(CONNECTIONS.map((c) => [c, []]));
    const retries: number[] = [];
    const retriedFrom = Date.now();
    await Promise.all(
      traffic.answers
        .filter((x) => x.status !== 200)
        .map(async (refused) => {
          let status = 0;
          for (const deadline = Date.now() + 30_000; status !== 200 && Date.now() < deadline; await Bun.sleep(200)) {
            status = await post(b, refused.connection, refused.ids);
            retries.push(status);
          }
          expect(status).toBe(200);
          retried.get(refused.connection)!.push(...refused.ids);
        }),
    );
    phase(
      `refused requests retried through B in ${Date.now() - retriedFrom} ms: ${JSON.stringify(tally(retries.map((status) => ({ status }) as Answer)))}`,
    );
    // Quorum: with the killed server still down, the two others hold every event answered 2xx so
    // far, retries included. Not "none twice": a write the dead leader had replicated but not
    // acknowledged (its sender got 503) can be committed by the new leader after a retry through B
    // passed its expected-sequence check (nats-server 2.9 checks against what it has applied), so
    // the stream may hold a retried id twice; exactly once is asserted under FINAL, after the restart.
    const answered = [...CONNECTIONS.flatMap((c) => traffic.accepted(c)), ...[...retried.values()].flat()];
    const inStreams = new Map<string, number>();
    for (const stream of layout.streams)
      for (const [id, n] of await storedIdsIn(nc, stream, `${SUBJECT_ROOT}.>`))
        inStreams.set(id, (inStreams.get(id) ?? 0) + n);
    const missing = answered.filter((id) => !inStreams.has(id));
    const twice = [...inStreams].filter(([, n]) => n > 1).map(([id]) => id);
    expect({ missing: missing.length, sample: missing.slice(0, 5) }).toEqual({ missing: 0, sample: [] });
    if (twice.length) phase(`stored twice before the restart (collapse under FINAL): ${twice.length}`);
    phase(
      `all ${answered.length} events answered 2xx so far (${[...retried.values()].flat().length} on a retry) read back once from the two live servers`,
    );
    await cluster.server(victimServer).start();
    killed = false;
    phase(`restarted ${victimServer}`);
    // Until both nodes take every connection again (A's writers may need the restarted server: see below).
    const since = Date.now();
    const takes = (c: string, via: "A" | "B") =>
      traffic.answers.some((x) => x.connection === c && x.via === via && x.status === 200 && x.start > since);
    const allBack = () => CONNECTIONS.every((c) => takes(c, "A") && takes(c, "B"));
    for (const deadline = Date.now() + 30_000; !allBack() && Date.now() < deadline; ) await Bun.sleep(100);
    await traffic.stop();
    expect(allBack()).toBe(true);

    const after = traffic.answers.filter((x) => x.start > tKill);
    const inWindow = after.filter((x) => x.end < tBack);
    const of = (list: Answer[], f: (x: Answer) => boolean) => JSON.stringify(tally(list.filter(f)));
    for (const via of ["A", "B"] as const)
      phase(
        `while partition ${VICTIM} elected, via ${via}: keep ${of(inWindow, (x) => isKeep(x) && x.via === via)}, lost ${of(inWindow, (x) => x.connection === LOST && x.via === via)}, mixed ${of(inWindow, (x) => x.connection === MIXED && x.via === via)}`,
      );
    phase(
      `whole run: keep via A ${of(traffic.answers, (x) => isKeep(x) && x.via === "A")}, keep via B ${of(traffic.answers, (x) => isKeep(x) && x.via === "B")}, lost ${of(traffic.answers, (x) => x.connection === LOST)}, mixed ${of(traffic.answers, (x) => x.connection === MIXED)}`,
    );
    const refusedViaA = after.filter((x) => isKeep(x) && x.via === "A" && x.status !== 200);
    phase(
      `keep via A not 2xx after the kill (ms from the kill): ${JSON.stringify(refusedViaA.map((x) => [x.connection, x.status, x.start - tKill, x.end - tKill]))}`,
    );
    // Connections wholly on the surviving partitions kept getting 2xx while the victim's elected,
    // and through B, whose server lives, nothing else: their partitions never paused.
    const keepB = inWindow.filter((x) => isKeep(x) && x.via === "B");
    expect(keepB.filter((x) => x.status === 200).length).toBeGreaterThan(0);
    expect(tally(keepB)).toEqual({ 200: keepB.length });
    // Through A, whose server died, they may not: its appends under way lost their acks (503,
    // outcome unknown), and a shard writer that must catch up on more than a few messages B wrote
    // meanwhile reads them with a one-replica consumer, which nats-server 2.9.10 may place on the
    // dead server (a timeout each time). Not asserted; printed above.
    // The victim's partition did pause: refused, or held past a second, after the kill.
    const lostAfter = after.filter((x) => x.connection === LOST && x.start < tBack);
    expect(lostAfter.some((x) => x.status !== 200 || x.end - x.start > 1000)).toBe(true);

    for (const k of layout.streams.keys()) await cluster.replicasCurrent(partitionStream(k));
    phase(`${victimServer} caught up on every partition`);
    for (const c of CONNECTIONS) {
      const accepted = [...traffic.accepted(c), ...retried.get(c)!];
      expect(accepted.length).toBeGreaterThan(0);
      const loaded = await expectExactlyOnce(db, c, accepted, 90_000);
      phase(`${c}: all ${accepted.length} accepted events in tributary.events FINAL once (${loaded.size} rows)`);
    }
  } finally {
    await traffic.stop();
    if (killed) await cluster.server(victimServer).start();
    await Promise.all([a.stop(), b.stop()]);
  }
}, 110_000);
