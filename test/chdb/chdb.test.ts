import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Session } from "chdb";
import { chExec, chRows, connectChdbWarehouse, loadChdb, openSession, type ChdbWarehouse } from "../harness/chdb.ts";
import { eventRow, eventsColumns, eventsTableDDL, migrateEventsTable } from "../../src/sink/clickhouse/events-table.ts";
import { rawTableDDL } from "../../src/sink/clickhouse/raw-table.ts";
import { checkCluster, onCluster, quoteIdent, quoteString } from "../../src/sink/clickhouse/server.ts";
import { usersColumns, usersTableDDL } from "../../src/pipeline/users/users-table.ts";
import { LocalZooKeeper } from "../../src/services/zookeeper.ts";
import { Inserter } from "../../src/sink/clickhouse/inserter.ts";
import { normaliseEvent } from "../../src/ingest/normalise.ts";
import type { Event } from "../../src/ingest/event-schema.ts";
import segmentTrack from "../fixtures/segment-track.json";
import segmentIdentify from "../fixtures/segment-identify.json";
import webhookCurl from "../fixtures/webhook-curl-track.json";

/**
 * The schema code of src/sink/clickhouse on a current ClickHouse engine (chDB, in-process). CI's
 * server is 18.16, which takes the UInt64/String branches; users run 24+, which take the
 * DateTime64(3, 'UTC')/LowCardinality ones, proven here through the production functions themselves.
 */
const chdb = await loadChdb();

const CONNECTION = "web";
const PIPELINE = "warehouse";
const fastRetry = { initialBackoffMs: 1, maxBackoffMs: 1 };

// Normalised as the node's ingest does it, with fixed clocks so every timestamp is known.
// Segment-forwarded track: timestamp and originalTimestamp both set, so kept as sent.
const track = normaliseEvent(segmentTrack as Event, { receivedAt: Date.parse("2025-10-20T16:15:24.412Z") });
// RudderStack-style identify: originalTimestamp only, so corrected for clock skew against our receivedAt
// (sentAt − originalTimestamp = 335 ms before 16:15:25.000). The fixtures share a messageId; a real
// identify has its own.
const { timestamp: _, ...identifyInput } = segmentIdentify;
const identify = normaliseEvent({ ...identifyInput, messageId: "6a0f3c1e-identify-0001" } as Event, {
  receivedAt: Date.parse("2025-10-20T16:15:25.000Z"),
});
// A curl to the webhook: no messageId, no timestamps, no context; the request's address becomes context.ip.
const curl = normaliseEvent(
  webhookCurl[0] as Event,
  { receivedAt: Date.parse("2025-10-21T08:30:00.007Z"), ip: "203.0.113.7" },
  () => "curl-0001",
);

describe.skipIf(!chdb)("events table on a current ClickHouse engine (chDB)", () => {
  let dir: string;
  let session: Session;
  let w: ChdbWarehouse;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tributary-chdb-"));
    session = openSession(chdb!, dir);
    w = await connectChdbWarehouse(session, "tributary");
  });
  afterAll(() => {
    session?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const columnsOf = (database: string, table: string) =>
    chRows<{ name: string; type: string }>(
      w,
      `SELECT name, type FROM system.columns WHERE database = '${database}' AND table = '${table}' ORDER BY position`,
    ).map((c) => [c.name, c.type] as [string, string]);
  const rowsFor = (...events: Record<string, unknown>[]) =>
    events.map((e) => eventRow(e, CONNECTION, PIPELINE, w.features));

  test("the engine is current, so featuresOf takes the DateTime64 / LowCardinality branch", () => {
    const major = Number(w.features.version.split(".")[0]);
    expect(major).toBeGreaterThanOrEqual(24);
    expect(w.features).toMatchObject({
      dateTime64: true,
      lowCardinality: true,
      insertDedupToken: true,
      bool: true,
      replacingIsDeleted: true,
    });
    expect(w.statements).toEqual(["SELECT version() AS v", "CREATE DATABASE IF NOT EXISTS `tributary`"]);
    expect(chRows(w, "SELECT name FROM system.databases WHERE name = 'tributary'")).toEqual([{ name: "tributary" }]);
  });

  test("migrateEventsTable creates the table with the current types, and is a no-op the second time", async () => {
    w.statements.length = 0;
    await migrateEventsTable(w);
    const lookup = "SELECT name FROM system.columns WHERE database = 'tributary' AND table = 'events'";
    expect(w.statements).toEqual([eventsTableDDL("tributary", w.features), lookup]);

    const columns = columnsOf("tributary", "events");
    // The engine kept every type exactly as written (no normalisation, no rewrite).
    expect(columns).toEqual(eventsColumns(w.features));
    const types = Object.fromEntries(columns);
    expect(types.timestamp).toBe("DateTime64(3, 'UTC')");
    expect(types.received_at).toBe("DateTime64(3, 'UTC')");
    expect(types.original_timestamp).toBe("Nullable(DateTime64(3, 'UTC'))");
    expect(types.sent_at).toBe("Nullable(DateTime64(3, 'UTC'))");
    expect(types.connection).toBe("LowCardinality(String)");
    expect(types.pipeline).toBe("LowCardinality(String)");
    expect(types.type).toBe("LowCardinality(String)");
    expect(types.message_id).toBe("String");
    expect(types.context_ip).toBe("Nullable(String)");
    expect(columns.length).toBe(26);

    expect(
      chRows(
        w,
        "SELECT engine, partition_key, sorting_key, primary_key FROM system.tables WHERE database = 'tributary' AND name = 'events'",
      ),
    ).toEqual([
      {
        engine: "ReplacingMergeTree",
        partition_key: "toYYYYMM(timestamp)",
        sorting_key: "connection, pipeline, message_id",
        primary_key: "connection, pipeline, message_id",
      },
    ]);

    w.statements.length = 0;
    await migrateEventsTable(w);
    expect(w.statements).toEqual([eventsTableDDL("tributary", w.features), lookup]);
    expect(columnsOf("tributary", "events")).toEqual(eventsColumns(w.features));
  });

  test("on an older table, migrateEventsTable adds the missing columns with the ALTERs it builds", async () => {
    const old = await connectChdbWarehouse(session, "tributary_old");
    // The table as an older Tributary made it: without original_timestamp and context_locale.
    const full = eventsTableDDL("tributary_old", old.features);
    const olderDDL = full
      .replace("  `original_timestamp` Nullable(DateTime64(3, 'UTC')),\n", "")
      .replace(",\n  `context_locale` Nullable(String)", "");
    expect(olderDDL.length).toBeLessThan(full.length - 60);
    chExec(old, olderDDL);
    expect(columnsOf("tributary_old", "events").map(([n]) => n)).not.toContain("original_timestamp");

    old.statements.length = 0;
    await migrateEventsTable(old);
    expect(old.statements).toEqual([
      full,
      "SELECT name FROM system.columns WHERE database = 'tributary_old' AND table = 'events'",
      "ALTER TABLE `tributary_old`.events ADD COLUMN `original_timestamp` Nullable(DateTime64(3, 'UTC'))",
      "ALTER TABLE `tributary_old`.events ADD COLUMN `context_locale` Nullable(String)",
    ]);
    const byName = (c: [string, string][]) => [...c].sort(([a], [b]) => a.localeCompare(b));
    expect(byName(columnsOf("tributary_old", "events"))).toEqual(byName(eventsColumns(old.features)));

    // And the migrated table takes today's rows (JSONEachRow matches by name, so column order is moot).
    const outcome = await new Inserter(old, "events", fastRetry).insert([
      eventRow(track, CONNECTION, PIPELINE, old.features),
    ]);
    expect(outcome).toEqual({ inserted: 1, rejected: [] });
    expect(
      chRows(
        old,
        "SELECT toUnixTimestamp64Milli(original_timestamp) AS o, context_locale FROM tributary_old.events FINAL",
      ),
    ).toEqual([
      { o: 1760976923992, context_locale: "en-US" }, // 2025-10-20T16:15:23.992Z
    ]);
  });

  test("eventRow rows keep millisecond timestamps and flattened context; a redelivery counts once under FINAL", async () => {
    // Two parts that stay two parts: FINAL, not a background merge, must collapse the redelivery.
    chExec(w, "SYSTEM STOP MERGES tributary.events");
    const inserter = new Inserter(w, "events", fastRetry, () => inserter.stop());

    // 24.x–26.4 servers parse DateTime64 text with date_time_input_format = 'basic' by default ...
    chExec(w, "SET date_time_input_format = 'basic'");
    w.statements.length = 0;
    expect(await inserter.insert(rowsFor(track, identify, curl))).toEqual({ inserted: 3, rejected: [] });
    expect(w.statements).toEqual(["INSERT INTO `tributary`.`events` FORMAT JSONEachRow"]);
    // ... 26.5+ with 'best_effort': the redelivered copy goes in that way, and must read back the same.
    chExec(w, "SET date_time_input_format = 'best_effort'");
    expect(await inserter.insert(rowsFor(track))).toEqual({ inserted: 1, rejected: [] });

    expect(chRows(w, "SELECT count() AS n FROM tributary.events")).toEqual([{ n: 4 }]);
    expect(chRows(w, "SELECT count() AS n FROM tributary.events FINAL")).toEqual([{ n: 3 }]);
    expect(
      chRows(w, "SELECT message_id, count() AS n FROM tributary.events FINAL GROUP BY message_id ORDER BY message_id"),
    ).toEqual([
      { message_id: "6a0f3c1e-identify-0001", n: 1 },
      { message_id: "curl-0001", n: 1 },
      { message_id: "f9189a52-b37b-4d7d-9f2d-08b91d85fa9c", n: 1 },
    ]);
    // Both copies of the track (basic and best_effort parsing) hold the same instant, to the millisecond.
    expect(
      chRows(
        w,
        "SELECT toUnixTimestamp64Milli(timestamp) AS t, toUnixTimestamp64Milli(received_at) AS r FROM tributary.events WHERE type = 'track' AND message_id LIKE 'f918%'",
      ),
    ).toEqual([
      { t: 1760976924010, r: 1760976924412 },
      { t: 1760976924010, r: 1760976924412 },
    ]);

    const stored = chRows(
      w,
      `SELECT message_id, connection, pipeline, type, event, user_id, anonymous_id,
        toUnixTimestamp64Milli(timestamp) AS timestamp_ms, toUnixTimestamp64Milli(original_timestamp) AS original_ms,
        toUnixTimestamp64Milli(sent_at) AS sent_ms, toUnixTimestamp64Milli(received_at) AS received_ms,
        toString(timestamp) AS timestamp_text, toYYYYMM(timestamp) AS month,
        context_ip, context_library_name, context_library_version, context_page_url, context_page_path, context_user_agent, context_locale,
        JSONExtractString(context, 'timezone') AS context_timezone, JSONExtractInt(properties, 'duration_minutes') AS duration,
        JSONExtractInt(properties, 'answer') AS answer, JSONExtractString(traits, 'email') AS email, integrations
      FROM tributary.events FINAL ORDER BY message_id`,
    );
    const ua =
      "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2.1 Safari/605.1.15";
    const browserContext = {
      context_ip: "172.91.24.57",
      context_library_name: "krenalis.js",
      context_library_version: "1.0.0",
      context_page_url: "https://app.example.com/dashboard",
      context_page_path: "/dashboard",
      context_user_agent: ua,
      context_locale: "en-US",
      context_timezone: "America/Los_Angeles",
    };
    expect(stored).toEqual([
      {
        message_id: "6a0f3c1e-identify-0001",
        connection: "web",
        pipeline: "warehouse",
        type: "identify",
        event: null,
        user_id: "703991475",
        anonymous_id: "b27c5d9f-92a7-4d30-b21a-4df21a6872c2",
        timestamp_ms: 1760976924665, // 16:15:25.000 − (24.327 − 23.992) = 2025-10-20T16:15:24.665Z
        original_ms: 1760976923992,
        sent_ms: 1760976924327,
        received_ms: 1760976925000,
        timestamp_text: "2025-10-20 16:15:24.665",
        month: 202510,
        ...browserContext,
        duration: 0,
        answer: 0,
        email: "emily.johnson@example.com",
        integrations: "{}",
      },
      {
        message_id: "curl-0001",
        connection: "web",
        pipeline: "warehouse",
        type: "track",
        event: "page",
        user_id: null,
        anonymous_id: "2ab4facf-ca73-4361-b1b2-4472ce053122",
        timestamp_ms: 1761035400007, // = receivedAt, 2025-10-21T08:30:00.007Z
        original_ms: null,
        sent_ms: null,
        received_ms: 1761035400007,
        timestamp_text: "2025-10-21 08:30:00.007",
        month: 202510,
        context_ip: "203.0.113.7",
        context_library_name: null,
        context_library_version: null,
        context_page_url: null,
        context_page_path: null,
        context_user_agent: null,
        context_locale: null,
        context_timezone: "",
        duration: 0,
        answer: 42,
        email: "",
        integrations: "{}",
      },
      {
        message_id: "f9189a52-b37b-4d7d-9f2d-08b91d85fa9c",
        connection: "web",
        pipeline: "warehouse",
        type: "track",
        event: "Workout Completed",
        user_id: "703991475",
        anonymous_id: "b27c5d9f-92a7-4d30-b21a-4df21a6872c2",
        timestamp_ms: 1760976924010, // 2025-10-20T16:15:24.010Z
        original_ms: 1760976923992,
        sent_ms: 1760976924327,
        received_ms: 1760976924412,
        timestamp_text: "2025-10-20 16:15:24.010",
        month: 202510,
        ...browserContext,
        duration: 45,
        answer: 0,
        email: "",
        integrations: "{}",
      },
    ]);
  });

  test("the Inserter sets aside a row the engine refuses for its content and lands the rest", async () => {
    chExec(w, "SET date_time_input_format = 'basic'");
    const retries: unknown[] = [];
    const inserter = new Inserter(w, "events", fastRetry, (_attempt, e) => {
      retries.push(e);
      inserter.stop();
    });
    const rows = [track, identify, curl].map((e) =>
      eventRow({ ...e, messageId: `bisect-${e.messageId}` }, "bisect", PIPELINE, w.features),
    );
    const bad = { ...rows[1]!, timestamp: "20th of October" };
    const outcome = await inserter.insert([rows[0]!, bad, rows[2]!]);
    expect(retries).toEqual([]); // classified as content, never retried
    expect(outcome.inserted).toBe(2);
    expect(outcome.rejected.map((r) => r.row.message_id)).toEqual(["bisect-6a0f3c1e-identify-0001"]);
    expect(outcome.rejected[0]!.reason).toContain("while reading the value of key timestamp");
    // The refused batches wrote nothing: exactly the two good rows, even without FINAL.
    expect(
      chRows(w, "SELECT message_id FROM tributary.events WHERE connection = 'bisect' ORDER BY message_id"),
    ).toEqual([{ message_id: "bisect-curl-0001" }, { message_id: "bisect-f9189a52-b37b-4d7d-9f2d-08b91d85fa9c" }]);
  });

  test("rawTableDDL creates a raw webhook table with the current types", () => {
    chExec(w, rawTableDDL("tributary", "raw_hooks", w.features));
    expect(columnsOf("tributary", "raw_hooks")).toEqual([
      ["connection", "LowCardinality(String)"],
      ["delivery_id", "String"],
      ["row_index", "UInt32"],
      ["received_at", "DateTime64(3, 'UTC')"],
      ["body", "String"],
      ["headers", "String"],
    ]);
    chExec(
      w,
      `INSERT INTO tributary.raw_hooks FORMAT JSONEachRow\n{"connection":"hook","delivery_id":"d1","row_index":0,"received_at":"2025-10-21 08:30:00.007","body":"{}","headers":"{}"}`,
    );
    chExec(
      w,
      `INSERT INTO tributary.raw_hooks FORMAT JSONEachRow\n{"connection":"hook","delivery_id":"d1","row_index":0,"received_at":"2025-10-21 08:30:00.007","body":"{}","headers":"{}"}`,
    );
    expect(
      chRows(w, "SELECT count() AS n, max(toUnixTimestamp64Milli(received_at)) AS r FROM tributary.raw_hooks FINAL"),
    ).toEqual([{ n: 1, r: 1761035400007 }]);
  });
});

/**
 * The replicated warehouse's DDL (TRIBUTARY_CLICKHOUSE_CLUSTER) on the current engine. chDB is
 * clickhouse-local: it runs no distributed DDL queue, so `ON CLUSTER` cannot execute here (the real
 * run is `bun run test:cluster`, on 18.16 replicas). What it can do: parse and format every
 * statement verbatim (formatQuery), and execute it without its ON CLUSTER clause with the replicas'
 * <macros> configured. With Debian's zookeeper installed the Replicated tables are then created
 * for real and inspected; without it the engine checks the whole definition (engine arguments,
 * the version and is_deleted columns, keys) and stops only at "no ZooKeeper".
 */
describe.skipIf(!chdb)("replicated (ON CLUSTER) DDL on a current ClickHouse engine (chDB)", () => {
  const CLUSTER = "tributary";
  const DB = "tributary_cluster";
  const model = { plan: "string", seats: "int", signed_up_at: "datetime" } as const;
  const withZooKeeper = LocalZooKeeper.available();
  let dir: string;
  let session: Session;
  let zk: LocalZooKeeper | undefined;
  let w: ChdbWarehouse;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "tributary-chdb-cluster-"));
    if (withZooKeeper) {
      zk = await LocalZooKeeper.create({ dataDir: join(dir, "zookeeper") });
      await zk.start();
    }
    // What a replica's config adds (src/services/clickhouse-server.ts): macros and ZooKeeper.
    const config = join(dir, "replica.xml");
    writeFileSync(
      config,
      `<clickhouse><macros><shard>1</shard><replica>r1</replica></macros>${zk ? `<zookeeper><node><host>127.0.0.1</host><port>${zk.port}</port></node></zookeeper>` : ""}
        <remote_servers>
          <tributary><shard><replica><host>127.0.0.1</host><port>9000</port></replica><replica><host>127.0.0.1</host><port>9001</port></replica></shard></tributary>
          <two_shards><shard><replica><host>127.0.0.1</host><port>9000</port></replica></shard><shard><replica><host>127.0.0.1</host><port>9001</port></replica></shard></two_shards>
        </remote_servers></clickhouse>`,
    );
    session = new chdb!.Session(join(dir, "data"), {
      connectionArgs: ["--output_format_json_quote_64bit_integers=0", `--config-file=${config}`],
    });
    w = await connectChdbWarehouse(session, DB);
  }, 60_000);
  afterAll(async () => {
    session?.close();
    await zk?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const statements = () => ({
    events: eventsTableDDL(DB, w.features, CLUSTER),
    users: usersTableDDL(DB, model, w.features, CLUSTER),
    hooks: rawTableDDL(DB, "hooks", w.features, CLUSTER),
  });
  const path = (table: string) => `'/clickhouse/tables/{shard}/${DB}/${table}', '{replica}'`;
  const format = (sql: string) => chRows<{ q: string }>(w, `SELECT formatQuery(${quoteString(sql)}) AS q`)[0]!.q;

  test("the statements are the single-server ones with ON CLUSTER and the Replicated engine", () => {
    const s = statements();
    expect(s.events).toBe(
      eventsTableDDL(DB, w.features)
        .replace(`${quoteIdent(DB)}.events (`, `${quoteIdent(DB)}.events ON CLUSTER \`tributary\` (`)
        .replace("ENGINE = ReplacingMergeTree()", `ENGINE = ReplicatedReplacingMergeTree(${path("events")})`),
    );
    expect(s.users).toContain(
      `ENGINE = ReplicatedReplacingMergeTree(${path("users")}, _version, _deleted)\nORDER BY profile_id`,
    );
    expect(s.hooks).toContain(
      `ENGINE = ReplicatedReplacingMergeTree(${path("hooks")})\nPARTITION BY toYYYYMM(received_at)`,
    );
  });

  test("the engine parses every statement verbatim, ON CLUSTER and engine arguments included (formatQuery)", () => {
    for (const [table, sql] of Object.entries(statements())) {
      const formatted = format(sql);
      expect(formatted).toStartWith(`CREATE TABLE IF NOT EXISTS ${DB}.${table} ON CLUSTER ${CLUSTER}\n`);
      expect(formatted).toContain(
        `ENGINE = ReplicatedReplacingMergeTree(${path(table)}${table === "users" ? ", _version, _deleted" : ""})`,
      );
      expect(format(formatted)).toBe(formatted); // and its own rendering parses back to itself
    }
    // The database, as connectWarehouse creates it on a cluster.
    expect(format(`CREATE DATABASE IF NOT EXISTS ${quoteIdent(DB)}${onCluster({ cluster: CLUSTER })}`)).toBe(
      `CREATE DATABASE IF NOT EXISTS ${DB} ON CLUSTER ${CLUSTER}`,
    );
  });

  test("the cluster must exist and have one shard (system.clusters)", async () => {
    await checkCluster(w, CLUSTER);
    await expect(checkCluster(w, "nope")).rejects.toThrow('the server has no cluster "nope" in its remote_servers');
    await expect(checkCluster(w, "two_shards")).rejects.toThrow(
      'cluster "two_shards" has 2 shards; Tributary writes one shard of replicas',
    );
  });

  test(
    withZooKeeper
      ? "without ON CLUSTER they create Replicated tables with the single-server columns and keys (ZooKeeper running)"
      : "without ON CLUSTER the engine accepts each definition up to needing ZooKeeper (none installed)",
    () => {
      const local = (sql: string) => sql.replace(onCluster({ cluster: CLUSTER }), "");
      if (!withZooKeeper) {
        for (const sql of Object.values(statements()))
          expect(() => chExec(w, local(sql))).toThrow(expect.objectContaining({ code: "225" })); // NO_ZOOKEEPER
        // ... which comes after the definition is checked: a wrong is_deleted column fails first.
        expect(() => chExec(w, local(statements().users).replace("_version, _deleted)", "_version, _gone)"))).toThrow(
          expect.objectContaining({ code: "16" }),
        );
        return;
      }
      for (const sql of Object.values(statements())) chExec(w, local(sql));
      const columnsOf = (table: string) =>
        chRows<{ name: string; type: string }>(
          w,
          `SELECT name, type FROM system.columns WHERE database = '${DB}' AND table = '${table}' ORDER BY position`,
        ).map((c) => [c.name, c.type]);
      expect(columnsOf("events")).toEqual(eventsColumns(w.features));
      expect(columnsOf("users")).toEqual(usersColumns(model, w.features));
      expect(
        chRows(w, `SELECT name, engine, sorting_key FROM system.tables WHERE database = '${DB}' ORDER BY name`),
      ).toEqual([
        { name: "events", engine: "ReplicatedReplacingMergeTree", sorting_key: "connection, pipeline, message_id" },
        { name: "hooks", engine: "ReplicatedReplacingMergeTree", sorting_key: "connection, delivery_id, row_index" },
        { name: "users", engine: "ReplicatedReplacingMergeTree", sorting_key: "profile_id" },
      ]);
      // The macros filled in per replica.
      expect(
        chRows(
          w,
          `SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = '${DB}' ORDER BY table`,
        ),
      ).toEqual(
        ["events", "hooks", "users"].map((table) => ({
          table,
          zookeeper_path: `/clickhouse/tables/1/${DB}/${table}`,
          replica_name: "r1",
        })),
      );
    },
  );
});
