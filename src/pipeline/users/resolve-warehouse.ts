import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { Warehouse } from "../../sink/clickhouse/server.ts";
import { quoteIdent, quoteString } from "../../sink/clickhouse/server.ts";
import type { CustomerModel } from "./customer-model.ts";
import { ensureIdentityTables, identityRow, profileMapRows, recordOfRow } from "./identities-table.ts";
import type { IdentityRules } from "./identity-rules.ts";
import { ProfileStore } from "./profiles.ts";
import { rebuildGraph } from "./resolve.ts";
import { identityOf, type SourceIdentity, sourceKey } from "./sources.ts";
import { userRow } from "./users-stage.ts";

type Json = Record<string, unknown>;

export interface ResolveSummary {
  identities: number;
  /** Profiles after the rebuild. */
  profiles: number;
  /** Profiles there were before. */
  profilesBefore: number;
  /** Updates a limit refused (the identity stays out of the profiles; see the reason). */
  refused: { identity: string; reason: string }[];
  seconds: number;
}

export async function insertRows(w: Warehouse, table: string, rows: Json[], chunk = 10_000): Promise<void> {
  const name = `${quoteIdent(w.database)}.${quoteIdent(table)}`;
  for (let i = 0; i < rows.length; i += chunk) {
    const part = rows.slice(i, i + chunk);
    if (w.insertRows) await w.insertRows(name, part);
    else await w.client.insert({ table: name, values: part, format: "JSONEachRow" });
  }
}

export async function query<T = Json>(w: Warehouse, sql: string): Promise<T[]> {
  return (await (await w.client.query({ query: sql, format: "JSONEachRow" })).json()) as T[];
}

/** Mutations run in the background before 20.x has mutations_sync everywhere: wait for them. */
export async function waitForMutations(w: Warehouse, table: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await query<{ n: number | string }>(
      w,
      `SELECT count() AS n FROM system.mutations WHERE database = ${quoteString(w.database)} AND table = ${quoteString(table)} AND is_done = 0`,
    );
    if (Number(left[0]?.n ?? 0) === 0) return;
    if (Date.now() > deadline)
      throw new Error(`mutations of ${w.database}.${table} still running after ${timeoutMs} ms`);
    await Bun.sleep(100);
  }
}

/**
 * `npm run resolve`: reads every source identity from `identities`, rebuilds the graph and the
 * profiles under `rules` (resolve.ts), then writes the new profiles to `users`, deletes the old
 * ones, writes every id's new profile to `profile_map`, and each identity's new profile to
 * `identities` (through its KV record, so later live writes still supersede it).
 */
export async function resolveWarehouse(
  w: Warehouse,
  js: JetStreamClient,
  jsm: JetStreamManager,
  model: CustomerModel,
  rules: IdentityRules,
  replicas = 1,
): Promise<ResolveSummary> {
  const started = Date.now();
  await ensureIdentityTables(w);
  const db = quoteIdent(w.database);
  const records = (await query(w, `SELECT * FROM ${db}.identities FINAL`)).map(recordOfRow);
  const before = await query<{ n: number | string }>(
    w,
    `SELECT count() AS n FROM ${db}.users FINAL WHERE _deleted = 0`,
  );
  const store = await ProfileStore.open(js, replicas);
  const rebuilt = await rebuildGraph(store, jsm, records, rules);
  const live = [...rebuilt.states.values()].filter((s) => !s.profile.mergedInto);
  await insertRows(
    w,
    "users",
    live.map((s) => userRow(s, model, w)),
  );
  // Every row written before has a lower _version: the profiles bucket's revisions only grow.
  const firstNew = Math.min(...[...rebuilt.states.values()].map((s) => s.revision));
  if (Number.isFinite(firstNew)) {
    await w.client.command({ query: `ALTER TABLE ${db}.users DELETE WHERE _version < ${firstNew}` });
    await waitForMutations(w, "users");
  }
  const now = Date.now();
  await insertRows(w, "profile_map", profileMapRows([...rebuilt.links.values()], w.features, now));
  await insertRows(w, "identities", await repoint(store, records, rebuilt.profileOf, rules, w, now));
  return {
    identities: records.length,
    profiles: live.length,
    profilesBefore: Number(before[0]?.n ?? 0),
    refused: rebuilt.refused.map((r) => ({
      identity: identityOf({ userId: r.update.userId, anonymousId: r.update.anonymousId }),
      reason: r.reason,
    })),
    seconds: (Date.now() - started) / 1000,
  };
}

/** Each record's new profile, written to its KV record (compare-and-set) and as an identities row. */
async function repoint(
  store: ProfileStore,
  records: SourceIdentity[],
  profileOf: Map<string, string>,
  rules: IdentityRules,
  w: Warehouse,
  now: number,
): Promise<Json[]> {
  const rows: Json[] = [];
  const kv = store.sources;
  for (const r of records) {
    const profileId = profileOf.get(identityOf(r));
    if (!profileId || !kv) continue;
    const key = sourceKey(r.connection, r.pipeline, identityOf(r));
    for (let attempt = 1; attempt <= 20; attempt++) {
      const e = await kv.get(key);
      const cur = e && e.operation === "PUT" ? (e.json() as SourceIdentity) : r;
      const next = { ...cur, profileId };
      try {
        const revision =
          e && e.operation === "PUT"
            ? await kv.update(key, JSON.stringify(next), e.revision)
            : await kv.create(key, JSON.stringify(next));
        rows.push(identityRow(next, revision, rules, w.features, now));
        break;
      } catch (err) {
        if (attempt === 20) throw err;
      }
    }
  }
  return rows;
}
