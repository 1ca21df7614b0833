import { createHash } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import type { JetStreamClient } from "@nats-io/jetstream";
import { log } from "../../util/log.ts";
import { kvOps, PROFILE_LIMITS, ProfileStoreUnavailable, SOURCES_BUCKET, type ProfileUpdate } from "./profiles.ts";
import { isWrongLastSequence } from "../../bus/errors.ts";

/**
 * Source identities (PRODUCT.md §8): what one connection's users pipeline has learnt about one
 * userId (or, for events without one, one anonymousId), kept so profiles can be rebuilt from them
 * under other rules (`npm run resolve`). A record is a fold of its events in which the order of
 * arrival does not matter: each property keeps its newest value (timestamp, then messageId), and
 * `f`, the earliest time the current value was carried; each anonymous and previous id the earliest
 * time it was linked; first and last seen the oldest and newest event times. Folding an event twice
 * changes nothing, so a record is written with compare-and-set and simply re-folded on a conflict.
 */
export interface SourceIdentity {
  connection: string;
  pipeline: string;
  userId?: string;
  /** Set only when there is no userId: the identity is this anonymous id. */
  anonymousId?: string;
  /** anonymous id → earliest event time (ms) that linked it to this userId. */
  anonymousIds: Record<string, number>;
  /** alias previousId → earliest event time (ms). */
  previousIds: Record<string, number>;
  /** value, newest event time and messageId, and `f`: the earliest event time that carried this value. */
  props: Record<string, { v: unknown; t: number; m: string; f: number }>;
  firstSeen: number;
  lastSeen: number;
  /** The profile its latest event went to (a merge later may have folded it into another). */
  profileId: string;
}

/** What one event tells its source identity: the profile update it made, and the profile it went to. */
export interface SourceEvent extends ProfileUpdate {
  profileId: string;
}

/** `u:<userId>` or `a:<anonymousId>`: the identity an event belongs to, as the identities and profile_map tables name it. */
export const identityOf = (e: { userId?: string; anonymousId?: string }): string =>
  e.userId !== undefined ? `u:${e.userId}` : `a:${e.anonymousId}`;

export const sourceKey = (connection: string, pipeline: string, identity: string) =>
  `s.${createHash("sha256").update(`${connection}\0${pipeline}\0${identity}`).digest("base64url").slice(0, 32)}`;

const earliest = (m: Record<string, number>, id: string, t: number): boolean => {
  if (m[id] !== undefined && m[id]! <= t) return false;
  m[id] = t;
  return true;
};

/** Folds one event into a record (creating it when undefined); true when something changed. */
export function foldSource(
  rec: SourceIdentity | undefined,
  connection: string,
  pipeline: string,
  e: SourceEvent,
): { record: SourceIdentity; changed: boolean } {
  let changed = !rec;
  const r: SourceIdentity = rec
    ? { ...rec, anonymousIds: { ...rec.anonymousIds }, previousIds: { ...rec.previousIds }, props: { ...rec.props } }
    : {
        connection,
        pipeline,
        ...(e.userId !== undefined ? { userId: e.userId } : { anonymousId: e.anonymousId }),
        anonymousIds: {},
        previousIds: {},
        props: {},
        firstSeen: e.timestamp,
        lastSeen: e.timestamp,
        profileId: e.profileId,
      };
  if (e.userId !== undefined && e.anonymousId !== undefined) {
    // Within the profile's limit: the earliest links are the ones kept (they decide replays).
    if (r.anonymousIds[e.anonymousId] !== undefined || Object.keys(r.anonymousIds).length < PROFILE_LIMITS.anonymousIds)
      changed = earliest(r.anonymousIds, e.anonymousId, e.timestamp) || changed;
  }
  if (e.previousId !== undefined) changed = earliest(r.previousIds, e.previousId, e.timestamp) || changed;
  for (const [name, v] of Object.entries(e.props)) {
    if (v === undefined) continue;
    const cur = r.props[name];
    const same = cur !== undefined && JSON.stringify(cur.v) === JSON.stringify(v);
    if (same && e.timestamp < cur.f) {
      r.props[name] = { ...cur, f: e.timestamp };
      changed = true;
    }
    if (cur && (cur.t > e.timestamp || (cur.t === e.timestamp && cur.m >= e.messageId))) continue;
    r.props[name] = { v, t: e.timestamp, m: e.messageId, f: same ? Math.min(cur.f, e.timestamp) : e.timestamp };
    changed = true;
  }
  if (e.timestamp < r.firstSeen) (r.firstSeen = e.timestamp), (changed = true);
  if (e.timestamp > r.lastSeen) (r.lastSeen = e.timestamp), (changed = true);
  if (e.timestamp >= r.lastSeen && r.profileId !== e.profileId) (r.profileId = e.profileId), (changed = true);
  return { record: r, changed };
}

const enc = new TextEncoder();
/** Under NATS' default 1 MiB max_payload with room to spare. */
const MAX_RECORD_BYTES = 768 * 1024;

/** The records in KV, shared by every node. */
export class SourceStore {
  constructor(readonly kv: KV) {}

  static async open(js: JetStreamClient, replicas = 1): Promise<SourceStore> {
    return new SourceStore(await new Kvm(js).create(SOURCES_BUCKET, { history: 1, replicas }));
  }

  /** Folds a batch's events into their records; returns each changed record with its KV revision. */
  async record(
    connection: string,
    pipeline: string,
    events: SourceEvent[],
  ): Promise<{ record: SourceIdentity; revision: number }[]> {
    const byIdentity = new Map<string, SourceEvent[]>();
    for (const e of events) {
      const id = identityOf(e);
      const list = byIdentity.get(id);
      if (list) list.push(e);
      else byIdentity.set(id, [e]);
    }
    const out: { record: SourceIdentity; revision: number }[] = [];
    await Promise.all(
      [...byIdentity].map(async ([identity, list]) => {
        const r = await this.#fold(sourceKey(connection, pipeline, identity), connection, pipeline, list);
        if (r) out.push(r);
      }),
    );
    return out;
  }

  async #fold(key: string, connection: string, pipeline: string, list: SourceEvent[]) {
    for (let attempt = 1; ; attempt++) {
      kvOps.reads++;
      const e = await this.kv.get(key).catch((err) => {
        throw new ProfileStoreUnavailable(err);
      });
      let rec = e && e.operation === "PUT" ? (e.json() as SourceIdentity) : undefined;
      let changed = false;
      for (const ev of list) {
        const f = foldSource(rec, connection, pipeline, ev);
        rec = f.record;
        changed ||= f.changed;
      }
      if (!changed || !rec) return undefined;
      const data = enc.encode(JSON.stringify(rec));
      // Bounded by the profile's own limits, so only a pathological identity gets here: it is
      // kept as it was (resolve then knows it less well) rather than failing its batch for ever.
      if (data.length > MAX_RECORD_BYTES) {
        log.warn("source identity too large to store; kept as it was", { key, bytes: data.length });
        return undefined;
      }
      try {
        kvOps.writes++;
        const revision =
          e && e.operation === "PUT" ? await this.kv.update(key, data, e.revision) : await this.kv.create(key, data);
        return { record: rec, revision };
      } catch (err) {
        if (attempt >= 20 || !isWrongLastSequence(err)) throw err;
        await Bun.sleep(Math.random() * 10 * attempt);
      }
    }
  }

  /** Removes records (forget). */
  async remove(keys: string[]): Promise<number> {
    let n = 0;
    for (const k of keys) {
      const e = await this.kv.get(k);
      if (e?.operation !== "PUT") continue;
      await this.kv.purge(k);
      n++;
    }
    return n;
  }
}
