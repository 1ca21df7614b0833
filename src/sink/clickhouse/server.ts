import { createClient, ClickHouseLogLevel, type ClickHouseClient } from "@clickhouse/client";
import { defaults } from "../../config/env.ts";
import { log } from "../../util/log.ts";
import { clickHouseCode } from "./errors.ts";
import { JsonInsert } from "./http-insert.ts";

export { clickHouseCode } from "./errors.ts";

/** Every request to ClickHouse, its answer included, must be done within this. */
const REQUEST_TIMEOUT_MS = 30_000;

export interface ClickHouseOptions {
  /** One server, or the replicas of a cluster separated by commas (tried in turn when one fails). */
  url: string;
  username: string;
  password: string;
  database: string;
  /**
   * A cluster of `remote_servers` with one shard: tables are created ON CLUSTER as
   * Replicated*MergeTree, and rows go to whichever replica answers (see README, Replicated ClickHouse).
   */
  cluster?: string;
}

/**
 * The ClickHouse settings of a node's options: the node's pipelines and the tools (replay, dlq,
 * forget, resolve) connect as one, so a tool on a replicated warehouse creates what it creates
 * ON CLUSTER too. Without CLICKHOUSE_URL: the local clickhouse-server `npm start` runs.
 */
export function warehouseOptionsOf(o: {
  clickhouseUrl?: string;
  clickhouseHttpPort?: number;
  clickhouseUser: string;
  clickhousePassword: string;
  clickhouseCluster?: string;
  database: string;
}): ClickHouseOptions {
  return {
    url: o.clickhouseUrl ?? `http://127.0.0.1:${o.clickhouseHttpPort ?? defaults.clickhouseHttpPort}`,
    username: o.clickhouseUser,
    password: o.clickhousePassword,
    database: o.database,
    cluster: o.clickhouseCluster,
  };
}

/** What the connected server can do; DDL and inserts adapt to it (18.16 in tests, 24+ in production). */
export interface ServerFeatures {
  version: string;
  /** DateTime64(3): 20.1+. Without it, timestamps are stored as UInt64 epoch milliseconds. */
  dateTime64: boolean;
  /** LowCardinality(String): 19.x+. */
  lowCardinality: boolean;
  /** The `insert_deduplication_token` setting: 22.2+. */
  insertDedupToken: boolean;
  /** The Bool type: 21.12+ (UInt8 before). */
  bool: boolean;
  /** ReplacingMergeTree(version, is_deleted), so FINAL hides deleted rows: 23.2+. */
  replacingIsDeleted: boolean;
}

export function featuresOf(version: string): ServerFeatures {
  const [major = 0, minor = 0] = version.split(".").map(Number);
  const atLeast = (M: number, m: number) => major > M || (major === M && minor >= m);
  return {
    version,
    dateTime64: atLeast(20, 1),
    lowCardinality: atLeast(19, 0),
    insertDedupToken: atLeast(22, 2),
    bool: atLeast(21, 12),
    replacingIsDeleted: atLeast(23, 2),
  };
}

export interface Warehouse {
  client: ClickHouseClient;
  features: ServerFeatures;
  database: string;
  /** Set for a replicated warehouse: the `remote_servers` cluster DDL runs ON. */
  cluster?: string;
  /**
   * `INSERT INTO table FORMAT JSONEachRow` of these rows (`table` quoted, database included), to
   * the current server as `client` would, through fetch where it can (http-insert.ts). Warehouses
   * built without it (test doubles) are written through `client.insert`.
   */
  insertRows?(table: string, rows: readonly Record<string, unknown>[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * ClickHouse error codes after which the next server of the list is tried: this replica cannot
 * take the statement now, another may. 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR, 225 NO_ZOOKEEPER,
 * 242 TABLE_IS_READ_ONLY (lost its ZooKeeper session), 319 UNKNOWN_STATUS_OF_INSERT, 999 KEEPER_EXCEPTION.
 * Errors without a ClickHouse code (refused, reset, timed out) always move on.
 */
const FAILOVER_CODES = new Set([209, 210, 225, 242, 319, 999]);

export function switchesServer(e: unknown): boolean {
  const code = clickHouseCode(e);
  return code === undefined || FAILOVER_CODES.has(code);
}

export const splitUrls = (url: string): string[] =>
  url
    .split(",")
    .map((u) => u.trim())
    .filter(Boolean);

/**
 * One client per server of CLICKHOUSE_URL, used one at a time: a statement goes to the current
 * server, and a failure that is the server's (see switchesServer) makes the next one current, so
 * the caller's retry (the Inserter retries forever) goes there. With one URL it is that client.
 * Retrying an insert on another replica cannot double it: ReplicatedMergeTree drops a block whose
 * checksum the table already holds (insert_deduplicate), and ReplacingMergeTree + FINAL the rest.
 */
class FailoverClient {
  #current = 0;
  constructor(
    readonly urls: string[],
    readonly clients: ClickHouseClient[],
    /** Per server, its fetch insert, or undefined where its URL needs the client. */
    readonly inserts: (JsonInsert | undefined)[] = [],
  ) {}

  get url(): string {
    return this.urls[this.#current]!;
  }

  #failed(i: number, e: unknown): void {
    if (this.clients.length < 2 || i !== this.#current || !switchesServer(e)) return;
    this.#current = (i + 1) % this.clients.length;
    log.warn("clickhouse server failed; switching to the next one", {
      failed: this.urls[i],
      next: this.url,
      error: String((e as Error)?.message ?? e).split("\n")[0],
    });
  }

  async #call<T>(f: (c: ClickHouseClient, i: number) => Promise<T>): Promise<T> {
    const i = this.#current;
    try {
      return await f(this.clients[i]!, i);
    } catch (e) {
      this.#failed(i, e);
      throw e;
    }
  }

  insertRows(table: string, rows: readonly Record<string, unknown>[]): Promise<void> {
    return this.#call(async (c, i) => {
      const fast = this.inserts[i];
      if (fast) await fast.insert(table, rows);
      else await c.insert({ table, values: rows as Record<string, unknown>[], format: "JSONEachRow" });
    });
  }

  query(p: Parameters<ClickHouseClient["query"]>[0]) {
    return this.#call((c) => c.query(p));
  }
  command(p: Parameters<ClickHouseClient["command"]>[0]) {
    return this.#call((c) => c.command(p));
  }
  insert(p: Parameters<ClickHouseClient["insert"]>[0]) {
    return this.#call((c) => c.insert(p));
  }
  exec(p: Parameters<ClickHouseClient["exec"]>[0]) {
    return this.#call((c) => c.exec(p));
  }
  async ping(p?: Parameters<ClickHouseClient["ping"]>[0]) {
    const i = this.#current;
    const r = await this.clients[i]!.ping(p);
    if (!r.success) this.#failed(i, r.error);
    return r;
  }
  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }
}

export async function connectWarehouse(o: ClickHouseOptions): Promise<Warehouse> {
  const urls = splitUrls(o.url);
  if (!urls.length) throw new Error("CLICKHOUSE_URL names no server");
  const clients = urls.map((url) =>
    createClient({
      url,
      username: o.username,
      password: o.password,
      log: { level: ClickHouseLogLevel.OFF },
      request_timeout: REQUEST_TIMEOUT_MS,
    }),
  );
  const inserts = urls.map((url) =>
    JsonInsert.handles(url)
      ? new JsonInsert({ url, username: o.username, password: o.password, timeoutMs: REQUEST_TIMEOUT_MS })
      : undefined,
  );
  const failover = new FailoverClient(urls, clients, inserts);
  const client = urls.length === 1 ? clients[0]! : (failover as unknown as ClickHouseClient);
  try {
    // The first server that answers (the others are tried when it fails later).
    let version: string | undefined;
    for (let attempt = 1; version === undefined; attempt++) {
      try {
        const rows = (await (await client.query({ query: "SELECT version() AS v", format: "JSONEachRow" })).json()) as {
          v: string;
        }[];
        version = rows[0]!.v;
      } catch (e) {
        if (attempt >= urls.length || !switchesServer(e)) throw e;
      }
    }
    const w: Warehouse = {
      client,
      features: featuresOf(version),
      database: o.database,
      cluster: o.cluster,
      insertRows: (table, rows) => failover.insertRows(table, rows),
      close: () => failover.close(),
    };
    if (o.cluster) {
      await checkCluster(w, o.cluster);
      if (!(await exists(w, `SELECT name FROM system.databases WHERE name = ${quoteString(o.database)}`))) {
        await clusterDDL(w, `CREATE DATABASE IF NOT EXISTS ${quoteIdent(o.database)}${onCluster(w)}`);
      }
    } else {
      await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(o.database)}` });
    }
    return w;
  } catch (e) {
    await failover.close().catch(() => {});
    throw e;
  }
}

/** The cluster must be one this server knows, with one shard (every replica holds every row). */
export async function checkCluster(w: Warehouse, cluster: string): Promise<void> {
  const rows = (await (
    await w.client.query({
      query: `SELECT uniqExact(shard_num) AS shards, count() AS replicas FROM system.clusters WHERE cluster = ${quoteString(cluster)}`,
      format: "JSONEachRow",
    })
  ).json()) as { shards: number | string; replicas: number | string }[];
  const shards = Number(rows[0]?.shards ?? 0);
  if (!shards)
    throw new Error(`TRIBUTARY_CLICKHOUSE_CLUSTER: the server has no cluster "${cluster}" in its remote_servers`);
  if (shards > 1) {
    throw new Error(
      `TRIBUTARY_CLICKHOUSE_CLUSTER: cluster "${cluster}" has ${shards} shards; Tributary writes one shard of replicas ` +
        `(a redelivered event must reach the replica set holding its first copy for FINAL to collapse them): define a cluster of one shard for it`,
    );
  }
}

/** ` ON CLUSTER <name>` for a replicated warehouse, else nothing. */
export function onCluster(w: { cluster?: string }): string {
  return w.cluster ? ` ON CLUSTER ${quoteIdent(w.cluster)}` : "";
}

/**
 * The engine clause of a Tributary table: `Kind(args)` on one server, and on a cluster
 * `ReplicatedKind('/clickhouse/tables/{shard}/<database>/<table>', '{replica}', args)`, the path
 * spelled out (the {database}/{table} macros are 20.x+) and the shard and replica taken from each
 * server's <macros>.
 */
export function tableEngine(kind: string, args: string[], database: string, table: string, cluster?: string): string {
  if (!cluster) return `${kind}(${args.join(", ")})`;
  const path = quoteString(`/clickhouse/tables/{shard}/${database}/${table}`);
  return `Replicated${kind}(${[path, "'{replica}'", ...args].join(", ")})`;
}

/** How long ON CLUSTER DDL waits for every replica (under the client's 30 s request timeout); the ones down run it from the queue when they return. */
export const DDL_TIMEOUT_SECONDS = 20;

const TIMEOUT_EXCEEDED = 159;

/**
 * Runs ON CLUSTER DDL and waits for every replica's answer (wait_end_of_query: otherwise a
 * replica's error would arrive after the 200). A replica that is down does not block Tributary:
 * after the timeout (code 159) the DDL stays queued in ZooKeeper for it, and what matters here is
 * that the replica we talk to has run it, which the caller checks.
 */
export async function clusterDDL(w: Warehouse, query: string): Promise<void> {
  try {
    await w.client.command({
      query,
      clickhouse_settings: { wait_end_of_query: 1, distributed_ddl_task_timeout: String(DDL_TIMEOUT_SECONDS) },
    });
  } catch (e) {
    if (clickHouseCode(e) !== TIMEOUT_EXCEEDED) throw e;
    log.warn("ON CLUSTER DDL not confirmed by every replica; the ones down run it when they return", {
      error: String((e as Error).message).split("\n")[0],
    });
  }
}

async function exists(w: Warehouse, query: string): Promise<boolean> {
  return ((await (await w.client.query({ query, format: "JSONEachRow" })).json()) as unknown[]).length > 0;
}

/**
 * `CREATE TABLE IF NOT EXISTS`. On a cluster it goes ON CLUSTER only when the replica we talk to
 * lacks the table, so a node starting while another replica is down does not wait on it.
 */
export async function createTable(w: Warehouse, table: string, ddl: string): Promise<void> {
  if (!w.cluster) {
    await w.client.command({ query: ddl });
    return;
  }
  const lookup = `SELECT name FROM system.tables WHERE database = ${quoteString(w.database)} AND name = ${quoteString(table)}`;
  if (await exists(w, lookup)) return;
  // A replica added to the cluster since the database was made lacks it too.
  await clusterDDL(w, `CREATE DATABASE IF NOT EXISTS ${quoteIdent(w.database)}${onCluster(w)}`);
  await clusterDDL(w, ddl);
  if (!(await exists(w, lookup)))
    throw new Error(`ON CLUSTER DDL did not create ${w.database}.${table} on this replica yet`);
}

export function quoteIdent(name: string): string {
  return "`" + name.replace(/`/g, "``") + "`";
}

export function quoteString(value: string): string {
  return "'" + value.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
}
