import type { ServerFeatures, Warehouse } from "../../sink/clickhouse/server.ts";
import { createTable, onCluster, quoteIdent, tableEngine } from "../../sink/clickhouse/server.ts";
import { timeCell } from "./customer-model.ts";
import type { IdentityRules } from "./identity-rules.ts";
import type { Link } from "./profiles.ts";
import { identityOf, type SourceIdentity } from "./sources.ts";

type Json = Record<string, unknown>;

/**
 * `identities` (PRODUCT.md §8): one row per source identity (connection, pipeline, and a userId,
 * or an anonymousId for events without one), its whole state at each change with a higher
 * `_version` (ReplacingMergeTree, FINAL gives the current one). `properties` holds every Customer
 * Model value with its event time, which is what `npm run resolve` rebuilds profiles from.
 *
 * `profile_map`: each userId (`u:<id>`) and anonymousId (`a:<id>`) → the profile it leads to now,
 * rewritten whenever a link or a merge changes it, `_version` being the KV revision of the link.
 * Joined to `events` it gives each event's current profile (README "Events and profiles").
 * Both tables use only what ClickHouse 18.16 has (UInt64 milliseconds, no DateTime64 needed).
 */
export function identitiesTableDDL(database: string, f: ServerFeatures, cluster?: string): string {
  const ts = f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64";
  const cols: [string, string][] = [
    ["connection", "String"],
    ["pipeline", "String"],
    ["identity", "String"],
    ["user_id", "Nullable(String)"],
    ["anonymous_ids", "Array(String)"],
    ["anonymous_ids_at", "Array(UInt64)"],
    ["previous_ids", "Array(String)"],
    ["previous_ids_at", "Array(UInt64)"],
    ["identifiers", "String"],
    ["properties", "String"],
    ["profile_id", "String"],
    ["first_seen_ms", "UInt64"],
    ["last_seen_ms", "UInt64"],
    ["updated_at", ts],
    ["_version", "UInt64"],
  ];
  const engine = tableEngine("ReplacingMergeTree", ["_version"], database, "identities", cluster);
  return `CREATE TABLE IF NOT EXISTS ${quoteIdent(database)}.identities${onCluster({ cluster })} (\n${cols
    .map(([n, t]) => `  ${quoteIdent(n)} ${t}`)
    .join(",\n")}\n) ENGINE = ${engine}\nORDER BY (connection, pipeline, identity)`;
}

export function profileMapTableDDL(database: string, f: ServerFeatures, cluster?: string): string {
  const ts = f.dateTime64 ? "DateTime64(3, 'UTC')" : "UInt64";
  const engine = tableEngine("ReplacingMergeTree", ["_version"], database, "profile_map", cluster);
  return `CREATE TABLE IF NOT EXISTS ${quoteIdent(database)}.profile_map${onCluster({ cluster })} (\n  \`identity\` String,\n  \`profile_id\` String,\n  \`updated_at\` ${ts},\n  \`_version\` UInt64\n) ENGINE = ${engine}\nORDER BY identity`;
}

export async function ensureIdentityTables(w: Warehouse): Promise<void> {
  await createTable(w, "identities", identitiesTableDDL(w.database, w.features, w.cluster));
  await createTable(w, "profile_map", profileMapTableDDL(w.database, w.features, w.cluster));
}

/** An identities row: the record's whole state at KV revision `revision`. */
export function identityRow(
  rec: SourceIdentity,
  revision: number,
  rules: IdentityRules,
  f: ServerFeatures,
  now: number,
): Json {
  const anon = Object.entries(rec.anonymousIds).sort((a, b) => a[1] - b[1]);
  const prev = Object.entries(rec.previousIds).sort((a, b) => a[1] - b[1]);
  const identifiers: Json = {};
  for (const name of rules.identifiers) if (rec.props[name] !== undefined) identifiers[name] = rec.props[name]!.v;
  return {
    connection: rec.connection,
    pipeline: rec.pipeline,
    identity: identityOf(rec),
    user_id: rec.userId ?? null,
    anonymous_ids: anon.map(([id]) => id),
    anonymous_ids_at: anon.map(([, t]) => t),
    previous_ids: prev.map(([id]) => id),
    previous_ids_at: prev.map(([, t]) => t),
    identifiers: JSON.stringify(identifiers),
    properties: JSON.stringify(rec.props),
    profile_id: rec.profileId,
    first_seen_ms: rec.firstSeen,
    last_seen_ms: rec.lastSeen,
    updated_at: timeCell(now, f),
    _version: revision,
  };
}

/** A stored identities row back as its record (resolve). */
export function recordOfRow(r: Json): SourceIdentity {
  const zip = (ids: unknown, at: unknown) =>
    Object.fromEntries((ids as string[]).map((id, i) => [id, Number((at as (number | string)[])[i])]));
  const identity = String(r.identity);
  return {
    connection: String(r.connection),
    pipeline: String(r.pipeline),
    ...(identity.startsWith("u:") ? { userId: identity.slice(2) } : { anonymousId: identity.slice(2) }),
    anonymousIds: zip(r.anonymous_ids, r.anonymous_ids_at),
    previousIds: zip(r.previous_ids, r.previous_ids_at),
    props: JSON.parse(String(r.properties)),
    firstSeen: Number(r.first_seen_ms),
    lastSeen: Number(r.last_seen_ms),
    profileId: String(r.profile_id),
  };
}

/** profile_map rows for links, the last link of each id winning (links are in order). */
export function profileMapRows(links: (Link & { revision: number })[], f: ServerFeatures, now: number): Json[] {
  const last = new Map<string, Json>();
  for (const l of links)
    last.set(`${l.kind}:${l.id}`, {
      identity: `${l.kind}:${l.id}`,
      profile_id: l.profileId,
      updated_at: timeCell(now, f),
      _version: l.revision,
    });
  return [...last.values()];
}

/**
 * The documented join (README "Events and profiles"): each events row with the profile its
 * userId (else its anonymousId) leads to now. A plain ANY LEFT JOIN … USING, which 18.16 runs.
 */
export function currentProfileQuery(database: string, where = "1"): string {
  const db = quoteIdent(database);
  return `SELECT message_id, profile_id FROM (
  SELECT message_id, if(ifNull(user_id, '') != '', concat('u:', ifNull(user_id, '')), concat('a:', ifNull(anonymous_id, ''))) AS identity
  FROM ${db}.events WHERE ${where}
) AS e ANY LEFT JOIN (
  SELECT identity, argMax(profile_id, _version) AS profile_id FROM ${db}.profile_map GROUP BY identity
) AS m USING identity`;
}
