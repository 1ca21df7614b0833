import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import type { ClickHouseClient } from "@clickhouse/client";
import { startNats, startTestNode, tempDir } from "../harness/services.ts";
import { chClient, eventually, rows } from "../harness/warehouse.ts";
import { Load } from "../harness/load.ts";
import { LocalZooKeeper } from "../../src/services/zookeeper.ts";
import { LocalClickHouse } from "../../src/services/clickhouse-server.ts";
import { freePort } from "../../src/services/ports.ts";
import { connectWarehouse, type Warehouse } from "../../src/sink/clickhouse/server.ts";
import { migrateEventsTable } from "../../src/sink/clickhouse/events-table.ts";
import { ensureRawTable } from "../../src/sink/clickhouse/raw-table.ts";
import { migrateUsersTable } from "../../src/pipeline/users/users-table.ts";
import type { RunningNode } from "../../src/node.ts";

/**
 * Replicated ClickHouse (`bun run test:cluster`; skipped by the default `bun test` unless
 * TRIBUTARY_CLUSTER_TESTS is set): Debian's ZooKeeper and two clickhouse-server replicas of one
 * shard on loopback, a node given both URLs and TRIBUTARY_CLICKHOUSE_CLUSTER. Ground truth is the
 * set of messageIds that got a 2xx; the check is `events FINAL` read on each replica.
 * KEEP_CLUSTER_DIR=1 keeps the servers' data and logs.
 */

const CLUSTER = "tributary";
const KEY = "key-cluster-0001";
const connection = `connection: web
source: webhook
writeKeys: ["${KEY}"]
pipelines:
  - name: all
    import: events
  - name: users
    import: users
    transform:
      mapping:
        plan: traits.plan
`;
const MODEL = "customerModel:\n  plan: string\n";

describe.skipIf(!process.env.TRIBUTARY_CLUSTER_TESTS)("replicated ClickHouse: ZooKeeper and two replicas", () => {
  let base: string;
  let zk: LocalZooKeeper;
  let replicas: LocalClickHouse[] = [];
  let dbs: ClickHouseClient[] = [];
  let nats: Awaited<ReturnType<typeof startNats>>;
  let node: RunningNode;

  beforeAll(async () => {
    base = tempDir("cluster");
    zk = await LocalZooKeeper.create({ dataDir: `${base}/zookeeper` });
    const natsStarting = startNats();
    await zk.start();
    const ports = [await freePort(), await freePort()];
    const shards = [ports.map((port) => ({ host: "127.0.0.1", port }))];
    replicas = await Promise.all(
      ports.map((tcpPort, i) =>
        LocalClickHouse.create({
          dataDir: `${base}/clickhouse-r${i + 1}`,
          tcpPort,
          // A replica killed and restarted waits for its old ZooKeeper session to expire.
          replication: {
            zookeeper: [zk.connect],
            sessionTimeoutMs: 4000,
            cluster: CLUSTER,
            shards,
            shard: "1",
            replica: `r${i + 1}`,
          },
        }),
      ),
    );
    await Promise.all(replicas.map((r) => r.start()));
    dbs = replicas.map((r) => chClient(r.url));
    nats = await natsStarting;
    node = await startTestNode(
      nats.url,
      { "web.yaml": connection, "customer-model.yaml": MODEL },
      {
        clickhouseUrl: replicas.map((r) => r.url).join(","),
        clickhouseCluster: CLUSTER,
        batchMaxAgeMs: 200,
        inserter: { initialBackoffMs: 100, maxBackoffMs: 1000 },
      },
    );
    await node.pipelinesReady;
  }, 120_000);

  afterAll(async () => {
    await node?.stop();
    await Promise.all(dbs.map((d) => d.close()));
    for (const r of replicas) await r.stop();
    await nats?.cleanup();
    await zk?.stop();
    if (base && !process.env.KEEP_CLUSTER_DIR) rmSync(base, { recursive: true, force: true });
    else if (base) console.log("kept", base);
  });

  const engines = (i: number, database = "tributary") =>
    rows<{ name: string; engine: string }>(
      dbs[i]!,
      `SELECT name, engine FROM system.tables WHERE database = '${database}' ORDER BY name`,
    );

  test("the node created its tables ON CLUSTER: Replicated*MergeTree on both replicas, one ZooKeeper path", async () => {
    for (const i of [0, 1]) {
      expect(await engines(i)).toEqual([
        { name: "events", engine: "ReplicatedReplacingMergeTree" },
        { name: "users", engine: "ReplicatedReplacingMergeTree" },
      ]);
      expect(
        await rows(
          dbs[i]!,
          "SELECT table, zookeeper_path, replica_name, is_readonly, total_replicas FROM system.replicas WHERE database = 'tributary' ORDER BY table",
        ),
      ).toEqual([
        {
          table: "events",
          zookeeper_path: "/clickhouse/tables/1/tributary/events",
          replica_name: `r${i + 1}`,
          is_readonly: 0,
          total_replicas: 2,
        },
        {
          table: "users",
          zookeeper_path: "/clickhouse/tables/1/tributary/users",
          replica_name: `r${i + 1}`,
          is_readonly: 0,
          total_replicas: 2,
        },
      ]);
    }
  });

  test("under load, with the replica the node writes to killed -9 and restarted (each in turn), every accepted event is in events FINAL once on both replicas", async () => {
    const load = new Load({
      url: () => node.url,
      writeKey: KEY,
      clients: 4,
      eventsPerRequest: 25,
      pauseMs: 20,
      prefix: "cluster",
    });
    const finalCount = (_replica: number) => `SELECT count() AS n FROM tributary.events FINAL WHERE connection = 'web'`;
    const atLeast = (n: number) => (r: { n: number }[]) => Number(r[0]?.n) >= n;
    // Rows flow into r1 (the first URL) and replicate to r2.
    await eventually(dbs[1]!, finalCount(1), atLeast(500), 30_000);
    // Kill the replica the node writes to: r1, then (the node having moved to r2) r2.
    for (const [down, up] of [
      [0, 1],
      [1, 0],
    ] as const) {
      await replicas[down]!.kill();
      const killedAt = load.accepted.length;
      // The node moves to the other replica: rows accepted after the kill land there while this one is down.
      await eventually(dbs[up]!, finalCount(up), atLeast(killedAt + 500), 60_000);
      await replicas[down]!.start();
      await Bun.sleep(2000); // keep loading while it catches up
    }
    await load.stop();

    const accepted = new Set(load.accepted);
    expect(accepted.size).toBe(load.accepted.length);
    expect(load.statuses.get(200)).toBe(load.requests); // ingestion never noticed
    for (const i of [0, 1]) {
      await eventually(dbs[i]!, finalCount(i), atLeast(accepted.size), 90_000);
      const ids = (
        await rows<{ m: string; n: number }>(
          dbs[i]!,
          "SELECT message_id AS m, count() AS n FROM tributary.events FINAL WHERE connection = 'web' GROUP BY m",
        )
      ).map((r) => {
        expect(Number(r.n)).toBe(1);
        return r.m;
      });
      expect(ids.length).toBe(accepted.size);
      expect(new Set(ids)).toEqual(accepted);
    }
    console.log(`cluster load: ${accepted.size} events accepted, each once in events FINAL on both replicas`);
  }, 240_000);

  test("users: a merged-away profile's delete mutation (18.16 has no is_deleted) reaches both replicas", async () => {
    const post = (events: object[]) =>
      fetch(`${node.url}/v1/events`, {
        method: "POST",
        headers: { Authorization: `Bearer ${KEY}` },
        body: JSON.stringify(events),
      }).then((r) => r.status);
    const t = (s: number) => new Date(Date.UTC(2025, 0, 1, 10, 0, s)).toISOString();
    expect(
      await post([
        { type: "identify", anonymousId: "anon-1", messageId: "u-m1", timestamp: t(0), traits: { plan: "free" } },
      ]),
    ).toBe(200);
    expect(
      await post([{ type: "identify", userId: "user-1", messageId: "u-m2", timestamp: t(1), traits: { plan: "pro" } }]),
    ).toBe(200);
    await eventually(dbs[0]!, "SELECT profile_id FROM tributary.users FINAL", (r) => r.length === 2, 30_000);
    // anon-1's profile folds into user-1's: written once more as deleted, then deleted by a mutation.
    expect(
      await post([{ type: "identify", userId: "user-1", anonymousId: "anon-1", messageId: "u-m3", timestamp: t(2) }]),
    ).toBe(200);
    for (const db of dbs) {
      const users = await eventually(
        db,
        "SELECT user_id, anonymous_ids, plan FROM tributary.users FINAL",
        (r) => r.length === 1,
        30_000,
      );
      expect(users).toEqual([{ user_id: "user-1", anonymous_ids: ["anon-1"], plan: "pro" }]);
      expect(
        await rows(
          db,
          "SELECT command, is_done FROM system.mutations WHERE database = 'tributary' AND table = 'users'",
        ),
      ).toEqual([{ command: expect.stringContaining("DELETE WHERE profile_id IN"), is_done: 1 }]);
    }
  }, 60_000);

  test("migrations and raw tables: CREATE ON CLUSTER, ALTERs replicated through ZooKeeper", async () => {
    const w: Warehouse = await connectWarehouse({
      url: `${replicas[1]!.url},${replicas[0]!.url}`,
      username: "default",
      password: "",
      database: "tributary_ddl",
      cluster: CLUSTER,
    });
    try {
      await migrateEventsTable(w);
      await ensureRawTable(w, "hooks");
      expect(await migrateUsersTable(w, { plan: "string" }, false)).toEqual([]);
      // A property added later: one ALTER to one replica, and the other gets the column too.
      expect(await migrateUsersTable(w, { plan: "string", seats: "int" }, false)).toEqual([
        "ALTER TABLE `tributary_ddl`.users ADD COLUMN `seats` Nullable(Int64)",
      ]);
      for (const i of [0, 1]) {
        expect(await engines(i, "tributary_ddl")).toEqual([
          { name: "events", engine: "ReplicatedReplacingMergeTree" },
          { name: "hooks", engine: "ReplicatedReplacingMergeTree" },
          { name: "users", engine: "ReplicatedReplacingMergeTree" },
        ]);
        await eventually(
          dbs[i]!,
          "SELECT name FROM system.columns WHERE database = 'tributary_ddl' AND table = 'users' AND name = 'seats'",
          (r) => r.length === 1,
          10_000,
        );
      }
      // Everything exists: starting again issues no DDL beyond the lookups. Every statement that
      // is not a SELECT goes through command() or exec(); record them during a second start.
      const issued: string[] = [];
      const client = w.client as unknown as Record<"command" | "exec", (p: { query: string }) => Promise<unknown>>;
      for (const m of ["command", "exec"] as const) {
        const real = client[m].bind(client);
        client[m] = (p) => (issued.push(p.query), real(p));
      }
      await migrateEventsTable(w);
      await ensureRawTable(w, "hooks");
      expect(await migrateUsersTable(w, { plan: "string", seats: "int" }, false)).toEqual([]);
      expect(issued).toEqual([]);
    } finally {
      await w.close();
    }
  }, 60_000);

  test("a cluster the server does not know is refused with the reason", async () => {
    const connect = (cluster: string) =>
      connectWarehouse({ url: replicas[0]!.url, username: "default", password: "", database: "tributary", cluster });
    await expect(connect("nope")).rejects.toThrow('no cluster "nope" in its remote_servers');
  });
});
