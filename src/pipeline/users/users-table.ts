import type { ServerFeatures, Warehouse } from "../../sink/clickhouse/server.ts";
import { createTable, onCluster, quoteIdent, quoteString, tableEngine } from "../../sink/clickhouse/server.ts";
import { columnType, type CustomerModel } from "./customer-model.ts";
import { ensureIdentityTables } from "./identities-table.ts";

/**
 * The `users` table of PRODUCT.md §4: one row per unified profile, the Customer Model's
 * properties as typed columns. Each change of a profile inserts its whole new state with a
 * higher `_version`; ReplacingMergeTree keeps the latest, so `SELECT … FROM users FINAL` shows
 * one row per profile. A profile merged into another is written once more with `_deleted = 1`:
 * servers with ReplacingMergeTree(version, is_deleted) (23.2+) hide it under FINAL, older ones
 * get a mutation deleting it (see UsersStage). On a cluster the table is
 * ReplicatedReplacingMergeTree, created ON CLUSTER; its ALTERs and that mutation are sent to one
 * replica and reach the others through ZooKeeper.
 */
export function fixedColumns(f: ServerFeatures): [string, string][] {
  const ts = f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64";
  return [
    ["profile_id", "String"],
    ["user_id", "Nullable(String)"],
    ["anonymous_ids", "Array(String)"],
    // How many anonymous ids were dropped from anonymous_ids (oldest first) to keep it within its limit.
    ["anonymous_ids_dropped", "UInt32"],
    ["first_seen_at", ts],
    ["last_seen_at", ts],
    ["updated_at", ts],
    ["_version", "UInt64"],
    ["_deleted", "UInt8"],
  ];
}

export function usersColumns(model: CustomerModel, f: ServerFeatures): [string, string][] {
  return [
    ...fixedColumns(f),
    ...Object.entries(model).map(([name, type]): [string, string] => [name, columnType(type, f)]),
  ];
}

export function usersTableDDL(database: string, model: CustomerModel, f: ServerFeatures, cluster?: string): string {
  const cols = usersColumns(model, f)
    .map(([n, t]) => `  ${quoteIdent(n)} ${t}`)
    .join(",\n");
  const engine = tableEngine(
    "ReplacingMergeTree",
    f.replacingIsDeleted ? ["_version", "_deleted"] : ["_version"],
    database,
    "users",
    cluster,
  );
  return `CREATE TABLE IF NOT EXISTS ${quoteIdent(database)}.users${onCluster({ cluster })} (\n${cols}\n) ENGINE = ${engine}\nORDER BY profile_id`;
}

/** A Customer Model change that would lose or reinterpret data, refused without `migrate: true`. */
export class ModelMigrationRefused extends Error {
  constructor(readonly changes: string[]) {
    super(
      `Customer Model change refused: ${changes.join("; ")}. ` +
        `Set "migrate: true" in customer-model.yaml to apply it (dropped columns lose their data).`,
    );
    this.name = "ModelMigrationRefused";
  }
}

/** The ALTERs that bring the table to the model; additions always, drops and retypes only with `migrate`. */
export function usersMigration(
  database: string,
  existing: Map<string, string>,
  model: CustomerModel,
  f: ServerFeatures,
  migrate: boolean,
): string[] {
  const table = `${quoteIdent(database)}.users`;
  const fixed = new Set(fixedColumns(f).map(([n]) => n));
  const add: string[] = [];
  const risky: { change: string; sql: string }[] = [];
  for (const [name, type] of usersColumns(model, f)) {
    const have = existing.get(name);
    if (have === undefined) add.push(`ALTER TABLE ${table} ADD COLUMN ${quoteIdent(name)} ${type}`);
    else if (have !== type && !fixed.has(name)) {
      risky.push({
        change: `property "${name}" would change from ${have} to ${type}`,
        sql: `ALTER TABLE ${table} MODIFY COLUMN ${quoteIdent(name)} ${type}`,
      });
    }
  }
  for (const name of existing.keys()) {
    if (!fixed.has(name) && !(name in model)) {
      risky.push({
        change: `property "${name}" was removed (its column and data would be dropped)`,
        sql: `ALTER TABLE ${table} DROP COLUMN ${quoteIdent(name)}`,
      });
    }
  }
  if (risky.length && !migrate) throw new ModelMigrationRefused(risky.map((r) => r.change));
  return [...add, ...risky.map((r) => r.sql)];
}

/** Creates `users` (and `identities`, `profile_map` beside it), or migrates it to the model. */
export async function migrateUsersTable(w: Warehouse, model: CustomerModel, migrate: boolean): Promise<string[]> {
  await createTable(w, "users", usersTableDDL(w.database, model, w.features, w.cluster));
  await ensureIdentityTables(w);
  const rows = (await (
    await w.client.query({
      query: `SELECT name, type FROM system.columns WHERE database = ${quoteString(w.database)} AND table = 'users'`,
      format: "JSONEachRow",
    })
  ).json()) as { name: string; type: string }[];
  const alters = usersMigration(w.database, new Map(rows.map((r) => [r.name, r.type])), model, w.features, migrate);
  for (const query of alters) await w.client.command({ query });
  return alters;
}
