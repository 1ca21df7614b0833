import type { Warehouse, ServerFeatures } from "./server.ts";
import { createTable, onCluster, quoteIdent, quoteString, tableEngine } from "./server.ts";

/**
 * The `events` table of PRODUCT.md §4: one row per event per pipeline. ReplacingMergeTree on
 * (connection, pipeline, message_id) collapses redeliveries; `SELECT … FINAL` shows each once.
 * On a cluster (TRIBUTARY_CLICKHOUSE_CLUSTER) the same table is ReplicatedReplacingMergeTree,
 * created ON CLUSTER on every replica of the one shard.
 */
export const TIMESTAMP_COLUMNS = ["timestamp", "original_timestamp", "sent_at", "received_at"] as const;

export function eventsColumns(f: ServerFeatures): [string, string][] {
  const lc = (t: string) => (f.lowCardinality ? `LowCardinality(${t})` : t);
  // Millisecond precision on every server: DateTime64(3) where it exists, else epoch milliseconds.
  const ts = f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64";
  const nts = f.dateTime64 ? "Nullable(DateTime64(3, 'UTC'))" : "Nullable(UInt64)";
  return [
    ["connection", lc("String")],
    ["pipeline", lc("String")],
    ["message_id", "String"],
    ["type", lc("String")],
    ["event", "Nullable(String)"],
    ["name", "Nullable(String)"],
    ["category", "Nullable(String)"],
    ["user_id", "Nullable(String)"],
    ["anonymous_id", "Nullable(String)"],
    ["group_id", "Nullable(String)"],
    ["previous_id", "Nullable(String)"],
    ["timestamp", ts],
    ["original_timestamp", nts],
    ["sent_at", nts],
    ["received_at", ts],
    ["context", "String"],
    ["properties", "String"],
    ["traits", "String"],
    ["integrations", "String"],
    ["context_ip", "Nullable(String)"],
    ["context_library_name", "Nullable(String)"],
    ["context_library_version", "Nullable(String)"],
    ["context_page_url", "Nullable(String)"],
    ["context_page_path", "Nullable(String)"],
    ["context_user_agent", "Nullable(String)"],
    ["context_locale", "Nullable(String)"],
  ];
}

export function eventsTableDDL(database: string, f: ServerFeatures, cluster?: string): string {
  const cols = eventsColumns(f)
    .map(([n, t]) => `  ${quoteIdent(n)} ${t}`)
    .join(",\n");
  const month = f.dateTime64 ? "toYYYYMM(timestamp)" : "toYYYYMM(toDateTime(intDiv(timestamp, 1000)))";
  const engine = tableEngine("ReplacingMergeTree", [], database, "events", cluster);
  return `CREATE TABLE IF NOT EXISTS ${quoteIdent(database)}.events${onCluster({ cluster })} (\n${cols}\n) ENGINE = ${engine}\nPARTITION BY ${month}\nORDER BY (connection, pipeline, message_id)`;
}

/**
 * Creates the table, or adds the columns a newer Tributary expects; never drops or retypes. On a
 * cluster the ALTERs go to one replica without ON CLUSTER: a Replicated table's ALTER reaches the
 * others through ZooKeeper (also those down now, when they return).
 */
export async function migrateEventsTable(w: Warehouse): Promise<void> {
  await createTable(w, "events", eventsTableDDL(w.database, w.features, w.cluster));
  const rows = (await (
    await w.client.query({
      // No query parameters: 18.16 predates them.
      query: `SELECT name FROM system.columns WHERE database = ${quoteString(w.database)} AND table = 'events'`,
      format: "JSONEachRow",
    })
  ).json()) as { name: string }[];
  const have = new Set(rows.map((r) => r.name));
  for (const [name, type] of eventsColumns(w.features)) {
    if (!have.has(name))
      await w.client.command({
        query: `ALTER TABLE ${quoteIdent(w.database)}.events ADD COLUMN ${quoteIdent(name)} ${type}`,
      });
  }
}

type Json = Record<string, unknown>;
const str = (v: unknown): string | null =>
  v === undefined || v === null ? null : typeof v === "string" ? v : JSON.stringify(v);
const obj = (v: unknown): Json | undefined =>
  v && typeof v === "object" && !Array.isArray(v) ? (v as Json) : undefined;

/** One `events` row from a normalised event, in the server's timestamp representation. */
export function eventRow(e: Json, connection: string, pipeline: string, f: ServerFeatures): Json {
  const ctx = obj(e.context);
  const page = obj(ctx?.page);
  const lib = obj(ctx?.library);
  // DateTime64 takes "YYYY-MM-DD hh:mm:ss.sss" on every current server whatever date_time_input_format says.
  const time = (v: unknown): string | number | null => {
    if (typeof v !== "string") return null;
    const ms = Date.parse(v);
    if (Number.isNaN(ms)) return null;
    return f.dateTime64 ? new Date(ms).toISOString().replace("T", " ").replace("Z", "") : ms;
  };
  return {
    connection,
    pipeline,
    message_id: e.messageId,
    type: e.type,
    event: str(e.event),
    name: str(e.name),
    category: str(e.category),
    user_id: str(e.userId),
    anonymous_id: str(e.anonymousId),
    group_id: str(e.groupId),
    previous_id: str(e.previousId),
    timestamp: time(e.timestamp),
    original_timestamp: time(e.originalTimestamp),
    sent_at: time(e.sentAt),
    received_at: time(e.receivedAt),
    context: JSON.stringify(ctx ?? {}),
    properties: JSON.stringify(e.properties ?? {}),
    traits: JSON.stringify(e.traits ?? {}),
    integrations: JSON.stringify(e.integrations ?? {}),
    context_ip: str(ctx?.ip),
    context_library_name: str(lib?.name),
    context_library_version: str(lib?.version),
    context_page_url: str(page?.url),
    context_page_path: str(page?.path),
    context_user_agent: str(ctx?.userAgent),
    context_locale: str(ctx?.locale),
  };
}
