import { createHash, randomUUID } from "node:crypto";
import { Kvm, type KV } from "@nats-io/kv";
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import { NO_IDENTIFIERS, type IdentityRules, identifierText, present, sameByIdentifiers } from "./identity-rules.ts";

/**
 * Identity resolution: which profile a userId or anonymousId belongs to, and each profile's
 * properties, kept in JetStream KV so every node sees the same graph. Writes are
 * compare-and-set on the KV revision: a node that raced another re-reads and re-applies its
 * batch, which is safe because applying an event twice gives the same profile.
 *
 * Rules (README "Users"): a userId update goes to that user's profile; an anonymousId-only
 * event to the anonymous profile; an event carrying both links them — the anonymous profile
 * becomes the user's (when the user had none) or is merged into it. `alias` merges previousId's
 * profile into userId's. Two identified users are never merged by an anonymousId. Every
 * property keeps the value with the latest event timestamp (messageId breaks ties), so order
 * of arrival does not matter. With identifiers (identity-rules.ts), each identifier value is
 * indexed (`i.<hash>` → profile) and a profile whose value is already indexed to another profile
 * is merged with it when the rules say they are one person.
 */
export interface Profile {
  id: string;
  userId?: string;
  anonymousIds: string[];
  firstSeen: number;
  lastSeen: number;
  updatedAt: number;
  /** value, event time (ms), messageId of the event that set it */
  props: Record<string, { v: unknown; t: number; m: string }>;
  /** Set when this profile was merged into another: a tombstone. */
  mergedInto?: string;
  /** Anonymous ids dropped from `anonymousIds` (oldest first) to keep it within the limit; their identities still lead here. */
  anonymousIdsDropped?: number;
  /** Other userIds merged in (by alias, or by identifiers with mergeUserIds): their identities lead here. */
  userIds?: string[];
  /** Profiles merged into this one (their tombstones): forgetting this profile removes them too. */
  merged?: string[];
}

/**
 * What a profile may carry (README "Users", Limits), so its KV value stays well under NATS'
 * max_payload (1 MiB by default) and its users row stays small: an event that would break one is
 * refused on its own (dead-lettered with the reason) and the profile keeps its last good state.
 */
export const PROFILE_LIMITS = {
  /** userId, anonymousId and previousId, in UTF-8 bytes. */
  idBytes: 1024,
  /** Anonymous ids listed on a profile; beyond it the oldest are dropped and counted. */
  anonymousIds: 100,
  /** The profile as stored in KV (JSON, UTF-8 bytes). */
  profileBytes: 256 * 1024,
};

const fmt = (n: number) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");

/** Why an id cannot be used, or undefined. */
export function idProblem(kind: string, id: string): string | undefined {
  const n = Buffer.byteLength(id);
  if (n > PROFILE_LIMITS.idBytes)
    return `${kind} is ${fmt(n)} bytes, more than the ${fmt(PROFILE_LIMITS.idBytes)} an id may have`;
  return undefined;
}

/** An update that cannot be applied for what it carries: refused on its own, the batch goes on. */
export class ProfileRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProfileRefused";
  }
}

/** The KV buckets could not be read: nothing is wrong with the batch, it is retried. */
export class ProfileStoreUnavailable extends Error {
  constructor(override readonly cause: unknown) {
    super(`profile store unavailable: ${String((cause as Error)?.message ?? cause)}`);
    this.name = "ProfileStoreUnavailable";
  }
}

export interface ProfileUpdate {
  userId?: string;
  anonymousId?: string;
  /** alias: the id being merged into userId. */
  previousId?: string;
  timestamp: number;
  messageId: string;
  props: Record<string, unknown>;
}

export interface ProfileState {
  profile: Profile;
  /** KV revision of this state: increases with every change, the users row's version. */
  revision: number;
}

/** An id that now leads to another profile (for the profile_map table). */
export interface Link {
  kind: "u" | "a";
  id: string;
  profileId: string;
}

export interface ApplyOutcome {
  /** Every profile the applied updates touched, as stored. */
  states: ProfileState[];
  /** Updates refused for what they carry (by index in the batch), with the reason; none of their changes were kept. */
  refused: { index: number; reason: string }[];
  /** By index in the batch: the profile each applied update ended in (undefined: refused). */
  targets: (string | undefined)[];
  /** Every userId and anonymousId whose profile changed, with its new profile and the KV revision of that link. */
  links: (Link & { revision: number })[];
}

export class ProfileConflictError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProfileConflictError";
  }
}

/** The identities bucket's key of a userId ("u"), anonymousId ("a") or identifier value ("i": `name\0value`). */
export const keyOf = (kind: "u" | "a" | "i", id: string) =>
  `${kind}.${createHash("sha256").update(id).digest("base64url").slice(0, 32)}`;
export const identifierKey = (name: string, v: unknown) => keyOf("i", `${name}\0${identifierText(v)}`);

/** KV reads and writes made, for tests and benchmarks (incrementality: per event, not per profile). */
export const kvOps = { reads: 0, writes: 0 };
const enc = new TextEncoder();

interface Slot<T> {
  value: T | undefined;
  revision: number;
  dirty: boolean;
}

const copy = (p: Profile): Profile => ({
  ...p,
  anonymousIds: [...p.anonymousIds],
  props: { ...p.props },
  ...(p.userIds && { userIds: [...p.userIds] }),
  ...(p.merged && { merged: [...p.merged] }),
});

/** Property entries are never changed in place (setProp replaces them): their sizes are measured once. */
const entryBytes = new WeakMap<object, number>();
const bytesOf = (v: unknown) => Buffer.byteLength(JSON.stringify(v) ?? "null");

/**
 * The bytes of JSON.stringify(p) (to within a few), measured without serialising the whole
 * profile for every update: the scalar fields, then each property entry (measured once) and id.
 */
export function profileBytes(p: Profile): number {
  let n = bytesOf({ ...p, props: {}, anonymousIds: [] });
  for (const [k, e] of Object.entries(p.props)) {
    let b = entryBytes.get(e);
    if (b === undefined) entryBytes.set(e, (b = bytesOf(e)));
    n += bytesOf(k) + b + 2;
  }
  for (const id of p.anonymousIds) n += bytesOf(id) + 1;
  return n;
}

/** Keeps the newest PROFILE_LIMITS.anonymousIds ids, counting those dropped. */
function capAnonymousIds(p: Profile): void {
  const over = p.anonymousIds.length - PROFILE_LIMITS.anonymousIds;
  if (over <= 0) return;
  p.anonymousIds.splice(0, over);
  p.anonymousIdsDropped = (p.anonymousIdsDropped ?? 0) + over;
}

/** What one update changed, so a refused update can be undone. */
interface Journal {
  /** Each profile slot as it was before the update first changed it (undefined: there was none). */
  profiles: Map<string, Slot<Profile> | undefined>;
  identities: Map<string, { value: string | undefined; dirty: boolean }>;
  touched: string[];
  links: number;
}

/** One attempt at applying a batch: reads through, writes at the end. */
class Attempt {
  readonly identities = new Map<string, Slot<string>>();
  readonly profiles = new Map<string, Slot<Profile>>();
  readonly touched = new Set<string>();
  readonly links: Link[] = [];

  /** Profiles created or merged in this attempt: an update that did neither and changed no identifier value needs no matching. */
  reshaped = 0;
  /** Profiles an identity led to that were not in the store (recreated empty by resolve). */
  readonly missing = new Set<string>();

  constructor(
    readonly ids: KV,
    readonly store: KV,
    readonly now: number,
    readonly attempt = 1,
  ) {}

  async prefetch(keys: string[]): Promise<void> {
    await Promise.all([...new Set(keys)].filter((k) => !this.identities.has(k)).map((k) => this.#readIdentity(k)));
    const pids = [...this.identities.values()]
      .map((s) => s.value)
      .filter((v): v is string => !!v && !this.profiles.has(v));
    await Promise.all([...new Set(pids)].map((id) => this.#readProfile(id)));
  }

  #journal?: Journal;

  async #readIdentity(key: string): Promise<Slot<string>> {
    kvOps.reads++;
    const e = await this.ids.get(key).catch((err) => {
      throw new ProfileStoreUnavailable(err);
    });
    const slot = {
      value: e && e.operation === "PUT" ? e.string() : undefined,
      revision: e?.revision ?? 0,
      dirty: false,
    };
    this.identities.set(key, slot);
    return slot;
  }

  async #readProfile(id: string): Promise<Slot<Profile>> {
    kvOps.reads++;
    const e = await this.store.get(id).catch((err) => {
      throw new ProfileStoreUnavailable(err);
    });
    const slot = {
      value: e && e.operation === "PUT" ? (e.json() as Profile) : undefined,
      revision: e?.revision ?? 0,
      dirty: false,
    };
    this.profiles.set(id, slot);
    return slot;
  }

  async identity(key: string): Promise<string | undefined> {
    return (this.identities.get(key) ?? (await this.#readIdentity(key))).value;
  }

  /** Starts recording one update's changes. */
  begin(): void {
    this.#journal = { profiles: new Map(), identities: new Map(), touched: [], links: this.links.length };
  }

  /** The profiles the current update changed, as they are now. */
  edited(): Profile[] {
    return [...this.#journal!.profiles.keys()]
      .map((id) => this.profiles.get(id)?.value)
      .filter((p): p is Profile => !!p);
  }

  commit(): void {
    this.#journal = undefined;
  }

  /** Undoes every change of the current update. */
  rollback(): void {
    const j = this.#journal!;
    for (const [id, slot] of j.profiles) {
      if (slot) this.profiles.set(id, slot);
      else this.profiles.delete(id);
    }
    for (const [key, was] of j.identities) Object.assign(this.identities.get(key)!, was);
    for (const id of j.touched) this.touched.delete(id);
    this.links.length = j.links;
    this.#journal = undefined;
  }

  #save(id: string): void {
    const j = this.#journal;
    if (!j || j.profiles.has(id)) return;
    const slot = this.profiles.get(id);
    j.profiles.set(id, slot && { ...slot, value: slot.value && copy(slot.value) });
  }

  /** Call before changing `p` in place. */
  edit(p: Profile): Profile {
    this.#save(p.id);
    return p;
  }

  touch(id: string): void {
    if (this.touched.has(id)) return;
    this.touched.add(id);
    this.#journal?.touched.push(id);
  }

  /** Points an identity at a profile; `link` names a userId or anonymousId for the profile map. */
  setIdentity(key: string, profileId: string, link?: Omit<Link, "profileId">): void {
    const slot = this.identities.get(key)!;
    if (slot.value === profileId) return;
    if (link) this.links.push({ ...link, profileId });
    const j = this.#journal;
    if (j && !j.identities.has(key)) j.identities.set(key, { value: slot.value, dirty: slot.dirty });
    slot.value = profileId;
    slot.dirty = true;
  }

  /** The live profile an identity points at, following merges. */
  async resolve(key: string): Promise<Profile | undefined> {
    let id = await this.identity(key);
    for (let hops = 0; id && hops < 16; hops++) {
      const slot = this.profiles.get(id) ?? (await this.#readProfile(id));
      // An identity written by a node that died before writing its profile: start it afresh.
      let p = slot.value;
      if (!p) {
        this.missing.add(id);
        p = this.create(id);
      }
      if (!p.mergedInto) return p;
      id = p.mergedInto;
    }
    return undefined;
  }

  create(id: string = randomUUID()): Profile {
    this.reshaped++;
    const p: Profile = {
      id,
      anonymousIds: [],
      firstSeen: Number.MAX_SAFE_INTEGER,
      lastSeen: 0,
      updatedAt: this.now,
      props: {},
    };
    this.#save(id);
    const slot = this.profiles.get(id);
    if (slot) slot.value = p;
    else this.profiles.set(id, { value: p, revision: 0, dirty: true });
    this.changed(p);
    return p;
  }

  /** After changing `p` (which edit() saved first). */
  changed(p: Profile): void {
    p.updatedAt = this.now;
    this.profiles.get(p.id)!.dirty = true;
    this.touch(p.id);
  }

  async write(): Promise<void> {
    // Identities first: a profile is reachable only once written, and one written without its
    // identity (a crash in between) is simply recreated on the next event.
    const put = async <T>(kv: KV, key: string, slot: Slot<T>, data: string) => {
      if (!slot.dirty) return;
      kvOps.writes++;
      try {
        slot.revision =
          slot.revision === 0
            ? await kv.create(key, enc.encode(data))
            : await kv.update(key, enc.encode(data), slot.revision);
      } catch (e) {
        const m = String((e as Error).message);
        if (/wrong last sequence|key exists|exists/i.test(m)) throw new ProfileConflictError(`${key}: ${m}`);
        throw e;
      }
      slot.dirty = false;
    };
    await Promise.all([...this.identities].map(([k, s]) => put(this.ids, k, s, s.value!)));
    await Promise.all([...this.profiles].map(([k, s]) => put(this.store, k, s, JSON.stringify(s.value))));
  }
}

function setProp(p: Profile, name: string, v: unknown, t: number, m: string): boolean {
  const cur = p.props[name];
  if (cur && (cur.t > t || (cur.t === t && cur.m > m))) return false;
  if (cur && cur.t === t && cur.m === m && JSON.stringify(cur.v) === JSON.stringify(v)) return false;
  p.props[name] = { v, t, m };
  return true;
}

export const IDENTITIES_BUCKET = "tributary_identities";
export const PROFILES_BUCKET = "tributary_profiles";

export const SOURCES_BUCKET = "tributary_sources";

export class ProfileStore {
  constructor(
    readonly ids: KV,
    readonly store: KV,
    /** Source identities (sources.ts), kept beside the graph they rebuild. */
    readonly sources?: KV,
  ) {}

  static async open(js: JetStreamClient, replicas = 1): Promise<ProfileStore> {
    const kvm = new Kvm(js);
    const opts = { history: 1, replicas };
    return new ProfileStore(
      await kvm.create(IDENTITIES_BUCKET, opts),
      await kvm.create(PROFILES_BUCKET, opts),
      await kvm.create(SOURCES_BUCKET, opts),
    );
  }

  /**
   * Empties the identity graph and the profiles (`npm run resolve` rebuilds them): their streams
   * are purged, so revisions go on increasing and rows written afterwards replace older ones.
   */
  static async clear(jsm: JetStreamManager): Promise<void> {
    for (const b of [IDENTITIES_BUCKET, PROFILES_BUCKET]) await jsm.streams.purge(`KV_${b}`);
  }

  /**
   * Applies the updates in order, each on its own: one that breaks a limit (or fails for any
   * reason of its own) is undone and reported in `refused`, the others are applied and stored.
   * Throws only when the store itself fails (ProfileStoreUnavailable, or a KV write error), after
   * which the whole batch is retried.
   */
  async apply(
    updates: ProfileUpdate[],
    rules: IdentityRules = NO_IDENTIFIERS,
    maxAttempts = 20,
  ): Promise<ApplyOutcome> {
    for (let attempt = 1; ; attempt++) {
      const a = new Attempt(this.ids, this.store, Date.now(), attempt);
      try {
        await a.prefetch(
          updates.flatMap((u) => [
            ...[u.userId && keyOf("u", u.userId), u.anonymousId && keyOf("a", u.anonymousId)].filter(
              (k): k is string => !!k,
            ),
            ...rules.identifiers.filter((n) => present(u.props[n])).map((n) => identifierKey(n, u.props[n])),
          ]),
        );
        const refused: ApplyOutcome["refused"] = [];
        const targets: ApplyOutcome["targets"] = [];
        let slice = performance.now();
        for (const [index, u] of updates.entries()) {
          a.begin();
          try {
            targets[index] = await this.#applyOne(a, u, rules);
            for (const p of a.edited()) {
              if (p.mergedInto) continue; // a tombstone only gains its mergedInto
              const size = profileBytes(p);
              if (size > PROFILE_LIMITS.profileBytes)
                throw new ProfileRefused(
                  `the profile would be ${fmt(size)} bytes, more than its limit of ${fmt(PROFILE_LIMITS.profileBytes)}`,
                );
            }
            a.commit();
          } catch (e) {
            if (e instanceof ProfileStoreUnavailable || e instanceof ProfileConflictError) throw e;
            a.rollback();
            targets[index] = undefined;
            refused.push({
              index,
              reason:
                e instanceof ProfileRefused
                  ? e.message
                  : `the profile update failed: ${String((e as Error)?.message ?? e)}`,
            });
          }
          // A long batch lets the loop breathe: heartbeats, HTTP answers and other pipelines go on.
          if (performance.now() - slice > 20) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            slice = performance.now();
          }
        }
        await a.write();
        const states = [...a.touched].map((id) => {
          const slot = a.profiles.get(id)!;
          return { profile: slot.value!, revision: slot.revision };
        });
        const links = a.links.map((l) => ({ ...l, revision: a.identities.get(keyOf(l.kind, l.id))?.revision ?? 0 }));
        return { states, refused, targets, links };
      } catch (e) {
        if (!(e instanceof ProfileConflictError) || attempt >= maxAttempts) throw e;
        await Bun.sleep(Math.random() * 10 * attempt);
      }
    }
  }

  /** Applies one update; the id of the profile it ended in. */
  async #applyOne(a: Attempt, u: ProfileUpdate, rules: IdentityRules): Promise<string> {
    for (const [kind, id] of [
      ["userId", u.userId],
      ["anonymousId", u.anonymousId],
      ["previousId", u.previousId],
    ] as const) {
      const problem = id === undefined ? undefined : idProblem(kind, id);
      if (problem) throw new ProfileRefused(problem);
    }
    const reshaped = a.reshaped;
    const uKey = u.userId !== undefined ? keyOf("u", u.userId) : undefined;
    const aKey = u.anonymousId !== undefined ? keyOf("a", u.anonymousId) : undefined;
    const byUser = uKey ? await a.resolve(uKey) : undefined;
    const byAnon = aKey ? await a.resolve(aKey) : undefined;
    let target: Profile;
    if (uKey) {
      if (byUser) {
        target = a.edit(byUser);
        if (byAnon && byAnon.id !== byUser.id && byAnon.userId === undefined) await this.#merge(a, byAnon, target);
      } else {
        target = a.edit(byAnon && byAnon.userId === undefined ? byAnon : a.create());
        target.userId = u.userId;
        a.changed(target);
      }
      a.setIdentity(uKey, target.id, { kind: "u", id: u.userId! });
    } else {
      target = a.edit(byAnon ?? a.create());
    }
    // Link the anonymous id, unless it already belongs to another identified user.
    if (aKey && u.anonymousId !== undefined) {
      const owner = await a.resolve(aKey);
      if (!owner || owner.id === target.id || owner.userId === undefined || owner.userId === target.userId) {
        a.setIdentity(aKey, target.id, { kind: "a", id: u.anonymousId });
        if (!target.anonymousIds.includes(u.anonymousId)) {
          target.anonymousIds.push(u.anonymousId);
          capAnonymousIds(target);
          a.changed(target);
        }
      }
    }
    if (u.previousId !== undefined) {
      const prev = (await a.resolve(keyOf("u", u.previousId))) ?? (await a.resolve(keyOf("a", u.previousId)));
      if (prev && prev.id !== target.id) await this.#merge(a, prev, target);
      else if (!prev) {
        // An alias naming an id never seen: remember it, so its later events find this user.
        await a.identity(keyOf("a", u.previousId));
        a.setIdentity(keyOf("a", u.previousId), target.id, { kind: "a", id: u.previousId });
        if (!target.anonymousIds.includes(u.previousId)) {
          target.anonymousIds.push(u.previousId);
          capAnonymousIds(target);
          a.changed(target);
        }
      }
    }
    let changed = false;
    let identifierChanged = false;
    for (const [name, v] of Object.entries(u.props))
      if (v !== undefined && setProp(target, name, v, u.timestamp, u.messageId)) {
        changed = true;
        identifierChanged ||= rules.identifiers.includes(name);
      }
    if (u.timestamp < target.firstSeen) (target.firstSeen = u.timestamp), (changed = true);
    if (u.timestamp > target.lastSeen) (target.lastSeen = u.timestamp), (changed = true);
    if (changed) a.changed(target);
    // The index already holds what an unchanged profile's values match; only a change can match anew.
    if (rules.identifiers.length && (identifierChanged || a.reshaped !== reshaped))
      target = await this.#matchIdentifiers(a, target, rules);
    a.touch(target.id);
    return target.id;
  }

  /**
   * Merges `p` with every profile an identifier value of it is indexed to, when the rules make
   * them one person, until nothing more matches (a merge brings in values that may match again);
   * then indexes its values. A value indexed to a profile kept apart stays with that profile
   * unless it no longer holds the value. The profile that carries a userId survives a merge, else
   * the one already indexed. Returns the surviving profile.
   */
  async #matchIdentifiers(a: Attempt, p: Profile, rules: IdentityRules): Promise<Profile> {
    for (let round = 0; round < 16; round++) {
      let merged = false;
      for (const name of rules.identifiers) {
        const v = p.props[name]?.v;
        if (!present(v)) continue;
        const key = identifierKey(name, v);
        const other = await a.resolve(key);
        // Indexed to a profile not written yet: another node is most likely writing it (identities
        // are written before profiles), so try again rather than judge it empty and take its value.
        // After a few tries it is an orphan of a node that died, and is treated as empty.
        if (other && a.missing.has(other.id) && other.id !== p.id && a.attempt < 6)
          throw new ProfileConflictError(`${key}: profile ${other.id} is not written yet`);
        if (other && other.id !== p.id && sameByIdentifiers(p, other, rules)) {
          const keepOther = other.userId !== undefined || p.userId === undefined;
          const [src, dst] = keepOther ? [p, other] : [other, p];
          await this.#merge(a, src, dst);
          p = dst;
          merged = true;
          break;
        }
        const holds = other && identifierText(other.props[name]?.v) === identifierText(v);
        if (!other || other.id === p.id || !holds) a.setIdentity(key, p.id);
      }
      if (!merged) return p;
    }
    return p;
  }

  /** Folds `src` into `dst`; `src` becomes a tombstone and its identities point at `dst`. */
  async #merge(a: Attempt, src: Profile, dst: Profile): Promise<void> {
    a.reshaped++;
    a.edit(src);
    a.edit(dst);
    for (const [name, p] of Object.entries(src.props)) setProp(dst, name, p.v, p.t, p.m);
    for (const id of src.anonymousIds) {
      if (!dst.anonymousIds.includes(id)) dst.anonymousIds.push(id);
      await a.identity(keyOf("a", id));
      a.setIdentity(keyOf("a", id), dst.id, { kind: "a", id });
    }
    // Ids src had dropped still lead to src, whose tombstone leads here.
    if (src.anonymousIdsDropped) dst.anonymousIdsDropped = (dst.anonymousIdsDropped ?? 0) + src.anonymousIdsDropped;
    capAnonymousIds(dst);
    for (const id of [...(src.userId !== undefined ? [src.userId] : []), ...(src.userIds ?? [])]) {
      await a.identity(keyOf("u", id));
      a.setIdentity(keyOf("u", id), dst.id, { kind: "u", id });
      if (id !== dst.userId && !dst.userIds?.includes(id)) (dst.userIds ??= []).push(id);
    }
    dst.merged = [...(dst.merged ?? []), src.id, ...(src.merged ?? [])];
    dst.firstSeen = Math.min(dst.firstSeen, src.firstSeen);
    dst.lastSeen = Math.max(dst.lastSeen, src.lastSeen);
    src.mergedInto = dst.id;
    a.changed(src);
    a.changed(dst);
  }
}
