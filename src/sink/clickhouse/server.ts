import { createClient, ClickHouseLogLevel, type ClickHouseClient } from "@clickhouse/client";

export interface ClickHouseOptions {
  url: string;
  username: string;
  password: string;
  database: string;
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
  return { version, dateTime64: atLeast(20, 1), lowCardinality: atLeast(19, 0), insertDedupToken: atLeast(22, 2), bool: atLeast(21, 12), replacingIsDeleted: atLeast(23, 2) };
}

export interface Warehouse {
  client: ClickHouseClient;
  features: ServerFeatures;
  database: string;
  close(): Promise<void>;
}

export async function connectWarehouse(o: ClickHouseOptions): Promise<Warehouse> {
  const client = createClient({
    url: o.url,
    username: o.username,
    password: o.password,
    log: { level: ClickHouseLogLevel.OFF },
    request_timeout: 30_000,
  });
  const rows = (await (await client.query({ query: "SELECT version() AS v", format: "JSONEachRow" })).json()) as { v: string }[];
  const features = featuresOf(rows[0]!.v);
  await client.command({ query: `CREATE DATABASE IF NOT EXISTS ${quoteIdent(o.database)}` });
  return { client, features, database: o.database, close: () => client.close() };
}

export function quoteIdent(name: string): string {
  return "`" + name.replace(/`/g, "``") + "`";
}

export function quoteString(value: string): string {
  return "'" + value.replace(/\\/g, "\\\\").replace(/'/g, "\\'") + "'";
}
