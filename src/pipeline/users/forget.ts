import type { JetStreamClient } from "@nats-io/jetstream";
import type { Warehouse } from "../../sink/clickhouse/server.ts";
import { quoteIdent, quoteString } from "../../sink/clickhouse/server.ts";
import { log } from "../../util/log.ts";
import { addTombstones, liftTombstones, openForgotten } from "./forgotten.ts";
import { ensureIdentityTables } from "./identities-table.ts";
import { type IdentityRules, present } from "./identity-rules.ts";
import { identifierKey, keyOf, type Profile, ProfileStore } from "./profiles.ts";
import { query, waitForMutations } from "./resolve-warehouse.ts";
import { sourceKey } from "./sources.ts";

/**
 * Forgetting a user (PRODUCT.md §8, `npm run forget`, `DELETE /v1/users/<id>`): the id is a userId,
 * an anonymousId or a property value (an email); its profiles are found, then, in this order:
 * tombstones for every userId and anonymousId of it (so nothing new lands while the rest goes),
 * its KV entries (identity links, identifier index, the profile and the ones merged into it,
 * source identities), and its rows in users, identities, profile_map and events (a lightweight
 * DELETE on servers that have it, 23.3+; an ALTER TABLE … DELETE mutation, waited for, before).
 */
export interface ForgetReport {
  /** What the id was found as. */
  foundAs: "userId" | "anonymousId" | "property" | "nothing";
  profiles: string[];
  userIds: number;
  anonymousIds: number;
  tombstones: number;
  kv: { identities: number; profiles: number; sources: number };
  rows: { users: number; identities: number; profile_map: number; events: number };
}

export class ForgetError extends Error {
  constructor(
    readonly code: "not_found" | "too_many",
    message: string,
  ) {
    super(message);
    this.name = "ForgetError";
  }
}

const lightweightDelete = (version: string) => {
  const [major = 0, minor = 0] = version.split(".").map(Number);
  return major > 23 || (major === 23 && minor >= 3);
};

/** Reads a profile and follows merges to the live one. */
async function liveProfile(store: ProfileStore, id: string | undefined): Promise<Profile | undefined> {
  for (let hops = 0; id && hops < 64; hops++) {
    const e = await store.store.get(id);
    const p = e?.operation === "PUT" ? (e.json() as Profile) : undefined;
    if (!p?.mergedInto) return p;
    id = p.mergedInto;
  }
  return undefined;
}

/** A value held by more profiles than this is no person's: refused rather than mass-deleted. */
const MAX_PROFILES = 100;

/**
 * The profiles `id` designates: the one its userId or anonymousId leads to; else every profile
 * holding it as the value of an identifier or of `email` (through the identifier index, and in
 * users FINAL, so profiles kept apart that share an email all go).
 */
async function find(w: Warehouse, store: ProfileStore, id: string, rules: IdentityRules) {
  const link = async (key: string) => {
    const e = await store.ids.get(key);
    return e?.operation === "PUT" ? liveProfile(store, e.string()) : undefined;
  };
  const byUser = await link(keyOf("u", id));
  if (byUser) return { profiles: [byUser], foundAs: "userId" as const };
  const byAnon = await link(keyOf("a", id));
  if (byAnon) return { profiles: [byAnon], foundAs: "anonymousId" as const };
  const found = new Map<string, Profile>();
  for (const name of rules.identifiers) {
    const p = await link(identifierKey(name, id));
    if (p && p.props[name]?.v === id) found.set(p.id, p);
  }
  const db = quoteIdent(w.database);
  // Only properties that identify a person: `forget free` must never match everyone on a plan.
  const names = [...new Set([...rules.identifiers, "email"])];
  const columns = await query<{ name: string }>(
    w,
    `SELECT name FROM system.columns WHERE database = ${quoteString(w.database)} AND table = 'users' AND type = 'Nullable(String)' AND name IN (${names.map(quoteString).join(", ")})`,
  );
  if (columns.length) {
    const rows = await query<{ profile_id: string }>(
      w,
      `SELECT profile_id FROM ${db}.users FINAL WHERE ${columns.map((c) => `${quoteIdent(c.name)} = ${quoteString(id)}`).join(" OR ")} LIMIT ${MAX_PROFILES + 1}`,
    );
    if (rows.length > MAX_PROFILES)
      throw new ForgetError(
        "too_many",
        `more than ${MAX_PROFILES} profiles hold "${id}": forget them by userId or anonymousId`,
      );
    for (const r of rows) {
      const p = await liveProfile(store, r.profile_id);
      if (p) found.set(p.id, p);
    }
  }
  return found.size ? { profiles: [...found.values()], foundAs: "property" as const } : undefined;
}

export async function forgetUser(
  w: Warehouse,
  js: JetStreamClient,
  id: string,
  rules: IdentityRules,
  replicas = 1,
  settleMs = 2000,
): Promise<ForgetReport> {
  await ensureIdentityTables(w);
  const store = await ProfileStore.open(js, replicas);
  const found = await find(w, store, id, rules);
  const db = quoteIdent(w.database);
  const profiles: Profile[] = [];
  for (const live of found?.profiles ?? []) {
    profiles.push(live);
    for (const m of live.merged ?? []) {
      const e = await store.store.get(m);
      if (e?.operation === "PUT") profiles.push(e.json() as Profile);
    }
  }
  const profileIds = found ? profiles.map((p) => p.id) : [];
  // Source identities of these profiles (their anonymous ids include any the profile dropped past its limit).
  const userIds = new Set<string>();
  const anonIds = new Set<string>();
  for (const p of profiles) {
    if (p.userId !== undefined) userIds.add(p.userId);
    for (const u of p.userIds ?? []) userIds.add(u);
    for (const a of p.anonymousIds) anonIds.add(a);
  }
  if (!found) {
    // Not in the graph (already forgotten, or never resolved): what the warehouse knows of the id.
    userIds.add(id);
    anonIds.add(id);
  }
  const list = (s: Iterable<string>) => [...s].map(quoteString).join(", ") || "''";
  const sources = await query<{ connection: string; pipeline: string; identity: string; anonymous_ids: string[] }>(
    w,
    `SELECT connection, pipeline, identity, anonymous_ids FROM ${db}.identities FINAL
     WHERE profile_id IN (${list(profileIds)}) OR identity IN (${list([...[...userIds].map((u) => `u:${u}`), ...[...anonIds].map((a) => `a:${a}`)])})`,
  );
  for (const s of sources) {
    if (s.identity.startsWith("u:")) userIds.add(s.identity.slice(2));
    else anonIds.add(s.identity.slice(2));
    for (const a of s.anonymous_ids) anonIds.add(a);
  }
  if (!found && !sources.length) {
    const events = await query<{ n: string | number }>(
      w,
      `SELECT count() AS n FROM ${db}.events WHERE user_id = ${quoteString(id)} OR anonymous_id = ${quoteString(id)}`,
    );
    if (!Number(events[0]?.n))
      throw new ForgetError("not_found", `no user, anonymous id or identifier "${id}" is known`);
  }

  const tombstoneIds = [
    ...[...userIds].map((u) => ({ kind: "u" as const, id: u })),
    ...[...anonIds].map((a) => ({ kind: "a" as const, id: a })),
  ];
  await addTombstones(await openForgotten(js, replicas), tombstoneIds);
  // Every pipeline process sees the tombstones within milliseconds; a batch it had selected just
  // before is written within its max age: let both pass before deleting, so nothing lands after.
  await Bun.sleep(settleMs);

  const kv = { identities: 0, profiles: 0, sources: 0 };
  const purge = async (bucket: typeof store.ids, key: string, what: keyof typeof kv) => {
    const e = await bucket.get(key);
    if (e?.operation !== "PUT") return;
    await bucket.purge(key);
    kv[what]++;
  };
  for (const u of userIds) await purge(store.ids, keyOf("u", u), "identities");
  for (const a of anonIds) await purge(store.ids, keyOf("a", a), "identities");
  for (const p of profiles)
    for (const name of rules.identifiers) {
      const v = p.props[name]?.v;
      if (!present(v)) continue;
      const e = await store.ids.get(identifierKey(name, v));
      if (e?.operation === "PUT" && profileIds.includes(e.string()))
        await purge(store.ids, identifierKey(name, v), "identities");
    }
  for (const p of profileIds) await purge(store.store, p, "profiles");
  if (store.sources)
    for (const s of sources) await purge(store.sources, sourceKey(s.connection, s.pipeline, s.identity), "sources");

  const where = {
    users: `profile_id IN (${list(profileIds)})`,
    identities: `profile_id IN (${list(profileIds)}) OR identity IN (${list(tombstoneIds.map((t) => `${t.kind}:${t.id}`))})`,
    profile_map: `identity IN (${list(tombstoneIds.map((t) => `${t.kind}:${t.id}`))})`,
    events: `user_id IN (${list(userIds)}) OR anonymous_id IN (${list(anonIds)})`,
  };
  const rows = { users: 0, identities: 0, profile_map: 0, events: 0 };
  for (const table of Object.keys(rows) as (keyof typeof rows)[]) {
    const n = await query<{ n: string | number }>(w, `SELECT count() AS n FROM ${db}.${table} WHERE ${where[table]}`);
    rows[table] = Number(n[0]?.n ?? 0);
    if (!rows[table]) continue;
    if (lightweightDelete(w.features.version))
      await w.client.command({ query: `DELETE FROM ${db}.${table} WHERE ${where[table]}` });
    else {
      await w.client.command({ query: `ALTER TABLE ${db}.${table} DELETE WHERE ${where[table]}` });
      await waitForMutations(w, table);
    }
  }
  const report: ForgetReport = {
    foundAs: found?.foundAs ?? "nothing",
    profiles: profileIds,
    userIds: userIds.size,
    anonymousIds: anonIds.size,
    tombstones: tombstoneIds.length,
    kv,
    rows,
  };
  // The audit line names profiles and counts, never the ids themselves.
  log.info("user forgotten", { audit: "forget", ...report });
  return report;
}

/** Lifts the tombstones of the forget that covered `id`: its events are taken again from now on. */
export async function unforgetUser(js: JetStreamClient, id: string, replicas = 1): Promise<{ tombstones: number }> {
  const tombstones = await liftTombstones(await openForgotten(js, replicas), id);
  log.info("user un-forgotten", { audit: "forget --undo", tombstones });
  return { tombstones };
}
