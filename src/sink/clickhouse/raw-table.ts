import type { ServerFeatures, Warehouse } from "./server.ts";
import { createTable, onCluster, quoteIdent, tableEngine } from "./server.ts";

/**
 * A raw webhook table (PRODUCT.md §2): `received_at`, `body`, `headers`, `connection`, plus the
 * delivery id and row index that make redeliveries collapse under FINAL.
 */
export function rawTableDDL(database: string, table: string, f: ServerFeatures, cluster?: string): string {
  const ts = f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64";
  const lc = f.lowCardinality ? "LowCardinality(String)" : "String";
  const month = f.dateTime64 ? "toYYYYMM(received_at)" : "toYYYYMM(toDateTime(intDiv(received_at, 1000)))";
  return `CREATE TABLE IF NOT EXISTS ${quoteIdent(database)}.${quoteIdent(table)}${onCluster({ cluster })} (
  connection ${lc},
  delivery_id String,
  row_index UInt32,
  received_at ${ts},
  body String,
  headers String
) ENGINE = ${tableEngine("ReplacingMergeTree", [], database, table, cluster)}
PARTITION BY ${month}
ORDER BY (connection, delivery_id, row_index)`;
}

export async function ensureRawTable(w: Warehouse, table: string): Promise<void> {
  await createTable(w, table, rawTableDDL(w.database, table, w.features, w.cluster));
}
